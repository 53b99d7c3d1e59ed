"""Splitting a video's frames into fixed-size chunks.

Every family processes frames chunk by chunk so that peak memory stays flat in video
length (only the latents/frames themselves grow with it).
"""
from __future__ import annotations


def frame_chunks(num_frames: int, chunk_size: int) -> list[slice]:
    """Consecutive slices covering ``range(num_frames)``, each at most ``chunk_size`` long."""
    if num_frames < 1:
        raise ValueError(f"the video has {num_frames} frames; at least one frame is needed")
    if chunk_size < 1:
        raise ValueError(f"frames_per_chunk must be at least 1, got {chunk_size}")
    return [slice(s, min(s + chunk_size, num_frames)) for s in range(0, num_frames, chunk_size)]
