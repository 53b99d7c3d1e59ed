"""Text and image encoding the trainers share (ComfyUI CLIP / VAE objects); frames go through
the VAE in chunks, so memory stays that of one chunk, with cancel and progress per chunk (a
dataset folder takes a while before the first training step)."""
from __future__ import annotations

import torch

import comfy.model_management

from ..core.frame_chunks import frame_chunks
from .progress import SamplingProgress


def encode_text(clip, text: str) -> torch.Tensor:
    """The CLIP context [1, tokens, dim] of ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def encoding_progress(images: int) -> SamplingProgress:
    """The progress bar of encoding ``images`` images (the trainers' data phase, before their steps)."""
    return SamplingProgress(images)


def encode_images(vae, images: torch.Tensor, progress: SamplingProgress | None = None,
                  chunk: int = 8) -> torch.Tensor:
    """IMAGE [N, H, W, C] -> VAE latents [N, c, h, w] (float32), ``chunk`` frames at a time;
    ``progress`` advances by the frames of each chunk."""
    out = []
    for sl in frame_chunks(images.shape[0], chunk):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out.append(vae.encode(images[sl][..., :3]))
        if progress is not None:
            progress.advance(sl.stop - sl.start)
    return torch.cat(out).float()
