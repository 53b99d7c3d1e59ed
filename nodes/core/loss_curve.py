"""The loss history of a training run as an image (PIL; no ComfyUI import)."""
from __future__ import annotations

import math

import torch


def render_loss_curve(losses: list[float], width: int = 512, height: int = 256, title: str = "loss"):
    """The loss history as an RGB PIL image (log-scale y when it spans > 1 decade)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), (24, 24, 28))
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 10, 22, height - 24
    d.rectangle([left, top, right, bottom], outline=(90, 90, 100))
    vals = [v for v in losses if math.isfinite(v)]
    d.text((left, 4), f"{title}: {len(losses)} steps" + (f", last {vals[-1]:.4g}" if vals else ""), fill=(220, 220, 220))
    if len(vals) >= 1:
        use_log = min(vals) > 0 and max(vals) / max(min(vals), 1e-30) > 10
        f = (lambda v: math.log10(v)) if use_log else (lambda v: v)
        lo, hi = f(min(vals)), f(max(vals))
        hi = hi if hi > lo else lo + 1e-12
        n = max(len(losses) - 1, 1)
        pts = [(left + (right - left) * i / n, bottom - (bottom - top) * (f(v) - lo) / (hi - lo))
               for i, v in enumerate(losses) if math.isfinite(v)]
        if len(pts) == 1:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=(90, 170, 255))
        else:
            d.line(pts, fill=(90, 170, 255), width=2)
        d.text((2, top), f"{max(vals):.3g}", fill=(180, 180, 180))
        d.text((2, bottom - 10), f"{min(vals):.3g}", fill=(180, 180, 180))
        d.text((left, bottom + 6), "step 1" + (" (log y)" if use_log else ""), fill=(180, 180, 180))
        d.text((right - 60, bottom + 6), f"step {len(losses)}", fill=(180, 180, 180))
    return img


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
