"""Warp error inside ComfyUI: where RAFT weights are found, which device runs it, progress and cancel.

RAFT weights come from the pack's model folder ``models/optical_flow`` (registered here; extra
model paths apply) or from the torch hub cache, listed by name for the node's combo; nothing is
downloaded. Flow runs on ComfyUI's torch device and the model goes back to the CPU afterwards.
"""
from __future__ import annotations

import os

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..host.folders import check_model_file_name, register_model_folder
from . import raft
from .warp_error import WarpErrorResult, clip_warp_error, pan_flow_fn

FOLDER = "optical_flow"
EXTENSIONS = (".safetensors", ".pth", ".pt")
HUB_PREFIX = "torch hub: "
NONE_FOUND = "(no RAFT weights found)"
FLOW_RAFT, FLOW_PAN = "RAFT", "known pan"


def register_folder() -> None:
    register_model_folder(FOLDER)


register_folder()


def weight_options() -> list[str]:
    """The RAFT files a user can pick: models/optical_flow first, then torchvision's in the hub cache."""
    register_folder()
    local = [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(EXTENSIONS)]
    hub = [HUB_PREFIX + p.name for p in raft.hub_files()]
    return local + hub or [NONE_FOUND]


def missing_weights_message() -> str:
    folder = os.path.join(folder_paths.models_dir, FOLDER)
    return (f"raft_weights: no RAFT weights found: {raft.where_to_put(folder)}; then refresh the node list. "
            f"For a clip whose motion you know (the sample clip pans by a fixed shift) use flow = '{FLOW_PAN}'.")


def resolve(option: str) -> str:
    """The file behind a ``weight_options`` entry."""
    if option == NONE_FOUND or not option:
        raise ValueError(missing_weights_message())
    if option.startswith(HUB_PREFIX):
        path = raft.hub_checkpoint_dir() / option[len(HUB_PREFIX):]
        if not path.is_file():
            raise ValueError(f"raft_weights: {path} is no longer there; refresh the node list. "
                             + missing_weights_message())
        return str(path)
    path = folder_paths.get_full_path(FOLDER, check_model_file_name(FOLDER, option, "raft_weights"))
    if path is None:
        raise ValueError(f"raft_weights: '{option}' is not in models/{FOLDER}; refresh the node list. "
                         + missing_weights_message())
    return path


_loaded: dict[tuple[str, float], tuple[torch.nn.Module, str]] = {}


def load_raft(path: str) -> tuple[torch.nn.Module, str]:
    """The RAFT model in ``path`` (on the CPU) and its architecture; the last one loaded is kept."""
    key = (os.path.abspath(path), os.path.getmtime(path))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = raft.load(path)
    return _loaded[key]


def _progress():
    """Progress per chunk of pairs, and the cancel check between chunks."""
    bar = None

    def on_chunk(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
        comfy.model_management.throw_exception_if_processing_interrupted()
    return on_chunk


def warp_error(edited: torch.Tensor, source: torch.Tensor, flow: str, raft_weights: str, pan: tuple[int, int],
               pairs_per_chunk: int) -> tuple[WarpErrorResult, str]:
    """The warp error of ``edited`` against ``source``'s motion, and a description of the flow used."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    device = comfy.model_management.get_torch_device()
    if flow == FLOW_PAN:
        result = clip_warp_error(edited, source, pan_flow_fn(*pan), pairs_per_chunk, device, _progress())
        return result, f"known pan: the view moves by ({pan[0]}, {pan[1]}) pixels per frame"
    if flow != FLOW_RAFT:
        raise ValueError(f"flow: '{flow}' is not one of {FLOW_RAFT!r}, {FLOW_PAN!r}")
    path = resolve(raft_weights)
    model, arch = load_raft(path)
    try:
        model.to(device)
        result = clip_warp_error(edited, source, raft.flow_fn(model), pairs_per_chunk, device, _progress())
    finally:
        model.to("cpu")
        comfy.model_management.soft_empty_cache()
    return result, f"{arch} ({os.path.basename(path)}), {raft.FLOW_UPDATES} updates, on the source clip"
