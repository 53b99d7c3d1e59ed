"""MoViE one-step student math (pure torch, no ComfyUI import): Sec. 3.4, Alg. 2, appendix B
(Stage 4). The trainer that runs it on a ComfyUI model is ``engine_onestep_distill.py``.

Notation. Latents live in ComfyUI's (k-diffusion) space x = x_0 + sigma * eps, with
sigma = sqrt((1 - abar_t) / abar_t) of discrete timestep t; the UNet sees the VP sample
x_t = c_in * x = alpha_t x_0 + sigma_t eps with c_in = alpha_t = 1/sqrt(1 + sigma^2) and
sigma_t = sigma / sqrt(1 + sigma^2) -- Alg. 2's ``c_in(t) * (alpha_t x_0 + sigma_t eps)``.

- v-prediction conversion (Stage 4, first part): the student's target is the teacher's v,
  v = alpha_t eps - sigma_t x_0 with x_0 = (x_t - sigma_t eps) / alpha_t from the teacher's eps.
- Alg. 2: the student sees x_t at one of 8 EulerDiscrete training timesteps and predicts x_0 in
  one pass (as v); the teacher's x_0 comes from 5 LCM steps; the discriminator (frozen teacher
  encoder + trainable spatial heads) sees both noised at t' ~ logit-normal(-1, 1); hinge + R1
  for the heads, lambda_mse MSE + lambda_gen GAN for the student (core/adversarial_distillation.py).
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..core import adversarial_distillation as distillation
from ..core.embeddings import sinusoidal_embedding
from .guidance import SCALE_EMBED_MULT

NUM_TIMESTEPS = 1000
STUDENT_TRAIN_STEPS = 8  # appendix B: EulerDiscrete scheduler with 8 training timesteps
TEACHER_LCM_STEPS = 5  # appendix B: the teacher makes x_0 in 5 LCM steps
LCM_ORIGINAL_STEPS = 50  # the LCM scheduler's default original_inference_steps
DISC_T_MEAN, DISC_T_STD = -1.0, 1.0  # Sec. 4.3: logit-normal(-1, 1) was best


# ------------------------------------------------------------------------ schedules

def euler_discrete_timesteps(steps: int = STUDENT_TRAIN_STEPS, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """EulerDiscrete's ``linspace`` spacing: ``steps`` timesteps from T-1 down to 0 (8: 999, 856, ..., 0),
    rounded to the schedule's integer timesteps (diffusers keeps 713.57 and interpolates sigma)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(num_timesteps - 1, 0, steps).round().long()


def lcm_timesteps(steps: int, original_steps: int = LCM_ORIGINAL_STEPS, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """The LCM scheduler's timesteps: every (T/original)-th timestep (19, 39, ..., 999), then
    ``steps`` of them evenly from the noisiest (5 steps: 999, 799, 599, 399, 199; 1 step: 999)."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"steps must be in [1, {original_steps}], got {steps}")
    skip = num_timesteps // original_steps
    origin = torch.arange(1, original_steps + 1) * skip - 1  # ascending
    idx = torch.floor(torch.linspace(0, original_steps, steps + 1)[:-1]).long()
    return origin.flip(0)[idx]


def vp_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of the VP process for k-diffusion sigmas (alpha_t = c_in)."""
    s = torch.as_tensor(sigma, dtype=torch.float32)
    alpha = 1.0 / torch.sqrt(1.0 + s * s)
    return alpha, s * alpha


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim == 1 else v


def v_target_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """The teacher's v on a VP sample x_t from its eps: x_0 = (x_t - sigma_t eps) / alpha_t, then
    v = alpha_t eps - sigma_t x_0 (Salimans & Ho; distillation.v_from_eps)."""
    a, s = _bc(alpha_t, x_t), _bc(sigma_t, x_t)
    x0 = (x_t - s * eps) / a
    return distillation.v_from_eps(eps, x0, a, s)


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """x_0 = alpha_t x_t - sigma_t v (what ComfyUI's V_PREDICTION computes from the same output)."""
    return _bc(alpha_t, x_t) * x_t - _bc(sigma_t, x_t) * v


def add_noise(x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """Forward diffusion in k-diffusion space: x = x_0 + sigma * eps (the UNet input is c_in * x)."""
    return x0 + _bc(sigma, x0) * noise


def lcm_sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
               sigmas: torch.Tensor, renoise: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """LCM multistep sampling (ComfyUI's sample_lcm, diffusers' LCMScheduler without the
    boundary-condition scaling, which is ~1 at these timesteps): start at x = eps sqrt(1 + sigma_0^2)
    (the VP sample x_T = eps), predict x_0, re-noise it to the next sigma with fresh noise.

    ``denoise(x, sigma) -> x_0`` in k-space; ``renoise(i)`` gives the noise of step i.
    """
    x = noise * torch.sqrt(1.0 + sigmas[0].float() ** 2)
    for i in range(len(sigmas)):
        x0 = denoise(x, sigmas[i].expand(x.shape[0]))
        if i + 1 == len(sigmas):
            return x0
        x = add_noise(x0, sigmas[i + 1].expand(x.shape[0]), renoise(i))
    return x


# ---------------------------------------------------------------------- draws (Alg. 2)

def discriminator_timesteps(n: int, generator: torch.Generator | None = None, mean: float = DISC_T_MEAN,
                            std: float = DISC_T_STD, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """t' of the discriminator's 1000-step EulerDiscrete schedule: floor(T sigmoid(N(mean, std)))."""
    t = distillation.logit_normal_timesteps(n, mean, std, num_timesteps, generator)
    return t.floor().long().clamp(0, num_timesteps - 1)


def student_timesteps(n: int, generator: torch.Generator | None = None, steps: int = STUDENT_TRAIN_STEPS) -> torch.Tensor:
    """Alg. 2 line 5, t ~ U over the student's ``steps`` EulerDiscrete training timesteps."""
    return euler_discrete_timesteps(steps)[torch.randint(0, steps, (n,), generator=generator)]


# ----------------------------------------------------------------- the discriminator

class SpatialHead(nn.Module):
    """One trainable head on a feature level (appendix B, Fig. 11): 1x1 conv, norm, FiLM from the
    (s_T, s_I, t) embedding, 3x3 conv, then per-pixel logits plus a projection term on the prompt
    embedding (the head's output conditioned on c_T). Output [B, 1, h, w]."""

    def __init__(self, channels: int, cond_dim: int, prompt_dim: int, hidden: int = 64):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, hidden, 1)
        self.norm = nn.GroupNorm(math.gcd(32, hidden), hidden)
        self.film = nn.Linear(cond_dim, 2 * hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 1)
        self.prompt = nn.Linear(prompt_dim, hidden)
        self.hidden = hidden

    def forward(self, feature: torch.Tensor, cond: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.conv_in(feature)))
        scale, shift = self.film(cond).chunk(2, dim=1)
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = F.silu(self.conv(h))
        proj = (h * self.prompt(prompt)[:, :, None, None]).sum(1, keepdim=True) / math.sqrt(self.hidden)
        return self.out(h) + proj


class DiscriminatorHeads(nn.Module):
    """The trainable part of D: one SpatialHead per feature level of the frozen teacher encoder,
    sharing one conditioning MLP over the sinusoidal embeddings of s_T, s_I (x SCALE_EMBED_MULT, as
    the student's guidance embedding) and t'. ``prompt`` is the pooled prompt embedding."""

    def __init__(self, feature_channels: Sequence[int], prompt_dim: int, embed_dim: int = 64,
                 hidden: int = 64, seed: int | None = None):
        super().__init__()
        self.feature_channels = [int(c) for c in feature_channels]
        self.prompt_dim, self.embed_dim, self.hidden = int(prompt_dim), int(embed_dim), int(hidden)
        with torch.random.fork_rng(devices=[]):  # torch's own init, drawn from the run's seed
            if seed is not None:
                torch.manual_seed(seed)
            self.cond = nn.Sequential(nn.Linear(3 * embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
            self.heads = nn.ModuleList(SpatialHead(c, embed_dim, prompt_dim, hidden) for c in self.feature_channels)

    def config(self) -> dict:
        return {"feature_channels": self.feature_channels, "prompt_dim": self.prompt_dim,
                "embed_dim": self.embed_dim, "hidden": self.hidden}

    def forward(self, features: Sequence[torch.Tensor], scales: torch.Tensor, t: torch.Tensor,
                prompt: torch.Tensor) -> list[torch.Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} feature levels for {len(self.heads)} discriminator heads")
        s = scales.reshape(-1, 2).float() * SCALE_EMBED_MULT
        e = torch.cat([sinusoidal_embedding(s[:, 1], self.embed_dim), sinusoidal_embedding(s[:, 0], self.embed_dim),
                       sinusoidal_embedding(t.float(), self.embed_dim)], dim=1).to(features[0].device)
        cond = self.cond(e)
        prompt = prompt.to(cond.dtype)
        return [head(f.to(cond.dtype), cond, prompt) for head, f in zip(self.heads, features)]


def pooled_prompt(context: torch.Tensor) -> torch.Tensor:
    """[B, tokens, D] CLIP context -> [B, D]: the mean over tokens (the pooled prompt embedding)."""
    return context.float().mean(dim=1)


# -------------------------------------------------------------------------- losses

def discriminator_loss(d_real: Sequence[torch.Tensor], d_fake: Sequence[torch.Tensor], r1=0.0,
                       lambda_r1: float = 0.0) -> torch.Tensor:
    """Alg. 2 line 11 per head (MoViE's sign: D < 0 is "real"), averaged over the heads."""
    terms = [distillation.movie_discriminator_loss(r, f) for r, f in zip(d_real, d_fake)]
    return torch.stack(terms).mean() + lambda_r1 * r1


def generator_loss(x0_hat: torch.Tensor, x0: torch.Tensor, d_fake: Sequence[torch.Tensor],
                   lambda_mse: float, lambda_gen: float) -> torch.Tensor:
    """Alg. 2 line 14: lambda_mse ||x_hat_0 - x_0||^2 + lambda_gen E[D(x_hat_t')], E over heads too."""
    gan = torch.stack([d.mean() for d in d_fake]).mean()
    return lambda_mse * F.mse_loss(x0_hat, x0) + lambda_gen * gan


def discriminator_step_loss(D: Callable[[torch.Tensor, torch.Tensor], list], x0: torch.Tensor,
                            x0_hat: torch.Tensor, sigma_d: torch.Tensor, noise_d: torch.Tensor,
                            lambda_r1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 2 lines 8-11: noise the real x_0 and the (detached) fake with the same eps' at sigma(t'),
    score both, R1 on the real input. ``D(x, sigma) -> list of per-head logits`` takes k-space
    samples. Returns (loss, R1)."""
    real = add_noise(x0.detach(), sigma_d, noise_d).requires_grad_(lambda_r1 > 0)
    fake = add_noise(x0_hat.detach(), sigma_d, noise_d)
    d_real = D(real, sigma_d)
    r1 = torch.zeros((), device=x0.device)
    if lambda_r1 > 0:
        r1 = distillation.r1_penalty(torch.stack([d.flatten(1).mean(1) for d in d_real]).mean(0), real)
    return discriminator_loss(d_real, D(fake, sigma_d), r1, lambda_r1), r1


def generator_step_loss(D, x0: torch.Tensor, x0_hat: torch.Tensor, sigma_d: torch.Tensor, noise_d: torch.Tensor,
                        lambda_mse: float, lambda_gen: float) -> torch.Tensor:
    """Alg. 2 lines 13-14: a fresh t', eps' (the caller draws them), the fake noised with gradients
    flowing back into the student through the frozen discriminator."""
    d_fake = D(add_noise(x0_hat, sigma_d, noise_d), sigma_d) if lambda_gen else []
    if not lambda_gen:
        return lambda_mse * F.mse_loss(x0_hat, x0)
    return generator_loss(x0_hat, x0, d_fake, lambda_mse, lambda_gen)


def loss_phases(v_steps: int, total_steps: int) -> list[tuple[int, str]]:
    """The phases of a One-Step Distill run for its loss curve: (first step, label)."""
    return [(1, "v-prediction")] * (v_steps > 0) + [(v_steps + 1, "adversarial (generator)")] * (v_steps < total_steps)


def adapter_fingerprint(adapter) -> str:
    """A hash of a guidance adapter's tensors: ties a one-step student to the teacher it was trained on."""
    sd, _ = adapter.to_state()
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].numpy().tobytes())
    return h.hexdigest()[:16]
