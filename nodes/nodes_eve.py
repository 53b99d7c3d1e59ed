"""EVE (plug-and-play part): video adapter loading/injection, the adapter stacker, long clips.

The math lives in nodes/temporal_adapter.py (temporal layers, AnimateDiff keys) and
nodes/eve.py (anchoring rule, sliding-window plan and blend weights). Here:
- temporal layers enter the UNet on a ``clone()`` through object patches that swap a block
  for a ``TimestepEmbedSequential`` holding the same layers under the same names plus ours
  (so weight-patch keys such as LoRA's still resolve) and a ``forward_timestep_embed_patch``
  that runs them with the frame count of the current batch;
- the ControlNet is core's (``ControlNetApplyAdvanced``): every frame is its own hint;
- long clips: our windows are a core context handler (``model_options["context_handler"]``,
  the slot core's Context Windows nodes fill), which also cuts each per-frame ControlNet hint
  to the window's frames (core's handler would feed every window the first frames' hints);
- zero-terminal SNR: core's ModelSamplingDiscrete(zsnr=True).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch

import comfy.context_windows as cw
import comfy.utils
import folder_paths
import nodes as comfy_nodes
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, TimestepEmbedSequential
from comfy.ldm.modules.attention import SpatialTransformer
from comfy_api.v0_0_2 import io

from . import eve
from .atomic_file import atomic_path
from .temporal_adapter import (TemporalAttentionBlock, TemporalConvBlock, VideoAdapter, adapter_from_state_dict,
                               check_adapter, fresh_adapter, unet_layout)

CATEGORY = "video edit/EVE"
FOLDER = "animatediff_models"
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
OPTS_KEY = "videoedit_eve"
VideoAdapterType = io.Custom("VIDEOEDIT_VIDEO_ADAPTER")


def _register_folder() -> None:
    """The folder AnimateDiff-Evolved users already have; added only if nobody registered it."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


_register_folder()


def adapter_names() -> list[str]:
    _register_folder()
    return [n for n in folder_paths.get_filename_list(FOLDER) if n.lower().endswith(EXTENSIONS)]


_cache: dict[tuple, VideoAdapter] = {}


def load_adapter(name: str) -> VideoAdapter:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"video adapter '{name}' is not in models/{FOLDER} "
                                f"({', '.join(folder_paths.get_folder_paths(FOLDER))}); put the motion module there and refresh")
    key = (path, os.path.getmtime(path))
    if key not in _cache:
        try:
            sd = comfy.utils.load_torch_file(path, safe_load=True)  # safetensors or torch.load(weights_only=True)
        except Exception as e:
            raise ValueError(f"video adapter '{name}': cannot read {path} ({type(e).__name__}: {e}); the file is "
                             "corrupt or not a checkpoint; download it again") from None
        _cache.clear()
        _cache[key] = adapter_from_state_dict(sd, name)
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


def _run_temporal(layer, x, emb, context, transformer_options, *args):
    opts = transformer_options.get(OPTS_KEY, {})
    frames = eve.frames_for_batch(x.shape[0], len(transformer_options.get("cond_or_uncond", ())) or 1)
    p = next(layer.parameters())
    if p.device != x.device or p.dtype != x.dtype:
        layer.to(device=x.device, dtype=x.dtype)
    return layer(x, frames, anchor=opts.get("anchor", False))


def apply_video_adapter(model, adapter: VideoAdapter, anchor: bool):
    """A clone of ``model`` running ``adapter``'s temporal layers (frames = batch axis)."""
    layout = backbone_layout(model)
    check_adapter(adapter, layout)
    m = model.clone()
    unet = model.model.diffusion_model
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
    for cls in (TemporalAttentionBlock, TemporalConvBlock):
        m.set_model_forward_timestep_embed_patch((cls, _run_temporal))
    m.model_options["transformer_options"][OPTS_KEY] = {"anchor": bool(anchor), "max_frames": adapter.max_frames}
    return m


# ----------------------------------------------------------------------- long clips

def _eve_schedule(num_frames, handler, model_options):
    return [list(w.frames) for w in handler.plan(num_frames)]


class EVEWindows(cw.IndexListContextHandler):
    """Core context handler with the EVE window plan: anchor-prepended windows, normalised
    linear cross-fades (nodes/eve.py), and per-frame ControlNet hints cut to each window."""

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


# ----------------------------------------------------------------------------- nodes

_MODEL_TIP = "The frozen text-to-image backbone (SD1.5 checkpoint); it is cloned, never changed."
_ADAPTER_TIP = "The video adapter: an AnimateDiff motion module (Load Video Adapter) or a fresh one."
_ANCHOR_TIP = ("Anchor on the first frame (EVE): frame 0 is edited by the image-edit adapter alone and every "
               "temporal layer lets the other frames attend to it without changing it.")
SCHEDULES = {"backbone default": None, "zero-terminal SNR (eps)": "eps",
             "zero-terminal SNR (v-prediction)": "v_prediction"}


class LoadVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVELoadVideoAdapter", display_name="Load Video Adapter (EVE)", category=CATEGORY,
            description=("Loads a video adapter: an AnimateDiff v2/v3 SD1.5 motion module (temporal attention "
                         "trained over a frozen SD1.5) or an adapter saved by this pack, from models/animatediff_models."),
            inputs=[io.Combo.Input("adapter_name", options=adapter_names(),
                                   tooltip="File in models/animatediff_models (.safetensors; .ckpt is read with "
                                           "torch.load(weights_only=True)), e.g. mm_sd_v15_v2 or v3_sd15_mm.")],
            outputs=[VideoAdapterType.Output(display_name="video_adapter", tooltip="Temporal layers for the stacker.")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        return io.NodeOutput(load_adapter(adapter_name))


class InitVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEInitVideoAdapter", display_name="New Video Adapter (EVE)", category=CATEGORY,
            description=("A fresh video adapter for the backbone (Emu Video / Make-A-Video temporal layers): temporal "
                         "attention after every spatial attention block with a zero output projection and, optionally, "
                         "a temporal 1-D conv after every ResNet block, identity-initialised. Fresh, it changes "
                         "nothing: the start point for training."),
            inputs=[
                io.Model.Input("model", tooltip="The backbone the adapter is for (its channel layout is read)."),
                io.Boolean.Input("temporal_conv", default=False,
                                 tooltip="Also add residual temporal 1-D convolutions after the spatial convolutions."),
                io.Int.Input("max_frames", default=32, min=2, max=256,
                             tooltip="Length of the temporal positional encoding: the longest window it can see."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the initialisation of the non-zero layers."),
            ],
            outputs=[VideoAdapterType.Output(display_name="video_adapter", tooltip="An identity video adapter.")],
        )

    @classmethod
    def execute(cls, model, temporal_conv, max_frames, seed) -> io.NodeOutput:
        return io.NodeOutput(fresh_adapter(backbone_layout(model, temporal_conv), temporal_conv, max_frames, seed))


class SaveVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVESaveVideoAdapter", display_name="Save Video Adapter (EVE)", category=CATEGORY,
            description="Saves a video adapter to models/animatediff_models in the AnimateDiff key layout (safetensors).",
            inputs=[VideoAdapterType.Input("video_adapter", tooltip="The adapter to save."),
                    io.String.Input("filename", default="eve_video_adapter",
                                    tooltip="File name (without extension) in models/animatediff_models.")],
            outputs=[], is_output_node=True,
        )

    @classmethod
    def execute(cls, video_adapter, filename) -> io.NodeOutput:
        from safetensors.torch import save_file
        name = os.path.basename(filename.strip()) or "eve_video_adapter"
        folder = folder_paths.get_folder_paths(FOLDER)[0]
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name if name.endswith(".safetensors") else name + ".safetensors")
        sd = {k: v.detach().float().contiguous().cpu() for k, v in video_adapter.adapter_state_dict().items()}
        with atomic_path(path) as tmp:  # the pack's one atomic write
            save_file(sd, str(tmp))
        return io.NodeOutput()


class ApplyVideoAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEApplyVideoAdapter", display_name="Apply Video Adapter (EVE)", category=CATEGORY,
            description=("Adds the video adapter's temporal layers to a clone of the model (frames = batch). No windows: "
                         "pair it with core Context Windows for long clips, or use the Adapter Stacker."),
            inputs=[io.Model.Input("model", tooltip=_MODEL_TIP),
                    VideoAdapterType.Input("video_adapter", tooltip=_ADAPTER_TIP),
                    io.Boolean.Input("anchor_first_frame", default=False, tooltip=_ANCHOR_TIP + (
                        " Without the stacker's windows, each window's first frame is the one kept."))],
            outputs=[io.Model.Output(tooltip="The backbone with temporal layers.")],
        )

    @classmethod
    def execute(cls, model, video_adapter, anchor_first_frame) -> io.NodeOutput:
        return io.NodeOutput(apply_video_adapter(model, video_adapter, anchor_first_frame))


class AdapterStacker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditEVEAdapterStacker", display_name="EVE Adapter Stacker", category=CATEGORY,
            description=(
                "EVE plug-and-play video editing (Sec. 3.1): stacks the image-edit adapter (a ControlNet such as "
                "control_v11e_sd15_ip2p, applied per frame to the source frames) and the video adapter on one frozen "
                "backbone, optionally with a LoRA (the aligner) on top. Frame 0 anchors the video adapter; long clips "
                "run in cross-faded sliding windows (a core context handler: a later core Context Windows node "
                "replaces it). Sample the outputs with KSampler on a latent of the clip's frames."),
            inputs=[
                io.Model.Input("model", tooltip=_MODEL_TIP),
                VideoAdapterType.Input("video_adapter", tooltip=_ADAPTER_TIP),
                io.ControlNet.Input("control_net", tooltip="The image-edit adapter, e.g. control_v11e_sd15_ip2p (Load ControlNet Model)."),
                io.Image.Input("images", tooltip="The source frames; frame i is the ControlNet hint of output frame i."),
                io.Conditioning.Input("positive", tooltip="The edit instruction / output caption (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (CLIP Text Encode; may be empty)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Strength of the image-edit ControlNet."),
                io.Int.Input("context_length", default=8, min=0, max=256,
                             tooltip="Frames per sliding window (EVE: 8; AnimateDiff modules: up to 32 incl. the anchor). "
                                     "0 = no windows (the whole clip at once, or core Context Windows if set)."),
                io.Int.Input("context_overlap", default=4, min=0, max=255,
                             tooltip="Frames shared by neighbouring windows; they are cross-faded. Below context_length."),
                io.Boolean.Input("anchor_first_frame", default=True, tooltip=_ANCHOR_TIP),
                io.Combo.Input("noise_schedule", options=list(SCHEDULES), default="backbone default",
                               tooltip="Zero-terminal SNR (Emu Video) through core ModelSamplingDiscrete(zsnr); use it "
                                       "with models trained that way (v-prediction for a backbone fine-tuned so)."),
                io.Combo.Input("lora_name", options=["none"] + folder_paths.get_filename_list("loras"), default="none",
                               tooltip="A LoRA stacked on top (e.g. the EVE aligner), from models/loras."),
                io.Float.Input("lora_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of that LoRA on the model."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The stacked model for KSampler."),
                     io.Conditioning.Output(display_name="positive", tooltip="Positive with the per-frame ControlNet."),
                     io.Conditioning.Output(display_name="negative", tooltip="Negative with the per-frame ControlNet.")],
        )

    @classmethod
    def execute(cls, model, video_adapter, control_net, images, positive, negative, control_strength, context_length,
                context_overlap, anchor_first_frame, noise_schedule, lora_name, lora_strength) -> io.NodeOutput:
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
            m = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(m, lora_name, lora_strength)[0]
        if SCHEDULES[noise_schedule] is not None:
            from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
            m = ModelSamplingDiscrete().patch(m, SCHEDULES[noise_schedule], True)[0]
        m = apply_video_adapter(m, video_adapter, anchor_first_frame)
        if context_length:
            m = set_windows(m, context_length, context_overlap, anchor_first_frame)
        pos, neg = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control_net, images[..., :3], control_strength, 0.0, 1.0)
        return io.NodeOutput(m, pos, neg)


NODES = [LoadVideoAdapter, InitVideoAdapter, SaveVideoAdapter, ApplyVideoAdapter, AdapterStacker]
