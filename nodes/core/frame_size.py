"""Frame sizes a latent-space model can take: SD-family VAEs and TAESD work on multiples of 8
pixels and ComfyUI's VAE encode crops anything else without a word (65x63 becomes 64x56), so a
node that takes frames says so (an error, or a note where cropping is harmless)."""
from __future__ import annotations

import torch

MULTIPLE = 8


def crop_note(frames: torch.Tensor, input_name: str) -> str | None:
    """What the VAE would do to IMAGE ``frames`` [N, H, W, C] whose size is not a multiple of 8, or
    None when it is."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    if h % MULTIPLE == 0 and w % MULTIPLE == 0:
        return None
    return (f"{input_name}: the frames are {w}x{h} pixels (width x height), not multiples of {MULTIPLE}; "
            f"the VAE crops them to {w - w % MULTIPLE}x{h - h % MULTIPLE}")


def require_multiple_of_8(frames: torch.Tensor, input_name: str) -> None:
    """ValueError naming the size and the fix when IMAGE ``frames`` are not a multiple of 8 in size."""
    note = crop_note(frames, input_name)
    if note is not None:
        h, w = int(frames.shape[1]), int(frames.shape[2])
        up = lambda n: -(-n // MULTIPLE) * MULTIPLE
        raise ValueError(f"{note} and the result would no longer match the frames; resize them first (e.g. "
                         f"Upscale Image to {up(w)}x{up(h)}) or crop them (e.g. ImageCrop to "
                         f"{w - w % MULTIPLE}x{h - h % MULTIPLE})")
