"""Weight wrappers for training on a frozen model (pure torch, no ComfyUI import): each is a
callable ``w -> w'`` for ComfyUI's ``add_weight_wrapper``, so the model's own weights are never
touched. LoRA and full deltas (MoViE's guidance adapter and one-step student, EVE's aligner
LoRA) start at zero, so the wrapped model starts exactly as the frozen one; a shared ``Switch``
turns a set of deltas off (the teacher passes on the same UNet)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class Switch:
    """Shared on/off flag of a set of deltas: off gives the frozen model back (the teacher passes)."""

    def __init__(self):
        self.enabled = True


class LoRADelta(nn.Module):
    """Weight wrapper w -> w + (alpha/rank) up @ down (up starts at zero: exact identity)."""

    def __init__(self, shape: Sequence[int], rank: int, alpha: float | None = None,
                 switch: Switch | None = None, generator: torch.Generator | None = None):
        super().__init__()
        out_dim, in_dim = shape[0], int(math.prod(shape[1:]))
        rank = max(1, min(rank, out_dim, in_dim))
        self.shape = tuple(shape)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.down = nn.Parameter(torch.empty(rank, in_dim))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.up = nn.Parameter(torch.zeros(out_dim, rank))
        self.switch = switch

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if self.switch is not None and not self.switch.enabled:
            return w
        delta = (self.up @ self.down).reshape(w.shape) * (self.alpha / self.rank)
        return w + delta.to(device=w.device, dtype=w.dtype)

    def move_to(self, device=None):
        if device is not None:
            self.to(device)
        return sum(p.numel() * p.element_size() for p in self.parameters())


class FullDelta(nn.Module):
    """Weight wrapper w -> w + diff (full fine-tune deltas, diff starts at zero)."""

    def __init__(self, shape: Sequence[int], switch: Switch | None = None):
        super().__init__()
        self.diff = nn.Parameter(torch.zeros(tuple(shape)))
        self.switch = switch

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if self.switch is not None and not self.switch.enabled:
            return w
        return w + self.diff.to(device=w.device, dtype=w.dtype)

    def move_to(self, device=None):
        if device is not None:
            self.to(device)
        return sum(p.numel() * p.element_size() for p in self.parameters())


class CloneWeight:
    """Weight wrapper w -> copy of w: frozen weights loaded in inference mode (ComfyUI loads
    checkpoints under torch.inference_mode) cannot be saved for backward; a copy made during
    training can. Values are unchanged."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w.clone() if w.is_inference() else w

    def move_to(self, device=None):
        return 0


class FrozenWeight:
    """Weight wrapper for frozen weights under training: an inference-mode weight (ComfyUI loads
    under torch.inference_mode) is copied so backward can save it; any other is detached, so no
    gradient is ever accumulated into a frozen model. Values are unchanged."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w.clone() if w.is_inference() else w.detach()

    def move_to(self, device=None):
        return 0
