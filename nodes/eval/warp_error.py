"""Warp error: the temporal-consistency metric of TokenFlow's Table 1 (pure torch, no ComfyUI).

TokenFlow (Sec. 5.2) measures consistency "following [Pix2Video, Lai et al. 2018] ... by computing
the optical flow of the original video using RAFT, warping the edited frames according to it, and
measuring the warping error". We follow Lai et al.'s definition as their released code computes it
(phoenix104104/fast_blind_video_consistency: evaluate_WarpError.py, compute_flow_occlusion.py,
utils.detect_occlusion):

For consecutive frames t, t+1 of the edited clip E and the forward flow F_t = flow(S_t -> S_{t+1})
of the *source* clip S (so that S_t(p) ~ S_{t+1}(p + F_t(p))):

    W_t(p) = E_{t+1}(p + F_t(p))                       backward warping, bilinear
    e_t    = sum_p sum_c M_t(p) (W_t(p)_c - E_t(p)_c)^2 / (3 sum_p M_t(p))

i.e. the mean squared difference per colour channel over the valid pixels, RGB scaled to [0, 1]
(Lai's code reads frames as RGB / 255 and divides by the sum of a 3-channel mask image, hence the 3;
their paper's Eq. without it would be 3x larger). A clip's warp error is the mean of e_t over its
T-1 pairs. If no pixel is valid e_t = 0 (Lai's code then divides the masked sum, 0, by 3HW).

The valid mask M_t = 1 - occluded, from the source's forward and backward flow B_t = flow(S_{t+1} -> S_t):
- forward-backward consistency (Sundaram et al., ECCV 2010; used by Ruder et al. 2016 and Lai et al.):
  occluded where |F_t(p) + B_t(p + F_t(p))|^2 > 0.01 (|F_t(p)|^2 + |B_t(p + F_t(p))|^2) + 0.5;
- motion boundaries (same sources): occluded where |grad u|^2 + |grad v|^2 > 0.01 |F_t(p)|^2 + 0.002,
  with forward differences of F_t (zero on the last row/column, as Lai's compute_flow_gradients);
- out of frame: occluded where p + F_t(p) leaves [0, W-1] x [0, H-1] (Ruder et al.'s consistency
  checker marks these unreliable; Lai's Resample2d clamps to the border instead and so compares them
  with a smeared edge pixel; the two differ only on a strip as wide as the motion). Bilinear
  sampling is exact on the last row/column, so a target exactly there counts as inside.

Everything works on pairs of frames, ``pairs_per_chunk`` at a time, so memory does not grow with the
clip's length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.frame_chunks import frame_chunks

FB_RELATIVE, FB_ABSOLUTE = 0.01, 0.5          # forward-backward test (Sundaram et al. 2010)
BOUNDARY_RELATIVE, BOUNDARY_ABSOLUTE = 0.01, 0.002   # motion-boundary test (same)

# a flow source: (frames_t, frames_t1) [B, 3, H, W] in 0..1 -> (forward, backward) [B, 2, H, W]
FlowFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _pixel_grid(b: int, h: int, w: int, device, dtype) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).expand(b, 2, h, w)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` [B, C, H, W] sampled at p + flow(p) (bilinear; outside the frame the border pixel,
    as Lai's Resample2d). ``flow`` [B, 2, H, W] in pixels, channel 0 = x, 1 = y."""
    b, _, h, w = image.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow: expected {[b, 2, h, w]}, got {list(flow.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"frames of {w}x{h} pixels are too small to warp (need at least 2x2)")
    target = _pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    grid = torch.stack([target[:, 0] * (2.0 / (w - 1)) - 1.0, target[:, 1] * (2.0 / (h - 1)) - 1.0], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def target_inside(flow: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: p + flow(p) lies inside the frame."""
    b, _, h, w = flow.shape
    target = _pixel_grid(b, h, w, flow.device, flow.dtype) + flow
    return (target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0) & (target[:, 1] <= h - 1)


def motion_boundary(flow: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: motion boundaries of ``flow`` (forward differences, 0 on the last row/column)."""
    du = torch.zeros_like(flow)
    dv = torch.zeros_like(flow)
    du[..., :, :-1] = flow[..., :, :-1] - flow[..., :, 1:]
    dv[..., :-1, :] = flow[..., :-1, :] - flow[..., 1:, :]
    grad_sq = (du ** 2 + dv ** 2).sum(dim=1)
    return grad_sq > BOUNDARY_RELATIVE * (flow ** 2).sum(dim=1) + BOUNDARY_ABSOLUTE


def occlusion_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool, True where frame t's pixel has no reliable counterpart in frame t+1:
    forward-backward inconsistent, on a motion boundary, or moved out of the frame (module doc)."""
    if forward.shape != backward.shape or forward.ndim != 4 or forward.shape[1] != 2:
        raise ValueError(f"forward/backward flow: expected two [B, 2, H, W] fields, got "
                         f"{list(forward.shape)} and {list(backward.shape)}")
    backward_at_target = backward_warp(backward, forward)
    round_trip = ((forward + backward_at_target) ** 2).sum(dim=1)
    magnitude = (forward ** 2).sum(dim=1) + (backward_at_target ** 2).sum(dim=1)
    inconsistent = round_trip > FB_RELATIVE * magnitude + FB_ABSOLUTE
    return inconsistent | motion_boundary(forward) | ~target_inside(forward)


def pair_errors(frames_t: torch.Tensor, frames_t1: torch.Tensor, forward: torch.Tensor,
                occluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair e_t (float64 [B]) and the valid fraction of its pixels ([B]); frames [B, 3, H, W]."""
    warped = backward_warp(frames_t1, forward)
    valid = (~occluded).unsqueeze(1).to(frames_t.dtype)
    sq = ((warped - frames_t) ** 2 * valid).sum(dim=(1, 2, 3), dtype=torch.float64)
    n_valid = valid.sum(dim=(1, 2, 3), dtype=torch.float64)
    channels = frames_t.shape[1]
    errors = torch.where(n_valid > 0, sq / (channels * n_valid.clamp(min=1)), torch.zeros_like(sq))
    return errors, n_valid / (frames_t.shape[2] * frames_t.shape[3])


def pan_flow_fn(dx: int, dy: int) -> FlowFn:
    """The exact flow of a clip whose view pans by (dx, dy) pixels per frame (harness/sample_clip's
    ``shift``: frame t+1 = frame t's content moved by (-dx, -dy)), so F_t = (-dx, -dy), B_t = (dx, dy)."""
    def flows(frames_t: torch.Tensor, frames_t1: torch.Tensor):
        b, _, h, w = frames_t.shape
        fwd = torch.tensor([-float(dx), -float(dy)], device=frames_t.device).view(1, 2, 1, 1).expand(b, 2, h, w)
        return fwd.contiguous(), (-fwd).contiguous()
    return flows


@dataclass
class WarpErrorResult:
    per_pair: list[float] = field(default_factory=list)        # e_t, t = 0 .. T-2
    valid_fraction: list[float] = field(default_factory=list)  # share of frame t's pixels compared

    @property
    def mean(self) -> float:
        return sum(self.per_pair) / len(self.per_pair) if self.per_pair else float("nan")


def _as_chw(frames: torch.Tensor, size: tuple[int, int] | None, device) -> torch.Tensor:
    """ComfyUI IMAGE rows [n, H, W, C] -> [n, 3, H, W] float32 on ``device``, resized to ``size``."""
    x = frames[..., :3].to(device=device, dtype=torch.float32).movedim(-1, 1)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def clip_warp_error(edited: torch.Tensor, source: torch.Tensor, flow_fn: FlowFn, pairs_per_chunk: int = 4,
                    device: torch.device | str = "cpu", on_chunk: Callable[[int, int], None] | None = None
                    ) -> WarpErrorResult:
    """Warp error of ``edited`` against the motion of ``source`` (both [T, H, W, C], 0..1).

    The source is resized to the edited frames' size where they differ (the flow is computed at the
    resolution the error is measured at). ``on_chunk(done, total)`` is called after each chunk of
    pairs (progress, cancel)."""
    if edited.ndim != 4 or source.ndim != 4 or edited.shape[-1] < 3 or source.shape[-1] < 3:
        raise ValueError(f"edited/source: expected frames [T, H, W, 3], got {list(edited.shape)} and {list(source.shape)}")
    n = edited.shape[0]
    if source.shape[0] != n:
        raise ValueError(f"edited has {n} frames but source has {source.shape[0]}: the warp error compares "
                         "each edited frame with the source's motion at the same time; pass the source the "
                         "edit was made from (same frames, same frame rate)")
    if n < 2:
        raise ValueError(f"edited: the clip has {n} frame; the warp error compares consecutive frames, so it needs "
                         "at least 2: connect the whole clip (and its source)")
    if pairs_per_chunk < 1:
        raise ValueError(f"pairs_per_chunk must be at least 1, got {pairs_per_chunk}")
    size = tuple(edited.shape[1:3])
    result = WarpErrorResult()
    chunks = frame_chunks(n - 1, pairs_per_chunk)   # pairs s..e-1 use frames s..e
    for i, pairs in enumerate(chunks):
        s, e = pairs.start, pairs.stop
        src = _as_chw(source[s:e + 1], size, device)
        edt = _as_chw(edited[s:e + 1], size, device)
        with torch.inference_mode():
            forward, backward = flow_fn(src[:-1], src[1:])
            occluded = occlusion_mask(forward.float(), backward.float())
            errors, valid = pair_errors(edt[:-1], edt[1:], forward.float(), occluded)
        result.per_pair += errors.tolist()
        result.valid_fraction += valid.tolist()
        if on_chunk is not None:
            on_chunk(i + 1, len(chunks))
    return result
