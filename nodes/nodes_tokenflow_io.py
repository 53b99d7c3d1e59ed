"""Save / load a TokenFlow inversion (safetensors), so a long clip is inverted once and edited
with many prompts, across sessions.

Files go to ``<output>/tokenflow/`` (written atomically: temp file + ``os.replace``); loading
accepts only files inside the output folder or a ``models/tokenflow_inversions`` folder, by a
relative name, and refuses anything that resolves elsewhere (``..``, absolute paths, links out).
"""
from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

import folder_paths
from comfy_api.v0_0_2 import io

from .nodes_tokenflow import CATEGORY, Inversion, TokenFlowInversion

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
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".inversion-", suffix=".safetensors.tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)  # atomic: a crash leaves no half-written inversion
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


class SaveInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowSaveInversion",
            display_name="TokenFlow Save Inversion",
            category=CATEGORY,
            description=("Saves a DDIM inversion (trajectory, sigmas, model fingerprint, source prompt) as a "
                         "safetensors file in the output folder's tokenflow/ subfolder, so the clip is inverted "
                         "once and edited many times, also in later sessions (TokenFlow Load Inversion)."),
            inputs=[
                TokenFlowInversion.Input("inversion", tooltip="From TokenFlow DDIM Inverter."),
                io.String.Input("filename_prefix", default="inversion",
                                tooltip="File name prefix inside output/tokenflow/ (a counter is appended)."),
            ],
            outputs=[io.String.Output("name", tooltip="The saved file's name for TokenFlow Load Inversion.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix) -> io.NodeOutput:
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
        name = os.path.join(subfolder, file).replace(os.sep, "/")
        return io.NodeOutput(name, ui={"text": [name]})


class LoadInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowLoadInversion",
            display_name="TokenFlow Load Inversion",
            category=CATEGORY,
            description=("Loads an inversion saved by TokenFlow Save Inversion (from output/tokenflow/ or "
                         f"models/{MODELS_FOLDER}/) for the TokenFlow Keyframe Sampler; the sampler still "
                         "checks that model, sigmas and frames match."),
            inputs=[io.Combo.Input("name", options=inversion_files() or [""],
                                   tooltip="A saved inversion (output/tokenflow/... or a file in "
                                           f"models/{MODELS_FOLDER}).")],
            outputs=[TokenFlowInversion.Output("inversion", tooltip="The loaded inversion.")],
        )

    @classmethod
    def validate_inputs(cls, name):
        return True  # a file saved earlier in the same session is not in the listed options yet

    @classmethod
    def fingerprint_inputs(cls, name):
        try:
            path = resolve_inversion(name)
            st = os.stat(path)
            return f"{path}:{st.st_mtime_ns}:{st.st_size}"
        except ValueError:
            return name

    @classmethod
    def execute(cls, name) -> io.NodeOutput:
        return io.NodeOutput(load_inversion(resolve_inversion(name)))


NODES = [SaveInversion, LoadInversion]
