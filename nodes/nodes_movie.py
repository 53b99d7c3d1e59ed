"""MoViE fast path: Cross-Frame Attention, the two-knob InstructPix2Pix guider (Eq. 1, core's
Guider_DualCFG wired so it computes exactly Eq. 1), the CFG-distilled guider (one UNet pass per
step) and the guidance-adapter loader. The math lives in ``movie.py``; training nodes in
``nodes_movie_train.py``.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import folder_paths
from comfy_api.v0_0_2 import io
from comfy_extras.nodes_custom_sampler import Guider_DualCFG

from . import movie
from .training import atomic_save_safetensors

CATEGORY = "video edit/MoViE"
ADAPTER_FOLDER = "videoedit_guidance"

_S_I_TOOLTIP = ("Image guidance s_I: how much of the source frame to keep (higher = closer to the "
                "source). InstructPix2Pix default 1.5; the distilled student is trained on 1-3.")
_S_T_TOOLTIP = ("Text guidance s_T: how strongly to follow the instruction (higher = stronger edit). "
                "Default 7.5; the distilled student is trained on 2-14.")


def register_folder(name: str = ADAPTER_FOLDER) -> None:
    """models/<name> as a ComfyUI model folder of ours (once, also if the pack is imported twice)."""
    path = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths or path not in folder_paths.get_folder_paths(name):
        folder_paths.add_model_folder_path(name, path, is_default=True)


register_folder()


# ------------------------------------------------------------------------- helpers

def unet_of(model):
    return model.get_model_object("diffusion_model")


def model_family(model) -> dict:
    """What an adapter must match: the model class and the UNet's shape."""
    u = unet_of(model)
    return {"model": type(model.model).__name__, "in_channels": int(u.in_channels),
            "model_channels": int(u.model_channels), "out_channels": int(u.out_channels),
            "channel_mult": list(u.channel_mult),
            "context_dim": int(model.model.model_config.unet_config.get("context_dim") or 0)}


def require_ip2p(model, input_name: str = "model") -> None:
    c = int(unet_of(model).in_channels)
    if c != 8:
        raise ValueError(
            f"{input_name}: not an InstructPix2Pix model: its UNet takes {c} input channels, an "
            "InstructPix2Pix UNet takes 8 (4 noisy + 4 source-image latent channels). Load an "
            "InstructPix2Pix checkpoint (e.g. instruct-pix2pix-00-22000.safetensors) with Load Checkpoint.")


def with_image(conditioning, latent: torch.Tensor | None):
    """Conditioning with (or, for None, without) the source latent as IP2P's concat image."""
    out = []
    for t, d in conditioning:
        d = d.copy()
        d.pop("concat_latent_image", None)
        if latent is not None:
            d["concat_latent_image"] = latent
        out.append([t, d])
    return out


def student_patch(model):
    for p in model.model_options.get("transformer_options", {}).get("patches", {}).get("emb_patch", []):
        if getattr(p, "videoedit_guidance_patch", False):
            return p
    return None


def make_student(model, adapter: movie.GuidanceAdapter, train: bool = False):
    """model.clone() + the adapter's scale embedding (emb patch) and weight deltas: for sampling,
    merged into the weights once at load (core LoRA/diff patches, add_patches); for training,
    as trainable weight wrappers (add_weight_wrapper)."""
    require_ip2p(model, "model")
    fam = model_family(model)
    bad = movie.family_mismatch(adapter.family, fam)
    if bad:
        raise ValueError(
            f"guidance adapter: trained for another model family ({adapter.family['model']}, "
            + ", ".join(f"{k}={adapter.family.get(k)}" for k in bad) + f") than this model ({fam['model']}, "
            + ", ".join(f"{k}={fam.get(k)}" for k in bad) + "); use the adapter distilled from this teacher")
    sd_keys = set(model.model.state_dict().keys())
    missing = [k for k, _ in adapter.weight_wrappers() if k not in sd_keys]
    if missing:
        raise ValueError(f"guidance adapter: {len(missing)} of its weights (e.g. {missing[0]}) do not exist in this "
                         f"model ({fam['model']}); use the adapter distilled from this teacher")
    m = model.clone()
    m.set_model_emb_patch(adapter.emb_patch())
    if train:
        for key, delta in adapter.weight_wrappers():
            m.add_weight_wrapper(key, delta)
    else:
        from comfy.weight_adapter.lora import LoRAAdapter
        patches = {}
        for key, delta in adapter.weight_wrappers():
            if isinstance(getattr(delta, "diff", None), torch.Tensor):
                patches[key] = (delta.diff.detach().float().clone(),)
            else:
                patches[key] = LoRAAdapter(set(), (delta.up.detach().float().clone(), delta.down.detach().float().clone(),
                                                   float(delta.alpha), None, None, None))
        m.add_patches(patches, 1.0)
    m.videoedit_adapter = adapter  # plain attribute on our own clone (for saving / ranges)
    return m


def save_adapter(adapter: movie.GuidanceAdapter, path: str) -> None:
    sd, meta = adapter.to_state()
    atomic_save_safetensors(sd, path, meta)


def load_adapter(path: str) -> movie.GuidanceAdapter:
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return movie.GuidanceAdapter.from_state(load_file(path), meta, source=os.path.basename(path))


def adapter_names() -> list[str]:
    return [n for n in folder_paths.get_filename_list(ADAPTER_FOLDER) if n.endswith(".safetensors")]


# ------------------------------------------------------------------ cross-frame attention

class CrossFrameAttnPatch:
    """attn1 replacement: frames attend to themselves and to their group's anchor frames."""

    def __init__(self, mode: str, count: int):
        movie.select_anchors(1, mode, count)  # validates
        self.mode, self.count = mode, count

    def anchors(self, frames: int):
        return movie.select_anchors(frames, self.mode, self.count)

    def __call__(self, q, k, v, extra_options):
        groups = len(extra_options.get("cond_or_uncond") or [0])
        prec = extra_options.get("attn_precision")
        attn = lambda q_, k_, v_, h: comfy_attention.optimized_attention(q_, k_, v_, h, attn_precision=prec)
        return movie.cross_frame_attention(q, k, v, extra_options["n_heads"], groups, self.anchors, attn)


def transformer_blocks(model):
    """(block name, index) of every UNet block holding a SpatialTransformer."""
    u = unet_of(model)
    has_st = lambda blk: any(type(m).__name__ == "SpatialTransformer" for m in blk.modules())
    out = [("input", i) for i, b in enumerate(u.input_blocks) if has_st(b)]
    if has_st(u.middle_block):
        out.append(("middle", 0))
    out += [("output", i) for i, b in enumerate(u.output_blocks) if has_st(b)]
    return out


class CrossFrameAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditCrossFrameAttention",
            display_name="Cross-Frame Attention (MoViE)",
            category=CATEGORY,
            description=(
                "Patches a model so every frame's self-attention also attends to the keys and values of "
                "anchor frames (MoViE: the middle frame as sole anchor), which keeps an edit consistent "
                "across the clip. Each cond/uncond copy of the clip uses its own anchors."),
            inputs=[
                io.Model.Input("model", tooltip="The image-editing model (e.g. InstructPix2Pix) to patch."),
                io.Combo.Input("anchor", options=list(movie.ANCHOR_MODES), default="middle",
                               tooltip="Which frames every frame attends to: the middle frame (MoViE), the "
                                       "first frame, or anchor_count frames at equal intervals (Fairy)."),
                io.Int.Input("anchor_count", default=3, min=1, max=16,
                             tooltip="Number of anchors for 'evenly spaced' (ignored otherwise). More anchors "
                                     "cost more attention compute."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model; sample all frames of the clip in one batch.")],
        )

    @classmethod
    def execute(cls, model, anchor, anchor_count) -> io.NodeOutput:
        m = model.clone()
        patch = CrossFrameAttnPatch(anchor, anchor_count)
        for name, idx in transformer_blocks(m):
            m.set_model_attn1_replace(patch, name, idx)
        return io.NodeOutput(m)


# -------------------------------------------------------------------- two-knob guider

def check_source(source_latent, input_name="source_latent") -> torch.Tensor:
    s = source_latent["samples"]
    if s.ndim != 4 or s.shape[0] == 0 or s.shape[1] != 4:
        raise ValueError(f"{input_name}: expected source-frame latents [frames, 4, h, w] (from TAESD Encode "
                         f"or VAE Encode), got shape {list(s.shape)}")
    return s


class IP2PTwoKnobGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditIP2PGuider",
            display_name="InstructPix2Pix Two-Knob Guider (MoViE Eq. 1)",
            category=CATEGORY,
            description=(
                "The InstructPix2Pix teacher: eps(x,0,0) + s_I(eps(x,img,0) - eps(x,0,0)) + "
                "s_T(eps(x,img,txt) - eps(x,img,0)), 3 UNet passes per step. This is core DualCFGGuider "
                "wired as cond1 = instruction+image, cond2 = empty text+image, negative = empty text with a "
                "zero image, cfg_conds = s_T, cfg_cond2_negative = s_I. Use with SamplerCustomAdvanced."),
            inputs=[
                io.Model.Input("model", tooltip="An InstructPix2Pix model (8 input channels)."),
                io.Conditioning.Input("instruction", tooltip="The edit instruction, from CLIP Text Encode."),
                io.Conditioning.Input("empty_text", tooltip="CLIP Text Encode of an empty prompt (the null text)."),
                io.Latent.Input("source_latent", tooltip="Latents of the source frames (TAESD Encode / VAE Encode)."),
                io.Float.Input("image_guidance", default=1.5, min=0.0, max=30.0, step=0.05, tooltip=_S_I_TOOLTIP),
                io.Float.Input("text_guidance", default=7.5, min=0.0, max=30.0, step=0.1, tooltip=_S_T_TOOLTIP),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced."),
                     io.Latent.Output(display_name="latent", tooltip="Zero latent of the source's shape to "
                                                                     "start sampling from (add noise).")],
        )

    @classmethod
    def execute(cls, model, instruction, empty_text, source_latent, image_guidance, text_guidance) -> io.NodeOutput:
        require_ip2p(model)
        src = check_source(source_latent)
        g = Guider_DualCFG(model)
        g.set_conds(with_image(instruction, src), with_image(empty_text, src), with_image(empty_text, None))
        g.set_cfg(text_guidance, image_guidance, nested=False)
        return io.NodeOutput(g, {"samples": torch.zeros_like(src)})


# ------------------------------------------------------------------ distilled guider

class DistilledGuider(comfy.samplers.CFGGuider):
    """One UNet pass per step: the student on (image, instruction) with the knobs in its embedding."""

    def set_conds(self, positive):
        self.inner_set_conds({"positive": positive})

    def set_scales(self, s_i: float, s_t: float):
        self.scales = (float(s_i), float(s_t))

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        mo = dict(model_options)
        to = dict(mo.get("transformer_options", {}))
        to[movie.GUIDANCE_KEY] = self.scales
        mo["transformer_options"] = to
        return comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get("positive")], x, timestep, mo)[0]


class CFGDistilledGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditCFGDistilledGuider",
            display_name="CFG-Distilled Guider (MoViE)",
            category=CATEGORY,
            description=(
                "Samples with a guidance-distilled InstructPix2Pix student: ONE UNet pass per step instead "
                "of three, with image and text guidance still as knobs (MoViE Sec. 3.3). Use with "
                "SamplerCustomAdvanced; the model comes from Load Guidance Adapter or CFG Distill (train)."),
            inputs=[
                io.Model.Input("model", tooltip="The distilled student (teacher + guidance adapter)."),
                io.Conditioning.Input("instruction", tooltip="The edit instruction, from CLIP Text Encode."),
                io.Latent.Input("source_latent", tooltip="Latents of the source frames (TAESD Encode / VAE Encode)."),
                io.Float.Input("image_guidance", default=1.5, min=0.0, max=30.0, step=0.05, tooltip=_S_I_TOOLTIP),
                io.Float.Input("text_guidance", default=7.5, min=0.0, max=30.0, step=0.1, tooltip=_S_T_TOOLTIP),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced."),
                     io.Latent.Output(display_name="latent", tooltip="Zero latent of the source's shape."),
                     io.String.Output(display_name="info", tooltip="Settings and warnings (e.g. knobs outside "
                                                                   "the trained range).")],
        )

    @classmethod
    def execute(cls, model, instruction, source_latent, image_guidance, text_guidance) -> io.NodeOutput:
        require_ip2p(model)
        if student_patch(model) is None:
            raise ValueError("model: not a guidance-distilled student (no guidance embedding); connect the "
                             "MODEL output of Load Guidance Adapter or CFG Distill (train)")
        src = check_source(source_latent)
        g = DistilledGuider(model)
        g.set_conds(with_image(instruction, src))
        g.set_scales(image_guidance, text_guidance)
        ad = getattr(model, "videoedit_adapter", None)
        lines = [f"CFG-distilled: 1 UNet pass/step, image_guidance={image_guidance:g}, text_guidance={text_guidance:g}"]
        if ad is not None:
            lines += ad.in_range(image_guidance, text_guidance)
        return io.NodeOutput(g, {"samples": torch.zeros_like(src)}, "\n".join(lines))


class LoadGuidanceAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditLoadGuidanceAdapter",
            display_name="Load Guidance Adapter (MoViE)",
            category=CATEGORY,
            description=(
                "Turns an InstructPix2Pix model into its guidance-distilled student with an adapter file from "
                f"models/{ADAPTER_FOLDER} (written by CFG Distill (train)): scale embedding + weight deltas."),
            inputs=[
                io.Model.Input("model", tooltip="The InstructPix2Pix teacher the adapter was distilled from."),
                io.Combo.Input("adapter_name", options=adapter_names(),
                               tooltip=f"Adapter file in models/{ADAPTER_FOLDER}."),
            ],
            outputs=[io.Model.Output(tooltip="The student; sample it with CFG-Distilled Guider."),
                     io.String.Output(display_name="info", tooltip="What the adapter was trained on.")],
        )

    @classmethod
    def execute(cls, model, adapter_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(ADAPTER_FOLDER, adapter_name)
        if path is None:
            raise FileNotFoundError(f"adapter_name: '{adapter_name}' is not in models/{ADAPTER_FOLDER} "
                                    f"({', '.join(folder_paths.get_folder_paths(ADAPTER_FOLDER))}); refresh the list")
        ad = load_adapter(path)
        student = make_student(model, ad)
        info = (f"{adapter_name}: {ad.kind} (rank {ad.rank}), {len(ad.deltas)} weight deltas, {ad.steps} steps, "
                f"trained image_guidance {ad.s_i_range}, text_guidance {ad.s_t_range}, family {json.dumps(ad.family)}")
        return io.NodeOutput(student, info)


NODES = [CrossFrameAttention, IP2PTwoKnobGuider, CFGDistilledGuider, LoadGuidanceAdapter]
