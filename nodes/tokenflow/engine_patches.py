"""TokenFlow's ModelPatcher patches (engine): the state the patches read and write,
and ``patch_model`` that installs them on a clone of the input MODEL.

Patch points (all on the clone, nothing of ComfyUI is monkey-patched): ``attn1_patch`` keeps
the self-attention input tokens of the source passes (the NN features, Eq. 5);
``attn1_replace`` on every self-attention layer runs extended attention over the keyframes
(Eq. 3-4), PnP q/k injection, and the propagation of the edited keyframe tokens (Eq. 6-7);
a unet function wrapper runs the source pass before each edit pass; an object patch on the
PnP ResBlock's ``out_layers`` injects the source's conv features. The driving loop is in
``engine_sampler``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.ldm.modules.attention as comfy_attention

from . import keyframe_window, propagation
from .token_store import TokenStore

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
    plan: propagation.ChunkPlan | None = None
    # the step's keyframe tokens, read by every chunk: ("src", layer) source attention inputs,
    # ("out", cond_or_uncond, layer) edited outputs, ("q" | "k", layer) source PnP q/k; [K, L, C]
    store: TokenStore = field(default_factory=TokenStore)
    frame_src: dict = field(default_factory=dict)  # layer -> [B, L, C] of the chunk
    src_qk: dict = field(default_factory=dict)  # layer -> (q, k) of the chunk's source pass
    src_conv: torch.Tensor | None = None
    nn_cache: dict = field(default_factory=dict)
    split_groups: bool = True  # keyframe pass: one conditioning group per UNet call (same result, half the peak)
    # edit pass of propagated frames: q/k/v projected for one token per frame, since the layer's
    # output is replaced by the keyframes' tokens (same result, 3 of the 4 projections skipped)
    qkv_shortcut: bool = True
    # extended attention's reach (keyframe_window): "all" keyframes (Eq. 3-4) or a window of
    # frames around each keyframe, with the clip's first keyframe as anchor; the step's calls
    attention_mode: str = "all"
    window: int = 0
    anchor: bool = True
    attn_groups: list | None = None

    def set_keyframes(self, keyframes: torch.Tensor) -> None:
        """The step's keyframes -> which keyframes each one attends to in the keyframe pass."""
        self.attn_groups = keyframe_window.keyframe_groups(keyframes, self.attention_mode, self.window, self.anchor,
                                                           self.frames_per_chunk)

    def clear_step(self):
        self.store.clear(), self.frame_src.clear(), self.src_qk.clear()
        self.nn_cache.clear()
        self.src_conv = None

    # ------------------------------------------------------------------ the patches
    def attn1_patch(self, n, context, value, extra_options):
        """Keeps the self-attention input tokens of the source pass (the NN features). In the edit
        pass of propagated frames the layer's output is the keyframes' tokens (``_propagated``),
        which never reads q, k or v: the block's q/k/v projections then get one token per frame
        instead of all of them (3 of the 4 projections of every self-attention, for nothing)."""
        if self.phase == "source":
            layer = _layer_key(extra_options)
            if self.target == "keys":
                self.store.put(("src", layer), n)
            else:
                self.frame_src[layer] = n.detach()
        elif self.phase == "frames" and self.propagate and self.qkv_shortcut:
            one = n[:, :1]
            return one, one, one
        return n, context, value

    def attn1_replace(self, q, k, v, extra_options):
        layer = _layer_key(extra_options)
        heads = extra_options["n_heads"]
        labels = list(extra_options.get("cond_or_uncond") or [0])
        if self.phase == "source":
            if self.inject_attn and layer in self.pnp_attn:
                if self.target == "keys":
                    self.store.put(("q", layer), q), self.store.put(("k", layer), k)
                elif not self.propagate:  # propagated frames never use their own q/k
                    self.src_qk[layer] = (q.detach(), k.detach())
            return _attention(q, k, v, heads, extra_options)
        inject = self.inject_attn and layer in self.pnp_attn
        if self.phase == "keyframes":
            inject = inject and ("q", layer) in self.store
            parts = len(labels)
            kf = q.shape[0] // parts
            outs = []
            for p, label in enumerate(labels):
                sl = slice(p * kf, (p + 1) * kf)
                qp, kp, vp = q[sl], k[sl], v[sl]
                if inject:
                    qp, kp = self.store.get(("q", layer)), self.store.get(("k", layer))
                if self.extended:
                    o = propagation.extended_attention(qp, kp, vp, heads, self.frames_per_chunk, self.attn_groups)
                else:
                    o = _attention(qp, kp, vp, heads, extra_options)
                self.store.put(("out", label, layer), o)
                outs.append(o)
            return torch.cat(outs) if len(outs) > 1 else outs[0]
        if self.phase == "frames" and self.propagate:
            return self._propagated(layer, labels, q.dtype)
        if self.phase == "frames" and inject and layer in self.src_qk:  # per-frame PnP (no propagation)
            qs, ks = self.src_qk[layer]
            parts = q.shape[0] // qs.shape[0]
            q, k = qs.repeat(parts, 1, 1), ks.repeat(parts, 1, 1)
        return _attention(q, k, v, heads, extra_options)

    def _propagated(self, layer, labels, dtype):
        plan = self.plan
        if layer not in self.nn_cache:  # the NN fields are the same for cond and uncond
            ks = self.store.rows(("src", layer), plan.slots)
            src = self.frame_src[layer]
            self.nn_cache[layer] = (propagation.nearest_neighbour_field(src, ks[plan.prev_local]),
                                    propagation.nearest_neighbour_field(src, ks[plan.next_local]))
        nn_prev, nn_next = self.nn_cache[layer]
        outs = []
        for label in labels:
            ke = self.store.rows(("out", label, layer), plan.slots)
            outs.append(propagation.propagate_tokens(ke, nn_prev, nn_next, plan.prev_local, plan.next_local, plan.w_next))
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
            groups = list(args.get("cond_or_uncond") or [])
            if self.phase == "keyframes" and self.split_groups and len(groups) > 1 and "control" not in args["c"]:
                # Extended attention (Eq. 3-4) joins keyframes within one conditioning group, never across,
                # so cond and uncond are two separate problems: one at a time holds half the keyframe
                # activations. With n/8 keyframes this pass sets the step's peak on long clips.
                return torch.cat([call(apply_model, _one_group(args, i, len(groups))) for i in range(len(groups))])
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


def _one_group(args: dict, i: int, n: int) -> dict:
    """The unet-wrapper arguments of the i-th of n equal conditioning groups of the batch."""
    total = args["input"].shape[0]
    rows = slice(i * (total // n), (i + 1) * (total // n))
    pick = lambda v: v[rows] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == total else v
    c = {key: pick(val) for key, val in args["c"].items() if key != "transformer_options"}
    to = {key: pick(val) for key, val in args["c"].get("transformer_options", {}).items()}
    for key in ("cond_or_uncond", "uuids"):
        if isinstance(to.get(key), list) and len(to[key]) == n:
            to[key] = [to[key][i]]
    c["transformer_options"] = to
    return {"input": args["input"][rows], "timestep": pick(args["timestep"]), "c": c,
            "cond_or_uncond": [args["cond_or_uncond"][i]]}


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
