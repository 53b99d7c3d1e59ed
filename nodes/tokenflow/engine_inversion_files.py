"""TokenFlow inversion files (engine): save / load an inversion (safetensors), so a long clip is
inverted once and edited with many prompts, across sessions.

Files go to ``<output>/tokenflow/`` (written with the pack's atomic writer, with the file mode
every other saved file gets); loading
accepts only files inside the output folder or a ``models/tokenflow_inversions`` folder, by a
relative name, and refuses anything that resolves elsewhere (``..``, absolute paths, links out).
"""
from __future__ import annotations

import os

from safetensors.torch import load_file

import folder_paths

from ..core.atomic_file import atomic_save_safetensors
from .engine_inversion import Inversion

SUBFOLDER = "tokenflow"
MODELS_FOLDER = "tokenflow_inversions"
FORMAT = "videoedit.tokenflow.inversion/1"


def _models_dirs() -> list[str]:
    return [os.path.join(folder_paths.models_dir, MODELS_FOLDER)]


def _roots() -> list[str]:
    return [os.path.realpath(folder_paths.get_output_directory()), *map(os.path.realpath, _models_dirs())]


def inversion_files() -> list[str]:
    """Relative names of saved inversions: ``tokenflow/<file>`` in the output folder, then the
    files of models/tokenflow_inversions by their bare names."""
    names = []
    out = os.path.join(folder_paths.get_output_directory(), SUBFOLDER)
    for root, prefix in [(out, SUBFOLDER + "/"), *[(d, "") for d in _models_dirs()]]:
        if os.path.isdir(root):
            names += sorted(prefix + f for f in os.listdir(root) if f.endswith(".safetensors"))
    return names


def resolve_inversion(name: str) -> str:
    """The file a name refers to, refusing any path outside the output / models folders."""
    if not name or os.path.isabs(name):
        raise ValueError(f"inversion file: '{name}' must be a name relative to the output folder "
                         f"(e.g. {SUBFOLDER}/inversion_00001_.safetensors) or to models/{MODELS_FOLDER}")
    candidates = [os.path.join(folder_paths.get_output_directory(), name),
                  *[os.path.join(d, name) for d in _models_dirs()]]
    roots = _roots()
    for path in candidates:
        real = os.path.realpath(path)
        if not any(os.path.commonpath((root, real)) == root for root in roots):
            raise ValueError(f"inversion file: '{name}' resolves outside the output and models folders; "
                             "only files saved there can be loaded")
        if os.path.isfile(real):
            return real
    raise ValueError(f"inversion file: '{name}' not found in the output folder or models/{MODELS_FOLDER}; "
                     "save one with TokenFlow Save Inversion first")


def save_inversion(inv: Inversion, path: str) -> None:
    tensors = {"trajectory": inv.trajectory.contiguous(), "sigmas": inv.sigmas.float().contiguous()}
    if inv.source_context is not None:
        tensors["source_context"] = inv.source_context.float().contiguous()
    meta = {"format": FORMAT, "fingerprint": inv.fingerprint, "refine_iters": str(inv.refine_iters),
            "scheduler": inv.scheduler, "model_id": inv.model_id}
    atomic_save_safetensors(tensors, path, meta)  # a crash leaves no half-written inversion


def load_inversion(path: str) -> Inversion:
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"inversion file: {os.path.basename(path)} is not a TokenFlow inversion "
                         f"(format {meta.get('format')!r}); save one with TokenFlow Save Inversion")
    t = load_file(path)
    return Inversion(t["trajectory"], t["sigmas"], meta.get("fingerprint", ""), int(meta.get("refine_iters", 0)),
                     meta.get("scheduler", ""), meta.get("model_id", ""), t.get("source_context"))


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
