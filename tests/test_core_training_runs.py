"""Where training runs go (core/training_runs.py): output names, per-kind checkpoint folders."""
from __future__ import annotations

import pytest

from videoedit.nodes.core import training_runs


def test_output_name_refuses_paths():
    assert training_runs.check_output_name("my_adapter") == "my_adapter"
    assert training_runs.check_output_name("x.safetensors") == "x"
    for bad in ("../x", "a/b", "/abs", "a\\b", "", ".hidden", ".."):
        with pytest.raises(ValueError, match="output_name"):
            training_runs.check_output_name(bad)


def _checkpoint(path, config):
    import torch
    from videoedit.nodes.core import checkpoints
    p = {"w": torch.nn.Parameter(torch.zeros(2))}
    checkpoints.save_checkpoint(str(path), 3, p, torch.optim.Adam(p.values()), [1.0, 0.5, 0.2], config)


def test_each_trainer_kind_has_its_own_checkpoint_folder(tmp_path):
    out = str(tmp_path)
    cfg, eve = (training_runs.checkpoint_path(out, k, "run") for k in ("cfg_distill", "eve_align"))
    assert cfg != eve  # the same output name for two trainers no longer shares a checkpoint
    assert cfg == str(tmp_path / "videoedit_training" / "cfg_distill" / "run" / "checkpoint.safetensors")
    with pytest.raises(ValueError, match="output_name"):
        training_runs.checkpoint_path(out, "cfg_distill", "../run")


def test_a_checkpoint_of_the_old_layout_resumes_under_its_own_kind_only(tmp_path):
    from videoedit.nodes.core import checkpoints
    out = str(tmp_path)
    legacy = tmp_path / "videoedit_training" / "run" / "checkpoint.safetensors"
    legacy.parent.mkdir(parents=True)
    _checkpoint(legacy, {"sds_fraction": 0.5, "k": 3})  # an EVE alignment's
    cfg = training_runs.checkpoint_path(out, "cfg_distill", "run")
    assert not training_runs.adopt_legacy_checkpoint(cfg, out, "run", "checkpoint.safetensors", "s_i_range")
    assert legacy.exists() and not (tmp_path / "videoedit_training" / "cfg_distill").exists()
    eve = training_runs.checkpoint_path(out, "eve_align", "run")
    assert training_runs.adopt_legacy_checkpoint(eve, out, "run", "checkpoint.safetensors", "sds_fraction")
    assert not legacy.exists() and checkpoints.checkpoint_step(eve) == 3
    # a checkpoint already in the new place is never overwritten by an old one
    _checkpoint(legacy, {"sds_fraction": 0.9})
    assert not training_runs.adopt_legacy_checkpoint(eve, out, "run", "checkpoint.safetensors", "sds_fraction")
    assert checkpoints.checkpoint_config(eve) == {"sds_fraction": 0.5, "k": 3}
