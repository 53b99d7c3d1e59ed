"""The random-weight fixtures have the real architectures and load through core ComfyUI."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from harness import fixtures


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


def test_reset_parameters_initialises_comfy_layers(comfy):
    import comfy.ops as comfy_ops
    lin = comfy_ops.disable_weight_init.Linear(16, 16)  # ComfyUI skips init: torch.empty
    torch.nn.init.constant_(lin.weight, float("nan"))
    fixtures.reset_parameters(lin, seed=0)
    assert torch.isfinite(lin.weight).all() and lin.weight.std() > 0


@pytest.mark.parametrize("ip2p", [False, True])
def test_tiny_models_run_through_comfy(comfy, ip2p):
    patcher = fixtures.build_model(fixtures.tiny_unet_config(ip2p=ip2p))
    clip = fixtures.build_clip(tiny=True)
    cond = clip.encode_from_tokens(clip.tokenize("a red car"), return_pooled=False)
    assert cond.shape[-1] == 64
    x = torch.randn(2, 4, 8, 8)
    kwargs = {"c_concat": torch.randn(2, 4, 8, 8)} if ip2p else {}
    with torch.inference_mode():
        out = patcher.model.apply_model(x, torch.tensor([1.0, 1.0]), c_crossattn=cond.repeat(2, 1, 1), **kwargs)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert patcher.model.diffusion_model.input_blocks[0][0].in_channels == (8 if ip2p else 4)


@pytest.mark.slow
@pytest.mark.parametrize("ip2p,family", [(False, "SD15"), (True, "SD15_instructpix2pix")])
def test_full_size_checkpoint_is_detected_by_core_loader(comfy, ip2p, family):
    import comfy.sd as comfy_sd
    path = fixtures.sd15_checkpoint(ip2p=ip2p)
    keys = _keys(path)
    assert keys["model.diffusion_model.input_blocks.0.0.weight"] == [320, 8 if ip2p else 4, 3, 3]
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    n_params = sum(torch.Size(s).numel() for s in keys.values())
    assert 1.05e9 < n_params < 1.08e9, n_params  # SD1.5: UNet 860M + CLIP 123M + VAE 84M
    model, clip, vae, _ = comfy_sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    assert type(model.model.model_config).__name__ == family
    assert vae.latent_channels == 4 and clip is not None


@pytest.mark.slow
def test_controlnet_loads_through_core(comfy):
    import comfy.controlnet as comfy_controlnet
    cn = comfy_controlnet.load_controlnet(str(fixtures.sd15_controlnet()))
    assert type(cn).__name__ == "ControlNet"
    assert sum(p.numel() for p in cn.control_model.parameters()) > 3.5e8  # SD1.5 ControlNet: 361M


@pytest.mark.slow
def test_motion_module_has_animatediff_v2_layout():
    keys = _keys(fixtures.animatediff_motion_module("v2"))
    modules = {k.split(".temporal_transformer")[0] for k in keys}
    assert len([m for m in modules if m.startswith("down_blocks")]) == 8
    assert len([m for m in modules if m.startswith("up_blocks")]) == 12
    assert modules >= {"mid_block.motion_modules.0"}
    pe = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    assert keys[pe] == [1, 32, 320]
    assert keys["up_blocks.0.motion_modules.2.temporal_transformer.proj_out.weight"] == [1280, 1280]
    assert keys["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj.weight"] == [2560, 320]


def test_taesd_files_appear_in_core_vae_loader(comfy):
    names = comfy.node_classes["VAELoader"].vae_list(comfy.node_classes["VAELoader"])
    assert "taesd" in names


@pytest.mark.slow
def test_sd21_checkpoint_is_sd21_base_to_core_loader(comfy):
    """The stand-in for v2-1_512-ema-pruned: core detects SD2.x, eps (the 512 base; 768 is v),
    OpenCLIP ViT-H text encoder read at its penultimate layer, 1024-d context."""
    import comfy.model_base
    import comfy.sd as comfy_sd
    path = fixtures.sd21_checkpoint()
    keys = _keys(path)
    n_params = sum(torch.Size(s).numel() for s in keys.values())
    assert 1.29e9 < n_params < 1.31e9, n_params  # UNet 866M + OpenCLIP-H text 354M + VAE 84M
    model, clip, vae, _ = comfy_sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    assert type(model.model.model_config).__name__ == "SD20"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert type(clip.cond_stage_model).__name__ == "SD2ClipModel" and clip.cond_stage_model.clip_h.layer_idx == -2
    assert clip.encode_from_tokens(clip.tokenize("a red car")).shape == (1, 77, 1024)
    assert vae.latent_channels == 4


@pytest.mark.slow
def test_motion_module_ckpt_holds_the_same_tensors_for_weights_only_load(comfy):
    import comfy.utils
    from safetensors.torch import load_file
    ckpt = fixtures.animatediff_motion_module_ckpt("v2")
    a = torch.load(ckpt, weights_only=True)
    b = load_file(str(fixtures.animatediff_motion_module("v2")))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
    assert set(comfy.utils.load_torch_file(str(ckpt), safe_load=True)) == set(b)  # the pack's loader's path


def test_link_never_replaces_a_users_file(tmp_path):
    """Stand-ins go in under real file names: a real model already there must survive."""
    src = fixtures.CACHE / "test-link-src.bin"
    fixtures.CACHE.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"random")
    try:
        folder = tmp_path / "models" / "checkpoints"
        folder.mkdir(parents=True)
        users = folder / "v1-5-pruned-emaonly-fp16.safetensors"
        users.write_bytes(b"the user's real model")
        assert fixtures._link(src, folder, users.name) is None
        assert users.read_bytes() == b"the user's real model" and not users.is_symlink()
        ours = fixtures._link(src, folder, "v2-1_512-ema-pruned.safetensors")
        assert ours.is_symlink() and ours.resolve() == src.resolve()
        assert fixtures._link(src, folder, ours.name) == ours  # relinking our own link is fine
    finally:
        src.unlink()
