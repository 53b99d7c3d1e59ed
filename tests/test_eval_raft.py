"""torchvision RAFT from local files (nodes/eval/raft.py): random-weight RAFT of the real
architectures runs the warp-error code path; the loader reads torchvision's .pth (weights_only) and
.safetensors, tells large from small by the tensors, and refuses pickles and wrong files with a
message naming the file; the torch hub cache is found under torchvision's file names.

Random weights give meaningless flow: these tests prove the code path, not RAFT's accuracy."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file

from harness.sample_clip import panned_frames
from videoedit.nodes.eval import raft
from videoedit.nodes.eval.warp_error import clip_warp_error


class NotATensor:  # pickled by reference: weights_only must refuse it
    pass


def _random(arch: str) -> dict[str, torch.Tensor]:
    from torchvision.models.optical_flow import raft_large, raft_small
    torch.manual_seed(0)
    model = (raft_large if arch == "raft_large" else raft_small)(weights=None, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small_sd():
    return _random("raft_small")


def test_known_files_are_torchvisions_names():
    names = [n for n, _, _ in raft.known_files()]
    assert names[0] == "raft_large_C_T_SKHT_V2-ff5fadd5.pth"   # Raft_Large_Weights.DEFAULT first
    assert "raft_small_C_T_V2-01064c6d.pth" in names
    assert all(url.startswith("https://download.pytorch.org/models/") for _, _, url in raft.known_files())


@pytest.mark.parametrize("arch", ["raft_large", "raft_small"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_both_architectures_from_both_formats(arch, suffix, tmp_path):
    sd = _random(arch)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    model, found = raft.load(path)
    assert found == arch
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_flow_has_the_frames_size_for_any_size(small_sd):
    model, _ = raft.build(small_sd)
    a, b = torch.rand(1, 3, 44, 60), torch.rand(1, 3, 44, 60)
    with torch.inference_mode():
        fwd, bwd = raft.flow_fn(model, updates=2)(a, b)  # few updates: the shapes are the point
    assert fwd.shape == bwd.shape == (1, 2, 44, 60)
    assert torch.isfinite(fwd).all() and torch.isfinite(bwd).all()


def test_random_raft_runs_the_warp_error_code_path(small_sd):
    frames, _ = panned_frames(3, 64, shift=(2, 1))
    model, _ = raft.build(small_sd)
    res = clip_warp_error(frames, frames, raft.flow_fn(model, updates=2), pairs_per_chunk=1)
    assert len(res.per_pair) == 2 and all(e == e and e >= 0 for e in res.per_pair)
    assert all(0.0 <= v <= 1.0 for v in res.valid_fraction)


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    torch.save({"state": collections.OrderedDict(a=torch.zeros(1)), "config": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"raft_weights: 'raft_large_C_T_SKHT_V2-ff5fadd5.pth' holds pickled Python objects "
                       r"\(GLOBAL .*NotATensor\).*refused without running them.*weights_only=True"):
        raft.load(path)


def test_nested_dicts_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="'checkpoint.pth' holds a dict, not a state dict of tensors"):
        raft.load(path)


def test_wrong_files_are_refused(tmp_path, small_sd):
    other = tmp_path / "taesd_decoder.safetensors"
    save_file({"layers.0.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(ValueError, match=r"taesd_decoder.safetensors: not a torchvision RAFT state dict.*missing"):
        raft.load(other)
    truncated = dict(small_sd)
    truncated.pop(next(iter(truncated)))
    with pytest.raises(ValueError, match=r"closest: raft_small; missing 1"):
        raft.build(truncated)
    original = tmp_path / "raft-things.pth"
    torch.save({"module." + k: v for k, v in small_sd.items()}, original)
    with pytest.raises(ValueError, match="princeton-vl/RAFT"):
        raft.load(original)
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="'broken.safetensors' is not a weights file"):
        raft.load(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        raft.load(tmp_path / "nothing.pth")


def test_hub_cache_is_found_under_torchvisions_names(tmp_path, small_sd):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        assert raft.hub_files() == []
        (tmp_path / "checkpoints").mkdir()
        torch.save(small_sd, tmp_path / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth")
        (tmp_path / "checkpoints" / "unrelated.pth").write_bytes(b"")
        assert [p.name for p in raft.hub_files()] == ["raft_small_C_T_V2-01064c6d.pth"]
    finally:
        torch.hub.set_dir(old)


def test_small_frames_are_upscaled_and_their_flow_scaled_back():
    """Frames below RAFT's minimum are upscaled; a flow of (4, 2) px at RAFT's size is (1, 0.5) px at
    the frames' size when both sides were upscaled 4x (a stand-in for the network checks the maths)."""
    seen = []

    class ConstantFlow(torch.nn.Module):
        def forward(self, a, b, num_flow_updates):
            seen.append(tuple(a.shape[-2:]))
            return [torch.tensor([4.0, 2.0]).view(1, 2, 1, 1).expand(a.shape[0], 2, *a.shape[-2:])]

    out = raft.flow(ConstantFlow(), torch.rand(1, 3, 64, 32), torch.rand(1, 3, 64, 32))
    assert seen == [(256, 128)]
    assert out.shape == (1, 2, 64, 32)
    assert torch.allclose(out[:, 0], torch.tensor(1.0)) and torch.allclose(out[:, 1], torch.tensor(0.5))
