"""EVE's Factorized Diffusion Distillation (seeds/000, Sec. 3.2-3.3): the alignment step, pure
torch (no ComfyUI import). The models come in as callables, so this file is the algorithm only:

- the student (backbone + both frozen adapters + the trainable LoRA) generates an edited clip
  from noise in k DDIM steps drawn by K-bin sampling, and the loss backpropagates through all
  k steps (each step's UNet call is gradient-checkpointed, so activations of one step at a time
  are kept);
- SDS from each frozen teacher on the student's clip (same t and noise for both teachers);
- two discriminators on a frozen feature network with trainable heads: D_e (input frame,
  instruction, output frame; per frame) and D_v (clip, caption; one temporal attention layer
  over the projected features, per pixel); hinge losses, L_G / L_D combined with alpha, beta,
  lambda (core/adversarial_distillation.py, where they are tested against the printed equations);
- SDS only for the first part of the run (paper: 1000 of 1500 iterations), then adversarial.

Everything runs in the VP parameterisation x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with
integer timesteps of the model's training schedule (the callables predict eps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from einops import rearrange

from ..core.adversarial_distillation import (eve_discriminator_loss, eve_generator_loss, fdd_discriminator_loss, fdd_generator_loss,
                           k_bin_steps, sds_loss)
from .temporal_adapter import TemporalAttention

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, timesteps [B]) -> eps
# SDS timesteps are drawn from this fraction of the schedule (DreamFusion's [0.02, 0.98]):
# at the very ends the teacher's residual carries no information.
SDS_T_RANGE = (0.02, 0.98)
MIN_ABAR = 1e-4  # zero-terminal-SNR schedules reach abar = 0 at the last step; x0 = x / sqrt(abar)


@dataclass
class AlignSettings:
    k: int = 3                    # student steps (paper: 3, the most that fits in memory)
    schedule_steps: int = 1000    # steps of the schedule the K bins split
    teacher_steps: int = 8        # DDIM steps of the teachers' "real" samples for the discriminators
    sds_fraction: float = 2 / 3   # SDS-only part of the run (paper: 1000 + 500)
    checkpointing: bool = True    # gradient checkpointing of each student step


def check_settings(s: AlignSettings, num_timesteps: int) -> None:
    if s.schedule_steps < 1 or s.schedule_steps > num_timesteps:
        raise ValueError(f"schedule_steps: {s.schedule_steps} is outside 1..{num_timesteps} (the model's training "
                         "timesteps); use at most that many")
    if s.k < 1 or s.k > s.schedule_steps:
        raise ValueError(f"k: {s.k} student steps cannot be drawn from a schedule of {s.schedule_steps} steps "
                         f"(one step per bin); lower k or raise schedule_steps")
    if s.teacher_steps < 1 or s.teacher_steps > num_timesteps:
        raise ValueError(f"teacher_steps: {s.teacher_steps} is outside 1..{num_timesteps}")


def adversarial_from(total_steps: int, sds_fraction: float) -> int:
    """First step (1-based) with the adversarial losses: after round(fraction * total) SDS-only steps."""
    return int(round(sds_fraction * total_steps)) + 1


def loss_phases(total_steps: int, sds_fraction: float) -> list[tuple[int, str]]:
    """The phases of an alignment run for its loss curve: (first step, label)."""
    adv = adversarial_from(total_steps, sds_fraction)
    return [(1, "SDS only")] * (adv > 1) + [(adv, "SDS + adversarial")] * (adv <= total_steps)


def schedule_timesteps(indices: torch.Tensor, schedule_steps: int, num_timesteps: int) -> torch.Tensor:
    """Schedule step indices -> model timesteps, descending order (noisiest first).

    Step i of an n-step schedule is the model timestep floor((i + 0.5) * T / n) (the middle of
    its stretch of the training schedule; with n = T it is timestep i itself)."""
    t = ((indices.double() + 0.5) * num_timesteps / schedule_steps).floor().long().clamp(0, num_timesteps - 1)
    return t.flip(0) if t.numel() > 1 and t[0] < t[-1] else t


def _abar(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(like.device)[t.to(like.device)].clamp_min(MIN_ABAR).to(like.dtype)
    return a.view(-1, *([1] * (like.ndim - 1)))


def ddim_generate(eps_fn: EpsFn, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                  checkpointing: bool = False) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` through ``timesteps`` (descending); returns x_0.

    The start is pure noise at the first timestep (as a sampler starts at T). The graph runs
    through every step: the gradient reaches parameters used only at the first one. With
    ``checkpointing`` each UNet call keeps only its input and recomputes its activations in
    the backward pass (k steps cost one step's activation memory plus k inputs)."""
    x = noise
    b = noise.shape[0]
    x0 = noise
    for i, t in enumerate(timesteps.tolist()):
        tt = torch.full((b,), int(t), dtype=torch.long)
        a_t = _abar(alphas_cumprod, tt, x)
        if checkpointing and torch.is_grad_enabled():
            eps = checkpoint(eps_fn, x, tt, use_reentrant=False)
        else:
            eps = eps_fn(x, tt)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if i + 1 < len(timesteps):
            a_prev = _abar(alphas_cumprod, torch.full((b,), int(timesteps[i + 1]), dtype=torch.long), x)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x0


def teacher_timesteps(steps: int, num_timesteps: int) -> torch.Tensor:
    """An evenly spaced DDIM schedule of ``steps`` timesteps, descending."""
    return schedule_timesteps(torch.arange(steps), steps, num_timesteps)


def sds_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """c(t) = (1 - abar_t) / (elements per sample): DreamFusion's w(t) = sigma_t^2, divided by the
    element count so that L_SDS is a per-element mean (as ADD's distance) and lambda = 2.5
    weighs it against the hinge terms on the scale the paper tuned it for."""
    a = alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype)
    return (1 - a) / float(x0[0].numel())


def sds_term(x0: torch.Tensor, teacher: EpsFn, t: torch.Tensor, eps: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(L_SDS of one teacher, its residual c(t)||eps_hat - eps||^2 per sample).

    The teacher sees x'_t = sqrt(abar) x'_0 + sqrt(1 - abar) eps without a graph (sg): no
    gradient can reach it, and d L / d x'_0 = c(t) (eps_hat - eps) / batch."""
    a = _abar(alphas_cumprod, t, x0)
    with torch.no_grad():
        x_t = a.sqrt() * x0.detach() + (1 - a).sqrt() * eps
        eps_hat = teacher(x_t, t).float()
    w = sds_weight(t, alphas_cumprod, x0)
    residual = (w.view(-1, *([1] * (x0.ndim - 1))) * (eps_hat - eps).pow(2)).flatten(1).sum(1).mean()
    return sds_loss(x0, eps_hat, eps, w), float(residual)


# ---------------------------------------------------------------------- discriminators

class _LevelHead(nn.Module):
    """Projection of one feature level to ``dim`` channels, conditioning, per-pixel logits."""

    def __init__(self, channels: int, dim: int, context_dim: int, video: bool, heads: int, max_frames: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(channels, dim, 1), nn.GroupNorm(1, dim), nn.SiLU())
        self.text = nn.Linear(context_dim, dim)
        self.video = video
        if video:  # D_v: one temporal attention layer over the projected features, per pixel
            self.temporal = TemporalAttention(dim, heads, max_frames)
        else:  # D_e: input-frame projection; conditions combined by one attention layer
            self.source = nn.Sequential(nn.Conv2d(channels, dim, 1), nn.GroupNorm(1, dim), nn.SiLU())
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Conv2d(dim, 1, 1)
        self.cond_out = nn.Linear(dim, dim)

    def forward(self, feat, context, frames: int, source_feat=None):
        h = self.proj(feat.float())
        b, d, hh, ww = h.shape
        txt = self.text(context.float())  # [B, T, dim]
        if txt.shape[0] != b:  # one caption per clip, features per frame
            txt = txt.repeat_interleave(b // txt.shape[0], 0)
        if self.video:
            seq = rearrange(h, "(b f) d h w -> (b h w) f d", f=frames)
            seq = seq + self.temporal(seq)
            # as a channels-last view of [B, d, h, w], the layout the heads always convolved
            h = rearrange(seq, "(b h w) f d -> (b f) h w d", h=hh, w=ww).permute(0, 3, 1, 2)
        else:
            src = self.source(source_feat.float())
            q = (h + src).flatten(2).transpose(1, 2)  # [B, hw, dim]
            kv = torch.cat([txt, src.flatten(2).transpose(1, 2)], dim=1)
            h = h + self.attn(q, kv, kv, need_weights=False)[0].transpose(1, 2).reshape(b, d, hh, ww)
        # projection-discriminator conditioning (as ADD's heads): logit + <h, c>
        c = self.cond_out(txt.mean(1))
        return (self.out(h) + (h * c[:, :, None, None]).sum(1, keepdim=True) / math.sqrt(d)).flatten(1)


class FeatureDiscriminator(nn.Module):
    """Trainable heads over a frozen feature network's levels; returns per-pixel logits [B, N]."""

    def __init__(self, level_channels: list[int], context_dim: int, video: bool, dim: int = 64, heads: int = 4,
                 max_frames: int = 32):
        super().__init__()
        self.video = video
        self.heads = nn.ModuleList(_LevelHead(c, dim, context_dim, video, heads, max_frames) for c in level_channels)

    def forward(self, feats: list[torch.Tensor], context: torch.Tensor, frames: int = 1,
                source_feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        if len(feats) != len(self.heads):
            raise ValueError(f"discriminator: {len(feats)} feature levels for {len(self.heads)} heads")
        srcs = source_feats if source_feats is not None else [None] * len(feats)
        return torch.cat([h(f, context, frames, s) for h, f, s in zip(self.heads, feats, srcs)], dim=1)


# --------------------------------------------------------------------- one iteration

@dataclass
class AlignModels:
    """The callables of one alignment run (every one on the same frozen backbone).

    student / edit_teacher / video_teacher: (x_t [B*F, C, h, w], t [B*F]) -> eps, with the
    batch's conditioning (instruction + source-frame hints, caption) already bound; features:
    x_0 -> list of feature maps of the frozen feature network (the backbone's UNet encoder);
    video_teacher None = image-only (Sec. 4.4: D_v and the video teacher off)."""
    student: EpsFn
    edit_teacher: EpsFn
    video_teacher: EpsFn | None
    features: Callable[[torch.Tensor], list[torch.Tensor]]
    instruction: torch.Tensor  # [B*F, T, D] (per frame)
    caption: torch.Tensor      # [B, T, D] (per clip)
    source: torch.Tensor       # [B*F, C, h, w] clean source latents (D_e's input frame)
    frames: int


@dataclass
class Draw:
    """The random draws of one iteration (from the step's generator: exact resume)."""
    student_t: torch.Tensor   # [k] descending model timesteps
    noise: torch.Tensor       # student start noise
    sds_t: torch.Tensor       # [B*F], one t per clip repeated over its frames
    sds_eps: torch.Tensor
    edit_noise: torch.Tensor  # teachers' DDIM start noise
    video_noise: torch.Tensor


def draw(gen: torch.Generator, shape, frames: int, s: AlignSettings, num_timesteps: int) -> Draw:
    idx = k_bin_steps(s.k, s.schedule_steps, gen)
    st = schedule_timesteps(idx, s.schedule_steps, num_timesteps)
    clips = shape[0] // frames
    lo, hi = int(SDS_T_RANGE[0] * num_timesteps), int(SDS_T_RANGE[1] * num_timesteps)
    t = torch.randint(lo, hi + 1, (clips,), generator=gen).repeat_interleave(frames)
    rn = lambda: torch.randn(shape, generator=gen)
    return Draw(st, rn(), t, rn(), rn(), rn())


def generator_losses(m: AlignModels, d: Draw, alphas_cumprod, s: AlignSettings,
                     d_edit: FeatureDiscriminator | None, d_video: FeatureDiscriminator | None):
    """Student generation, SDS (and adversarial G terms when discriminators are given).
    Returns (L_G-FDD, x'_0, {name: value})."""
    x0 = ddim_generate(m.student, d.noise, d.student_t, alphas_cumprod, s.checkpointing)
    sds_e, res_e = sds_term(x0, m.edit_teacher, d.sds_t, d.sds_eps, alphas_cumprod)
    log = {"sds_edit": sds_e.item(), "residual_edit": res_e}
    sds_v = g_e = g_v = None
    if m.video_teacher is not None:
        sds_v, res_v = sds_term(x0, m.video_teacher, d.sds_t, d.sds_eps, alphas_cumprod)
        log.update(sds_video=sds_v.item(), residual_video=res_v)
    if d_edit is not None:
        feats = m.features(x0)
        with torch.no_grad():
            src = m.features(m.source)
        g_e = eve_generator_loss(d_edit(feats, m.instruction, 1, src))
        log["g_edit"] = g_e.item()
        if d_video is not None and m.video_teacher is not None:
            g_v = eve_generator_loss(d_video(feats, m.caption, m.frames))
            log["g_video"] = g_v.item()
    loss = fdd_generator_loss(g_e, sds_e, g_v, sds_v)
    log["loss_g"] = loss.item()
    return loss, x0, log


def discriminator_loss(m: AlignModels, d: Draw, x0_student: torch.Tensor, alphas_cumprod, s: AlignSettings,
                       d_edit: FeatureDiscriminator, d_video: FeatureDiscriminator | None, num_timesteps: int):
    """L_D-FDD on the teachers' DDIM samples ("real") vs the student's (detached) clip."""
    ts = teacher_timesteps(s.teacher_steps, num_timesteps)
    with torch.no_grad():
        real_e = ddim_generate(m.edit_teacher, d.edit_noise, ts, alphas_cumprod)
        f_fake = m.features(x0_student.detach())
        f_real_e = m.features(real_e)
        src = m.features(m.source)
    l_e = eve_discriminator_loss(d_edit(f_real_e, m.instruction, 1, src), d_edit(f_fake, m.instruction, 1, src))
    l_v = None
    if d_video is not None and m.video_teacher is not None:
        with torch.no_grad():
            f_real_v = m.features(ddim_generate(m.video_teacher, d.video_noise, ts, alphas_cumprod))
        l_v = eve_discriminator_loss(d_video(f_real_v, m.caption, m.frames), d_video(f_fake, m.caption, m.frames))
    return fdd_discriminator_loss(l_e, l_v)


# ------------------------------------------------------------------------- LoRA file

def lora_state_dict(deltas: dict[str, "torch.nn.Module"]) -> dict[str, torch.Tensor]:
    """LoRA deltas keyed by model weight ("diffusion_model.<path>.weight") -> the kohya key layout
    (``lora_unet_<path with _>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``) that core
    LoraLoader (and A1111) read for SD-style UNets; conv deltas get their kernel shape back."""
    out = {}
    for key, d in deltas.items():
        if not (key.startswith("diffusion_model.") and key.endswith(".weight")):
            raise ValueError(f"LoRA: '{key}' is not a UNet weight key")
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        shape = tuple(d.shape)
        out[f"{name}.lora_down.weight"] = d.down.detach().float().reshape(d.rank, *shape[1:]).contiguous().cpu()
        out[f"{name}.lora_up.weight"] = d.up.detach().float().reshape(shape[0], d.rank, *([1] * (len(shape) - 2))).contiguous().cpu()
        out[f"{name}.alpha"] = torch.tensor(float(d.alpha))
    return out
