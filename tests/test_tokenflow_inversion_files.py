"""TokenFlow Save / Load Inversion: round trip, atomic files, names outside the list refused, and
every damaged, altered or foreign file refused with a message naming the file and the fix,
without running any pickle and without changing any file."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FIX_AGAIN = "invert the video again"


@pytest.fixture(scope="module")
def io_nodes(comfy):
    nc = comfy.node_classes
    return nc["VideoEditTokenFlowSaveInversion"], nc["VideoEditTokenFlowLoadInversion"]


@pytest.fixture(scope="module")
def files(comfy):
    from harness.pack import pack_module
    return pack_module(comfy.node_classes["VideoEditTokenFlowSaveInversion"], "tokenflow.engine_inversion_files")


def _inversion(comfy):
    from harness.pack import pack_module
    mod = pack_module(comfy.node_classes["VideoEditTokenFlowSaveInversion"], "tokenflow.engine_inversion")
    g = torch.Generator().manual_seed(0)
    return mod.Inversion(torch.randn(4, 3, 4, 8, 8, generator=g), torch.tensor([14.6, 3.0, 0.5, 0.0]), "abc123",
                         2, "ddim_uniform", "model42", torch.randn(1, 77, 64, generator=g))


def _out() -> Path:
    import folder_paths
    return Path(folder_paths.get_output_directory())


def _snapshot() -> dict:
    """Every file under the output folder with its size, mtime and content hash."""
    import hashlib
    return {str(p.relative_to(_out())): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in _out().rglob("*") if p.is_file() and not p.is_symlink()}


def _refused(load, name: str, pattern: str) -> str:
    """Load ``name``: it must be refused with a message matching ``pattern``, no file changed."""
    before = _snapshot()
    with pytest.raises(ValueError, match=pattern) as e:
        load.execute(name)
    assert _snapshot() == before
    return str(e.value)


def test_save_load_round_trip(io_nodes, comfy):
    save, load = io_nodes
    inv = _inversion(comfy)
    name = save.execute(inv, "test_inv").result[0]
    assert name.startswith("tokenflow/test_inv_") and name.endswith(".safetensors")
    assert not [f for f in os.listdir(_out() / "tokenflow") if f.startswith(".")], "temporary file left behind"
    back = load.execute(name).result[0]
    assert torch.equal(back.trajectory, inv.trajectory) and torch.equal(back.sigmas, inv.sigmas)
    assert torch.equal(back.source_context, inv.source_context)
    assert (back.fingerprint, back.refine_iters, back.scheduler, back.model_id) == ("abc123", 2, "ddim_uniform",
                                                                                     "model42")
    with safe_open(str(_out() / name), framework="pt") as f:
        meta = f.metadata()
    assert {k: meta[k] for k in ("steps", "frames", "channels", "height", "width")} == \
        {"steps": "3", "frames": "3", "channels": "4", "height": "8", "width": "8"}
    assert name in load.define_schema().inputs[0].options
    second = save.execute(inv, "test_inv").result[0]
    assert second != name  # a counter, never an overwrite
    # a subfolder of output/tokenflow (./videoedit batch saves there) is listed and loads
    sub = save.execute(inv, "videoedit_batch/shot").result[0]
    assert sub.startswith("tokenflow/videoedit_batch/shot_")
    assert torch.equal(load.execute(sub).result[0].trajectory, inv.trajectory)


def test_saved_inversion_has_the_mode_of_every_saved_file(io_nodes, comfy):
    """Save Inversion writes through the pack's atomic writer: the file gets the process's normal
    mode (0666 less the umask), not the 0600 of a bare temp file."""
    import stat
    save, _ = io_nodes
    name = save.execute(_inversion(comfy), "test_inv_mode").result[0]
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE(os.stat(_out() / name).st_mode)
    assert mode == 0o666 & ~mask, oct(mode)


def test_names_outside_the_list_are_refused(io_nodes, comfy, tmp_path):
    save, load = io_nodes
    for prefix in ("../../escape", "/etc/escape"):
        before = _snapshot()
        with pytest.raises(ValueError, match="filename_prefix: .*outside the output folder; use a plain name"):
            save.execute(_inversion(comfy), prefix)
        assert _snapshot() == before
    outside = tmp_path / "x.safetensors"
    outside.write_bytes(b"")
    _refused(load, str(outside), "name: inversion file '/.*' must be a name relative to the output folder.*pick a file")
    for bad in ("../" * 8 + str(outside).lstrip("/"), "tokenflow/../../x.safetensors"):
        _refused(load, bad, "name: inversion file .* resolves outside the output and models folders.*pick a file")
    link = _out() / "tokenflow" / "link_out.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    try:
        _refused(load, "tokenflow/link_out.safetensors", "resolves outside the output and models folders")
    finally:
        link.unlink()
    # inside the output folder, but not a file Load Inversion lists
    (_out() / "stray.safetensors").write_bytes(b"")
    (_out() / "tokenflow" / "notes.txt").write_text("not an inversion")
    for name in ("stray.safetensors", "tokenflow/../stray.safetensors", "tokenflow/notes.txt"):
        _refused(load, name, f"name: inversion file '{name}' is not a saved inversion in output/tokenflow/ or "
                             "models/tokenflow_inversions/.*pick a file from the list")
    _refused(load, "tokenflow/missing.safetensors", "is not a saved inversion.*save one with TokenFlow Save Inversion")


class _Payload:
    """A pickle that creates a marker file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_foreign_and_damaged_files_are_refused_and_no_pickle_runs(io_nodes, files, comfy, tmp_path):
    save, load = io_nodes
    good = _out() / save.execute(_inversion(comfy), "good").result[0]
    data = good.read_bytes()
    marker = tmp_path / "pickle_ran"
    payload = pickle.dumps({"trajectory": _Payload(marker)})
    torch_file = io.BytesIO()
    torch.save({"trajectory": _Payload(marker), "sigmas": torch.zeros(4)}, torch_file)
    cases = {"empty": b"", "truncated": data[: len(data) // 2], "header_only": data[:8],
             "garbage": os.urandom(4096), "pickle": payload, "torch_save": torch_file.getvalue()}
    for case, content in cases.items():
        name = f"tokenflow/bad_{case}.safetensors"
        (_out() / name).write_bytes(content)
        msg = _refused(load, name, f"name: inversion file '{name}' is not a readable safetensors file")
        assert "pick a file saved by TokenFlow Save Inversion, or invert the video again" in msg
        assert "SafetensorError" not in msg
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: unpickling it does create the marker
    assert marker.exists()

    save_file({"a": torch.zeros(1)}, str(_out() / "tokenflow" / "not_inv.safetensors"))
    _refused(load, "tokenflow/not_inv.safetensors", "is not a TokenFlow inversion \\(format None\\); pick a file saved")


def _altered(name: str, good: Path, tensors=None, meta=None, drop=()) -> str:
    """A copy of ``good`` with some tensors / metadata replaced or dropped, saved as ``name``."""
    with safe_open(str(good), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = dict(f.metadata())
    t.update(tensors or {})
    m.update(meta or {})
    for key in drop:
        t.pop(key, None)
        m.pop(key, None)
    save_file(t, str(_out() / "tokenflow" / name), metadata=m)
    return f"tokenflow/{name}"


def test_a_file_that_disagrees_with_its_own_metadata_is_refused(io_nodes, comfy):
    save, load = io_nodes
    inv = _inversion(comfy)
    good = _out() / save.execute(inv, "good").result[0]
    nan = inv.trajectory.clone()
    nan[2, 1, 0, 3, 3] = float("nan")
    inf_ctx = inv.source_context.clone()
    inf_ctx[0, 5, 5] = float("inf")
    cases = [
        ({"trajectory": nan}, {}, (), "holds 1 NaN/inf values in its trajectory"),
        ({"sigmas": torch.tensor([14.6, float("inf"), 0.5, 0.0])}, {}, (), "holds sigmas that are not a decreasing"),
        ({"sigmas": torch.tensor([14.6, 0.5, 3.0, 0.0])}, {}, (), "holds sigmas that are not a decreasing"),
        ({"trajectory": torch.randn(4, 3, 4, 9, 7)}, {}, (), r"holds a trajectory of shape \[4, 3, 4, 9, 7\] but its "
         r"metadata says \[4, 3, 4, 8, 8\].*3 frames of 64x64 pixels"),
        ({"trajectory": torch.randn(4, 2, 4, 8, 8)}, {}, (),
         r"holds a trajectory of shape \[4, 2, 4, 8, 8\] but its metadata says \[4, 3"),
        ({"sigmas": torch.tensor([14.6, 0.5, 0.0])}, {}, (), r"holds \[3\] sigmas but its metadata says 3 steps"),
        ({"trajectory": torch.zeros(4, 0, 4, 8, 8)}, {"frames": "0"}, (), "describes 3 steps of 0 frames"),
        ({"trajectory": inv.trajectory.to(torch.int32)}, {}, (), "holds 'trajectory' as torch.int32"),
        ({"source_context": inf_ctx}, {}, (), "holds a source_context of shape \\[1, 77, 64\\] that is not finite"),
        ({}, {}, ("sigmas",), "holds no 'sigmas' tensor"),
        ({}, {}, ("frames",), "has no valid 'frames' in its metadata \\(None\\)"),
        ({}, {"height": "eight"}, (), "has no valid 'height' in its metadata \\('eight'\\)"),
    ]
    for i, (tensors, meta, drop, pattern) in enumerate(cases):
        name = _altered(f"altered_{i}.safetensors", good, tensors, meta, drop)
        msg = _refused(load, name, f"name: inversion file '{name}' {pattern}")
        assert msg.endswith("the file is damaged or was altered: invert the video again with TokenFlow DDIM "
                            "Inverter and save it with TokenFlow Save Inversion"), msg


def test_an_inversion_from_an_older_version_is_refused_with_re_invert(io_nodes, comfy):
    """Format /1 stored a model id built on ComfyUI's random patches_uuid: no later session can
    check it (it never matched after a reload), so such files are refused, saying to re-invert."""
    save, load = io_nodes
    good = _out() / save.execute(_inversion(comfy), "good").result[0]
    name = _altered("old_format.safetensors", good, meta={"format": "videoedit.tokenflow.inversion/1"},
                    drop=("steps", "frames", "channels", "height", "width"))
    _refused(load, name, f"name: inversion file '{name}' was saved by an older version of this pack "
                         rf"\(videoedit.tokenflow.inversion/1\).*{FIX_AGAIN} with TokenFlow DDIM Inverter")
