"""TokenFlow (Geyer et al., ICLR 2024): DDIM inversion and sampling, pure torch (no ComfyUI
import). The keyframes, extended attention and token propagation are in ``propagation.py``.

Pieces, in the order the algorithm uses them (paper Sec. 3-4, Alg. 1, appendix A):

- DDIM in ComfyUI's sigma space (``ddim_step``, ``ddim_invert_step``, ``ddim_invert``).
  ComfyUI writes a noisy latent as ``x = x0 + sigma * eps`` (the variance-exploding form of
  the VP latent ``sqrt(a) x0 + sqrt(1-a) eps`` divided by ``sqrt(a)``, ``sigma = sqrt((1-a)/a)``).
  In that form the deterministic DDIM update ``x' = sqrt(a') x0_hat + sqrt(1-a') eps_hat``
  becomes ``x' = x0_hat + sigma' eps_hat = x + (sigma' - sigma) eps_hat``. Any model
  parameterisation (eps or v-prediction) enters only through ``eps_hat``; for a model that
  returns the denoised ``x0_hat`` (ComfyUI's model call does, whatever it predicts),
  ``eps_from_denoised`` gives ``eps_hat = (x - x0_hat) / sigma``.
- In ``propagation.py``: keyframes (``sample_keyframes``, ``adjacent_keyframes``,
  ``plan_chunks``), extended attention over the keyframes (``extended_attention``, Eq. 3-4),
  correspondences and propagation (``nearest_neighbour_field`` Eq. 5, ``propagation_weights``
  Eq. 7, ``propagate_tokens`` Eq. 6), the PnP injection schedule (``pnp_inject``).

Paper vs official code (omerbt/TokenFlow), the choices made here:
- Inversion: the paper (appendix A) inverts with 1000 DDIM steps; we invert on the sampling
  sigmas themselves (the trajectory is exactly what sampling needs) and make few steps near
  exact with an optional fixed-point refinement of each step (``refine_iters``). The plain
  step evaluates eps at the current latent and the *next* sigma, as the official
  preprocess.py (diffusers-style inversion) does; this never evaluates the model at sigma 0.
- Keyframes: one per interval of ``interval`` frames, drawn anew every step (paper and code).
  The code draws one per batch and needs the frame count divisible by the batch size; here
  the last interval may be shorter and intervals larger than the clip work.
- Adjacent keyframes: the paper's past / future keyframes of each frame (Eq. 5-7) with the
  true frame distances. The code instead pairs each batch with its own and the previous
  batch's keyframe and measures distances to the batch *centres*; we follow the paper.
  A keyframe's neighbours are itself (so it keeps its own edited tokens, as in the code's
  pivotal pass); frames before the first / after the last keyframe use that keyframe only.
- Eq. 7 weight ``w = sigmoid(d- / (d+ + d-))`` on the future keyframe, exactly as written
  (paper and code agree; note the sigmoid keeps w in [0.5, 0.731]).
- NN features: the appendix and the code match self-attention *input* tokens of the source
  frames (the code's ``norm_hidden_states``), the main text says the block's tokens; the
  functions here take whatever tokens the caller passes; the glue passes attention inputs.
- Source branch: the official code propagates the *source* part of its batch too (its
  TokenFlowBlock gathers source, uncond and cond outputs from the keyframes), so its deeper
  layers' NN features and the PnP conv features come from a propagated source. We keep each
  source frame's own features (the paper's source tokens): on the toy model of the
  consistency test the official variant moved the warp error by 1% (214.0 vs 211.8 x1e-3)
  and it would hold the keyframes' source outputs as well.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]

# ----------------------------------------------------------------------------- DDIM


def eps_from_denoised(denoise_fn: Callable[[torch.Tensor, float], torch.Tensor]) -> EpsFn:
    """Turn a denoiser ``D(x, sigma) -> x0_hat`` into ``eps(x, sigma) = (x - x0_hat) / sigma``.

    ComfyUI's model call returns ``x0_hat`` for eps- and v-prediction models alike (its
    model_sampling converts), so this is how either kind drives the DDIM functions here.
    ``sigma`` must be > 0 (``ddim_invert`` never asks for sigma 0).
    """
    def eps_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            raise ValueError("eps is undefined at sigma 0 for a denoiser; evaluate at sigma > 0")
        return (x - denoise_fn(x, sigma)) / sigma
    return eps_fn


def ddim_step(x: torch.Tensor, sigma: float, sigma_next: float, eps: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from ``sigma`` to ``sigma_next`` (either direction).

    ``x0_hat = x - sigma * eps``; ``x_next = x0_hat + sigma_next * eps``.
    """
    return x + (sigma_next - sigma) * eps


def ddim_invert_step(eps_fn: EpsFn, x: torch.Tensor, sigma: float, sigma_next: float,
                     refine_iters: int = 0) -> torch.Tensor:
    """One DDIM inversion step from ``sigma`` up to ``sigma_next`` > ``sigma``.

    Plain (``refine_iters=0``): ``x_next = x + (sigma_next - sigma) * eps(x, sigma_next)``,
    eps taken at the current latent and the target sigma (official preprocess.py).
    Refined: iterate ``x_next <- x + (sigma_next - sigma) * eps(x_next, sigma_next)``
    ``refine_iters`` more times. Its fixed point is the latent whose DDIM *sampling* step
    (``ddim_step(x_next, sigma_next, sigma, eps(x_next, sigma_next))``) returns exactly ``x``,
    so the round trip is exact up to the remaining fixed-point error. Each iteration costs
    one model evaluation.
    """
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
    x_next = ddim_step(x, sigma, sigma_next, eps_fn(x, sigma_next))
    for _ in range(refine_iters):
        x_next = ddim_step(x, sigma, sigma_next, eps_fn(x_next, sigma_next))
    return x_next


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Sampling sigmas as ComfyUI gives them: 1-D, strictly decreasing, >= 0, at least 2."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas: need at least 2 values (1 step), got {sigmas.numel()}")
    if (sigmas < 0).any() or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas: must be non-negative and strictly decreasing (sampling order), "
                         f"got {[round(float(s), 4) for s in sigmas[:8]]}...")
    return sigmas


def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, sigmas: torch.Tensor, refine_iters: int = 0,
                callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """DDIM-invert clean latents ``x0`` along the sampling ``sigmas`` (decreasing).

    Returns the trajectory ``traj`` of shape ``[len(sigmas), *x0.shape]`` aligned with the
    sampling order: ``traj[i]`` is the latent at ``sigmas[i]``, so ``traj[0]`` is the noisiest
    and ``traj[-1]`` the latent at ``sigmas[-1]`` (``x0`` itself when the last sigma is 0; if
    it is > 0, ``x0`` is taken to be the latent at that sigma). The frames of the batch are
    independent (``eps_fn`` must not mix them), so callers may invert chunk by chunk.
    ``callback(step)`` is called after each step (progress / cancel).
    """
    s = check_sigmas(sigmas).tolist()
    n = len(s)
    traj = torch.empty((n, *x0.shape), dtype=x0.dtype, device=x0.device)
    traj[n - 1] = x0
    x = x0
    for i in range(n - 1, 0, -1):  # from sigmas[-1] up to sigmas[0]
        x = ddim_invert_step(eps_fn, x, s[i], s[i - 1], refine_iters)
        traj[i - 1] = x
        if callback is not None:
            callback(n - i)
    return traj


def ddim_sample(eps_fn: EpsFn, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM sampling from ``sigmas[0]`` down to ``sigmas[-1]``.

    eps is evaluated at the current latent and sigma (ComfyUI's ddim / euler sampler).
    """
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        x = ddim_step(x, s[i], s[i + 1], eps_fn(x, s[i]))
    return x


def sdedit_start(x0: torch.Tensor, x_max: torch.Tensor, sigma_max: float, sigma_min: float,
                 sigma_start: float) -> torch.Tensor:
    """SDEdit start: the clean latent noised to ``sigma_start`` with the *inverted* noise.

    ``x0`` is the latent at ``sigma_min`` (the clip; ``sigma_min`` is usually 0) and ``x_max``
    its DDIM inversion at ``sigma_max``; the inverted noise ``(x_max - x0) / (sigma_max -
    sigma_min)`` is shared structure across frames (official run_tokenflow_sdedit.py adds the
    DDIM eps rather than fresh noise). Returns ``x0 + (sigma_start - sigma_min) * eps``.
    """
    eps = (x_max - x0) / (sigma_max - sigma_min)
    return x0 + (sigma_start - sigma_min) * eps


def fingerprint(*parts) -> str:
    """A short stable hash of tensors / strings / numbers (which model, frames and sigmas
    an inversion belongs to), so a sampler can refuse a mismatched inversion."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu").contiguous()
            h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{type(p).__name__}:{p!r}".encode())
        h.update(b"|")
    return h.hexdigest()[:16]
