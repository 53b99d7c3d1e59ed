"""The pack's model folders and input folders in ComfyUI's ``folder_paths`` (one way to register
and list them; errors name the input and say where the file belongs)."""
from __future__ import annotations

import os

import folder_paths


def register_model_folder(name: str, shared: bool = False) -> None:
    """``models/<name>`` as a ComfyUI model folder (once, also when the pack is imported twice).

    ``shared``: a folder other packs own too (``animatediff_models``, AnimateDiff-Evolved's): added
    only if nobody registered it, so their settings stay. Otherwise ours: our path is added as
    the default folder (where trainers save) if it is not listed yet."""
    path = os.path.join(folder_paths.models_dir, name)
    if shared:
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path)
    elif name not in folder_paths.folder_names_and_paths or path not in folder_paths.get_folder_paths(name):
        folder_paths.add_model_folder_path(name, path, is_default=True)


def model_file_names(folder: str, extensions: tuple[str, ...] | None = (".safetensors",)) -> list[str]:
    """The files of a model folder a loader's combo lists (``extensions`` None: every file)."""
    return [n for n in folder_paths.get_filename_list(folder) if extensions is None or n.lower().endswith(extensions)]


def model_file_path(folder: str, name: str, input_name: str, fix: str = "refresh the list") -> str:
    """The full path of ``name`` in model folder ``folder``, or FileNotFoundError naming the input."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: '{name}' is not in models/{folder} "
                                f"({', '.join(folder_paths.get_folder_paths(folder))}); {fix}")
    return path


def input_folder_path(folder: str) -> str:
    """A dataset folder input: absolute, or relative to ComfyUI's input folder."""
    return folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)


def save_folder(folder: str) -> str:
    """The folder a trainer saves into: the first (default) path of model folder ``folder``."""
    return folder_paths.get_folder_paths(folder)[0]
