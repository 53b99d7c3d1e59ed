"""Text and image encoding the trainers share (ComfyUI CLIP / VAE objects); frames go through
the VAE in chunks, so memory stays that of one chunk."""
from __future__ import annotations

import torch

from ..core.frame_chunks import frame_chunks


def encode_text(clip, text: str) -> torch.Tensor:
    """The CLIP context [1, tokens, dim] of ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def encode_images(vae, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """IMAGE [N, H, W, C] -> VAE latents [N, c, h, w] (float32), ``chunk`` frames at a time."""
    out = [vae.encode(images[sl][..., :3]) for sl in frame_chunks(images.shape[0], chunk)]
    return torch.cat(out).float()
