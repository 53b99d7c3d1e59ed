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
