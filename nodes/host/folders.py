"""The pack's model folders and input folders in ComfyUI's ``folder_paths``: one way to register
and list them, to resolve a picked model file, to choose where a node saves a model (never over
another file without ``overwrite``), and to confine training data to the folders ComfyUI lets the
pack read (the input folder and the folders listed under ``videoedit_datasets`` in
extra_model_paths.yaml). Errors name the input and say what to do."""
from __future__ import annotations

import os

import folder_paths

from ..core.training_runs import check_output_name
from ..core.weight_files import WeightsFileError, read_metadata

DATA_FOLDER = "videoedit_datasets"  # extra training-data folders: a key of extra_model_paths.yaml
RUN_TAG_KEY = "videoedit_run"  # metadata of a trained file: "<trainer kind>/<output name>"


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


def check_model_file_name(folder: str, name: str, input_name: str) -> str:
    """A name a loader's combo lists (maybe with subfolders), never an absolute path or one with '..'
    (a prompt sent through the API is not limited to the combo's list); else a ValueError."""
    parts = str(name or "").replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or ".." in parts or "\0" in name:
        raise ValueError(f"{input_name}: '{name}' is not a file name of models/{folder} (no absolute paths, "
                         f"no '..'); pick a file from the list")
    return name


def model_file_path(folder: str, name: str, input_name: str, fix: str = "refresh the list") -> str:
    """The full path of ``name`` in model folder ``folder``, or FileNotFoundError naming the input."""
    check_model_file_name(folder, name, input_name)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{input_name}: '{name}' is not in models/{folder} "
                                f"({', '.join(folder_paths.get_folder_paths(folder))}); {fix}")
    return path


def save_folder(folder: str) -> str:
    """The folder a trainer saves into: the first (default) path of model folder ``folder``."""
    return folder_paths.get_folder_paths(folder)[0]


# ------------------------------------------------------------------------ saving a model

def save_path(folder: str, name: str, input_name: str, overwrite: bool, own_tag: str | None = None) -> str:
    """Where a node saves the model ``name``: ``<first path of model folder folder>/<name>.safetensors``.

    ``name`` must be a plain file name (no folders, no '..', not absolute, not empty). An existing
    file there is refused unless ``overwrite``, or unless its metadata carries ``own_tag`` (the file
    this training run wrote before: a resumed run rewrites its own file, not a new one)."""
    stem = check_output_name(name, input_name)
    path = os.path.join(save_folder(folder), f"{stem}.safetensors")
    if overwrite or not os.path.lexists(path):
        return path
    if own_tag is not None and _tag_of(path) == own_tag:
        return path
    raise FileExistsError(f"{input_name}: {path} already exists; nothing was written. Type another {input_name}, "
                          "or set overwrite to true to replace that file")


def _tag_of(path: str) -> str | None:
    try:
        return read_metadata(path, "file", "").get(RUN_TAG_KEY)
    except WeightsFileError:  # not ours or not readable: never this run's own
        return None


def run_tag(kind: str, name: str) -> str:
    """What a trained file's metadata records about the run that wrote it."""
    return f"{kind}/{check_output_name(name)}"


# ---------------------------------------------------------------------- training data

def data_folders() -> list[str]:
    """The folders training data may come from: ComfyUI's input folder, then every folder listed
    under ``videoedit_datasets`` (extra_model_paths.yaml), symlinks resolved."""
    extra = folder_paths.folder_names_and_paths.get(DATA_FOLDER, ([], set()))[0]
    return [os.path.realpath(p) for p in (folder_paths.get_input_directory(), *extra)]


def allow_data_folder(path: str) -> None:
    """List ``path`` as a training-data folder (what a ``videoedit_datasets`` entry in
    extra_model_paths.yaml does; the headless trainer lists its config's dataset folder)."""
    folder_paths.add_model_folder_path(DATA_FOLDER, os.path.abspath(path))


def data_path(path: str, input_name: str, base: str | None = None, shown: str | None = None) -> str:
    """A training-data path (a dataset folder, a file or clip named inside it), resolved: relative to
    ``base`` (default: ComfyUI's input folder) or absolute, symlinks followed. Anything outside the
    data folders is refused with one message, the same whether it exists or not."""
    value = str(path or "")  # as typed: a file name may begin or end with blanks
    if "\0" in value:
        raise ValueError(f"{input_name}: {shown or repr(value)} is not a path (it holds a NUL character)")
    if not value.strip():
        raise ValueError(f"{input_name}: empty; type a folder inside ComfyUI's input folder "
                         f"({folder_paths.get_input_directory()})")
    real = os.path.realpath(os.path.join(base or folder_paths.get_input_directory(), value))
    roots = data_folders()
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise ValueError(f"{input_name}: {shown or repr(value)} is outside the folders training data is read "
                         f"from ({', '.join(roots)}); put the data inside ComfyUI's input folder, or list its folder "
                         f"under '{DATA_FOLDER}:' in extra_model_paths.yaml and restart")
    return real
