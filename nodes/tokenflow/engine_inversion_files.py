"""TokenFlow inversion files (engine): save / load an inversion (safetensors), so a long clip is
inverted once and edited with many prompts, across sessions.

Files go to ``<output>/tokenflow/`` (written with the pack's atomic writer, with the file mode
every other saved file gets). Loading accepts only the names Load Inversion lists (files in
``output/tokenflow/`` or ``models/tokenflow_inversions``) and refuses anything that resolves
elsewhere (``..``, absolute paths, links out). A loaded file is read with safetensors only (never
unpickled) and checked against its own metadata (shapes, finite numbers, a usable schedule)
before the sampler checks it against its inputs (``engine_sampler.check_inversion``).
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError, safe_open

import folder_paths

from ..core.atomic_file import atomic_save_safetensors
from .engine_inversion import Inversion

SUBFOLDER = "tokenflow"
MODELS_FOLDER = "tokenflow_inversions"
FORMAT = "videoedit.tokenflow.inversion/2"  # /2: a model identity that survives reloads, shape metadata
OLD_FORMATS = ("videoedit.tokenflow.inversion/1",)


def _models_dirs() -> list[str]:
    return [os.path.join(folder_paths.models_dir, MODELS_FOLDER)]


def _roots() -> list[str]:
    return [os.path.realpath(folder_paths.get_output_directory()), *map(os.path.realpath, _models_dirs())]


def inversion_files() -> list[str]:
    """Relative names of saved inversions: ``tokenflow/...`` in the output folder (subfolders too,
    e.g. ``./videoedit batch``'s), then the files of models/tokenflow_inversions by their names
    there. Only these names load."""
    names = []
    out = os.path.join(folder_paths.get_output_directory(), SUBFOLDER)
    for root, prefix in [(out, SUBFOLDER + "/"), *[(d, "") for d in _models_dirs()]]:
        found = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, root)
            found += [(f if rel == "." else os.path.join(rel, f)).replace(os.sep, "/")
                      for f in files if f.endswith(".safetensors") and not f.startswith(".")]
        names += sorted(prefix + f for f in found)
    return names


def resolve_inversion(name: str) -> str:
    """The file a name refers to: one of ``inversion_files()``, inside the output / models folders."""
    where = f"output/{SUBFOLDER}/ or models/{MODELS_FOLDER}/"
    if not name or os.path.isabs(name):
        raise ValueError(f"name: inversion file '{name}' must be a name relative to the output folder "
                         f"(e.g. {SUBFOLDER}/inversion_00001_.safetensors) or to models/{MODELS_FOLDER}; "
                         "pick a file from the list")
    candidates = [os.path.join(folder_paths.get_output_directory(), name),
                  *[os.path.join(d, name) for d in _models_dirs()]]
    roots = _roots()
    for path in candidates:
        real = os.path.realpath(path)
        if not any(os.path.commonpath((root, real)) == root for root in roots):
            raise ValueError(f"name: inversion file '{name}' resolves outside the output and models folders; "
                             "only files saved there can be loaded: pick a file from the list")
    if name not in inversion_files():
        raise ValueError(f"name: inversion file '{name}' is not a saved inversion in {where} (only the .safetensors "
                         "files listed there load); pick a file from the list (refresh it after saving), or save "
                         "one with TokenFlow Save Inversion first")
    for path in candidates:
        if os.path.isfile(path):
            return os.path.realpath(path)
    raise ValueError(f"name: inversion file '{name}' not found in {where}; save one with TokenFlow Save "
                     "Inversion first")


def save_inversion(inv: Inversion, path: str) -> None:
    tensors = {"trajectory": inv.trajectory.contiguous(), "sigmas": inv.sigmas.float().contiguous()}
    if inv.source_context is not None:
        tensors["source_context"] = inv.source_context.float().contiguous()
    _, frames, channels, height, width = inv.trajectory.shape
    meta = {"format": FORMAT, "fingerprint": inv.fingerprint, "refine_iters": str(inv.refine_iters),
            "scheduler": inv.scheduler, "model_id": inv.model_id, "steps": str(inv.steps), "frames": str(frames),
            "channels": str(channels), "height": str(height), "width": str(width)}
    atomic_save_safetensors(tensors, path, meta)  # a crash leaves no half-written inversion


def _read(path: str, name: str) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors file; never unpickles anything."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return meta, {}
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"name: inversion file '{name}' is not a readable safetensors file (empty, truncated, "
                         f"damaged, or another format such as a pickled .pt/.ckpt: {e}); pick a file saved by "
                         "TokenFlow Save Inversion, or invert the video again and save it") from None


def _damaged(name: str, what: str) -> ValueError:
    return ValueError(f"name: inversion file '{name}' {what}; the file is damaged or was altered: invert the video "
                      "again with TokenFlow DDIM Inverter and save it with TokenFlow Save Inversion")


def _int_meta(meta: dict, key: str, name: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, TypeError, ValueError):
        raise _damaged(name, f"has no valid '{key}' in its metadata ({meta.get(key)!r})") from None


def _check_loaded(meta: dict, t: dict, name: str) -> None:
    """A loaded inversion against its own metadata: shapes, finite numbers, a usable schedule."""
    for key in ("trajectory", "sigmas"):
        if key not in t:
            raise _damaged(name, f"holds no '{key}' tensor")
        if not t[key].is_floating_point():
            raise _damaged(name, f"holds '{key}' as {t[key].dtype}, not floating point")
    steps, frames, channels, height, width = (_int_meta(meta, k, name)
                                              for k in ("steps", "frames", "channels", "height", "width"))
    want = [steps + 1, frames, channels, height, width]
    traj, sigmas = t["trajectory"], t["sigmas"]
    if steps < 1 or frames < 1 or min(channels, height, width) < 1:
        raise _damaged(name, f"describes {steps} steps of {frames} frames of {channels}x{height}x{width} latents")
    if list(traj.shape) != want:
        raise _damaged(name, f"holds a trajectory of shape {list(traj.shape)} but its metadata says {want} "
                             f"([steps + 1, frames, channels, height, width]: {frames} frames of {height * 8}x"
                             f"{width * 8} pixels)")
    if list(sigmas.shape) != [steps + 1]:
        raise _damaged(name, f"holds {list(sigmas.shape)} sigmas but its metadata says {steps} steps "
                             f"({steps + 1} sigmas)")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas[:-1] <= 0).any()) or float(sigmas[-1]) < 0 \
            or bool((sigmas[1:] > sigmas[:-1]).any()):
        raise _damaged(name, f"holds sigmas that are not a decreasing schedule of finite positive numbers "
                             f"({[round(float(x), 4) for x in sigmas[:4]]}...)")
    if not bool(torch.isfinite(traj).all()):
        bad = int((~torch.isfinite(traj)).sum())
        raise _damaged(name, f"holds {bad} NaN/inf values in its trajectory")
    ctx = t.get("source_context")
    if ctx is not None and (ctx.ndim != 3 or not ctx.is_floating_point() or not bool(torch.isfinite(ctx).all())):
        raise _damaged(name, f"holds a source_context of shape {list(ctx.shape)} that is not finite [1, tokens, "
                             "channels] conditioning")


def load_inversion(path: str, name: str | None = None) -> Inversion:
    """Read and check an inversion file (``name``: how the user picked it, for messages)."""
    name = name or os.path.basename(path)
    meta, t = _read(path, name)
    fmt = meta.get("format")
    if fmt in OLD_FORMATS:
        raise ValueError(f"name: inversion file '{name}' was saved by an older version of this pack ({fmt}), whose "
                         "model id changed with every model load and cannot be checked; invert the video again "
                         "with TokenFlow DDIM Inverter and save it with TokenFlow Save Inversion")
    if fmt != FORMAT:
        raise ValueError(f"name: inversion file '{name}' is not a TokenFlow inversion (format {fmt!r}); pick a file "
                         "saved by TokenFlow Save Inversion")
    _check_loaded(meta, t, name)
    return Inversion(t["trajectory"], t["sigmas"], meta.get("fingerprint", ""), _int_meta(meta, "refine_iters", name),
                     meta.get("scheduler", ""), meta.get("model_id", ""), t.get("source_context"))


def load_by_name(name: str) -> Inversion:
    """Load Inversion: the listed file ``name``, read and checked."""
    return load_inversion(resolve_inversion(name), name)


def save_to_output(inversion: Inversion, filename_prefix: str) -> str:
    """Save Inversion: the next free ``tokenflow/<prefix>_NNNNN_.safetensors`` in the output folder;
    returns its name for Load Inversion."""
    if not isinstance(inversion, Inversion):
        raise ValueError("inversion: expected the output of TokenFlow DDIM Inverter")
    out_dir = folder_paths.get_output_directory()
    prefix = os.path.join(SUBFOLDER, filename_prefix or "inversion")
    try:
        folder, fname, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
    except Exception as e:  # ComfyUI refuses prefixes that leave the output folder
        raise ValueError(f"filename_prefix: '{filename_prefix}' points outside the output folder; use a "
                         "plain name such as 'inversion'") from e
    file = f"{fname}_{counter:05}_.safetensors"
    save_inversion(inversion, os.path.join(folder, file))
    return os.path.join(subfolder, file).replace(os.sep, "/")


def file_fingerprint(name: str) -> str:
    """What changes when the file a name refers to changes (ComfyUI's cache key for Load Inversion)."""
    try:
        path = resolve_inversion(name)
        st = os.stat(path)
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"
    except ValueError:
        return name
