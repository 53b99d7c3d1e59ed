"""MoViE's fast path on a ComfyUI model (engine): the guidance-distilled student (teacher + guidance
adapter on a clone, the adapter attached where clones keep it), the adapter files, cross-frame
attention as an attn1 patch, the two-knob InstructPix2Pix guider (Eq. 1, three conditionings in
one batched call, as core's DualCFGGuider "regular" style computes it) and the CFG-distilled
guider (one UNet pass per step), and
Mobile-Pix2Pix's attention removal. The math is ``guidance.py``, ``cross_frame.py``,
``mobile_pix2pix.py``.
"""
from __future__ import annotations

import math
import os

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers

from ..core.atomic_file import atomic_save_safetensors
from ..core.weight_files import read_weights
from ..host.attach import attach, attached
from ..host.folders import model_file_names, model_file_path, register_model_folder
from ..host.model_family import model_family, require_ip2p, unet_of
from . import cross_frame, guidance as movie
from .mobile_pix2pix import RemovedAttention, highest_resolution_attention

ADAPTER_FOLDER = "videoedit_guidance"
GUIDANCE_ADAPTER_KEY = "videoedit.movie.guidance_adapter"  # attachment: the adapter a student carries
ONESTEP_FORMAT = "videoedit.movie.onestep_student"  # a one-step student file (engine_onestep writes it)

register_model_folder(ADAPTER_FOLDER)


# ------------------------------------------------------------------------- the student

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
    src = adapter.source
    bad = movie.family_mismatch(adapter.family, fam)
    if bad:
        raise ValueError(
            f"{src}: trained for another model family ({adapter.family.get('model')}, "
            + ", ".join(f"{k}={adapter.family.get(k)}" for k in bad) + f") than this model ({fam['model']}, "
            + ", ".join(f"{k}={fam.get(k)}" for k in bad) + "); use the adapter distilled from this teacher")
    emb_dim = int(unet_of(model).time_embed[-1].weight.shape[0])
    if adapter.embed.time_embed_dim != emb_dim:
        raise ValueError(f"{src}: its guidance embedding is {adapter.embed.time_embed_dim}-dimensional, this model's "
                         f"timestep embedding {emb_dim}; use the adapter distilled from this teacher")
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    misfits = adapter.misfits(shapes)
    if misfits:
        raise ValueError(f"{src}: {len(misfits)} of its {len(adapter.deltas)} weight deltas do not fit this model "
                         f"({fam['model']}; e.g. {misfits[0]}); the file is damaged or made for another UNet: use the "
                         "adapter distilled from this teacher, or distill it again")
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
        applied = m.add_patches(patches, 1.0)
        if len(applied) != len(patches):  # every key was checked above; core must take every one
            raise ValueError(f"{src}: ComfyUI applied {len(applied)} of its {len(patches)} weight deltas to this "
                             "model; use the adapter distilled from this teacher")
    attach(m, GUIDANCE_ADAPTER_KEY, adapter)  # survives clone(): Cross-Frame Attention etc. downstream
    return m


def guidance_adapter_of(model) -> movie.GuidanceAdapter | None:
    """The guidance adapter a student carries (None for any other model)."""
    return attached(model, GUIDANCE_ADAPTER_KEY)


def save_guidance_adapter(adapter: movie.GuidanceAdapter, path: str, extra_meta: dict | None = None) -> None:
    """The adapter file, atomically (``extra_meta``: e.g. the training run that wrote it)."""
    sd, meta = adapter.to_state()
    atomic_save_safetensors(sd, path, {**meta, **(extra_meta or {})})


def load_guidance_adapter(path: str, input_name: str = "adapter_name") -> movie.GuidanceAdapter:
    """A guidance adapter file (core.weight_files: safetensors only, every failure named)."""
    sd, meta = read_weights(path, input_name, "pick a file written by CFG Distill (train), or copy it again")
    if meta.get("format") == ONESTEP_FORMAT:
        raise ValueError(f"{input_name}: '{os.path.basename(path)}' is a one-step student, not a guidance adapter; "
                         "load it with Load One-Step Student, and pick the adapter it was distilled from here")
    return movie.GuidanceAdapter.from_state(sd, meta, source=f"{input_name}: '{os.path.basename(path)}'")


def guidance_adapter_names() -> list[str]:
    return model_file_names(ADAPTER_FOLDER)


def load_guidance_student(model, adapter_name: str):
    """Load Guidance Adapter: the student of ``model`` with the adapter file ``adapter_name``."""
    ad = load_guidance_adapter(model_file_path(ADAPTER_FOLDER, adapter_name, "adapter_name"))
    return make_student(model, ad), ad


# ------------------------------------------------------------------ cross-frame attention

class CrossFrameAttnPatch:
    """attn1 replacement: frames attend to themselves and to their group's anchor frames."""

    def __init__(self, mode: str, count: int):
        cross_frame.select_anchors(1, mode, count)  # validates
        self.mode, self.count = mode, count

    def anchors(self, frames: int):
        return cross_frame.select_anchors(frames, self.mode, self.count)

    def __call__(self, q, k, v, extra_options):
        groups = len(extra_options.get("cond_or_uncond") or [0])
        prec = extra_options.get("attn_precision")
        attn = lambda q_, k_, v_, h: comfy_attention.optimized_attention(q_, k_, v_, h, attn_precision=prec)
        return cross_frame.cross_frame_attention(q, k, v, extra_options["n_heads"], groups, self.anchors, attn)


def transformer_blocks(model):
    """(block name, index) of every UNet block holding a SpatialTransformer."""
    u = unet_of(model)
    has_st = lambda blk: any(type(m).__name__ == "SpatialTransformer" for m in blk.modules())
    out = [("input", i) for i, b in enumerate(u.input_blocks) if has_st(b)]
    if has_st(u.middle_block):
        out.append(("middle", 0))
    out += [("output", i) for i, b in enumerate(u.output_blocks) if has_st(b)]
    return out



def check_source(source_latent, input_name="source_latent") -> torch.Tensor:
    s = source_latent["samples"]
    if s.ndim != 4 or s.shape[0] == 0 or s.shape[1] != 4:
        raise ValueError(f"{input_name}: expected source-frame latents [frames, 4, h, w] (from TAESD Encode "
                         f"or VAE Encode), got shape {list(s.shape)}")
    return s



class TwoKnobGuider(comfy.samplers.CFGGuider):
    """InstructPix2Pix Eq. 1 from three conditionings batched in one call: (image, text), (image,
    empty text) and (no image, empty text); eps = eps_unc + s_I (eps_img - eps_unc) + s_T (eps_full
    - eps_img), the image term through core's cfg_function (so sampler_cfg_function patches apply),
    and core's skips of the passes a knob of 1 does not need. Core's Guider_DualCFG computes the
    same (the oracle in tests/test_movie_nodes.py); it lives in a node file, which core does not
    keep importable."""

    def set_conds(self, image_text, image_only, unconditional):
        image_only = [[emb, {**opts, "prompt_type": "negative"}] for emb, opts in image_only]
        self.inner_set_conds({"positive": image_text, "middle": image_only, "negative": unconditional})

    def set_scales(self, s_i: float, s_t: float):
        self.s_i, self.s_t = s_i, s_t

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        unconditional, image_only, image_text = (self.conds.get(k) for k in ("negative", "middle", "positive"))
        if not model_options.get("disable_cfg1_optimization", False):
            if math.isclose(self.s_i, 1.0):
                unconditional = None
                if math.isclose(self.s_t, 1.0):
                    image_only = None
        out = comfy.samplers.calc_cond_batch(self.inner_model, [unconditional, image_only, image_text], x, timestep,
                                             model_options)
        image = comfy.samplers.cfg_function(self.inner_model, out[1], out[0], self.s_i, x, timestep,
                                            model_options=model_options, cond=image_only, uncond=unconditional)
        return image + (out[2] - out[1]) * self.s_t


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


def with_cross_frame_attention(model, anchor: str, anchor_count: int):
    """A clone of ``model`` whose every self-attention also attends to the anchor frames."""
    m = model.clone()
    patch = CrossFrameAttnPatch(anchor, anchor_count)
    for name, idx in transformer_blocks(m):
        m.set_model_attn1_replace(patch, name, idx)
    return m


def two_knob_guider(model, instruction, empty_text, source: torch.Tensor, s_i: float, s_t: float):
    """Eq. 1 (core DualCFGGuider with cond1 = instruction + image, cond2 = empty text + image,
    negative = empty text with a zero image, cfg_conds = s_T, cfg_cond2_negative = s_I)."""
    require_ip2p(model)
    g = TwoKnobGuider(model)
    g.set_conds(with_image(instruction, source), with_image(empty_text, source), with_image(empty_text, None))
    g.set_scales(s_i, s_t)
    return g


def distilled_guider(model, instruction, source: torch.Tensor, s_i: float, s_t: float) -> DistilledGuider:
    """One UNet pass per step on (image, instruction), the knobs in the student's embedding."""
    g = DistilledGuider(model)
    g.set_conds(with_image(instruction, source))
    g.set_scales(s_i, s_t)
    return g


def without_high_res_attention(model):
    """Mobile-Pix2Pix (MoViE stage 1): a clone without the UNet's highest-resolution attention."""
    paths = highest_resolution_attention(unet_of(model))
    patched = model.clone()
    for path in paths:  # object patches on a clone: applied at load, undone at unload
        patched.add_object_patch(f"diffusion_model.{path}", RemovedAttention())
    return patched


def student_guider(model, instruction, source_latent, s_i: float, s_t: float):
    """CFG-Distilled Guider: (the one-pass guider, the source latents, info lines with a warning for
    knobs outside the range the adapter was trained on)."""
    require_ip2p(model)
    if student_patch(model) is None:
        raise ValueError("model: not a guidance-distilled student (no guidance embedding); connect the "
                         "MODEL output of Load Guidance Adapter or CFG Distill (train)")
    src = check_source(source_latent)
    g = distilled_guider(model, instruction, src, s_i, s_t)
    lines = [f"CFG-distilled: 1 UNet pass/step, image_guidance={s_i:g}, text_guidance={s_t:g}"]
    ad = guidance_adapter_of(model)
    if ad is not None:
        lines += ad.in_range(s_i, s_t)
    return g, src, lines
