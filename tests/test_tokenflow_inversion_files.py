"""TokenFlow Save / Load Inversion: round trip, atomic files, refusing paths outside."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def io_nodes(comfy):
    nc = comfy.node_classes
    return nc["VideoEditTokenFlowSaveInversion"], nc["VideoEditTokenFlowLoadInversion"]


def _inversion(comfy):
    from harness.pack import pack_module
    mod = pack_module(comfy.node_classes["VideoEditTokenFlowSaveInversion"], "tokenflow.engine_inversion")
    g = torch.Generator().manual_seed(0)
    return mod.Inversion(torch.randn(4, 3, 4, 8, 8, generator=g), torch.tensor([14.6, 3.0, 0.5, 0.0]), "abc123",
                         2, "ddim_uniform", "model42", torch.randn(1, 77, 64, generator=g))


def test_save_load_round_trip(io_nodes, comfy):
    import folder_paths
    save, load = io_nodes
    inv = _inversion(comfy)
    name = save.execute(inv, "test_inv").result[0]
    assert name.startswith("tokenflow/test_inv_") and name.endswith(".safetensors")
    folder = os.path.join(folder_paths.get_output_directory(), "tokenflow")
    assert not [f for f in os.listdir(folder) if f.startswith(".")], "temporary file left behind"
    back = load.execute(name).result[0]
    assert torch.equal(back.trajectory, inv.trajectory) and torch.equal(back.sigmas, inv.sigmas)
    assert torch.equal(back.source_context, inv.source_context)
    assert (back.fingerprint, back.refine_iters, back.scheduler, back.model_id) == ("abc123", 2, "ddim_uniform",
                                                                                     "model42")
    assert name in load.define_schema().inputs[0].options
    second = save.execute(inv, "test_inv").result[0]
    assert second != name  # a counter, never an overwrite



def test_saved_inversion_has_the_mode_of_every_saved_file(io_nodes, comfy):
    """Save Inversion writes through the pack's atomic writer: the file gets the process's normal
    mode (0666 less the umask), not the 0600 of a bare temp file."""
    import stat
    import folder_paths
    save, _ = io_nodes
    name = save.execute(_inversion(comfy), "test_inv_mode").result[0]
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE(os.stat(os.path.join(folder_paths.get_output_directory(), name)).st_mode)
    assert mode == 0o666 & ~mask, oct(mode)

def test_paths_outside_are_refused(io_nodes, comfy, tmp_path):
    import folder_paths
    save, load = io_nodes
    with pytest.raises(ValueError, match="filename_prefix: .*outside the output folder"):
        save.execute(_inversion(comfy), "../../escape")
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(b"")
    for bad in (str(outside), "../" * 8 + str(outside).lstrip("/"), "tokenflow/../../x.safetensors"):
        with pytest.raises(ValueError, match="inversion file: "):
            load.execute(bad)
    with pytest.raises(ValueError, match="not found"):
        load.execute("tokenflow/missing.safetensors")
    # a safetensors file that is not an inversion
    from safetensors.torch import save_file
    other = os.path.join(folder_paths.get_output_directory(), "tokenflow", "not_inv.safetensors")
    save_file({"a": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a TokenFlow inversion"):
        load.execute("tokenflow/not_inv.safetensors")
