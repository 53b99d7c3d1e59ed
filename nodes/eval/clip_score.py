"""CLIP scores of an edited clip (pure torch, no ComfyUI).

- ``frame_scores``: TokenFlow's "edit fidelity" (Sec. 5.2): the cosine similarity between the CLIP
  embedding of each edited frame and of the target text prompt; the clip's score is their mean.
  TokenFlow's Table 1 reports this raw cosine (0.33 for its edits), not CLIPScore's 2.5*max(cos, 0)
  or a 100x scale, so neither do we. TokenFlow does not name its CLIP model; absolute values differ
  between CLIP models, so only compare methods scored with the same one.
- ``clip_frame``: CLIPFrame / frame consistency (Tune-A-Video; the TGVE benchmark EVE and MoViE
  report): the mean cosine similarity between the CLIP image embeddings of all pairs of frames.

An image and a text embedding are only comparable if both towers come from the same CLIP training.
``shared_space`` recognises, by the towers' shapes, the pairs ComfyUI users have with a projected
text tower; two towers of the same shapes from different trainings cannot be told apart this way, so
the files the README names are the ones to use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TowerShape:
    width: int                  # hidden size
    layers: int
    embed_dim: int              # size of the projected (joint-space) embedding
    patch: int | None = None    # vision only
    positions: int | None = None  # vision only: patch tokens + class token


@dataclass(frozen=True)
class ClipPair:
    name: str
    text: TowerShape
    vision: TowerShape
    files: str                  # what a ComfyUI user loads to get this pair


KNOWN_PAIRS = (
    ClipPair("OpenCLIP ViT-H/14 (LAION-2B)", TowerShape(1024, 24, 1024), TowerShape(1280, 32, 1024, 14, 257),
             "the text encoder of a Stable Diffusion 2.x checkpoint + CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors "
             "(models/clip_vision; the IP-Adapter image encoder)"),
    ClipPair("OpenCLIP ViT-bigG/14 (LAION-2B)", TowerShape(1280, 32, 1280), TowerShape(1664, 48, 1280, 14, 257),
             "the text encoder of an SDXL checkpoint + CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors (models/clip_vision)"),
)
# Not listed: OpenAI CLIP ViT-L/14 (SD1.x's text encoder). SD1.x checkpoints store CLIP-L without its
# text projection and ComfyUI returns its unprojected pooled output (SD1CheckpointClipModel), which is
# not in the image embedding space; engine_clip refuses such a text encoder before shapes are compared.


def shared_space(text: TowerShape, vision: TowerShape, pairs=None) -> ClipPair:
    """The known CLIP whose text and vision towers these are; ValueError naming both if none."""
    pairs = KNOWN_PAIRS if pairs is None else pairs
    for pair in pairs:
        if pair.text == text and pair.vision == vision:
            return pair
    text_name = next((p.name for p in pairs if p.text == text), None)
    vision_name = next((p.name for p in pairs if p.vision == vision), None)
    known = "; ".join(f"{p.name}: {p.files}" for p in pairs)
    raise ValueError(
        f"the CLIP vision model ({vision_name or _describe(vision)}) and the text encoder "
        f"({text_name or _describe(text)}) are not two towers of one CLIP model, so their embeddings live in "
        f"different spaces and a score would be meaningless. Pairs that work: {known}")


def _describe(shape: TowerShape) -> str:
    extra = f", patch {shape.patch}, {shape.positions} positions" if shape.patch else ""
    return f"unrecognised: width {shape.width}, {shape.layers} layers, embedding {shape.embed_dim}{extra}"


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    norm = x.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()) or not bool(torch.isfinite(x).all()):
        raise ValueError("a CLIP embedding is zero or not finite; the model's weights are broken or missing")
    return x / norm


def frame_scores(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each frame's image embedding [F, D] with the text embedding [D] or [1, D]."""
    text = text_embed.reshape(-1)
    if image_embeds.ndim != 2 or image_embeds.shape[1] != text.shape[0]:
        raise ValueError(f"image embeddings {list(image_embeds.shape)} and text embedding {list(text_embed.shape)} "
                         "do not have the same size")
    return (_unit(image_embeds) @ _unit(text)).clamp(-1.0, 1.0)


def clip_frame(image_embeds: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct frames (1.0 for a single frame)."""
    n = image_embeds.shape[0]
    if n < 2:
        return 1.0
    unit = _unit(image_embeds)
    sim = unit @ unit.T
    return float(((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).clamp(-1.0, 1.0))
