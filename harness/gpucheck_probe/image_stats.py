"""What gpucheck reports about an IMAGE tensor (pure torch, no ComfyUI): are the values finite,
and is the picture blank (every frame one flat colour, which is what NaN or inf become once
a video is written as 8-bit: the check has to look before that)."""
from __future__ import annotations

import torch

# one 8-bit step: a frame whose values all lie within it is one flat colour in the saved file
FLAT = 1.0 / 255.0


def image_stats(images: torch.Tensor) -> dict:
    """Statistics of an IMAGE batch [B, H, W, C] (or any float tensor with frames first).

    ``finite``: no NaN or inf anywhere; ``nonfinite``: how many values are not finite;
    ``min``/``max``/``mean`` over the finite values (None when there are none); ``flat_frames``:
    frames whose finite values span less than one 8-bit step (or that have none);
    ``blank``: every frame is flat. Frames are read one at a time, so the temporaries stay
    one frame large."""
    if not torch.is_tensor(images) or images.ndim < 1:
        raise TypeError(f"images: expected a tensor with frames first, got {type(images).__name__}")
    nonfinite, count, total = 0, 0, 0.0
    lo, hi = float("inf"), float("-inf")
    flat = 0
    frames = images if images.ndim > 1 else images[None]
    for frame in frames:
        f = frame.detach().float()
        ok = torch.isfinite(f)
        n_ok = int(ok.sum())
        nonfinite += f.numel() - n_ok
        if n_ok == 0:
            flat += 1
            continue
        vals = f[ok]
        f_lo, f_hi = float(vals.min()), float(vals.max())
        lo, hi = min(lo, f_lo), max(hi, f_hi)
        total += float(vals.double().sum())
        count += n_ok
        if f_hi - f_lo < FLAT:
            flat += 1
    return {
        "shape": list(images.shape),
        "finite": nonfinite == 0,
        "nonfinite": nonfinite,
        "min": lo if count else None,
        "max": hi if count else None,
        "mean": total / count if count else None,
        "flat_frames": flat,
        "blank": flat == len(frames),
    }
