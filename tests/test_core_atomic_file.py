"""Atomic writes: complete file or the old one, never a half-written file."""
import os

import pytest
import torch
from safetensors.torch import load_file

from videoedit.nodes.core.atomic_file import atomic_path, atomic_save_safetensors, atomic_write_bytes


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(b"old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("cancelled")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_safetensors_round_trip_and_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "w.safetensors"
    atomic_save_safetensors({"a": torch.arange(3.0)}, target, {"k": "v"})
    assert torch.equal(load_file(str(target))["a"], torch.arange(3.0))
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_temp_path_keeps_the_extension(tmp_path):
    with atomic_path(tmp_path / "clip.mp4") as tmp:
        assert tmp.endswith(".mp4")
        open(tmp, "wb").close()
