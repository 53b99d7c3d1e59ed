"""TokenFlow DDIM inversion on a ComfyUI model (engine): inverts a video's latents frame by frame with deterministic DDIM in ComfyUI's
sigma space (classifier-free guidance 1, as the paper's appendix), along the very sigmas the
TokenFlow sampler will use, optionally refining every step by fixed-point iterations so a
few steps round-trip almost exactly. The model is called only through ComfyUI's own sampling
path (``comfy.samplers.CFGGuider`` with a custom KSAMPLER function), so patches, LoRAs,
model_sampling (eps or v-prediction: the model call returns the denoised latent either way)
and memory management behave as in any sampler; the input MODEL is not modified.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.conds
import comfy.model_management
import comfy.model_sampling
import comfy.samplers

from ..core.frame_chunks import frame_chunks
from ..host.model_identity import identity_string
from ..host.progress import SamplingProgress
from . import ddim


@dataclass
class Inversion:
    """What the DDIM Inverter hands to the TokenFlow sampler.

    ``trajectory``: [steps + 1, frames, C, H, W] source latents in the model's latent space
    (after ``process_latent_in``), ``trajectory[i]`` at ``sigmas[i]`` (sampling order);
    ``sigmas``: the sampling sigmas (float32, CPU); ``fingerprint``: hash of model, frames,
    conditioning and sigmas, so a sampler can refuse an inversion made for something else.
    """
    trajectory: torch.Tensor
    sigmas: torch.Tensor
    fingerprint: str
    refine_iters: int
    scheduler: str
    model_id: str = ""  # host.model_identity JSON of the model: the sampler refuses another model
    source_context: torch.Tensor | None = None  # the inversion prompt's cross-attention tokens [1, T, C]

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def model_id(model) -> str:
    """Which model (weights, weight patches, model sampling) made an inversion, as
    ``host.model_identity`` stores it: the same checkpoint and LoRAs give the same id after a
    reload, a restart or on another server."""
    return identity_string(model)


def check_model_sampling(model) -> None:
    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.EPS):
        raise ValueError(
            f"model: TokenFlow's DDIM works in the x = x0 + sigma * noise space of eps- and "
            f"v-prediction models (SD1.x, SD2.x, SDXL); this model samples with "
            f"{type(ms).__name__} (a flow / rectified-flow model), which is not supported")


def check_latent(samples: torch.Tensor, model) -> None:
    if samples.ndim != 4:
        raise ValueError(f"latent: expected image latents [frames, channels, height, width] (one per frame), "
                         f"got shape {list(samples.shape)}")
    if samples.shape[0] == 0:
        raise ValueError("latent: the batch holds zero frames; encode a video with at least one frame")
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise ValueError(f"latent: {samples.shape[1]} channels, but this model works on {channels}-channel "
                         "latents; encode the frames with the VAE of this model's family")


def inversion_fingerprint(model_identity: str, positive, samples: torch.Tensor, sigmas: torch.Tensor) -> str:
    cond = positive[0][0] if positive and isinstance(positive[0][0], torch.Tensor) else repr(positive)[:200]
    return ddim.fingerprint(model_identity, samples, cond, sigmas.float())


class FrameSelector:
    """Per-chunk rows of batch-shaped conditioning (an InstructPix2Pix image, one per frame):
    ComfyUI would otherwise give every chunk the first rows of the whole batch."""

    def __init__(self, guider, num_frames: int):
        self.items = []
        for conds in (guider.conds or {}).values():
            for c in conds:
                for key, mc in c.get("model_conds", {}).items():
                    t = getattr(mc, "cond", None)
                    if isinstance(mc, comfy.conds.CONDRegular) and isinstance(t, torch.Tensor) \
                            and t.ndim > 0 and t.shape[0] == num_frames and num_frames > 1:
                        self.items.append((c["model_conds"], key, mc))

    def select(self, idx: torch.Tensor | slice) -> None:
        for store, key, full in self.items:
            store[key] = full._copy_with(full.cond[idx])

    def restore(self) -> None:
        for store, key, full in self.items:
            store[key] = full


def ddim_invert_model(model, positive, samples: torch.Tensor, sigmas: torch.Tensor, refine_iters: int,
                      frames_per_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``ddim.ddim_invert`` through ComfyUI's sampling path, chunk by chunk.

    Returns (trajectory in model latent space on the intermediate device, the noisiest latent
    in LATENT space).
    """
    chunks = frame_chunks(samples.shape[0], frames_per_chunk)
    steps = len(sigmas) - 1
    store = comfy.model_management.intermediate_device()
    out: dict[str, torch.Tensor] = {}

    def invert(model_k, x, sigmas_dev, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        traj = None
        selector = FrameSelector(guider, x.shape[0])  # per-frame image conditioning (IP2P) follows the chunk
        # progress in frame steps; the preview shows each frame's latest denoised estimate (the
        # source, reconstructed from ever more noise), starting from the source itself
        progress = SamplingProgress(steps * x.shape[0], model, x.shape[0], start=x)
        for sl in chunks:
            selector.select(sl)
            xc = x[sl]
            last = {}

            def eps_fn(xt: torch.Tensor, sigma: float, _n=xc.shape[0]) -> torch.Tensor:
                s = torch.full((_n,), sigma, device=xt.device, dtype=xt.dtype)
                last["denoised"] = model_k(xt, s, **extra_args)
                return (xt - last["denoised"]) / sigma

            def step_done(_step: int, _sl=sl) -> None:
                comfy.model_management.throw_exception_if_processing_interrupted()
                progress.advance(_sl.stop - _sl.start, _sl, last["denoised"])

            tc = ddim.ddim_invert(eps_fn, xc, sigmas_dev, refine_iters, callback=step_done)
            if traj is None:  # the only allocation that grows with video length
                traj = torch.empty((tc.shape[0], x.shape[0], *tc.shape[2:]), dtype=torch.float32, device=store)
            traj[:, sl] = tc.to(store, torch.float32)
        selector.restore()
        out["trajectory"] = traj
        return traj[0].to(x.device, x.dtype)

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)  # the paper inverts with guidance 1 (cond only)
    noised = guider.sample(torch.zeros_like(samples), samples, comfy.samplers.KSAMPLER(invert), sigmas,
                           disable_pbar=True, seed=0)
    return out["trajectory"], noised.to(comfy.model_management.intermediate_device())


def invert_video(model, positive, latent: dict, steps: int, scheduler: str, refine_iters: int,
                 frames_per_chunk: int) -> tuple[Inversion, dict]:
    """The DDIM Inverter: checks, the sampling sigmas, the chunked inversion. Returns (the
    inversion, the noised LATENT the sampler starts from)."""
    samples = latent["samples"]
    check_model_sampling(model)
    check_latent(samples, model)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    sigmas = sigmas.float().cpu()
    mid = model_id(model)
    trajectory, noised = ddim_invert_model(model, positive, samples, sigmas, refine_iters, frames_per_chunk)
    context = positive[0][0] if positive and isinstance(positive[0][0], torch.Tensor) else None
    inv = Inversion(trajectory, sigmas, inversion_fingerprint(mid, positive, samples, sigmas), refine_iters, scheduler,
                    mid, None if context is None else context[:1].detach().float().cpu().clone())
    out_latent = {k: v for k, v in latent.items() if k != "noise_mask"}
    out_latent["samples"] = noised
    return inv, out_latent
