"""Finding NaN and infinite values in a tensor a node receives (pure torch).

A NaN that reaches a sampler or a decoder comes out as a black video with status "success";
every node input is checked on entry instead. The check walks the batch (frame) axis in chunks,
so its temporary mask stays small for long clips, and it names the first bad frame.
"""
from __future__ import annotations

import torch

from .frame_chunks import frame_chunks

# elements checked at once: a 16M-element mask is 16 MB, whatever the clip's length
CHUNK_ELEMENTS = 1 << 24


def first_non_finite(t: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> int | None:
    """The index along axis 0 of the first entry holding NaN or +-inf (0 for a scalar), or None when
    every value is finite. Integer and bool tensors are always finite."""
    if not (t.is_floating_point() or t.is_complex()):
        return None
    if t.ndim == 0:
        return None if bool(torch.isfinite(t)) else 0
    if t.numel() == 0:
        return None
    per_frame = max(1, t[0].numel())
    for sl in frame_chunks(t.shape[0], max(1, chunk_elements // per_frame)):
        ok = torch.isfinite(t[sl]).reshape(sl.stop - sl.start, -1).all(dim=1)
        if not bool(ok.all()):
            return sl.start + int((~ok).nonzero()[0, 0])
    return None
