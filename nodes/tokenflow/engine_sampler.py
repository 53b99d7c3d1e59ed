"""TokenFlow sampling on a ComfyUI model (engine): propagation and PnP injection as ModelPatcher
patches on a clone (``engine_patches.py``), driven by a DDIM loop that runs inside ComfyUI's own
sampling path.

Per sampling step ``i`` (sigma ``s_i`` -> ``s_{i+1}``), as the paper's Alg. 1:

1. draw the step's keyframes (one per interval; ``propagation.sample_keyframes``);
2. *source pass of the keyframes*: the source latents ``trajectory[i][keyframes]`` (with the
   inversion prompt) go through the UNet; every self-attention layer keeps its input tokens
   (the NN features, Eq. 5) and, at PnP steps, its q/k and the PnP ResBlock's residual;
3. *keyframe pass*: the edited keyframes are denoised jointly, every self-attention layer
   attending to all keyframes (extended attention, Eq. 3-4; PnP q/k injected), and every
   layer keeps its attention output per cond/uncond (the edited tokens ``T_base``);
4. *chunk passes*: the frames, ``frames_per_chunk`` at a time: a source pass of the chunk
   (its tokens), then the edit pass, where every self-attention layer's output is replaced by
   the blend of the past/future keyframes' edited tokens at the nearest-neighbour positions
   (Eq. 5-7, ``propagation.tokenflow_chunk``). Keyframes are global for the step, so chunk
   borders leave no seam.
5. the DDIM step ``x <- x + (s_{i+1} - s_i) (x - D(x)) / s_i`` (ComfyUI's ddim/euler step).

Source tokens are *recomputed* by the source pass, never stored across steps: a frame's
self-attention inputs over all SD1.5 layers are ~11.5 M floats (46 MB fp32) per step at 512^2,
i.e. ~550 GB for 240 frames x 50 steps, while recomputing costs one cond-only UNet pass per
frame and step (the official code does the same: the source is an extra batch part). Only the
current step's keyframe tokens are held (they are shared by every chunk of the step), in a
``token_store.TokenStore``: on a clip longer than one chunk they are offloaded (``keyframe_store``
"auto": to a temp file when the CPU computes, to CPU memory from a GPU), so the peak is one
chunk's, not n/8 keyframes' tokens; each chunk reads back only its adjacent keyframes.

The patches (``engine_patches``: attn1_patch, attn1_replace on every self-attention
layer, a unet function wrapper, an object patch on the PnP ResBlock's ``out_layers``) live on a
clone of the input MODEL; the input stays untouched, so other branches of the graph sample
vanilla.
"""
from __future__ import annotations

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.samplers
import folder_paths

from ..core.frame_chunks import frame_chunks
from ..host.progress import SamplingProgress
from . import ddim, propagation
from ..host.model_identity import identity_differences, model_identity, parse_identity
from .engine_inversion import FrameSelector, Inversion, check_model_sampling
from .keyframe_window import resolve_mode as resolve_attention_mode
from .engine_patches import TokenFlowState, patch_model
from .token_store import TokenStore, choose_place

DETERMINISTIC_SAMPLERS = ("sample_euler", "sample_ddim")  # what ksampler("euler") / "ddim" wrap


# ------------------------------------------------------------------------------ checks


def check_inversion(inv: Inversion, model, sigmas: torch.Tensor | None, latent: dict | None) -> None:
    """Refuse an inversion made for another model / other sigmas / other frames, naming what differs."""
    if not isinstance(inv, Inversion):
        raise ValueError("inversion: expected the output of TokenFlow DDIM Inverter (or Load Inversion)")
    made_with = parse_identity(inv.model_id)
    if made_with is None:
        raise ValueError("inversion: it carries no model identity this version can check (an inversion from an "
                         "older version of the pack, whose model id changed with every model load); invert the "
                         "video again with TokenFlow DDIM Inverter and save it with TokenFlow Save Inversion")
    differences = identity_differences(made_with, model_identity(model))
    if differences:
        raise ValueError(f"inversion: it was made with a different model than the one connected here "
                         f"({'; '.join(differences)}); connect the model (checkpoint and LoRAs) the inversion was "
                         "made with, or invert the video again with this model")
    channels = model.get_model_object("latent_format").latent_channels
    if inv.trajectory.shape[2] != channels:
        raise ValueError(f"inversion: its latents have {inv.trajectory.shape[2]} channels, this model works on "
                         f"{channels}; invert the video with this model")
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
    chunks = frame_chunks(n, fpc)
    # progress in frame passes: per step the keyframe pass (its keyframes; counted also at steps
    # where it does not run, so the total is known up front) and every frame of the chunk passes
    keys_per_step = 0 if state is None else len(range(0, n, interval))
    gen = torch.Generator().manual_seed(seed)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)

    def loop(model_k, x, sigmas_dev, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        selector = FrameSelector(guider, n)
        progress = SamplingProgress(steps * (keys_per_step + n), model, n)
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
                        progress.advance(sl.stop - sl.start, sl, denoised[sl])
                else:
                    state.clear_step()
                    state.inject_conv = pnp_f_t > 0 and propagation.pnp_inject(traj_i, inv.steps, pnp_f_t)
                    state.inject_attn = pnp_attn_t > 0 and propagation.pnp_inject(traj_i, inv.steps, pnp_attn_t)
                    keyframes = propagation.sample_keyframes(n, interval, gen, keyframe_mode)
                    state.set_keyframes(keyframes)
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
                    progress.advance(keys_per_step)
                    plans = propagation.plan_chunks(n, keyframes, fpc)
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
                        progress.advance(sl.stop - sl.start, sl, denoised[sl])
                    state.phase = "off"
                    state.src_latent = None
                d = comfy.k_diffusion.sampling.to_d(x, sigma, denoised)
                x = x + d * (sigmas_dev[i + 1] - sigma)
        finally:
            selector.restore()
            if state is not None:
                state.phase, state.src_latent = "off", None
                state.clear_step()
                state.store.close()
        return x

    zeros = torch.zeros_like(start_latent)
    out = guider.sample(zeros, start_latent, comfy.samplers.KSAMPLER(loop), sigmas.clone(), disable_pbar=True, seed=seed)
    return out.to(comfy.model_management.intermediate_device())


def edit_video(model, positive, negative, inversion, cfg, keyframe_interval, keyframes, seed, propagate,
               extended_attention, pnp_f_t, pnp_attn_t, denoise, frames_per_chunk, keyframe_store="auto",
               sigmas=None, sampler=None, start_latent=None, keyframe_attention="auto", keyframe_window=48,
               window_anchor=True) -> torch.Tensor:
    """The TokenFlow Keyframe Sampler: checks, the start latent (SDEdit below denoise 1), the patched
    clone, the loop. Returns LATENT-space samples."""
    check_model_sampling(model)
    check_sampler(sampler)
    check_inversion(inversion, model, sigmas, start_latent)
    n = inversion.trajectory.shape[1]
    check_conds(positive, negative, n, frames_per_chunk)
    attention_mode = resolve_attention_mode(keyframe_attention, n, keyframe_window)
    steps = inversion.steps
    start = steps - max(1, min(steps, int(round(denoise * steps))))
    lf = model.get_model_object("latent_format")
    if start_latent is not None and start == 0:
        start_latent = start_latent["samples"]
    else:
        traj = inversion.trajectory
        x_t = traj[start]
        if start > 0:  # SDEdit: the clean latent noised with the inverted noise at sigma[start]
            x_t = ddim.sdedit_start(traj[-1], traj[0], float(inversion.sigmas[0]), float(inversion.sigmas[-1]),
                                    float(inversion.sigmas[start]))
        start_latent = lf.process_out(x_t)
    pnp = (pnp_f_t > 0 or pnp_attn_t > 0)
    state, work = None, model  # all features off: plain DDIM on the unpatched model
    if propagate or extended_attention or pnp:
        place = choose_place(keyframe_store, n, frames_per_chunk, comfy.model_management.get_torch_device())
        state = TokenFlowState(propagate=propagate, extended=extended_attention,
                               frames_per_chunk=frames_per_chunk, src_context=inversion.source_context,
                               store=TokenStore(place, folder_paths.get_temp_directory()),
                               attention_mode=attention_mode, window=keyframe_window, anchor=window_anchor)
        work = patch_model(model, state, pnp)
    return tokenflow_sample(work, positive, negative, cfg, inversion, start, start_latent, state,
                            frames_per_chunk, keyframe_interval, keyframes, seed, pnp_f_t, pnp_attn_t)
