"""TAESD Encode / TAESD Decode: video frames <-> latents through the tiny autoencoder.

MoViE replaces the SD VAE by TAESD (92.6% fewer FLOPs). ComfyUI already carries TAESD
(comfy/taesd) and loads it through core ``VAELoader`` ("taesd", "taesdxl", ...); we reuse
that loader, so the result equals core VAELoader + VAEEncode/VAEDecode, and add what video
needs: frame chunks (flat memory in video length), a progress bar, cancel, and errors
that name the missing files or the mismatched latent.
"""
from __future__ import annotations

import os

import torch

import comfy.model_management
import comfy.utils
import folder_paths
import nodes as comfy_nodes
from comfy_api.v0_0_2 import io

from .frame_chunks import frame_chunks

CATEGORY = "video edit/TAESD"

# variant -> (model family it belongs to, latent channels it encodes to / decodes from)
TAESD_VARIANTS = {
    "taesd": ("SD1.x / SD2.x", 4),
    "taesdxl": ("SDXL", 4),
    "taesd3": ("SD3", 16),
    "taef1": ("Flux.1", 16),
}

_VARIANT_TOOLTIP = (
    "Which TAESD to use; it must match the model family that made (or will use) the latent: "
    "taesd for SD1.x/SD2.x, taesdxl for SDXL, taesd3 for SD3, taef1 for Flux.1. "
    "Its taesd*_encoder and taesd*_decoder files must be in models/vae_approx.")
_CHUNK_TOOLTIP = (
    "Frames processed at once. Lower it if memory runs out; the result does not depend on it.")

_cache: dict[tuple, object] = {}


def _taesd_files(variant: str) -> tuple[str, str]:
    names = folder_paths.get_filename_list("vae_approx")
    found = []
    for part in ("encoder", "decoder"):
        match = sorted(n for n in names if os.path.basename(n).startswith(f"{variant}_{part}."))
        found.append(match[0] if match else None)
    if None in found:
        folders = ", ".join(folder_paths.get_folder_paths("vae_approx"))
        raise FileNotFoundError(
            f"TAESD variant '{variant}' needs both {variant}_encoder.safetensors and "
            f"{variant}_decoder.safetensors in models/vae_approx ({folders}); "
            f"missing: {', '.join(f'{variant}_{p}' for p, f in zip(('encoder', 'decoder'), found) if f is None)}. "
            "Download them from https://github.com/madebyollin/taesd and restart or refresh.")
    return found[0], found[1]


def load_taesd(variant: str):
    """Core VAELoader's TAESD for ``variant``, cached by file paths and modification times."""
    if variant not in TAESD_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(TAESD_VARIANTS)}, got '{variant}'")
    paths = [folder_paths.get_full_path_or_raise("vae_approx", f) for f in _taesd_files(variant)]
    key = (variant, *((p, os.path.getmtime(p)) for p in paths))
    if key not in _cache:
        _cache.clear()  # a TAESD is small, but keep only the latest one
        _cache[key] = comfy_nodes.VAELoader().load_vae(variant)[0]
    return _cache[key]


def _check_latent(samples: torch.Tensor, variant: str) -> None:
    family, channels = TAESD_VARIANTS[variant]
    if samples.ndim != 4:
        raise ValueError(
            f"samples: expected a batch of image latents [frames, channels, height, width], got shape "
            f"{list(samples.shape)}; video-model latents (5-D) need that model's own VAE, not TAESD")
    if samples.shape[0] == 0:
        raise ValueError("samples: the latent batch holds zero frames")
    if samples.shape[1] != channels:
        raise ValueError(
            f"samples: the latent has {samples.shape[1]} channels but TAESD '{variant}' ({family}) "
            f"works on {channels}-channel latents; pick the variant of the model family that made it "
            f"({', '.join(f'{v}: {f}' for v, (f, _) in TAESD_VARIANTS.items())})")


def _chunked(fn, batch: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """Apply ``fn`` to chunks of frames with progress and cancel; assemble one tensor."""
    chunks = frame_chunks(batch.shape[0], frames_per_chunk)
    pbar = comfy.utils.ProgressBar(len(chunks))
    out = None
    for sl in chunks:
        comfy.model_management.throw_exception_if_processing_interrupted()
        res = fn(batch[sl])
        if out is None:  # allocate once: the only memory that grows with video length
            out = torch.empty((batch.shape[0], *res.shape[1:]), dtype=res.dtype, device=res.device)
        out[sl] = res
        pbar.update(1)
    return out


class TAESDEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTAESDEncode",
            display_name="TAESD Encode (video)",
            category=CATEGORY,
            description=(
                "Encodes video frames (an IMAGE batch) to latents with the tiny autoencoder TAESD, "
                "chunk by chunk; about 15x faster than the full VAE at a small loss of detail (MoViE)."),
            inputs=[
                io.Image.Input("images", tooltip="Video frames to encode, e.g. from Get Video Components."),
                io.Combo.Input("variant", options=list(TAESD_VARIANTS), default="taesd", tooltip=_VARIANT_TOOLTIP),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096, tooltip=_CHUNK_TOOLTIP),
            ],
            outputs=[io.Latent.Output(tooltip="One latent per frame.")],
        )

    @classmethod
    def execute(cls, images, variant, frames_per_chunk) -> io.NodeOutput:
        if images.shape[0] == 0:
            raise ValueError("images: the video has zero frames; load a video with at least one frame")
        vae = load_taesd(variant)
        samples = _chunked(lambda x: vae.encode(x[:, :, :, :3]), images, frames_per_chunk)
        return io.NodeOutput({"samples": samples})


class TAESDDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTAESDDecode",
            display_name="TAESD Decode (video)",
            category=CATEGORY,
            description=(
                "Decodes a batch of latents (one per frame) to video frames with TAESD, chunk by chunk; "
                "about 15-20x faster than the full VAE decode."),
            inputs=[
                io.Latent.Input("samples", tooltip="Latents to decode, one per frame."),
                io.Combo.Input("variant", options=list(TAESD_VARIANTS), default="taesd", tooltip=_VARIANT_TOOLTIP),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096, tooltip=_CHUNK_TOOLTIP),
            ],
            outputs=[io.Image.Output(tooltip="The decoded frames, ready for Create Video.")],
        )

    @classmethod
    def execute(cls, samples, variant, frames_per_chunk) -> io.NodeOutput:
        latent = samples["samples"]
        _check_latent(latent, variant)
        vae = load_taesd(variant)
        return io.NodeOutput(_chunked(vae.decode, latent, frames_per_chunk))


NODES = [TAESDEncode, TAESDDecode]
