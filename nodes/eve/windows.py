"""EVE plug-and-play video editing: the anchoring rule and the sliding windows of long clips
(pure, no ComfyUI import).

EVE (Sec. 3.1) stacks an image-edit adapter and a video adapter, trained separately on one
frozen text-to-image backbone. The video adapter is conditioned on the first frame (as in
Emu Video's first-frame conditioning), and that frame is edited by the image-edit adapter
alone.

Anchoring (our choice): every temporal layer leaves position 0 of its sequence untouched
(``anchor=True`` in eve/temporal_adapter.py) while the other frames attend to it. Frame 0
therefore follows *exactly* the per-frame image-edit trajectory at every step (same UNet
pass, bit for bit), and every other frame is denoised conditioned on the edited first frame's
features at every layer. This costs no extra UNet pass, needs no re-noising of a separately
sampled frame (which would couple the anchor to the sampler), and works with any core sampler.

Long clips: windows of the adapter's length with overlap; when anchoring, a window that does
not start at frame 0 gets frame 0 prepended (its output there is discarded: weight 0), so every
window sees the anchor. Each frame's results are blended with weights that grow linearly from
a window's edges (normalised per frame: a frame's weights over all windows sum to one), so
neighbouring windows cross-fade across the overlap instead of meeting at a seam.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    frames: tuple[int, ...]   # frame indices fed to the model, in order
    weights: tuple[float, ...]  # blend weight of each position (0 for a prepended anchor)


def window_starts(num_frames: int, length: int, overlap: int) -> list[int]:
    """Start frames of windows of ``length`` that cover ``range(num_frames)`` with at least
    ``overlap`` shared frames between neighbours; the last window ends at the last frame."""
    if num_frames < 1:
        raise ValueError(f"the clip has {num_frames} frames; at least one frame is needed")
    if length < 1:
        raise ValueError(f"context_length must be at least 1, got {length}")
    if not 0 <= overlap < length:
        raise ValueError(f"context_overlap must be between 0 and context_length - 1 ({length - 1}), got {overlap}")
    if num_frames <= length:
        return [0]
    stride = length - overlap
    starts = list(range(0, num_frames - length, stride)) + [num_frames - length]
    return sorted(set(starts))


def _ramp(pos: int, length: int) -> float:
    """Weight of window position ``pos``: 1 at the edges, rising linearly to the middle."""
    return float(min(pos + 1, length - pos))


def window_plan(num_frames: int, length: int, overlap: int, anchor: bool = True) -> list[Window]:
    """Windows covering a clip, with per-frame blend weights that sum to one over windows.

    A clip no longer than ``length`` is one window over all its frames (weights 1), so
    windowing then changes nothing.
    """
    starts = window_starts(num_frames, length, overlap)
    span = min(length, num_frames)
    raw = [[_ramp(p, span) for p in range(span)] for _ in starts]
    total = [0.0] * num_frames
    for s, w in zip(starts, raw):
        for p, v in enumerate(w):
            total[s + p] += v
    plan = []
    for s, w in zip(starts, raw):
        frames = list(range(s, s + span))
        weights = [v / total[f] for f, v in zip(frames, w)]
        if anchor and s > 0:
            frames, weights = [0] + frames, [0.0] + weights
        plan.append(Window(tuple(frames), tuple(weights)))
    return plan


def frame_weight_sums(plan: list[Window], num_frames: int) -> list[float]:
    """Sum of each frame's blend weights over the plan (1.0 for every frame when correct)."""
    sums = [0.0] * num_frames
    for w in plan:
        for f, v in zip(w.frames, w.weights):
            sums[f] += v
    return sums


def frames_for_batch(batch: int, conds: int) -> int:
    """Frames of the clip in a model batch that stacks ``conds`` conditionings (cond, uncond...)."""
    conds = max(1, conds)
    if batch % conds:
        raise ValueError(f"a batch of {batch} latents does not split into {conds} conditionings")
    return batch // conds
