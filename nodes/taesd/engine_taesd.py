"""TAESD on video (ComfyUI-bound): ComfyUI's TAESD for a variant (cached), frames through it in
chunks with progress and cancel, and the latent check that names the variant to pick.

MoViE replaces the SD VAE by TAESD (92.6% fewer FLOPs). ComfyUI already carries TAESD
(comfy/taesd, built by ``comfy.sd.VAE`` from the encoder and decoder tensors plus the family's
latent scale and shift); we build it the way core ``VAELoader`` does, with core's functions, so
the result equals core VAELoader + VAEEncode/VAEDecode (tests/test_taesd_nodes.py).
"""
from __future__ import annotations

import os

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from ..core.frame_chunks import frame_chunks
from ..core.weight_files import read_weights

# variant -> (model family it belongs to, latent channels it encodes to / decodes from)
TAESD_VARIANTS = {
    "taesd": ("SD1.x / SD2.x", 4),
    "taesdxl": ("SDXL", 4),
    "taesd3": ("SD3", 16),
    "taef1": ("Flux.1", 16),
}
# variant -> (vae_scale, vae_shift): the family's latent format, as core VAELoader sets them
LATENT_SCALE_SHIFT = {
    "taesd": (0.18215, 0.0),
    "taesdxl": (0.13025, 0.0),
    "taesd3": (1.5305, 0.0609),
    "taef1": (0.3611, 0.1159),
}

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


def _build_taesd(variant: str, encoder_path: str, decoder_path: str):
    """The VAE core VAELoader(variant) builds: both files' tensors under taesd_encoder./taesd_decoder.
    plus the latent scale and shift, through comfy.sd.VAE."""
    sd = {}
    for prefix, path in (("taesd_encoder", encoder_path), ("taesd_decoder", decoder_path)):
        try:
            part = comfy.utils.load_torch_file(path, safe_load=True)
        except Exception as e:
            raise ValueError(f"variant '{variant}': cannot read {path} ({type(e).__name__}: {e}); the file is corrupt "
                             "or not a TAESD file; download it again from https://github.com/madebyollin/taesd") from None
        sd.update({f"{prefix}.{k}": v for k, v in part.items()})
    scale, shift = LATENT_SCALE_SHIFT[variant]
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(scale), torch.tensor(shift)
    vae = comfy.sd.VAE(sd=sd)
    vae.throw_exception_if_invalid()
    return vae


def load_taesd(variant: str):
    """ComfyUI's TAESD for ``variant`` (what core VAELoader(variant) returns), cached by file paths
    and modification times."""
    if variant not in TAESD_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(TAESD_VARIANTS)}, got '{variant}'")
    paths = [folder_paths.get_full_path_or_raise("vae_approx", f) for f in _taesd_files(variant)]
    key = (variant, *((p, os.path.getmtime(p)) for p in paths))
    if key not in _cache:
        for part, path in zip(("encoder", "decoder"), paths):
            check_taesd_file(path, variant, part)  # before core's loader, which reports none of this
        _cache.clear()  # a TAESD is small, but keep only the latest one
        _cache[key] = _build_taesd(variant, *paths)
    return _cache[key]


def check_taesd_file(path: str, variant: str, part: str) -> None:
    """A TAESD encoder/decoder file readable (core.weight_files) and shaped as core's TAESD of the
    variant's latent channels, or a ValueError that names the file and where to get it."""
    import comfy.taesd.taesd as taesd
    fix = (f"download {variant}_{part}.safetensors from https://github.com/madebyollin/taesd into models/vae_approx "
           "and refresh")
    sd, _ = read_weights(path, "variant", fix, torch_files=True)
    family, channels = TAESD_VARIANTS[variant]
    want = (taesd.Encoder if part == "encoder" else taesd.Decoder)(latent_channels=channels).state_dict()  # core's
    missing = [k for k in want if k not in sd]
    wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    extra = [k for k in sd if k not in want]
    if missing or wrong or extra:
        detail = "; ".join(f"{label} {len(keys)} (e.g. {keys[0]}{shape(keys[0])})" for label, keys, shape in (
            ("missing", missing, lambda k: ""), ("unexpected", extra, lambda k: ""),
            ("wrong shape", wrong, lambda k: f" {list(sd[k].shape)} vs {list(want[k].shape)}")) if keys)
        raise ValueError(f"variant: '{os.path.basename(path)}' is not the TAESD {part} of '{variant}' ({family}, "
                         f"{channels}-channel latents): {detail}; {fix}")


def check_latent(samples: torch.Tensor, variant: str) -> None:
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


def chunked(fn, batch: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
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
