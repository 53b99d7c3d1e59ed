"""EVE's plug-and-play part on ComfyUI models (engine): video adapter files and injection, the
adapter stacker, long clips.

The math lives in eve/temporal_adapter.py (temporal layers, AnimateDiff keys) and
eve/windows.py (anchoring rule, sliding-window plan and blend weights). Here:
- temporal layers enter the UNet on a ``clone()`` through object patches that swap a block
  for a ``TimestepEmbedSequential`` holding the same layers under the same names plus ours
  (so weight-patch keys such as LoRA's still resolve) and a ``forward_timestep_embed_patch``
  (``TemporalLayersPatch``, which also carries the anchoring setting) that runs them with the
  frame count of the current batch;
- the ControlNet is core's ControlNet object on the conditionings (``apply_control_net``, what
  core ControlNetApplyAdvanced does): every frame is its own hint;
- long clips: our windows are a core context handler (``model_options["context_handler"]``,
  the slot core's Context Windows nodes fill), which also cuts each per-frame ControlNet hint
  to the window's frames (core's handler would feed every window the first frames' hints);
- zero-terminal SNR: core's discrete schedule with zsnr (host.model_sampling);
- the optional LoRA through core's LoRA functions, refused when it does not fit (host.lora).
"""
from __future__ import annotations

import os
from collections import OrderedDict


import comfy.context_windows as cw
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, TimestepEmbedSequential
from comfy.ldm.modules.attention import SpatialTransformer

from ..core.atomic_file import atomic_save_safetensors
from ..core.weight_files import read_weights
from ..host.folders import model_file_names, model_file_path, register_model_folder, save_path
from ..host.lora import load_model_lora
from ..host.model_sampling import with_discrete_sampling
from . import windows as eve
from .temporal_adapter import (TemporalAttentionBlock, TemporalConvBlock, VideoAdapter, adapter_from_state_dict,
                               check_adapter, unet_layout)

FOLDER = "animatediff_models"  # the folder AnimateDiff-Evolved users already have
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")

register_model_folder(FOLDER, shared=True)


def video_adapter_names() -> list[str]:
    register_model_folder(FOLDER, shared=True)
    return model_file_names(FOLDER, EXTENSIONS)


_cache: dict[tuple, VideoAdapter] = {}


def load_video_adapter(name: str) -> VideoAdapter:
    path = model_file_path(FOLDER, name, "adapter_name", "put the motion module there and refresh")
    key = (path, os.path.getmtime(path))
    if key not in _cache:
        # safetensors, or a .ckpt through torch.load(weights_only=True): a pickle's code never runs
        sd, _ = read_weights(path, "adapter_name", f"download the motion module again ({path})", torch_files=True,
                             unwrap=True)
        _cache.clear()
        try:
            _cache[key] = adapter_from_state_dict(sd, name)
        except ValueError as e:  # its messages start with the file name
            raise ValueError(f"adapter_name: {e}") from None
    return _cache[key]


# ------------------------------------------------------------------------ injection

def backbone_layout(model, temporal_conv: bool = True):
    unet = model.model.diffusion_model
    if not all(hasattr(unet, a) for a in ("model_channels", "channel_mult", "num_res_blocks", "input_blocks")):
        raise ValueError(f"model: the video adapter needs an SD-style UNet backbone (SD1.5); got "
                         f"{type(unet).__name__}; load an SD1.5 checkpoint")
    has_mid_attn = any(isinstance(m, SpatialTransformer) for m in unet.middle_block)
    return unet_layout(unet.model_channels, unet.channel_mult, unet.num_res_blocks, has_mid_attn, temporal_conv)


def _insert_at(layers: list, after: str) -> int:
    if after == "spatial":
        attn = [i for i, m in enumerate(layers) if isinstance(m, SpatialTransformer)]
        if attn:
            return attn[-1] + 1
        return [i for i, m in enumerate(layers) if isinstance(m, ResBlock)][0] + 1
    k = int(after.split(":")[1])
    return [i for i, m in enumerate(layers) if isinstance(m, ResBlock)][k] + 1


def _block_path(stage: str, index: int) -> str:
    return "diffusion_model.middle_block" if stage == "middle" else f"diffusion_model.{stage}_blocks.{index}"


class TemporalLayersPatch:
    """``forward_timestep_embed_patch`` handler of our temporal layers: runs one with the frame
    count of the current batch (frames = batch / conditionings) and this model's anchoring. The
    setting lives in the patch, which every clone carries (and the trainer's calls reuse)."""

    def __init__(self, anchor: bool):
        self.anchor = bool(anchor)

    def __call__(self, layer, x, emb, context, transformer_options, *args):
        frames = eve.frames_for_batch(x.shape[0], len(transformer_options.get("cond_or_uncond", ())) or 1)
        p = next(layer.parameters())
        if p.device != x.device or p.dtype != x.dtype:
            layer.to(device=x.device, dtype=x.dtype)
        return layer(x, frames, anchor=self.anchor)


def apply_video_adapter(model, adapter: VideoAdapter, anchor: bool):
    """A clone of ``model`` running ``adapter``'s temporal layers (frames = batch axis)."""
    layout = backbone_layout(model)
    check_adapter(adapter, layout)
    m = model.clone()
    per_block: dict[str, list] = {}
    for prefix, mod in adapter.items():
        pl = layout[prefix]
        per_block.setdefault(_block_path(pl.stage, pl.index), []).append((pl.after, prefix, mod))
    for path, mods in per_block.items():
        # this patcher's own block: its object patch if it has one, else the original (the live
        # model may still hold another clone's patched block, whose original is in the backup)
        if path in m.object_patches:
            block = m.object_patches[path]
        elif path in m.object_patches_backup:
            block = m.object_patches_backup[path]
        else:
            block = comfy.utils.get_attr(m.model, path)
        named = [(n, l) for n, l in block.named_children()]
        if any(n.startswith("eve_") for n, _ in named):
            raise ValueError("model: it already carries a video adapter; apply one video adapter to the plain "
                             "backbone (a second one would replace the first's layers)")
        plain = [l for _, l in named]
        # at one position a temporal conv (after a ResBlock) runs before a temporal attention
        inserts = sorted(((_insert_at(plain, after), i, prefix, mod) for i, (after, prefix, mod) in enumerate(mods)),
                         key=lambda t: (t[0], ".motion_modules." in t[2], t[1]))
        out = OrderedDict()
        for pos in range(len(named) + 1):
            for p, _, prefix, mod in inserts:
                if p == pos:
                    out["eve_" + prefix.replace(".", "_")] = mod
            if pos < len(named):
                out[named[pos][0]] = named[pos][1]
        m.add_object_patch(path, TimestepEmbedSequential(out))
    run = TemporalLayersPatch(anchor)
    for cls in (TemporalAttentionBlock, TemporalConvBlock):
        m.set_model_forward_timestep_embed_patch((cls, run))
    return m


# ----------------------------------------------------------------------- long clips

def _eve_schedule(num_frames, handler, model_options):
    return [list(w.frames) for w in handler.plan(num_frames)]


class EVEWindows(cw.IndexListContextHandler):
    """Core context handler with the EVE window plan: anchor-prepended windows, normalised
    linear cross-fades (eve/windows.py), and per-frame ControlNet hints cut to each window."""

    def __init__(self, length: int, overlap: int, anchor: bool):
        super().__init__(cw.ContextSchedule("videoedit_eve", _eve_schedule),
                         cw.ContextFuseMethod("videoedit_eve", cw.create_weights_flat),
                         context_length=length, context_overlap=overlap, dim=0)
        self.anchor = anchor

    def set_step(self, timestep, model_options):
        # frames are the batch here, so the timestep holds one value per frame; core's
        # set_step compares the whole tensor with sample_sigmas (fine only for dim>0 models)
        super().set_step(timestep.flatten()[:1], model_options)

    def plan(self, num_frames: int) -> list[eve.Window]:
        return eve.window_plan(num_frames, self.context_length, self.context_overlap, self.anchor)

    def get_resized_cond(self, cond_in, x_in, window, device=None):
        resized = super().get_resized_cond(cond_in, x_in, window, device)
        if resized is None:
            return None
        for c in resized:
            if c.get("control") is not None:
                c["control"] = _window_control(c["control"], window.index_list, x_in.shape[0])
        return resized

    def combine_context_window_results(self, x_in, sub_conds_out, sub_conds, window, window_idx, total_windows,
                                       timestep, conds_final, counts_final, biases_final):
        w = self.plan(x_in.shape[0])[window_idx]
        assert list(w.frames) == list(window.index_list)
        weights = cw.match_weights_to_dim(list(w.weights), x_in, 0, device=x_in.device).to(x_in.dtype)
        for i in range(len(sub_conds_out)):
            window.add_window(conds_final[i], sub_conds_out[i] * weights)
            window.add_window(counts_final[i], weights)


def _window_control(control, index_list, num_frames):
    """A copy of a ControlNet chain whose per-frame hints are the window's frames."""
    prev = control.previous_controlnet
    hint = control.cond_hint_original
    if hint is not None and hint.shape[0] not in (1, num_frames):
        raise ValueError(f"control image: {hint.shape[0]} frames but the latent has {num_frames}; give the "
                         "ControlNet the same frames as the clip being edited")
    c = control.copy()
    for attr in ("timestep_range", "model_sampling_current"):  # state pre_run gave the original
        if hasattr(control, attr):
            setattr(c, attr, getattr(control, attr))
    if hint is not None and hint.shape[0] == num_frames:
        c.cond_hint_original = hint[index_list]
    c.previous_controlnet = _window_control(prev, index_list, num_frames) if prev is not None else None
    return c


def set_windows(model, length: int, overlap: int, anchor: bool):
    m = model.clone()
    m.model_options["context_handler"] = EVEWindows(length, overlap, anchor)
    cw.create_prepare_sampling_wrapper(m)
    return m


# ------------------------------------------------------------------------ checks

def _signature(net) -> tuple:
    ctx = next((mod.in_features for n, mod in net.named_modules() if n.endswith("attn2.to_k")), None)
    return net.model_channels, tuple(net.channel_mult), ctx


def check_controlnet(model, control_net) -> None:
    """ControlNet made for another backbone -> ValueError naming both shapes."""
    cm = getattr(control_net, "control_model", None)
    if cm is None or not hasattr(cm, "channel_mult"):
        return  # ControlLoRA / T2I adapters: core checks them when they run
    unet = model.model.diffusion_model
    got, want = _signature(cm), _signature(unet)
    if got != want:
        names = ("model_channels", "channel_mult", "context_dim")
        raise ValueError(
            "control_net: this ControlNet was made for another backbone (" +
            ", ".join(f"{n} {g} vs backbone {w}" for n, g, w in zip(names, got, want) if g != w) +
            "); load a ControlNet for the same family as the checkpoint (SD1.5: control_v11e_sd15_ip2p)")


# ------------------------------------------------------------------------ the nodes' work

SCHEDULES = {"backbone default": None, "zero-terminal SNR (eps)": "eps",
             "zero-terminal SNR (v-prediction)": "v_prediction"}


def apply_control_net(positive, negative, control_net, images, strength: float):
    """(positive, negative) with ``control_net`` on every conditioning, ``images`` [F, H, W, C] one
    hint per frame, over the whole schedule: core ControlNetApplyAdvanced's result (one copy per
    previous ControlNet, chained to it, not applied to uncond); strength 0 returns the inputs."""
    if strength == 0:
        return positive, negative
    hint = images.movedim(-1, 1)
    per_previous = {}
    out = []
    for conditioning in (positive, negative):
        c = []
        for emb, opts in conditioning:
            d = opts.copy()
            previous = d.get("control", None)
            if previous not in per_previous:
                net = control_net.copy().set_cond_hint(hint, strength, (0.0, 1.0))
                net.set_previous_controlnet(previous)
                per_previous[previous] = net
            d["control"] = per_previous[previous]
            d["control_apply_to_uncond"] = False
            c.append([emb, d])
        out.append(c)
    return out[0], out[1]


def save_video_adapter(adapter: VideoAdapter, filename: str, overwrite: bool = False) -> str:
    """Save Video Adapter: the AnimateDiff key layout, float32 safetensors, in models/animatediff_models
    (a plain file name; an existing file only with ``overwrite``). Returns the path written."""
    path = save_path(FOLDER, filename, "filename", overwrite)
    atomic_save_safetensors({k: v.float() for k, v in adapter.adapter_state_dict().items()}, path)
    return path


def stack_adapters(model, video_adapter: VideoAdapter, control_net, images, positive, negative, control_strength,
                   context_length, context_overlap, anchor_first_frame, noise_schedule, lora_name, lora_strength):
    """EVE Adapter Stacker: (model, positive, negative) with the optional LoRA, noise schedule, video
    adapter, windows and the per-frame ControlNet."""
    if images.shape[0] == 0:
        raise ValueError("images: the clip has zero frames; load a video with at least one frame")
    check_controlnet(model, control_net)
    if context_length and context_overlap >= context_length:
        raise ValueError(f"context_overlap ({context_overlap}) must be below context_length ({context_length})")
    windowed = 0 < context_length < images.shape[0]
    need = context_length + int(anchor_first_frame) if windowed else images.shape[0]
    if need > video_adapter.max_frames:
        raise ValueError(f"video_adapter '{video_adapter.name}' sees at most {video_adapter.max_frames} frames at "
                         f"once but the windows need {need}; lower context_length")
    m = model
    if lora_name != "none":
        m = load_model_lora(m, model_file_path("loras", lora_name, "lora_name"), lora_strength)
    if SCHEDULES[noise_schedule] is not None:
        m = with_discrete_sampling(m, SCHEDULES[noise_schedule], zsnr=True)
    m = apply_video_adapter(m, video_adapter, anchor_first_frame)
    if context_length:
        m = set_windows(m, context_length, context_overlap, anchor_first_frame)
    pos, neg = apply_control_net(positive, negative, control_net, images[..., :3], control_strength)
    return m, pos, neg
