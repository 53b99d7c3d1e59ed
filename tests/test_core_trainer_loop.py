"""The trainer loop (core/trainer_loop.py): per-step randomness, resume, cancel, checkpoints."""
from __future__ import annotations

import torch

from videoedit.nodes.core import trainer_loop

def test_step_generator_depends_only_on_seed_step_rank():
    a = torch.rand(3, generator=trainer_loop.step_generator(1, 5, 0))
    assert torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 6, 0)))
    assert not torch.equal(a, torch.rand(3, generator=trainer_loop.step_generator(1, 5, 1)))
