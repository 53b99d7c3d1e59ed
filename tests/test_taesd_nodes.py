"""TAESD Encode / Decode (video): parity with core VAELoader + VAEEncode/VAEDecode,
chunk-size invariance, progress, cancel, and the bad-input errors."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def taesd_nodes(comfy):
    return comfy.node_classes["VideoEditTAESDEncode"], comfy.node_classes["VideoEditTAESDDecode"]


@pytest.fixture(scope="module")
def core_taesd(comfy):
    return comfy.node_classes["VAELoader"]().load_vae("taesd")[0]


def _frames(n=6, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def test_encode_matches_core_vae_encode(comfy, taesd_nodes, core_taesd):
    enc, _ = taesd_nodes
    frames = _frames()
    ours = enc.execute(frames, "taesd", 4).result[0]["samples"]
    core = comfy.node_classes["VAEEncode"]().encode(core_taesd, frames)[0]["samples"]
    diff = (ours - core).abs().max().item()
    print(f"TAESD encode parity: max abs diff vs core VAEEncode = {diff:.3g}")
    assert ours.shape == core.shape == (6, 4, 8, 8)
    assert diff <= 1e-5


def test_decode_matches_core_vae_decode(comfy, taesd_nodes, core_taesd):
    _, dec = taesd_nodes
    latent = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = dec.execute({"samples": latent}, "taesd", 4).result[0]
    core = comfy.node_classes["VAEDecode"]().decode(core_taesd, {"samples": latent})[0]
    diff = (ours - core).abs().max().item()
    print(f"TAESD decode parity: max abs diff vs core VAEDecode = {diff:.3g}")
    assert ours.shape == core.shape == (6, 64, 64, 3)
    assert diff <= 1e-5


def test_chunk_size_does_not_change_result(taesd_nodes):
    enc, dec = taesd_nodes
    frames = _frames(5)
    one = dec.execute(enc.execute(frames, "taesd", 1).result[0], "taesd", 1).result[0]
    all_ = dec.execute(enc.execute(frames, "taesd", 64).result[0], "taesd", 64).result[0]
    assert (one - all_).abs().max().item() <= 1e-5


def test_progress_reports_every_chunk(comfy, taesd_nodes):
    import comfy.utils as cu  # binds cu only: `comfy` stays the fixture
    _, dec = taesd_nodes
    seen = []
    old = cu.PROGRESS_BAR_HOOK
    cu.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        dec.execute({"samples": torch.randn(7, 4, 8, 8)}, "taesd", 2)
    finally:
        cu.set_progress_bar_global_hook(old)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_before_work(comfy, taesd_nodes):
    import comfy.model_management as mm
    _, dec = taesd_nodes
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            dec.execute({"samples": torch.randn(3, 4, 8, 8)}, "taesd", 1)
    finally:
        mm.interrupt_current_processing(False)


def test_missing_files_name_folder_and_both_files(taesd_nodes):
    enc, _ = taesd_nodes
    with pytest.raises(FileNotFoundError) as e:
        enc.execute(_frames(1), "taesdxl", 4)
    msg = str(e.value)
    assert "taesdxl_encoder.safetensors" in msg and "taesdxl_decoder.safetensors" in msg
    assert "vae_approx" in msg


def test_wrong_channel_count_is_named(taesd_nodes):
    _, dec = taesd_nodes
    with pytest.raises(ValueError, match=r"samples: the latent has 16 channels.*taesd3"):
        dec.execute({"samples": torch.randn(2, 16, 8, 8)}, "taesd", 4)


def test_video_latent_and_zero_frames_are_refused(taesd_nodes):
    enc, dec = taesd_nodes
    with pytest.raises(ValueError, match="5-D"):
        dec.execute({"samples": torch.randn(1, 4, 3, 8, 8)}, "taesd", 4)
    with pytest.raises(ValueError, match="zero frames"):
        dec.execute({"samples": torch.randn(0, 4, 8, 8)}, "taesd", 4)
    with pytest.raises(ValueError, match="zero frames"):
        enc.execute(torch.rand(0, 64, 64, 3), "taesd", 4)


@pytest.mark.parametrize("variant,channels", [("taesd", 4), ("taesdxl", 4), ("taesd3", 16), ("taef1", 16)])
def test_loader_equals_core_vae_loader_bit_for_bit(comfy, monkeypatch, tmp_path, variant, channels):
    """Our TAESD (comfy.sd.VAE from both files plus the family's scale and shift) against core
    VAELoader(variant) as the oracle, for every variant, from a vae_approx folder of this test only
    (the shared one lacks the other variants on purpose: test_missing_files_name_folder_and_both_files)."""
    import folder_paths
    from harness.fixtures import taesd_files
    from videoedit.nodes.taesd import engine_taesd
    for f in taesd_files(variant, channels):
        (tmp_path / f.name).symlink_to(f)
    exts = folder_paths.folder_names_and_paths["vae_approx"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae_approx", ([str(tmp_path)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    ours = engine_taesd.load_taesd(variant)
    core = comfy.node_classes["VAELoader"]().load_vae(variant)[0]
    a, b = ours.first_stage_model.state_dict(), core.first_stage_model.state_dict()
    assert type(ours.first_stage_model) is type(core.first_stage_model) and a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert (ours.latent_channels, ours.vae_dtype, ours.downscale_ratio) == \
        (core.latent_channels, core.vae_dtype, core.downscale_ratio) == (channels, ours.vae_dtype, 8)
    frames = _frames(2, 32, 32)
    latent = ours.encode(frames)
    assert torch.equal(latent, core.encode(frames)) and latent.shape[1] == channels
    assert torch.equal(ours.decode(latent), core.decode(latent))
