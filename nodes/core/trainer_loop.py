"""The one training loop of the pack (pure torch, no ComfyUI import): every trainer (MoViE's CFG
distillation and one-step student, EVE's LoRA aligner) supplies one step and gets resume,
cancel, checkpoints and DDP loss averaging from here.

- Randomness per step: each step draws from ``step_generator(seed, step, rank)``, so a resumed
  run draws exactly the batches, timesteps and noise the uninterrupted run would have.
- Resume: with a checkpoint at ``checkpoint_path`` (and ``resume``), parameters, optimizer,
  RNG and loss history are restored, after checking it was written with the same settings.
- Checkpoints: every ``checkpoint_every`` steps and at the last step, atomically, by rank 0.
- Cancel: ``interrupted()`` is called before every step; whatever it raises stops the run
  after a checkpoint of everything done so far.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from . import checkpoints, ddp

StepFn = Callable[[int, torch.Generator], float]  # (1-based step, its generator) -> this rank's loss


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one training step: depends only on (seed, step, rank)."""
    mixed = (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


def run_training_loop(step_fn: StepFn, total: int, *, seed: int, params: dict[str, torch.Tensor],
                      optimizer: torch.optim.Optimizer, config: dict, checkpoint_path: str | None = None,
                      resume: bool = True, checkpoint_every: int = 0,
                      on_step: Callable[[int, float], None] | None = None,
                      interrupted: Callable[[], None] | None = None) -> tuple[int, list[float]]:
    """Run ``step_fn`` from the checkpoint's step (or 0) to ``total``; returns (last step, the
    loss history: one rank-averaged loss per step). ``params`` are the tensors a checkpoint
    holds (broadcast from rank 0 first); ``config`` is the settings record resume must match."""
    rank, _ = ddp.ddp_info()
    ddp.ddp_broadcast_(params.values())
    step, losses = 0, []
    if checkpoint_path and resume and os.path.exists(checkpoint_path):
        step, losses = checkpoints.load_checkpoint(checkpoint_path, params, optimizer, config)

    def save(at: int) -> None:
        if checkpoint_path and rank == 0:
            checkpoints.save_checkpoint(checkpoint_path, at, params, optimizer, losses, config)

    while step < total:
        if interrupted is not None:
            try:
                interrupted()
            except BaseException:
                save(step)  # cancel: keep everything done so far
                raise
        s = step + 1
        losses.append(ddp.ddp_mean(float(step_fn(s, step_generator(seed, s, rank)))))
        step = s
        if checkpoint_every > 0 and (step % checkpoint_every == 0 or step == total):
            save(step)
        if on_step is not None:
            on_step(step, losses[-1])
    return step, losses
