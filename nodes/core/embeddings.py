"""The sinusoidal embedding (pure torch): sin/cos of a value at geometric frequencies.

One formula, two layouts: ``[cos | sin]`` halves, the order of the UNet's timestep embedding
(MoViE's guidance-scale embedding and discriminator conditioning), and interleaved
``sin, cos`` pairs, AnimateDiff's (and the Transformer's) positional encoding, which
``interleaved=True`` reproduces bit for bit (a v1 motion module stores no buffer and must get
exactly the one AnimateDiff builds).
"""
from __future__ import annotations

import math

import torch


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0,
                         interleaved: bool = False) -> torch.Tensor:
    """values [N] -> [N, dim] float32: frequencies ``max_period ** (-2i / dim)``, i < dim // 2.

    ``interleaved=False``: ``[cos(v f) | sin(v f)]`` (an odd ``dim`` gets a zero last column);
    ``interleaved=True``: columns 0, 2, 4... sin, 1, 3, 5... cos."""
    freqs = torch.exp(torch.arange(0, dim - dim % 2, 2, device=values.device) * (-math.log(max_period) / dim))
    args = values.reshape(-1, 1).float() * freqs[None]
    if interleaved:
        return torch.stack([torch.sin(args), torch.cos(args)], dim=-1).flatten(1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
