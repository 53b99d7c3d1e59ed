"""The one weights-file reader (core/weight_files.py): every broken file gives a message naming the
input, the file, what is wrong and the fix; a pickle's code never runs (a marker it would write
stays absent), also when the pickle is named .safetensors or read where PyTorch files are allowed."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from videoedit.nodes.core.weight_files import WeightsFileError, read_metadata, read_weights

FIX = "copy the file again"


class WritesMarker:
    """Unpickling this runs ``exec``: it writes the marker file (if anything ever runs it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _good(path, meta=None):
    save_file({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}, str(path), metadata=meta)
    return path


def _refused(path, match, **kw):
    with pytest.raises(WeightsFileError, match=match) as e:
        read_weights(str(path), "adapter_name", FIX, **kw)
    assert str(e.value).startswith(f"adapter_name: '{path.name}' ") and str(e.value).endswith(f"; {FIX}")
    return str(e.value)


def test_a_good_file_and_its_metadata(tmp_path):
    path = _good(tmp_path / "a.safetensors", {"format": "x"})
    sd, meta = read_weights(str(path), "adapter_name", FIX)
    assert torch.equal(sd["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"format": "x"}
    assert read_metadata(str(path), "adapter_name", FIX) == {"format": "x"}
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.equal(read_weights(str(tmp_path / "a.pt"), "x", FIX, torch_files=True)[0]["w"], torch.ones(2))
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.ckpt")  # as AnimateDiff .ckpt files may be
    assert list(read_weights(str(tmp_path / "wrapped.ckpt"), "x", FIX, torch_files=True, unwrap=True)[0]) == ["w"]


def test_broken_safetensors_files(tmp_path):
    good = _good(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _refused(tmp_path / "empty.safetensors", r"is empty \(0 bytes\)")
    (tmp_path / "cut.safetensors").write_bytes(good[:-5])
    _refused(tmp_path / "cut.safetensors", r"is truncated \(\d+ bytes, its header describes \d+\)")
    (tmp_path / "cut_header.safetensors").write_bytes(good[:20])
    _refused(tmp_path / "cut_header.safetensors", r"is truncated or corrupt \(its safetensors header claims")
    (tmp_path / "huge.safetensors").write_bytes(b"\xff" * 64)  # 'header too large' in safetensors' words
    _refused(tmp_path / "huge.safetensors", "is not a weights file")
    (tmp_path / "huge2.safetensors").write_bytes((2 ** 40).to_bytes(8, "little") + b"{" + b"\0" * 64)
    _refused(tmp_path / "huge2.safetensors", r"safetensors header claims 1099511627776 bytes")
    bad_json = len(b'{"a": nope}').to_bytes(8, "little") + b'{"a": nope}'
    (tmp_path / "json.safetensors").write_bytes(bad_json)
    _refused(tmp_path / "json.safetensors", "its safetensors header is not valid JSON")
    (tmp_path / "html.safetensors").write_bytes(b"<!DOCTYPE html><html>Not Found</html>")  # a failed download
    _refused(tmp_path / "html.safetensors", "is not a weights file")
    save_file({}, str(tmp_path / "none.safetensors"))
    _refused(tmp_path / "none.safetensors", "holds no tensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    _refused(tmp_path / "tiny.safetensors", r"is truncated \(2 bytes\)")
    _refused(tmp_path / "missing.safetensors", "does not exist")
    # a wrong dtype in an otherwise well-formed header: safetensors' own error, one line, named
    header = b'{"w":{"dtype":"Q99","shape":[1],"data_offsets":[0,4]}}'
    (tmp_path / "dtype.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    _refused(tmp_path / "dtype.safetensors", r"is corrupt \(")


@pytest.mark.parametrize("container", ["torch zip", "bare pickle"])
@pytest.mark.parametrize("torch_files", [False, True])
def test_a_pickle_never_runs(tmp_path, container, torch_files):
    marker = tmp_path / "marker"
    payload = {"w": torch.zeros(2), "evil": WritesMarker(marker)}
    for name in ("evil.pt", "evil.safetensors"):  # also under the extension of a safe format
        path = tmp_path / name
        if container == "torch zip":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload, protocol=2))
        msg = _refused(path, "holds pickled Python objects|is not a safetensors file", torch_files=torch_files)
        if not torch_files:
            assert "only .safetensors is read here" in msg
        elif container == "torch zip":
            assert "(GLOBAL " in msg and "exec)" in msg and "refused without running them" in msg
        assert not marker.exists(), "the pickle's code ran"
    # proof the payload is live: plain pickle.load runs it
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


def test_torch_files_broken_or_not_a_state_dict(tmp_path):
    torch.save({"w": torch.zeros(100)}, tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:200])
    _refused(tmp_path / "cut.pt", r"is truncated or corrupt \(torch.load\(weights_only=True\)", torch_files=True)
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, tmp_path / "nested.pt")
    _refused(tmp_path / "nested.pt", "holds a dict, not a state dict of tensors", torch_files=True)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    _refused(tmp_path / "list.pt", "holds a list, not a state dict of tensors", torch_files=True)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _refused(tmp_path / "empty.ckpt", r"is empty \(0 bytes\)", torch_files=True)
