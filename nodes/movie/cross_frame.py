"""MoViE cross-frame attention (Sec. 3.1), pure torch (no ComfyUI import): which frames are the
anchors, and self-attention in which every frame also attends to its group's anchor frames."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import rearrange


ANCHOR_MODES = ("middle", "first", "evenly spaced")


def select_anchors(num_frames: int, mode: str = "middle", count: int = 3) -> list[int]:
    """Indices of the anchor frames among ``num_frames``.

    middle: the single middle frame (MoViE); first: frame 0 (Rerender-A-Video);
    evenly spaced: ``count`` frames at equal intervals including both ends (Fairy uses 3).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode == "middle":
        return [num_frames // 2]
    if mode == "first":
        return [0]
    if mode == "evenly spaced":
        if count < 1:
            raise ValueError(f"anchor count must be >= 1, got {count}")
        count = min(count, num_frames)
        if count == 1:
            return [num_frames // 2]
        return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})
    raise ValueError(f"anchor mode must be one of {', '.join(ANCHOR_MODES)}, got '{mode}'")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head attention on [B, N, heads*d] tensors (reference; ComfyUI passes its own)."""
    split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=heads)
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return rearrange(out, "b h n d -> b n (h d)")


def cross_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                          groups: int, anchors_of: Callable[[int], Sequence[int]],
                          attention: Callable = sdpa_attention) -> torch.Tensor:
    """Self-attention where each frame also attends to its group's anchor frames.

    q, k, v: [B, N, C] projected tokens of B frames, laid out as ``groups`` consecutive groups
    of B/groups frames (ComfyUI batches cond/uncond copies of the clip one after another), so
    anchors are chosen inside each group: a frame never attends to another conditioning's
    anchor. Keys/values of frame i: [K_i; K_a for anchors a != i] (an anchor frame does not see
    itself twice, so a one-frame clip anchored on itself is exactly vanilla self-attention).
    """
    b = q.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"batch of {b} frames does not split into {groups} conditioning groups")
    f = b // groups
    anchors = list(anchors_of(f))
    out = torch.empty_like(q)
    aset = set(anchors)
    others = [i for i in range(f) if i not in aset]
    for g in range(groups):
        base = g * f
        ka = k[[base + a for a in anchors]]  # [A, N, C]
        va = v[[base + a for a in anchors]]
        if others:
            idx = [base + i for i in others]
            n_o = len(idx)
            # every non-anchor frame: its own tokens, then all anchors' tokens in a row
            kk = torch.cat([k[idx], rearrange(ka, "a n c -> 1 (a n) c").expand(n_o, -1, -1)], dim=1)
            vv = torch.cat([v[idx], rearrange(va, "a n c -> 1 (a n) c").expand(n_o, -1, -1)], dim=1)
            out[idx] = attention(q[idx], kk, vv, heads)
        for j, a in enumerate(anchors):
            rest = [x for x in range(len(anchors)) if x != j]
            kk = torch.cat([k[base + a:base + a + 1]] + [ka[r:r + 1] for r in rest], dim=1)
            vv = torch.cat([v[base + a:base + a + 1]] + [va[r:r + 1] for r in rest], dim=1)
            out[base + a:base + a + 1] = attention(q[base + a:base + a + 1], kk, vv, heads)
    return out
