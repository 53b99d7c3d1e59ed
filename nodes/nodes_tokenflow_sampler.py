"""TokenFlow Keyframe Sampler (V3 glue): TokenFlow propagation and PnP injection as ModelPatcher
patches on a clone, driven by a DDIM loop that runs inside ComfyUI's own sampling path.

Per sampling step ``i`` (sigma ``s_i`` -> ``s_{i+1}``), as the paper's Alg. 1:

1. draw the step's keyframes (one per interval; ``tokenflow.sample_keyframes``);
2. *source pass of the keyframes*: the source latents ``trajectory[i][keyframes]`` (with the
   inversion prompt) go through the UNet; every self-attention layer keeps its input tokens
   (the NN features, Eq. 5) and, at PnP steps, its q/k and the PnP ResBlock's residual;
3. *keyframe pass*: the edited keyframes are denoised jointly, every self-attention layer
   attending to all keyframes (extended attention, Eq. 3-4; PnP q/k injected), and every
   layer keeps its attention output per cond/uncond (the edited tokens ``T_base``);
4. *chunk passes*: the frames, ``frames_per_chunk`` at a time: a source pass of the chunk
   (its tokens), then the edit pass, where every self-attention layer's output is replaced by
   the blend of the past/future keyframes' edited tokens at the nearest-neighbour positions
   (Eq. 5-7, ``tokenflow.tokenflow_chunk``). Keyframes are global for the step, so chunk
   borders leave no seam.
5. the DDIM step ``x <- x + (s_{i+1} - s_i) (x - D(x)) / s_i`` (ComfyUI's ddim/euler step).

Source tokens are *recomputed* by the source pass, never stored across steps: a frame's
self-attention inputs over all SD1.5 layers are ~11.5 M floats (46 MB fp32) per step at 512^2,
i.e. ~550 GB for 240 frames x 50 steps, while recomputing costs one cond-only UNet pass per
frame and step (the official code does the same: the source is an extra batch part). Only the
current step's keyframe tokens are held (they are shared by every chunk of the step).

The patches (attn1_patch, attn1_replace on every self-attention layer, a unet function
wrapper, an object patch on the PnP ResBlock's ``out_layers``) live on a clone of the input
MODEL; the input stays untouched, so other branches of the graph sample vanilla.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.k_diffusion.sampling
import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy_api.v0_0_2 import io

from . import tokenflow as tf
from .nodes_tokenflow import (CATEGORY, FrameSelector, Inversion, TokenFlowInversion, check_model_sampling,
                              model_id)

# ---------------------------------------------------------------------------- the patch state

DETERMINISTIC_SAMPLERS = ("sample_euler", "sample_ddim")  # what ksampler("euler") / "ddim" wrap


def attention_layers(diffusion_model) -> list[tuple[str, int, int]]:
    """Every self-attention layer as ComfyUI's attn1_replace keys ``(block, number, index)``."""
    keys = []
    parts = [("input", i, b) for i, b in enumerate(diffusion_model.input_blocks)]
    parts += [("middle", 0, diffusion_model.middle_block)]
    parts += [("output", i, b) for i, b in enumerate(diffusion_model.output_blocks)]
    for name, number, block in parts:
        for layer in block:
            if isinstance(layer, comfy_attention.SpatialTransformer):
                keys += [(name, number, j) for j in range(len(layer.transformer_blocks))]
    return keys


def pnp_layers(diffusion_model) -> tuple[list[tuple[str, int, int]], int]:
    """The official PnP choice in ComfyUI's numbering.

    Conv features: diffusers ``up_blocks[1].resnets[1]`` = ``output_blocks[(res+1) + 1][0]``;
    self-attention q/k: ``up_blocks[1].attentions[1:]`` and every attention of the higher-
    resolution up blocks = the output blocks from that index on (first transformer block).
    """
    per_level = int(diffusion_model.num_res_blocks[0]) + 1
    conv_block = per_level + 1
    attn = [k for k in attention_layers(diffusion_model) if k[0] == "output" and k[1] >= conv_block and k[2] == 0]
    return attn, conv_block


@dataclass
class TokenFlowState:
    """What the patches read and write; the sampler loop sets ``phase`` and the inputs."""
    propagate: bool
    extended: bool
    frames_per_chunk: int
    phase: str = "off"  # off | source | keyframes | frames
    target: str = "frames"  # where the source pass stores: "keys" (keyframes) or "frames" (chunk)
    pnp_attn: frozenset = frozenset()
    inject_attn: bool = False
    inject_conv: bool = False
    src_latent: torch.Tensor | None = None  # source latents of the current call's frames
    src_context: torch.Tensor | None = None
    source_done: bool = False
    plan: tf.ChunkPlan | None = None
    key_src: dict = field(default_factory=dict)  # layer -> [K, L, C] source attention inputs
    key_out: dict = field(default_factory=dict)  # (cond_or_uncond, layer) -> [K, L, C] edited outputs
    frame_src: dict = field(default_factory=dict)  # layer -> [B, L, C] of the chunk
    src_qk: dict = field(default_factory=dict)  # layer -> (q, k) of the last source pass
    src_conv: torch.Tensor | None = None
    nn_cache: dict = field(default_factory=dict)

    def clear_step(self):
        self.key_src.clear(), self.key_out.clear(), self.frame_src.clear(), self.src_qk.clear()
        self.nn_cache.clear()
        self.src_conv = None

    # ------------------------------------------------------------------ the patches
    def attn1_patch(self, n, context, value, extra_options):
        """Keeps the self-attention input tokens of the source pass (the NN features)."""
        if self.phase == "source":
            layer = _layer_key(extra_options)
            (self.key_src if self.target == "keys" else self.frame_src)[layer] = n.detach()
        return n, context, value

    def attn1_replace(self, q, k, v, extra_options):
        layer = _layer_key(extra_options)
        heads = extra_options["n_heads"]
        labels = list(extra_options.get("cond_or_uncond") or [0])
        if self.phase == "source":
            if self.inject_attn and layer in self.pnp_attn:
                self.src_qk[layer] = (q.detach(), k.detach())
            return _attention(q, k, v, heads, extra_options)
        inject = self.inject_attn and layer in self.pnp_attn and layer in self.src_qk
        if self.phase == "keyframes":
            parts = len(labels)
            kf = q.shape[0] // parts
            outs = []
            for p, label in enumerate(labels):
                sl = slice(p * kf, (p + 1) * kf)
                qp, kp, vp = q[sl], k[sl], v[sl]
                if inject:
                    qp, kp = self.src_qk[layer]
                if self.extended:
                    o = tf.extended_attention(qp, kp, vp, heads, self.frames_per_chunk)
                else:
                    o = _attention(qp, kp, vp, heads, extra_options)
                self.key_out[(label, layer)] = o
                outs.append(o)
            return torch.cat(outs) if len(outs) > 1 else outs[0]
        if self.phase == "frames" and self.propagate:
            return self._propagated(layer, labels, q.dtype)
        if self.phase == "frames" and inject:  # per-frame PnP (no propagation)
            qs, ks = self.src_qk[layer]
            parts = q.shape[0] // qs.shape[0]
            q, k = qs.repeat(parts, 1, 1), ks.repeat(parts, 1, 1)
        return _attention(q, k, v, heads, extra_options)

    def _propagated(self, layer, labels, dtype):
        plan = self.plan
        if layer not in self.nn_cache:  # the NN fields are the same for cond and uncond
            ks = self.key_src[layer][plan.slots]
            src = self.frame_src[layer]
            self.nn_cache[layer] = (tf.nearest_neighbour_field(src, ks[plan.prev_local]),
                                    tf.nearest_neighbour_field(src, ks[plan.next_local]))
        nn_prev, nn_next = self.nn_cache[layer]
        outs = []
        for label in labels:
            ke = self.key_out[(label, layer)][plan.slots]
            outs.append(tf.propagate_tokens(ke, nn_prev, nn_next, plan.prev_local, plan.next_local, plan.w_next))
        return (torch.cat(outs) if len(outs) > 1 else outs[0]).to(dtype)

    def conv_hook(self, h):
        """On the PnP ResBlock's residual branch (its ``out_layers`` output)."""
        if self.phase == "source" and self.inject_conv:
            self.src_conv = h.detach()
        elif self.phase in ("keyframes", "frames") and self.inject_conv and self.src_conv is not None:
            parts = h.shape[0] // self.src_conv.shape[0]
            h = self.src_conv.repeat(parts, 1, 1, 1).to(h.dtype)
        return h

    def unet_wrapper(self, previous):
        """Runs the source pass (cond only, the inversion prompt) before the edit pass."""
        def call(apply_model, args):
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

        def wrapper(apply_model, args):
            if self.phase in ("keyframes", "frames") and self.src_latent is not None and not self.source_done:
                self._source_pass(call, apply_model, args)
            return call(apply_model, args)
        return wrapper

    def _source_pass(self, call, apply_model, args):
        x_src = self.src_latent.to(args["input"].device, args["input"].dtype)
        b = x_src.shape[0]
        total = args["input"].shape[0]
        c = {}
        for key, val in args["c"].items():
            if key == "control":
                continue
            if isinstance(val, torch.Tensor) and val.ndim > 0 and val.shape[0] == total:
                val = val[:b]
            c[key] = val
        if self.src_context is not None:
            c["c_crossattn"] = self.src_context.to(x_src.device, x_src.dtype).expand(b, -1, -1)
        to = dict(c.get("transformer_options", {}))
        to["cond_or_uncond"] = [0]
        c["transformer_options"] = to
        phase, self.phase = self.phase, "source"
        try:
            call(apply_model, {"input": x_src, "timestep": args["timestep"][:b], "c": c, "cond_or_uncond": [0]})
        finally:
            self.phase = phase
        self.source_done = True


def _layer_key(extra_options) -> tuple:
    block = extra_options["block"]
    return (block[0], block[1], extra_options.get("block_index", 0))


def _attention(q, k, v, heads, extra_options):
    return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                               transformer_options=extra_options)


class _HookedSequential(torch.nn.Sequential):
    """``nn.Sequential`` holding the very same child modules (so weight keys and LoRA patches
    resolve unchanged) with a hook on its output; installed with ``add_object_patch``."""

    def __init__(self, *args, hook=None):
        super().__init__(*args)
        self._hook = hook

    def forward(self, x):
        out = super().forward(x)
        return self._hook(out) if self._hook is not None else out


def patch_model(model, state: TokenFlowState, pnp: bool):
    """A clone of ``model`` carrying the TokenFlow patches (the input is not modified)."""
    m = model.clone()
    dm = m.get_model_object("diffusion_model")
    m.set_model_attn1_patch(state.attn1_patch)
    for name, number, index in attention_layers(dm):
        m.set_model_attn1_replace(state.attn1_replace, name, number, index)
    m.set_model_unet_function_wrapper(state.unet_wrapper(model.model_options.get("model_function_wrapper")))
    if pnp:
        attn, conv_block = pnp_layers(dm)
        state.pnp_attn = frozenset(attn)
        path = f"diffusion_model.output_blocks.{conv_block}.0.out_layers"
        seq = m.get_model_object(path)
        m.add_object_patch(path, _HookedSequential(*seq, hook=state.conv_hook))
    return m


# ------------------------------------------------------------------------------ checks


def check_inversion(inv: Inversion, model, sigmas: torch.Tensor | None, latent: dict | None) -> None:
    """Refuse an inversion made for another model / other sigmas / other frames, naming what differs."""
    if not isinstance(inv, Inversion):
        raise ValueError("inversion: expected the output of TokenFlow DDIM Inverter (or Load Inversion)")
    mid = model_id(model)
    if inv.model_id and inv.model_id != mid:
        raise ValueError("inversion: it was made with a different model (or the same model with other LoRAs/"
                         "patches) than the one connected here; invert the video with this model, or connect "
                         "the model the inversion was made with")
    if sigmas is not None:
        s = sigmas.float().cpu().flatten()
        if s.numel() != inv.sigmas.numel():
            raise ValueError(f"sigmas: {s.numel() - 1} steps, but the inversion was made with {inv.steps} steps "
                             f"({inv.scheduler}); use the same steps/scheduler as the DDIM Inverter, or leave "
                             "sigmas unconnected (the inversion's sigmas are used)")
        if not torch.allclose(s, inv.sigmas.float(), rtol=1e-5, atol=1e-6):
            raise ValueError(f"sigmas: they differ from the inversion's ({inv.scheduler}, {inv.steps} steps): "
                             f"first {[round(float(x), 4) for x in s[:3]]} vs "
                             f"{[round(float(x), 4) for x in inv.sigmas[:3]]}; use the inverter's scheduler")
    if latent is not None:
        got = tuple(latent["samples"].shape)
        want = tuple(inv.trajectory.shape[1:])
        if got[0] != want[0]:
            raise ValueError(f"start_latent: {got[0]} frames, but the inversion holds {want[0]}; invert these frames "
                             "(or connect the latent of the inverted video)")
        if got[1:] != want[1:]:
            raise ValueError(f"start_latent: size {list(got[1:])} (channels, height, width) differs from the "
                             f"inversion's {list(want[1:])}; invert the video at this size")


def check_sampler(sampler) -> None:
    if sampler is None:
        return
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__)
    if name not in DETERMINISTIC_SAMPLERS or getattr(sampler, "extra_options", {}).get("s_churn", 0):
        raise ValueError(
            f"sampler: '{name.replace('sample_', '')}' is not supported. TokenFlow follows the inversion's DDIM "
            "trajectory step by step; ancestral / SDE / multistep samplers add fresh noise or mix steps and "
            "would silently leave it. Connect KSamplerSelect 'ddim' or 'euler' (identical here), or leave "
            "sampler unconnected")


def check_conds(positive, negative, num_frames: int, frames_per_chunk: int) -> None:
    for name, cond in (("positive", positive), ("negative", negative)):
        if len(cond) != 1:
            raise ValueError(f"{name}: TokenFlow needs exactly one conditioning entry, got {len(cond)}; "
                             "combine prompts before (e.g. Conditioning Concat) instead of Conditioning Combine")
        extra = cond[0][1]
        if extra.get("control") is not None and num_frames > frames_per_chunk:
            raise ValueError(f"{name}: a ControlNet is applied, and ControlNet hints follow the sampled batch, "
                             f"not the chunk's frames; set frames_per_chunk >= {num_frames} (the frame count)")
        concat = extra.get("concat_latent_image")
        if isinstance(concat, torch.Tensor) and concat.shape[0] not in (1, num_frames):
            raise ValueError(f"{name}: its image conditioning (e.g. InstructPix2PixConditioning) holds "
                             f"{concat.shape[0]} frames but the inversion {num_frames}; encode the same frames")


# --------------------------------------------------------------------------- the loop


def tokenflow_sample(model, positive, negative, cfg: float, inv: Inversion, start: int, start_latent: torch.Tensor,
                     state: TokenFlowState | None, frames_per_chunk: int, interval: int, keyframe_mode: str, seed: int,
                     pnp_f_t: float, pnp_attn_t: float) -> torch.Tensor:
    """Sample from ``start_latent`` (LATENT space, the latent at ``inv.sigmas[start]``) down the
    inversion's sigmas; returns LATENT-space samples on the intermediate device."""
    sigmas = inv.sigmas[start:]
    n = inv.trajectory.shape[1]
    steps = len(sigmas) - 1
    fpc = frames_per_chunk
    chunks = [p.frames for p in tf.plan_chunks(n, torch.tensor([0]), fpc)]
    pbar = comfy.utils.ProgressBar(steps * len(chunks))
    gen = torch.Generator().manual_seed(seed)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)

    def loop(model_k, x, sigmas_dev, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        selector = FrameSelector(guider, n)
        s_in = x.new_ones([x.shape[0]])

        def denoise(rows, frames_idx):
            selector.select(frames_idx)
            return model_k(x[rows], sigma * s_in[:x[rows].shape[0]], **extra_args)

        try:
            for i in range(steps):
                comfy.model_management.throw_exception_if_processing_interrupted()
                sigma = sigmas_dev[i]
                traj_i = start + i
                denoised = torch.empty_like(x)
                if state is None:
                    for sl in chunks:
                        denoised[sl] = denoise(sl, sl)
                        pbar.update(1)
                else:
                    state.clear_step()
                    state.inject_conv = pnp_f_t > 0 and tf.pnp_inject(traj_i, inv.steps, pnp_f_t)
                    state.inject_attn = pnp_attn_t > 0 and tf.pnp_inject(traj_i, inv.steps, pnp_attn_t)
                    keyframes = tf.sample_keyframes(n, interval, gen, keyframe_mode)
                    needs_source = state.propagate or state.inject_conv or state.inject_attn
                    src = inv.trajectory[traj_i]
                    if state.propagate or state.extended or state.inject_attn or state.inject_conv:
                        # keyframe pass: source tokens of the keyframes, then joint denoising
                        state.target, state.phase = "keys", "keyframes"
                        state.src_latent = src[keyframes] if needs_source else None
                        state.source_done = False
                        kf_denoised = denoise(keyframes, keyframes)
                        if not state.propagate:
                            denoised[keyframes] = kf_denoised
                        del kf_denoised
                    plans = tf.plan_chunks(n, keyframes, fpc)
                    for plan in plans:
                        comfy.model_management.throw_exception_if_processing_interrupted()
                        sl = plan.frames
                        state.target, state.phase, state.plan = "frames", "frames", plan
                        state.src_latent = src[sl] if needs_source else None
                        state.source_done = False
                        state.frame_src.clear(), state.nn_cache.clear()
                        if state.inject_attn and not state.propagate:
                            state.src_qk.clear()
                        out = denoise(sl, sl)
                        if state.propagate or not state.extended:
                            denoised[sl] = out
                        else:  # extended attention only: keyframes keep their joint result
                            is_kf = torch.zeros(n, dtype=torch.bool)
                            is_kf[keyframes] = True
                            keep = ~is_kf[sl].to(out.device)
                            denoised[sl][keep] = out[keep]
                        pbar.update(1)
                    state.phase = "off"
                    state.src_latent = None
                d = comfy.k_diffusion.sampling.to_d(x, sigma, denoised)
                x = x + d * (sigmas_dev[i + 1] - sigma)
        finally:
            selector.restore()
            if state is not None:
                state.phase, state.src_latent = "off", None
                state.clear_step()
        return x

    zeros = torch.zeros_like(start_latent)
    out = guider.sample(zeros, start_latent, comfy.samplers.KSAMPLER(loop), sigmas.clone(), disable_pbar=True, seed=seed)
    return out.to(comfy.model_management.intermediate_device())


# ------------------------------------------------------------------------------- node


class KeyframeSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoEditTokenFlowKeyframeSampler",
            display_name="TokenFlow Keyframe Sampler",
            category=CATEGORY,
            description=(
                "Edits an inverted video with TokenFlow: at every DDIM step it draws keyframes (one per interval), "
                "denoises them jointly with extended self-attention, then denoises every frame (in chunks) with "
                "the keyframes' self-attention tokens propagated along nearest-neighbour correspondences of the "
                "source frames, so the edit stays consistent over time. Optional Plug-and-Play injection of the "
                "source's conv features and self-attention q/k keeps the structure; denoise < 1 starts from "
                "partial noise (SDEdit). Uses the inversion's sigmas; the input model is not modified."),
            inputs=[
                io.Model.Input("model", tooltip="The model the inversion was made with."),
                io.Conditioning.Input("positive", tooltip="The edit prompt (or InstructPix2PixConditioning's positive)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (or InstructPix2PixConditioning's negative)."),
                TokenFlowInversion.Input("inversion", tooltip="From TokenFlow DDIM Inverter or Load Inversion."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale (the paper edits with 7.5)."),
                io.Int.Input("keyframe_interval", default=8, min=1, max=4096,
                             tooltip="One keyframe per this many frames (the paper: 8). Larger than the clip "
                                     "means a single keyframe."),
                io.Combo.Input("keyframes", options=["random", "even"], default="random",
                               tooltip="random: a new keyframe per interval at every step (the paper); even: the "
                                       "middle of each interval every step (the ablation)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the keyframe draws (the sampling itself is deterministic)."),
                io.Boolean.Input("propagation", default=True,
                                 tooltip="TokenFlow propagation (Eq. 5-7). Off: every frame is denoised on its own."),
                io.Boolean.Input("extended_attention", default=True,
                                 tooltip="Keyframes attend to all keyframes (Eq. 3-4). Off: plain self-attention."),
                io.Float.Input("pnp_f_t", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Plug-and-Play: inject the source's conv features in this first fraction of "
                                       "the steps (0.8 as the paper; 0 = off, e.g. for SDEdit)."),
                io.Float.Input("pnp_attn_t", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Plug-and-Play: inject the source's self-attention q/k in this first fraction "
                                       "of the steps (0.5 as the paper; 0 = off)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1: start from the fully inverted noise. Below 1 (SDEdit): start that fraction "
                                       "of the steps from the end, from the clip noised with the inverted noise."),
                io.Int.Input("frames_per_chunk", default=16, min=1, max=4096,
                             tooltip="Frames denoised at once (and keyframes per attention chunk). Lower it if "
                                     "memory runs out; keyframes are shared across chunks, so there are no seams."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional check: must equal the inversion's sigmas (same steps/scheduler)."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Optional check: only ddim/euler (deterministic) are accepted; ancestral/SDE "
                                         "samplers are refused because they leave the inversion's trajectory."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Optional start latent (the inverter's noised latent); must have the inversion's "
                                        "frames and size. Unconnected: the inversion's own noise."),
            ],
            outputs=[io.Latent.Output("latent", tooltip="The edited video's latents (decode with VAE Decode).")],
        )

    @classmethod
    def execute(cls, model, positive, negative, inversion, cfg, keyframe_interval, keyframes, seed, propagation,
                extended_attention, pnp_f_t, pnp_attn_t, denoise, frames_per_chunk, sigmas=None, sampler=None,
                start_latent=None) -> io.NodeOutput:
        check_model_sampling(model)
        check_sampler(sampler)
        check_inversion(inversion, model, sigmas, start_latent)
        n = inversion.trajectory.shape[1]
        check_conds(positive, negative, n, frames_per_chunk)
        steps = inversion.steps
        start = steps - max(1, min(steps, int(round(denoise * steps))))
        lf = model.get_model_object("latent_format")
        if start_latent is not None and start == 0:
            start_latent = start_latent["samples"]
        else:
            traj = inversion.trajectory
            x_t = traj[start]
            if start > 0:  # SDEdit: the clean latent noised with the inverted noise at sigma[start]
                x_t = tf.sdedit_start(traj[-1], traj[0], float(inversion.sigmas[0]), float(inversion.sigmas[-1]),
                                      float(inversion.sigmas[start]))
            start_latent = lf.process_out(x_t)
        pnp = (pnp_f_t > 0 or pnp_attn_t > 0)
        state, work = None, model  # all features off: plain DDIM on the unpatched model
        if propagation or extended_attention or pnp:
            state = TokenFlowState(propagate=propagation, extended=extended_attention,
                                   frames_per_chunk=frames_per_chunk, src_context=inversion.source_context)
            work = patch_model(model, state, pnp)
        samples = tokenflow_sample(work, positive, negative, cfg, inversion, start, start_latent, state,
                                   frames_per_chunk, keyframe_interval, keyframes, seed, pnp_f_t, pnp_attn_t)
        return io.NodeOutput({"samples": samples})


NODES = [KeyframeSampler]
