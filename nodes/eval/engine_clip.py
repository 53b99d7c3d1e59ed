"""CLIP scores inside ComfyUI: the user's CLIP vision model (core Load CLIP Vision) and a text
encoder (a checkpoint's CLIP output or core Load CLIP), checked to be two towers of one CLIP.

What ComfyUI hands us (0.3.75 and current):
- ``ClipVisionModel.encode_image(frames, crop=True)``: CLIP preprocessing (shortest side to the
  model's size, bicubic with antialias, centre crop, CLIP mean/std) and ``image_embeds`` = the pooled
  output after ``visual_projection``, i.e. the joint-space image embedding.
- ``CLIP.encode_from_tokens(tokens, return_pooled=True)``: the pooled EOS token after the final
  layer norm, through the text projection for SD 2.x's OpenCLIP ViT-H (``SD2ClipHModel``) and
  SDXL's ViT-bigG (``SDXLClipG``), whose checkpoints store ``text_projection``. SD1.x checkpoints
  store CLIP-L without it: ComfyUI leaves that layer unloaded (it even drops it from the
  missing-keys warning) and returns the *unprojected* pooled output (``SD1CheckpointClipModel``,
  ``return_projected_pooled=False``), which is not in the image space. Such text encoders are refused.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.sd1_clip
import comfy.utils

from ..core.frame_chunks import frame_chunks
from .clip_score import TowerShape, ClipPair, clip_frame, frame_scores, shared_space


def text_tower(clip) -> tuple[str, "comfy.sd1_clip.SDClipModel"]:
    """The CLIP text tower whose pooled output ``encode_from_tokens`` returns, and its name."""
    stage = getattr(clip, "cond_stage_model", None)
    if stage is None:
        raise ValueError("clip: expected a CLIP text encoder (a checkpoint's CLIP output or Load CLIP)")
    name = getattr(stage, "clip", None)  # SD1ClipModel-style wrappers (SD1.x, SD2.x): one tower
    if isinstance(name, str) and isinstance(getattr(stage, name, None), comfy.sd1_clip.SDClipModel):
        return name, getattr(stage, name)
    if isinstance(getattr(stage, "clip_g", None), comfy.sd1_clip.SDClipModel) and hasattr(stage, "clip_l"):
        return "clip_g", stage.clip_g  # SDXL: the pooled output is clip_g's
    raise ValueError(f"clip: CLIP scores support SD 2.x's and SDXL's text encoders, not this one "
                     f"({type(stage).__name__}); connect the CLIP output of an SD 2.x or SDXL checkpoint")


def text_shape(clip) -> TowerShape:
    name, tower = text_tower(clip)
    projected = tower.options_default[2] if hasattr(tower, "options_default") else tower.return_projected_pooled
    if not projected:
        raise ValueError(
            f"clip: ComfyUI gives this text encoder's ({name}) pooled output without its text projection: SD1.x "
            "checkpoints store CLIP-L without it, so the prompt embedding is not in the image space and a CLIP "
            "score would be meaningless. Connect the CLIP output of a Stable Diffusion 2.x checkpoint (with "
            "CLIP-ViT-H-14-laion2B-s32B-b79K as the CLIP vision model) or of an SDXL checkpoint (with "
            "CLIP-ViT-bigG-14-laion2B-39B-b160k); the text encoder used for scoring need not be the edit's model")
    proj = tower.transformer.text_projection.weight
    # A file without the projection (e.g. a diffusers-format text_encoder) leaves the layer unloaded:
    # on the meta device in current ComfyUI, uninitialised memory (most often zeros) in older ones.
    if proj.is_meta or not bool(torch.isfinite(proj).all()) or not bool(proj.abs().amax() > 0):
        raise ValueError(f"clip: the text projection of {name} was not loaded (the file has none, e.g. a "
                         "diffusers-format text_encoder); load the single-file checkpoint instead")
    return TowerShape(width=int(proj.shape[1]), layers=int(tower.num_layers), embed_dim=int(proj.shape[0]))


def vision_shape(clip_vision) -> TowerShape:
    model = getattr(clip_vision, "model", None)
    proj = getattr(model, "visual_projection", None)
    if not isinstance(proj, torch.nn.Module) or not hasattr(model, "vision_model"):
        raise ValueError("clip_vision: expected a CLIP vision model with a projection (core Load CLIP Vision with a "
                         "CLIP image encoder file); SigLIP/DINOv2 image encoders have no text counterpart here")
    emb = model.vision_model.embeddings
    return TowerShape(width=int(proj.weight.shape[1]), layers=len(model.vision_model.encoder.layers),
                      embed_dim=int(proj.weight.shape[0]), patch=int(emb.patch_embedding.weight.shape[-1]),
                      positions=int(emb.position_embedding.weight.shape[0]))


def check_pair(clip_vision, clip) -> ClipPair:
    """The CLIP both models belong to; ValueError (naming the inputs and the fix) if they do not match."""
    return shared_space(text_shape(clip), vision_shape(clip_vision))


def text_embedding(clip, prompt: str) -> torch.Tensor:
    if not prompt.strip():
        raise ValueError("prompt: empty; give the edit prompt the clip was edited with")
    with torch.no_grad():
        _, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    return pooled.float().cpu()[0]


def image_embeddings(clip_vision, frames: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """[F, D] image embeddings, ``frames_per_chunk`` frames at a time (progress, cancel)."""
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"images: expected frames [T, H, W, 3], got {list(frames.shape)}")
    chunks = frame_chunks(frames.shape[0], frames_per_chunk)
    bar = comfy.utils.ProgressBar(len(chunks))
    out = []
    for i, chunk in enumerate(chunks):
        comfy.model_management.throw_exception_if_processing_interrupted()
        with torch.no_grad():
            out.append(clip_vision.encode_image(frames[chunk, :, :, :3], crop=True)["image_embeds"].float().cpu())
        bar.update_absolute(i + 1, len(chunks))
    return torch.cat(out)


def clip_scores(clip_vision, clip, frames: torch.Tensor, prompt: str, frames_per_chunk: int) -> dict:
    """Per-frame text scores, their mean (TokenFlow's CLIP score) and CLIPFrame, with the model used."""
    pair = check_pair(clip_vision, clip)
    text = text_embedding(clip, prompt)
    images = image_embeddings(clip_vision, frames, frames_per_chunk)
    per_frame = frame_scores(images, text)
    return {"clip_score": float(per_frame.mean()), "per_frame": per_frame.tolist(),
            "clip_frame": clip_frame(images), "clip_model": pair.name, "prompt": prompt}
