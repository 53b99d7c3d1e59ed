"""A LoRA file on a MODEL (ComfyUI-bound), through core's LoRA functions (``comfy.lora``,
``comfy.lora_convert``), not the loader node: the same patches core ``LoraLoaderModelOnly`` adds,
plus a count of what applied, so a file made for something else is an error, not a run that
silently equals the model without it (an AnimateDiff motion module picked as a LoRA applies 0 of
its keys; core only logs one "lora key not loaded" line per key).

Coverage counts the file's UNet keys (text-encoder keys, which a model-only LoRA never uses, are
left out): a key applied when its module name (the key without its LoRA suffix, e.g.
``.lora_up.weight``, ``.alpha``) is one core's key map resolves to a UNet weight that received a
patch. Keys are counted by name; a module whose shapes differ (a LoRA for another size of the
same architecture) counts as applied here and is reported by core when the weights are merged.
"""
from __future__ import annotations

import os

import comfy.lora
import comfy.lora_convert

from ..core.weight_files import read_weights

# key prefixes of text-encoder LoRA modules (kohya lora_te*/lora_prior_te*, diffusers text_encoder*,
# the generic text_encoders.*): a model-only LoRA ignores them, core LoraLoaderModelOnly too
TEXT_ENCODER_PREFIXES = ("lora_te", "lora_prior_te", "text_encoder")
MAX_SUFFIX_PARTS = 3  # "<module>.lora_up.weight", "<module>.lora.up.weight", "<module>.alpha"


def read_lora(path: str, input_name: str) -> dict:
    """The LoRA file's tensors through the pack's one weights reader (core.weight_files:
    safetensors, or a PyTorch file with torch.load(weights_only=True); a bare pickle never runs),
    or an error naming the input, the file and the fix."""
    return read_weights(path, input_name, "download the LoRA again or train it again, or pick another file",
                        torch_files=True, unwrap=True)[0]


def lora_coverage(lora: dict, key_map: dict, patched: set) -> tuple[int, int]:
    """(applied, total) of the file's UNet keys (see the module docstring)."""
    unet_keys = [k for k in lora if not k.startswith(TEXT_ENCODER_PREFIXES)]
    applied = 0
    for key in unet_keys:
        parts = key.split(".")
        for cut in range(1, min(MAX_SUFFIX_PARTS, len(parts) - 1) + 1):
            module = ".".join(parts[:-cut])
            if module in key_map:
                target = key_map[module]
                target = target[0] if isinstance(target, tuple) else target
                bias = target[:-len(".weight")] + ".bias" if target.endswith(".weight") else target
                applied += int(target in patched or bias in patched)
                break
    return applied, len(unet_keys)


def add_model_lora(model, lora: dict, strength: float):
    """(a clone of ``model`` with the LoRA's UNet patches, (applied, total) keys): what core
    ``comfy.sd.load_lora_for_models(model, None, lora, strength, 0)`` adds, without its log lines."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = comfy.lora_convert.convert_lora(lora)
    loaded = comfy.lora.load_lora(lora, key_map, log_missing=False)
    m = model.clone()
    patched = set(m.add_patches(loaded, strength))
    return m, lora_coverage(lora, key_map, patched)


def load_model_lora(model, path: str, strength: float, input_name: str = "lora_name"):
    """``model`` with the LoRA file at ``strength`` (core LoraLoaderModelOnly's result; strength 0
    returns ``model`` itself, as core does); an error naming the file and the fraction applied
    when not every UNet key of the file applies to this model."""
    if strength == 0:
        return model
    name = os.path.basename(path)
    m, (applied, total) = add_model_lora(model, read_lora(path, input_name), strength)
    if total == 0:
        raise ValueError(f"{input_name}: '{name}' holds no UNet weights (only text-encoder keys, or none); pick a "
                         "LoRA for the diffusion model, e.g. one written by the EVE LoRA Aligner, or set it to none")
    if applied < total:
        raise ValueError(
            f"{input_name}: only {applied} of the {total} UNet keys of '{name}' ({100 * applied / total:.0f}%) apply to "
            f"this model ({type(model.model).__name__}); the file was made for another model (an AnimateDiff motion "
            "module belongs in video_adapter, a LoRA for SDXL or another backbone does not fit SD1.5). Pick a LoRA "
            "trained on this checkpoint family (the EVE LoRA Aligner writes one to models/loras) or set it to none")
    return m
