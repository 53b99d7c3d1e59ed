"""Which keyframes each keyframe attends to in the keyframe pass (extended attention, Eq. 3-4),
for long clips; pure torch, no ComfyUI import.

The paper (and the official code) lets every keyframe attend to *all* keyframes of the clip:
with one keyframe per 8 frames that is n/8 keyframes, each attending to n/8 keyframes' tokens,
so the attention's cost grows with the square of the clip length. A *keyframe window* bounds
it: keyframe ``i`` (at frame ``f_i``) attends to the keyframes ``j`` with ``|f_j - f_i| <=
window`` frames, and optionally to the clip's first keyframe (slot 0), a global anchor every
keyframe shares. Neighbouring windows overlap, so the joint edit is passed along the clip
layer by layer; the anchor gives every keyframe one common reference.

``attention_groups`` turns the sets into the calls ``propagation.extended_attention`` makes:
runs of consecutive keyframes with the same set, at most ``query_chunk`` queries per call. A
set that holds every keyframe becomes a group without a gather (``keys=None``), which is the
very computation of the all-keyframes mode, so a window that covers the clip gives the paper's
result bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.frame_chunks import frame_chunks

MODES = ("auto", "all", "window")


def resolve_mode(mode: str, num_frames: int, window: int) -> str:
    """The node's ``keyframe_attention`` setting -> "all" or "window".

    "auto": all keyframes while the clip is at most ``2 * window + 1`` frames, the window beyond.
    Up to that length no keyframe of the clip has more keyframes in reach than the middle
    keyframe of a window on a long clip, so the paper's mode costs no more per keyframe than the
    window would at its widest, and the result is the paper's; past it the window caps every
    keyframe's set and the cost per frame stops growing with the clip.
    """
    if mode not in MODES:
        raise ValueError(f"keyframe_attention: expected one of {MODES}, got '{mode}'")
    if window < 1:
        raise ValueError(f"keyframe_window: must be at least 1 frame, got {window}")
    if mode == "auto":
        return "all" if num_frames <= 2 * window + 1 else "window"
    return mode


def attention_sets(keyframes: torch.Tensor, window: int, anchor: bool) -> list[torch.Tensor]:
    """Per keyframe slot, the sorted slots it attends to: every keyframe at most ``window``
    frames before or after it (itself included), plus slot 0 (the clip's first keyframe) when
    ``anchor``."""
    kf = torch.as_tensor(keyframes, dtype=torch.long).flatten()
    if kf.numel() == 0:
        raise ValueError("at least one keyframe is needed")
    if not bool((kf[1:] > kf[:-1]).all()):
        raise ValueError(f"keyframes must be sorted and distinct, got {kf.tolist()}")
    if window < 0:
        raise ValueError(f"keyframe_window: must be >= 0 frames, got {window}")
    # the keyframes are sorted, so each window is a contiguous run of slots [lo, hi)
    lo = torch.searchsorted(kf, kf - window, right=False)
    hi = torch.searchsorted(kf, kf + window, right=True)
    sets = []
    for a, b in zip(lo.tolist(), hi.tolist()):
        slots = torch.arange(a, b)
        if anchor and a > 0:
            slots = torch.cat([torch.zeros(1, dtype=torch.long), slots])
        sets.append(slots)
    return sets


@dataclass
class AttentionGroup:
    """Query keyframes ``queries`` (a slice of slots) that all attend to the keyframes ``keys``
    (sorted slots; ``None``: every keyframe of the step, in slot order, without a gather)."""
    queries: slice
    keys: torch.Tensor | None


def attention_groups(sets: list[torch.Tensor], query_chunk: int) -> list[AttentionGroup]:
    """Runs of consecutive keyframes with the same set, split into at most ``query_chunk``
    queries each (the chunking that keeps the attention's memory flat)."""
    total = len(sets)
    groups = []
    start = 0
    while start < total:
        end = start + 1
        while end < total and torch.equal(sets[end], sets[start]):
            end += 1
        keys = sets[start]
        everything = keys.numel() == total  # sorted and distinct: it is arange(total)
        for sl in frame_chunks(end - start, query_chunk):
            groups.append(AttentionGroup(slice(start + sl.start, start + sl.stop), None if everything else keys))
        start = end
    return groups


def all_keyframes_groups(num_keyframes: int, query_chunk: int) -> list[AttentionGroup]:
    """The paper's mode: every keyframe attends to every keyframe, ``query_chunk`` queries per call."""
    return [AttentionGroup(sl, None) for sl in frame_chunks(num_keyframes, query_chunk)]


def keyframe_groups(keyframes: torch.Tensor, mode: str, window: int, anchor: bool,
                    query_chunk: int) -> list[AttentionGroup]:
    """The step's attention calls for a resolved ``mode`` ("all" or "window")."""
    if mode == "all":
        return all_keyframes_groups(len(keyframes), query_chunk)
    if mode != "window":
        raise ValueError(f"keyframe attention mode must be resolved to 'all' or 'window', got '{mode}'")
    return attention_groups(attention_sets(keyframes, window, anchor), query_chunk)
