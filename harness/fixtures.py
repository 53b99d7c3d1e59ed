"""Random-weight models of the real architectures (no weights can ever be downloaded).

Full-size files, written once into a git-ignored cache keyed by their config, in the key
layouts users' real files have, so the pack's loading code runs on them unchanged:
- SD1.5 / InstructPix2Pix / SD2.1-base single-file LDM checkpoints, built with ComfyUI's own
  UNet, CLIP (SD2: OpenCLIP ViT-H) and VAE classes and saved through ComfyUI's own
  checkpoint-saving key conversion;
- an SD1.5 ControlNet (ComfyUI's ``cldm.ControlNet``, the control_v11 key layout);
- an AnimateDiff v2/v3-format SD1.5 motion module (original AnimateDiff key layout), also as a
  torch zip ``.ckpt`` like guoyww's files;
- TAESD encoder/decoder files (``comfy.taesd``'s modules, the madebyollin/taesd layout).
Tiny in-memory variants (small UNet/CLIP) are built through ComfyUI's public classes for
fast tests; stock detection rejects them, so they are never written as checkpoints.

ComfyUI's layers skip weight init (its ops leave ``reset_parameters`` empty), so every
module is re-initialised with torch's own ``reset_parameters`` and every tensor is checked
finite before it is saved.

``install_all`` links each fixture into a base directory under the name of the real public file
it stands in for (harness/model_catalog.py), so the shipped templates run unchanged on them.

Usage: ``python -m harness.fixtures [--base DIR]`` generates everything and links it into
``DIR/models``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .embedded import DEFAULT_BASE, REPO_ROOT, use_comfy

CACHE = Path(os.environ.get("VIDEOEDIT_FIXTURE_CACHE", REPO_ROOT / ".cache" / "fixtures"))
GENERATOR_VERSION = 1  # bump when a generator changes what it writes

SD15_CHANNEL_MULT = (1, 2, 4, 4)
SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                   "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                   "dropout": 0.0}


# --------------------------------------------------------------------------- helpers

def reset_parameters(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Initialise every layer with torch's own init (ComfyUI's ops skip it)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in module.modules():
            for cls in type(m).__mro__:
                if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                    cls.reset_parameters(m)
                    break
    finally:
        torch.random.set_rng_state(gen_state)
    return module


def assert_finite(sd: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise AssertionError(f"{what}: non-finite tensors after init: {bad[:5]}")


def _cached(name: str, config: dict, build) -> Path:
    """Directory holding the files ``build(tmpdir)`` writes, generated once per config."""
    key = hashlib.sha1(json.dumps({"v": GENERATOR_VERSION, "name": name, **config},
                                  sort_keys=True).encode()).hexdigest()[:12]
    final = CACHE / f"{name}-{key}"
    if (final / ".done").exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        build(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        (tmp / ".done").touch()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: a killed generator leaves no half-written fixture
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save(sd: dict[str, torch.Tensor], path: Path, dtype=torch.float16, what: str = "") -> None:
    assert_finite(sd, what or path.name)
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              str(path))


# ------------------------------------------------------------------ UNet configurations

def sd15_unet_config(model_channels: int = 320, in_channels: int = 4, context_dim: int = 768,
                     num_heads: int = 8, channel_mult=SD15_CHANNEL_MULT) -> dict:
    """The UNet config ComfyUI's model detection produces for an SD1.5 checkpoint.

    Attention on every level but the lowest resolution (SD1.5's layout).
    """
    levels = len(channel_mult)
    depth_in = [d for lvl in range(levels) for d in [int(lvl < levels - 1)] * 2]
    # ComfyUI pops output depths from the end (lowest resolution first), so this list is
    # in input-level order like transformer_depth.
    depth_out = [d for lvl in range(levels) for d in [int(lvl < levels - 1)] * 3]
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": in_channels, "out_channels": 4,
        "model_channels": model_channels, "num_res_blocks": [2] * levels,
        "transformer_depth": depth_in, "transformer_depth_output": depth_out,
        "transformer_depth_middle": 1, "channel_mult": list(channel_mult),
        "use_linear_in_transformer": False, "context_dim": context_dim,
        "use_temporal_resblock": False, "use_temporal_attention": False,
        "num_heads": num_heads, "num_head_channels": -1,
    }


def sd21_unet_config() -> dict:
    """The UNet config ComfyUI's model detection produces for SD2.x (v2-1_512-ema-pruned):
    SD1.5's layout with OpenCLIP ViT-H context (1024), linear projections in the transformers
    and 64-channel heads."""
    return {**sd15_unet_config(context_dim=1024), "use_linear_in_transformer": True,
            "num_heads": -1, "num_head_channels": 64}


def _model_config(unet_config: dict, ip2p: bool, family: str | None = None):
    """``family``: a comfy.supported_models class name (default SD15 / SD15_instructpix2pix)."""
    use_comfy()
    import comfy.supported_models as sm
    cls = getattr(sm, family) if family else (sm.SD15_instructpix2pix if ip2p else sm.SD15)
    cfg = cls(dict(unet_config))
    cfg.set_inference_dtype(torch.float32, None)
    return cfg


def build_model(unet_config: dict, ip2p: bool = False, seed: int = 0, family: str | None = None):
    """A random-weight ComfyUI model (ModelPatcher) from a UNet config, via public classes."""
    use_comfy()
    import comfy.model_patcher
    cfg = _model_config(unet_config, ip2p, family)
    model = cfg.get_model({})
    reset_parameters(model.diffusion_model, seed)
    assert_finite(model.diffusion_model.state_dict(), "unet")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def build_clip(seed: int = 1, tiny: bool = False, sd2: bool = False):
    """A random-weight SD1 CLIP (comfy.sd.CLIP) with the real SD1 tokenizer.

    ``tiny``: 2 layers, width 64 (context_dim 64) for the tiny UNet configs.
    ``sd2``: SD2's OpenCLIP ViT-H text encoder instead (24 layers, width 1024, penultimate
    layer), ComfyUI's own SD2ClipModel and tokenizer.
    """
    use_comfy()
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base as smb

    if sd2:
        from comfy.text_encoders import sd2_clip
        target = smb.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)
    elif tiny:
        def clip_model(**kw):
            cfg = {"hidden_act": "quick_gelu", "hidden_size": 64, "intermediate_size": 128,
                   "num_attention_heads": 2, "num_hidden_layers": 2, "vocab_size": 49408,
                   "max_position_embeddings": 77, "layer_norm_eps": 1e-5, "bos_token_id": 0,
                   "eos_token_id": 49407, "pad_token_id": 1, "projection_dim": 64,
                   "model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
                   "torch_dtype": "float32"}
            return comfy.sd1_clip.SD1ClipModel(
                clip_model=lambda **k: comfy.sd1_clip.SDClipModel(textmodel_json_config=cfg, **k), **kw)
        target = smb.ClipTarget(comfy.sd1_clip.SD1Tokenizer, clip_model)
    else:
        target = smb.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, embedding_directory=None)
    reset_parameters(clip.cond_stage_model, seed)
    assert_finite(clip.cond_stage_model.state_dict(), "clip")
    return clip


def build_sd_vae(seed: int = 2) -> dict[str, torch.Tensor]:
    use_comfy()
    from comfy.ldm.models.autoencoder import AutoencoderKL
    vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    reset_parameters(vae, seed)
    return vae.state_dict()


def tiny_unet_config(ip2p: bool = False, model_channels: int = 32) -> dict:
    """Small SD1.5-shaped UNet (3 levels, context 64) for fast tests."""
    return sd15_unet_config(model_channels=model_channels, in_channels=8 if ip2p else 4, context_dim=64,
                            num_heads=2, channel_mult=(1, 2, 2))


# ------------------------------------------------------------------------ full-size files

def _ldm_checkpoint(name: str, config: dict, unet_seed: int, clip_seed: int, family: str | None = None) -> Path:
    """A random single-file LDM checkpoint (UNet + text encoder + SD VAE), fp16, saved through
    ComfyUI's own save-side key conversion (what CheckpointSave writes): the layout of the real
    files. ``family``: a comfy.supported_models class (default SD15 / SD15_instructpix2pix)."""
    def build(d: Path):
        use_comfy()
        import comfy.model_management
        patcher = build_model(config["unet"], ip2p=config.get("ip2p", False), seed=unet_seed, family=family)
        clip = build_clip(seed=clip_seed, sd2=family == "SD20")
        sd = patcher.model.state_dict_for_saving(clip.get_sd(), build_sd_vae(seed=12), None)
        _save(sd, d / f"{name}.safetensors", what=name)
        del patcher, clip, sd
        comfy.model_management.soft_empty_cache()

    return _cached(name, config, build) / f"{name}.safetensors"


def sd15_checkpoint(ip2p: bool = False) -> Path:
    """Full-size random SD1.5 (or InstructPix2Pix) single-file checkpoint, fp16 (~2 GiB)."""
    config = {"unet": sd15_unet_config(in_channels=8 if ip2p else 4), "vae": SD_VAE_DDCONFIG, "ip2p": ip2p}
    return _ldm_checkpoint("sd15_ip2p_random" if ip2p else "sd15_random", config, 10 + ip2p, 11)


def sd21_checkpoint() -> Path:
    """Full-size random Stable Diffusion 2.1 base checkpoint, fp16 (2.43 GiB): the architecture
    of v2-1_512-ema-pruned (TokenFlow's backbone) through ComfyUI's SD20 config, OpenCLIP text
    encoder under cond_stage_model.model.*. LayerNorm biases start at zero, so ComfyUI's
    detection reads it as eps, like the real 512 base (the 768 model is v-prediction)."""
    config = {"unet": sd21_unet_config(), "vae": SD_VAE_DDCONFIG, "clip": "sd2_clip_h"}
    return _ldm_checkpoint("sd21_base_random", config, 13, 14, family="SD20")


def sd15_vae() -> Path:
    """Full-size random SD VAE as a standalone file (the weights inside ``sd15_checkpoint``)."""
    name = "sd_vae_random"

    def build(d: Path):
        _save(build_sd_vae(seed=12), d / f"{name}.safetensors", what=name)

    return _cached(name, {"vae": SD_VAE_DDCONFIG}, build) / f"{name}.safetensors"


def sd15_controlnet() -> Path:
    """Full-size random SD1.5 ControlNet in the control_v11 key layout (fp16)."""
    name = "control_sd15_random"
    unet = sd15_unet_config()
    config = {"unet": unet, "hint_channels": 3}

    def build(d: Path):
        use_comfy()
        import comfy.cldm.cldm
        import comfy.ops
        kw = {k: v for k, v in unet.items() if k not in ("out_channels", "transformer_depth_output",
                                                          "use_temporal_resblock", "use_temporal_attention")}
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init,
                                         device="cpu", dtype=torch.float32, **kw)
        reset_parameters(net, 20)
        _save(net.state_dict(), d / f"{name}.safetensors", what=name)

    return _cached(name, config, build) / f"{name}.safetensors"


def _motion_module_sd(channels: int, prefix: str, gen: torch.Generator, max_len: int,
                      heads: int = 8) -> dict[str, torch.Tensor]:
    """One AnimateDiff VanillaTemporalModule (two temporal self-attentions, GEGLU FF)."""
    def lin(out_f, in_f, bias=True):
        bound = 1 / math.sqrt(in_f)
        w = (torch.rand(out_f, in_f, generator=gen) * 2 - 1) * bound
        return (w, (torch.rand(out_f, generator=gen) * 2 - 1) * bound if bias else None)

    sd = {}
    t = f"{prefix}.temporal_transformer"
    sd[f"{t}.norm.weight"], sd[f"{t}.norm.bias"] = torch.ones(channels), torch.zeros(channels)
    sd[f"{t}.proj_in.weight"], sd[f"{t}.proj_in.bias"] = lin(channels, channels)
    b = f"{t}.transformer_blocks.0"
    for i in range(2):
        a = f"{b}.attention_blocks.{i}"
        for n in ("to_q", "to_k", "to_v"):
            sd[f"{a}.{n}.weight"] = lin(channels, channels, bias=False)[0]
        sd[f"{a}.to_out.0.weight"], sd[f"{a}.to_out.0.bias"] = lin(channels, channels)
        sd[f"{a}.pos_encoder.pe"] = _sinusoidal_pe(max_len, channels)
        sd[f"{b}.norms.{i}.weight"], sd[f"{b}.norms.{i}.bias"] = torch.ones(channels), torch.zeros(channels)
    sd[f"{b}.ff.net.0.proj.weight"], sd[f"{b}.ff.net.0.proj.bias"] = lin(channels * 8, channels)
    sd[f"{b}.ff.net.2.weight"], sd[f"{b}.ff.net.2.bias"] = lin(channels, channels * 4)
    sd[f"{b}.ff_norm.weight"], sd[f"{b}.ff_norm.bias"] = torch.ones(channels), torch.zeros(channels)
    # AnimateDiff zero-initialises proj_out at training start; a trained module has it
    # non-zero, which is what makes it mix frames. Random non-zero values here.
    sd[f"{t}.proj_out.weight"], sd[f"{t}.proj_out.bias"] = lin(channels, channels)
    return sd


def _sinusoidal_pe(max_len: int, dim: int) -> torch.Tensor:
    pos = torch.arange(max_len).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def animatediff_motion_module(version: str = "v2") -> Path:
    """Random SD1.5 motion module in the original AnimateDiff v2/v3 key layout (fp16).

    down_blocks.{0-3}.motion_modules.{0,1}, up_blocks.{0-3}.motion_modules.{0,1,2} and (v2)
    mid_block.motion_modules.0, each a temporal transformer with positional encoding of
    length 32.
    """
    if version not in ("v2", "v3"):
        raise ValueError(version)
    name = f"mm_sd15_{version}_random"
    config = {"version": version, "max_len": 32, "channels": [320, 640, 1280, 1280]}

    def build(d: Path):
        gen = torch.Generator().manual_seed(30)
        ch = config["channels"]
        sd = {}
        for i, c in enumerate(ch):
            for j in range(2):
                sd.update(_motion_module_sd(c, f"down_blocks.{i}.motion_modules.{j}", gen, config["max_len"]))
        for i, c in enumerate(reversed(ch)):
            for j in range(3):
                sd.update(_motion_module_sd(c, f"up_blocks.{i}.motion_modules.{j}", gen, config["max_len"]))
        if version == "v2":
            sd.update(_motion_module_sd(ch[-1], "mid_block.motion_modules.0", gen, config["max_len"]))
        _save(sd, d / f"{name}.safetensors", what=name)

    return _cached(name, config, build) / f"{name}.safetensors"


def animatediff_motion_module_ckpt(version: str = "v2") -> Path:
    """The motion module of ``animatediff_motion_module`` as a torch zip of tensors (``.ckpt``),
    the container of guoyww's mm_sd_v15_v2.ckpt / v3_sd15_mm.ckpt: what the pack's loader reads
    with torch.load(weights_only=True)."""
    from safetensors.torch import load_file
    src = animatediff_motion_module(version)
    name = f"mm_sd15_{version}_random"

    def build(d: Path):
        torch.save(load_file(str(src)), d / f"{name}.ckpt")

    return _cached(f"{name}_ckpt", {"source": src.parent.name}, build) / f"{name}.ckpt"


def taesd_files(variant: str = "taesd", latent_channels: int = 4) -> tuple[Path, Path]:
    """Random TAESD encoder and decoder files named as ComfyUI's VAELoader expects."""
    config = {"variant": variant, "latent_channels": latent_channels}

    def build(d: Path):
        use_comfy()
        from comfy.taesd.taesd import TAESD
        tae = reset_parameters(TAESD(latent_channels=latent_channels), 40)
        _save(tae.taesd_encoder.state_dict(), d / f"{variant}_encoder.safetensors", torch.float32)
        _save(tae.taesd_decoder.state_dict(), d / f"{variant}_decoder.safetensors", torch.float32)

    d = _cached(f"{variant}_random", config, build)
    return d / f"{variant}_encoder.safetensors", d / f"{variant}_decoder.safetensors"


def random_guidance_adapter_tensors(gen: torch.Generator, rank: int = 4) -> dict[str, torch.Tensor]:
    """Rank-``rank`` UNet deltas + scale-embedding MLP in the guidance-adapter layout, for the
    full-size InstructPix2Pix fixture (shapes from its header); shared by the MoViE fixtures."""
    from safetensors import safe_open
    sd = {}
    with safe_open(str(sd15_checkpoint(ip2p=True)), framework="pt") as f:
        for k in f.keys():
            if k.startswith("model.diffusion_model.") and k.endswith(".weight"):
                shape = f.get_slice(k).get_shape()
                if len(shape) >= 2:
                    key, cols = k[len("model."):], math.prod(shape[1:])
                    r = min(rank, shape[0], cols)
                    sd[f"delta.{key}.down"] = torch.randn(r, cols, generator=gen) / math.sqrt(cols)
                    sd[f"delta.{key}.up"] = torch.randn(shape[0], r, generator=gen) * 0.01
    mc, ted = 320, 1280
    sd["embed.fc1.weight"] = torch.randn(ted, 2 * mc, generator=gen) / math.sqrt(2 * mc)
    sd["embed.fc1.bias"] = torch.zeros(ted)
    sd["embed.fc2.weight"] = torch.randn(ted, ted, generator=gen) * 0.01 / math.sqrt(ted)
    sd["embed.fc2.bias"] = torch.zeros(ted)
    return sd


def movie_guidance_adapter() -> Path:
    """Random MoViE guidance adapter (LoRA rank 4 + scale embedding) for the full-size
    InstructPix2Pix fixture, in the file format CFG Distill (train) writes; weight shapes are
    read from the checkpoint's header, so no UNet is built."""
    name = "movie_guidance_random"
    config = {"rank": 4, "ckpt": sd15_checkpoint(ip2p=True).parent.name}

    def build(d: Path):
        from safetensors.torch import save_file as _save_file
        gen = torch.Generator().manual_seed(50)
        sd = random_guidance_adapter_tensors(gen)
        mc, ted = 320, 1280
        family = {"channel_mult": list(SD15_CHANNEL_MULT), "context_dim": 768, "in_channels": 8,
                  "model": "SD15_instructpix2pix", "model_channels": mc, "out_channels": 4}
        meta = {"format": "videoedit.movie.guidance_adapter", "version": "1", "kind": "lora", "rank": "4",
                "family": json.dumps(family, sort_keys=True), "model_channels": str(mc),
                "time_embed_dim": str(ted), "s_i_range": "[1.0, 3.0]", "s_t_range": "[2.0, 14.0]", "steps": "0"}
        assert_finite(sd, name)
        _save_file({k: v.contiguous() for k, v in sd.items()}, str(d / f"{name}.safetensors"), metadata=meta)

    return _cached(name, config, build) / f"{name}.safetensors"


def eve_align_lora() -> Path:
    """Random EVE alignment LoRA (rank 4) for the full-size SD1.5 fixture in the kohya key layout
    the LoRA Aligner (train) writes and core LoraLoader reads; shapes from the checkpoint header."""
    name = "eve_align_lora_random"
    config = {"rank": 4, "ckpt": sd15_checkpoint().parent.name}

    def build(d: Path):
        from safetensors import safe_open
        gen = torch.Generator().manual_seed(60)
        sd = {}
        with safe_open(str(sd15_checkpoint()), framework="pt") as f:
            for k in f.keys():
                if k.startswith("model.diffusion_model.") and k.endswith(".weight"):
                    shape = f.get_slice(k).get_shape()
                    if len(shape) >= 2:
                        base = "lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                        cols = math.prod(shape[1:])
                        r = min(4, shape[0], cols)
                        sd[f"{base}.lora_down.weight"] = (torch.randn(r, cols, generator=gen) / math.sqrt(cols)).reshape(r, *shape[1:])
                        sd[f"{base}.lora_up.weight"] = (torch.randn(shape[0], r, generator=gen) * 0.01).reshape(shape[0], r, *([1] * (len(shape) - 2)))
                        sd[f"{base}.alpha"] = torch.tensor(float(r))
        _save(sd, d / f"{name}.safetensors", dtype=torch.float32, what=name)

    return _cached(name, config, build) / f"{name}.safetensors"


def tiny_controlnet(unet_config: dict, seed: int = 21):
    """A core ControlNet object with random weights for a tiny UNet config (in memory)."""
    use_comfy()
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops
    kw = {k: v for k, v in unet_config.items() if k not in ("out_channels", "transformer_depth_output",
                                                            "use_temporal_resblock", "use_temporal_attention")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device="cpu",
                                     dtype=torch.float32, **kw)
    reset_parameters(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"))


def tiny_motion_module_sd(model_channels: int = 32, channel_mult=(1, 2, 2), seed: int = 31) -> dict[str, torch.Tensor]:
    """AnimateDiff-format random motion module tensors for tiny_unet_config()'s layout."""
    from .pack import import_pack
    import_pack()
    from videoedit.nodes.eve.temporal_adapter import unet_layout
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, pl in unet_layout(model_channels, channel_mult, 2, temporal_conv=False).items():
        sd.update(_motion_module_sd(pl.channels, prefix, gen, 32))
    return sd


# --------------------------------------------------------------------------- installing

def _link(src: Path, folder: Path, name: str | None = None) -> Path | None:
    """Symlink ``src`` as ``folder/name``. A link of ours (into the fixture cache) is replaced;
    any other file there (a user's real model of that name) is left alone: returns None."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / (name or src.name)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return dst
        if not (dst.is_symlink() and CACHE.resolve() in dst.resolve().parents):
            print(f"fixtures: {dst} exists and is not a random-weight fixture; left as it is")
            return None
        dst.unlink()
    dst.symlink_to(src)
    return dst


def stand_ins() -> dict[str, object]:
    """Real file name (harness.model_catalog) -> the builder of the random-weight fixture of the
    same architecture that tests link under that name. Never an SD1.5 file under an SD2.1 name:
    each stands in only for its own architecture and container (.ckpt = torch zip)."""
    from .onestep_fixture import movie_onestep_student
    return {
        "v2-1_512-ema-pruned.safetensors": sd21_checkpoint,
        "v1-5-pruned-emaonly-fp16.safetensors": sd15_checkpoint,
        "instruct-pix2pix-00-22000.safetensors": lambda: sd15_checkpoint(ip2p=True),
        "control_v11e_sd15_ip2p_fp16.safetensors": sd15_controlnet,
        "mm_sd_v15_v2.ckpt": lambda: animatediff_motion_module_ckpt("v2"),
        "taesd_encoder.safetensors": lambda: taesd_files()[0],
        "taesd_decoder.safetensors": lambda: taesd_files()[1],
        "movie_guidance.safetensors": movie_guidance_adapter,
        "movie_onestep.safetensors": movie_onestep_student,
        "eve_align_lora.safetensors": eve_align_lora,
    }


def folder_of(name: str) -> str:
    """The model folder of a real file name (public or pack-trained)."""
    from .model_catalog import PUBLIC, TRAINED
    return (PUBLIC.get(name) or TRAINED[name]).directory


def install_taesd(base: Path) -> None:
    for f in taesd_files():
        _link(f, Path(base) / "models" / "vae_approx")


def install_all(base: Path = DEFAULT_BASE) -> None:
    """Generate every full-size fixture and link it into ``base/models`` under the name of the
    real file it stands in for, in that file's folder (what the shipped templates name)."""
    models = Path(base) / "models"
    for name, build in stand_ins().items():
        _link(build(), models / folder_of(name), name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=DEFAULT_BASE, help="ComfyUI base directory to link into")
    a = ap.parse_args()
    install_all(a.base)
    print(f"fixtures in {CACHE}, linked into {a.base / 'models'} under the names of the real files they stand in "
          "for. They are RANDOM weights: output is noise; replace the links with the real files for real results.")


if __name__ == "__main__":
    main()
