"""Which model a MODEL computes with, as an identity that survives reloads, restarts and other
servers (for files tied to a model, such as a TokenFlow inversion).

ComfyUI's ``patches_uuid`` is random per load, so it cannot recognise the same checkpoint after
``/free`` or a restart. The identity here is made of what determines a result:

- ``model``: the model class (``BaseModel``, ``SDXL``, ...);
- ``sampling``: the model-sampling classes (eps / v-prediction, discrete / continuous) and a
  hash of their sigmas and settings, so a ModelSampling node counts;
- ``weights``: a content hash of the UNet's *unpatched* weights (a weight ComfyUI has patched in
  place is read from the patcher's backup). Hashed once per loaded model and cached weakly on
  the loaded ``BaseModel`` object (nothing is written onto the MODEL); about 2 s for a full-size
  SD1.5 UNet on 2 CPU cores (the README's TokenFlow section has the measurement). Tensors are
  hashed as float16, so an fp16 or fp32 file loaded in fp16 or fp32 gives one identity;
  loading it as bf16 or fp8 gives another (other numbers);
- ``patches``: the weight patches (LoRAs, merges): the patched keys, strengths, offsets and the
  content of the patch tensors, and the weight wrappers by key and class.

Function patches (attention patches, unet wrappers, ``model_options``) have no stable identity
across processes and are not part of it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

FORMAT = "videoedit.model_identity/1"
_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
# tensor digests by id(tensor) -> (weak reference, version, digest); a tensor's __eq__ is
# elementwise, so a WeakKeyDictionary cannot hold tensors: the entry leaves when the tensor dies
_TENSORS: dict[int, tuple[weakref.ref, int, str]] = {}
_MAX_DEPTH = 6


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """The tensor as contiguous CPU data, floats as float16 (dtype-independent for fp16/fp32 loads)."""
    t = t.detach()
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "dequantize"):
        t = t.dequantize()  # a quantized weight subclass: its numbers, not its storage layout
    if t.is_floating_point():
        t = t.to(dtype=torch.float16)
    return t.to("cpu").contiguous()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's shape and canonical content (cached per tensor object and version)."""
    try:
        version = t._version
    except RuntimeError:  # an inference tensor (ComfyUI loads models in inference mode): no in-place counter
        version = -1
    hit = _TENSORS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == version:
        return hit[2]
    c = _canonical(t)
    h = hashlib.sha256(f"{tuple(c.shape)}:{c.dtype}|".encode())
    if c.numel():
        h.update(c.reshape(-1).view(torch.uint8).numpy().data)
    digest = h.hexdigest()
    key = id(t)
    _TENSORS[key] = (weakref.ref(t, lambda _ref: _TENSORS.pop(key, None)), version, digest)
    return digest


def _unpatched_weights(model) -> dict[str, torch.Tensor]:
    """The UNet's tensors as loaded: a weight ComfyUI patched in place is taken from the backup."""
    backup = getattr(model, "backup", None) or {}
    out = {}
    for name, t in model.model.diffusion_model.state_dict(keep_vars=True).items():
        saved = backup.get("diffusion_model." + name)
        out[name] = saved.weight if saved is not None else t
    return out


def weights_digest(model) -> str:
    """Content hash of the loaded model's unpatched UNet weights, once per loaded ``BaseModel``."""
    inner = model.model
    digest = _WEIGHTS.get(inner)
    if digest is None:
        tensors = _unpatched_weights(model)
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            digests = list(pool.map(tensor_digest, tensors.values()))
        h = hashlib.sha256()
        for name, d in zip(tensors, digests):
            h.update(f"{name}={d};".encode())
        digest = h.hexdigest()[:16]
        _WEIGHTS[inner] = digest
    return digest


def _describe(value, h, depth: int = 0) -> None:
    """Feed a stable description of a patch value into hash ``h`` (tensors by content)."""
    if isinstance(value, torch.Tensor):
        h.update(f"T{tensor_digest(value)}".encode())
    elif value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, (list, tuple)):
        h.update(b"(")
        for v in value:
            _describe(v, h, depth + 1)
            h.update(b",")
        h.update(b")")
    elif isinstance(value, (set, frozenset)):
        h.update(("{" + ",".join(sorted(map(repr, value))) + "}").encode())
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=repr):
            h.update(f"{k!r}:".encode())
            _describe(value[k], h, depth + 1)
        h.update(b"}")
    elif isinstance(value, functools.partial):
        _describe((value.func, value.args, value.keywords), h, depth + 1)
    elif isinstance(value, torch.nn.Module):
        h.update(f"M{type(value).__module__}.{type(value).__qualname__}".encode())
        _describe(dict(value.state_dict(keep_vars=True)), h, depth + 1)
    elif callable(value) and hasattr(value, "__qualname__"):  # functions, methods, classes
        h.update(f"F{getattr(value, '__module__', '')}.{value.__qualname__}".encode())
    elif hasattr(value, "__dict__") and depth < _MAX_DEPTH:  # e.g. ComfyUI's weight adapters (LoRA, LoHa)
        h.update(f"O{type(value).__module__}.{type(value).__qualname__}".encode())
        _describe(vars(value), h, depth + 1)
    else:
        h.update(f"?{type(value).__module__}.{type(value).__qualname__}".encode())


def patches_identity(model) -> dict:
    """The weight patches (keys, strengths, patch tensors) and weight wrappers, hashed."""
    h = hashlib.sha256()
    patches = getattr(model, "patches", {}) or {}
    _describe({k: patches[k] for k in patches}, h)
    wrappers = getattr(model, "weight_wrapper_patches", {}) or {}
    _describe({k: wrappers[k] for k in wrappers}, h)
    return {"keys": len(patches) + len(wrappers), "digest": h.hexdigest()[:16]}


def sampling_identity(model) -> str:
    """Model-sampling classes (eps / v, discrete / flow) plus a hash of their sigmas and settings."""
    ms = model.get_model_object("model_sampling")
    # module-level classes only: ComfyUI builds the leaf class inside a function ("ModelSampling" in
    # model_base, "ModelSamplingAdvanced" in the ModelSampling nodes), so its name says nothing
    classes = [c.__name__ for c in type(ms).__mro__
               if c.__module__.startswith("comfy") and "<locals>" not in c.__qualname__]
    h = hashlib.sha256()
    _describe(dict(ms.state_dict(keep_vars=True)), h)
    _describe({k: v for k, v in vars(ms).items()
               if not k.startswith("_") and isinstance(v, (bool, int, float, str))}, h)
    return f"{'+'.join(classes) or type(ms).__name__}:{h.hexdigest()[:12]}"


def model_identity(model) -> dict:
    """What determines a MODEL's results (see the module docstring)."""
    return {"format": FORMAT, "model": type(model.model).__name__, "sampling": sampling_identity(model),
            "weights": weights_digest(model), "patches": patches_identity(model)}


def identity_string(model) -> str:
    """``model_identity`` as compact JSON (what files store)."""
    return json.dumps(model_identity(model), sort_keys=True, separators=(",", ":"))


def parse_identity(text: str) -> dict | None:
    """An identity read back from a file, or None when it is not one (an older id format)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        return None
    return value


def identity_differences(made_with: dict, current: dict) -> list[str]:
    """What differs between the identity something was made with and the current model's, in words."""
    out = []
    if made_with.get("model") != current.get("model"):
        out.append(f"model type: made with {made_with.get('model')}, this is {current.get('model')}")
    if made_with.get("weights") != current.get("weights"):
        out.append(f"weights: another checkpoint / UNet file (weights hash {made_with.get('weights')} vs "
                   f"{current.get('weights')})")
    a, b = made_with.get("patches") or {}, current.get("patches") or {}
    if a.get("digest") != b.get("digest"):
        if a.get("keys") != b.get("keys"):
            out.append(f"weight patches (LoRAs, merges): made with {a.get('keys')} patched weights, this model "
                       f"has {b.get('keys')}")
        else:
            out.append(f"weight patches (LoRAs, merges): the same {b.get('keys')} weights are patched, but with "
                       "other strengths or other LoRA files")
    if made_with.get("sampling") != current.get("sampling"):
        out.append(f"model sampling: made with {made_with.get('sampling')}, this is {current.get('sampling')}")
    return out
