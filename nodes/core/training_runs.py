"""Where a training run's files go (pure: os only): the output name a user types, and the
checkpoint folder of each trainer kind, so two trainers given the same name never share a
checkpoint.

Layout: ``<output>/videoedit_training/<kind>/<name>/checkpoint.safetensors``. Runs started before
this layout kept their checkpoint at ``<output>/videoedit_training/<name>/<legacy file>``
(``checkpoint.safetensors`` for CFG distillation and the EVE aligner alike, which is why two runs
could collide); ``adopt_legacy_checkpoint`` moves such a file to its kind's folder when its
settings record shows it is that kind's, so an interrupted old run still resumes.
"""
from __future__ import annotations

import os

from .checkpoints import checkpoint_config

TRAINING_FOLDER = "videoedit_training"


def check_output_name(name: str, input_name: str = "output_name") -> str:
    """A plain file stem: no folders, no '..', not empty."""
    n = (name or "").strip()
    if not n or n in (".", "..") or any(c in n for c in ("/", "\\", "\0", ":")) or os.path.isabs(n) \
            or n.startswith(".") or len(n) > 200:
        raise ValueError(f"{input_name}: '{name}' is not a plain file name (no folders, no path separators, "
                         "not starting with '.', at most 200 characters); type a name like my_adapter")
    return n[:-len(".safetensors")] if n.endswith(".safetensors") else n


def checkpoint_path(output_dir: str, kind: str, name: str) -> str:
    """The checkpoint of run ``name`` of trainer ``kind`` (the name checked first)."""
    return os.path.join(output_dir, TRAINING_FOLDER, kind, check_output_name(name), "checkpoint.safetensors")


def adopt_legacy_checkpoint(path: str, output_dir: str, name: str, legacy_file: str, config_key: str) -> bool:
    """Move a checkpoint of the old layout to ``path`` if there is none there yet and the old file's
    settings record has ``config_key`` (a setting only this kind of trainer records). True if moved."""
    legacy = os.path.join(output_dir, TRAINING_FOLDER, check_output_name(name), legacy_file)
    if os.path.exists(path) or not os.path.isfile(legacy):
        return False
    try:
        if config_key not in checkpoint_config(legacy):
            return False
    except Exception:  # not a readable checkpoint: leave it alone, start fresh
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.replace(legacy, path)
    return True
