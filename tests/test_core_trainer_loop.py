"""The trainer loop (core/trainer_loop.py): per-step randomness, resume, cancel, checkpoints."""
from __future__ import annotations

import pytest
import torch

from videoedit.nodes.core import checkpoints, trainer_loop


def test_step_generator_depends_only_on_seed_step_rank():
    a = torch.rand(3, generator=trainer_loop.step_generator(1, 5, 0))
    assert torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 6, 0)))
    assert not torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 5, 1)))


class _Toy:
    """A one-parameter regression trained by the loop: each step draws its batch from the step's
    generator, so an interrupted-and-resumed run must retrace the uninterrupted one exactly."""

    def __init__(self):
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.opt = torch.optim.Adam([self.w], lr=0.1)

    def step(self, s, gen):
        x = torch.randn(8, 3, generator=gen)
        loss = ((x @ self.w - x.sum(1)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def run(self, total, path=None, resume=True, every=2, **kw):
        return trainer_loop.run_training_loop(self.step, total, seed=3, params={"w": self.w}, optimizer=self.opt,
                                              config={"lr": 0.1}, checkpoint_path=path, resume=resume,
                                              checkpoint_every=every, **kw)


class _Stop(Exception):
    pass


def test_loop_resumes_exactly_after_a_kill(tmp_path):
    ref_step, ref = _Toy().run(7, str(tmp_path / "a.safetensors"))
    ck = str(tmp_path / "b.safetensors")

    def kill_at_5(step, loss):
        if step == 5:
            raise _Stop  # like SIGKILL after step 5: the checkpoint holds step 4
    with pytest.raises(_Stop):
        _Toy().run(7, ck, on_step=kill_at_5)
    assert checkpoints.checkpoint_step(ck) == 4
    toy = _Toy()
    step, losses = toy.run(7, ck)
    assert (step, losses) == (ref_step, ref) and step == 7
    with pytest.raises(ValueError, match="different settings"):
        trainer_loop.run_training_loop(toy.step, 9, seed=3, params={"w": toy.w}, optimizer=toy.opt,
                                       config={"lr": 0.2}, checkpoint_path=ck)


def test_loop_cancel_checkpoints_what_is_done_and_stops(tmp_path):
    ck = str(tmp_path / "c.safetensors")
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) == 4:  # checked before every step: cancel before step 4
            raise _Stop
    with pytest.raises(_Stop):
        _Toy().run(10, ck, every=100, interrupted=interrupted)
    assert checkpoints.checkpoint_step(ck) == 3
    step, losses = _Toy().run(3, ck)  # nothing left to do: the history comes back as saved
    assert step == 3 and len(losses) == 3


def test_loop_checkpoints_every_n_and_at_the_end(tmp_path):
    ck = str(tmp_path / "d.safetensors")
    seen = []
    _Toy().run(5, ck, every=2, on_step=lambda s, l: seen.append(checkpoints.checkpoint_step(ck)))
    assert seen == [0, 2, 2, 4, 5]
    step, losses = _Toy().run(5, None, every=2)  # no path: nothing written, same losses
    assert step == 5 and len(losses) == 5
