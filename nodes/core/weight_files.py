"""The pack's one way to read a weights file (pure: safetensors + torch, no ComfyUI import).

Every file the pack loads goes through ``read_weights``: guidance adapters, one-step students,
video adapters, the DINOv2 feature network, TAESD, RAFT, training checkpoints. It looks at the
bytes first (empty, safetensors, a PyTorch zip or a bare pickle), checks a safetensors header
against the file's size before the library reads it, and turns every failure into a ValueError
that names the input, the file, what is wrong and what to do, instead of
``SafetensorError: header too large`` or an ``UnpicklingError``. Pickles are read only where a
format needs them (``torch_files=True``) and only with ``torch.load(weights_only=True)``, which
refuses any object that is not a tensor or a plain container, so a pickle's code never runs.
"""
from __future__ import annotations

import json
import os
import re
import struct

import torch

SAFETENSORS_EXTS = (".safetensors", ".sft")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message names the input, the file and the fix."""


def _kind(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return "torch zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _fail(input_name: str, path: str, problem: str, fix: str):
    raise WeightsFileError(f"{input_name}: '{os.path.basename(path)}' {problem}; {fix}") from None


def _safetensors_header(path: str, size: int, input_name: str, fix: str) -> dict:
    """The JSON header of a safetensors file, checked against the file size (truncation, offsets)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > _MAX_HEADER or 8 + n > size:
            _fail(input_name, path, f"is truncated or corrupt (its safetensors header claims {n} bytes, the file "
                                    f"holds {size})", fix)
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            _fail(input_name, path, "is corrupt (its safetensors header is not valid JSON)", fix)
    if not isinstance(header, dict):
        _fail(input_name, path, "is corrupt (its safetensors header is not a JSON object)", fix)
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        _fail(input_name, path, f"is truncated ({size} bytes, its header describes {8 + n + end})", fix)
    return header


def read_metadata(path: str, input_name: str, fix: str) -> dict[str, str]:
    """The string metadata of a safetensors file (header only, no tensors read)."""
    size = _check_file(path, input_name, fix)
    with open(path, "rb") as f:
        kind = _kind(f.read(16))
    if kind != "safetensors":
        _fail(input_name, path, f"is not a safetensors file ({_describe(kind)})", fix)
    meta = _safetensors_header(path, size, input_name, fix).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _check_file(path: str, input_name: str, fix: str) -> int:
    if not os.path.isfile(path):
        _fail(input_name, path, "does not exist (or is not a file)", fix)
    size = os.path.getsize(path)
    if size == 0:
        _fail(input_name, path, "is empty (0 bytes)", fix)
    if size < 9:
        _fail(input_name, path, f"is truncated ({size} bytes)", fix)
    return size


def _describe(kind: str) -> str:
    return {"torch zip": "it is a PyTorch checkpoint (torch.save)",
            "pickle": "it is a bare Python pickle",
            "unknown": "its bytes are neither safetensors nor a PyTorch checkpoint"}.get(kind, kind)


def read_weights(path: str, input_name: str, fix: str, torch_files: bool = False,
                 unwrap: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of a weights file, or a WeightsFileError naming ``input_name``,
    the file, the problem and ``fix``.

    ``torch_files``: also read PyTorch checkpoints, with ``torch.load(weights_only=True)`` only
    (otherwise a pickle is refused without being opened). ``unwrap``: a checkpoint holding its
    tensors under ``state_dict`` (or under its only key) gives those, as core's loader does."""
    size = _check_file(path, input_name, fix)
    with open(path, "rb") as f:
        kind = _kind(f.read(16))
    if kind == "safetensors":
        header = _safetensors_header(path, size, input_name, fix)
        from safetensors.torch import load_file
        try:
            tensors = load_file(path, device="cpu")
        except Exception as e:  # safetensors' own error types (dtype, overlapping offsets, ...)
            _fail(input_name, path, f"is corrupt ({str(e).splitlines()[0][:160]})", fix)
        meta = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    elif kind in ("torch zip", "pickle") and torch_files:
        try:  # from a file object: the bytes decide, not the name (torch.load hands '*.safetensors' names elsewhere)
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            _fail(input_name, path, _torch_load_problem(e), fix)
        tensors = _tensors_of(obj, unwrap, input_name, path, fix)
        meta = {}
    elif kind in ("torch zip", "pickle"):
        _fail(input_name, path, f"is not a safetensors file ({_describe(kind)}); only .safetensors is read here "
                                "(pickled checkpoints can run code)", fix)
    else:
        _fail(input_name, path, f"is not a weights file ({_describe(kind)}; truncated or corrupt?)", fix)
    if not tensors:
        _fail(input_name, path, "holds no tensors", fix)
    return tensors, meta


def _torch_load_problem(e: Exception) -> str:
    """What torch.load(weights_only=True) refused, in one line (its message is many, with ANSI codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"Unsupported global: (GLOBAL [\w.]+)|Unsupported operand (\d+)", text)
    if found or "Weights only load failed" in text:
        what = f" ({found.group(1) or 'pickle opcode ' + found.group(2)})" if found else ""
        return (f"holds pickled Python objects{what}, not only tensors; refused without running them (it was read "
                "with torch.load(weights_only=True))")
    first = (text.strip().splitlines() or [type(e).__name__])[0][:160]
    return f"is truncated or corrupt (torch.load(weights_only=True): {first})"


def _tensors_of(obj, unwrap: bool, input_name: str, path: str, fix: str) -> dict[str, torch.Tensor]:
    if unwrap and isinstance(obj, dict):
        if isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        elif len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        _fail(input_name, path, f"holds a {type(obj).__name__}, not a state dict of tensors", fix)
    return obj
