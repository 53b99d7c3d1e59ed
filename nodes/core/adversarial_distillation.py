"""Losses and step sampling of the two distillation methods, as the papers write them.

Pure torch (no ComfyUI import). Used by the trainers: EVE's Factorized Diffusion Distillation
(seeds/000, Sec. 3.2-3.3) and MoViE's guidance-preserving adversarial distillation (seeds/002,
Alg. 2, appendix B). The two papers use opposite sign conventions for their discriminators
(EVE: D > 0 means "teacher"; MoViE Alg. 2: D < 0 means "real"); each function follows its own
paper so that its loss equals the printed equation term by term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# EVE Sec. 3.2: "In practice, we set both alpha and beta to 0.5. Following [ADD], lambda = 2.5."
FDD_ALPHA = 0.5
FDD_BETA = 0.5
FDD_LAMBDA = 2.5


# ----------------------------------------------------------------- step sampling

def k_bin_steps(k: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """EVE's K-bin diffusion sampling: one step drawn uniformly from each of k equal bins.

    The schedule's ``num_steps`` step indices are split into k evenly sized bins
    (bin i = [i*T/k, (i+1)*T/k)); one index is drawn per bin, so the student trains on every
    part of the schedule and a larger k at inference is no train-test mismatch. Returned in
    ascending index order (bin 0 first). With k = 1 this is uniform over the schedule.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > num_steps:
        raise ValueError(f"k = {k} student steps cannot be drawn from a schedule of {num_steps} steps; "
                         f"lower k or use more steps")
    edges = [round(i * num_steps / k) for i in range(k + 1)]
    lows = torch.tensor(edges[:-1], dtype=torch.float64)
    widths = torch.tensor([b - a for a, b in zip(edges[:-1], edges[1:])], dtype=torch.float64)
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    return (lows + torch.floor(u * widths)).long()


def logit_normal_timesteps(n: int, mean: float = -1.0, std: float = 1.0, num_timesteps: int = 1000,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """MoViE's discriminator noise levels t' = T * sigmoid(N(mean, std)) (Sec. 4.3: -1, 1 best)."""
    z = torch.randn(n, generator=generator) * std + mean
    return torch.sigmoid(z) * num_timesteps


# ------------------------------------------------------------------ EVE (FDD)

def sds_loss(x0: torch.Tensor, eps_pred: torch.Tensor, eps: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """L_SDS = E[c(t) * sg(eps_hat(x'_t, t) - eps) * x'_0] (EVE Eq. in Sec. 3.2).

    ``x0`` is the student's generation (gradients flow into it); the teacher's prediction
    ``eps_pred`` and the noise are constants (sg). Summed over a sample's elements and
    averaged over the batch, so d L / d x0 = c(t) (eps_hat - eps) / batch.
    """
    w = torch.as_tensor(weight, dtype=x0.dtype, device=x0.device)
    if w.ndim == 1:
        w = w.view(-1, *([1] * (x0.ndim - 1)))
    per_sample = (w * (eps_pred - eps).detach() * x0).flatten(1).sum(1)
    return per_sample.mean()


def eve_discriminator_loss(d_teacher: torch.Tensor, d_student: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x'_teacher))] + E[max(0, 1 + D(x'_0))] (hinge, EVE Sec. 3.2)."""
    return F.relu(1 - d_teacher).mean() + F.relu(1 + d_student).mean()


def eve_generator_loss(d_student: torch.Tensor) -> torch.Tensor:
    """L_G = -E[max(0, 1 + D(x'_0))], exactly as EVE prints it.

    Note: ADD's generator loss is -E[D(x'_0)]; EVE's hinge form is the same while
    D(x'_0) > -1 and gives no gradient below it. We follow the paper.
    """
    return -F.relu(1 + d_student).mean()


def fdd_generator_loss(g_edit, sds_edit, g_video=None, sds_video=None,
                       alpha: float = FDD_ALPHA, beta: float = FDD_BETA, lam: float = FDD_LAMBDA) -> torch.Tensor:
    """L_G-FDD = alpha (L_G-Edit + lambda L_SDS-Edit) + beta (L_G-Video + lambda L_SDS-Video).

    A term passed as None is off (image-only combinations, Sec. 4.4, or the SDS-only phase
    where the adversarial terms are not yet added).
    """
    def part(g, sds):
        return (g if g is not None else 0.0) + (lam * sds if sds is not None else 0.0)
    loss = alpha * part(g_edit, sds_edit)
    if g_video is not None or sds_video is not None:
        loss = loss + beta * part(g_video, sds_video)
    return torch.as_tensor(loss)


def fdd_discriminator_loss(d_edit=None, d_video=None, alpha: float = FDD_ALPHA, beta: float = FDD_BETA) -> torch.Tensor:
    """L_D-FDD = alpha L_D-Edit + beta L_D-Video (a term passed as None is off)."""
    loss = 0.0
    if d_edit is not None:
        loss = loss + alpha * d_edit
    if d_video is not None:
        loss = loss + beta * d_video
    return torch.as_tensor(loss)


# ------------------------------------------------------------------ MoViE (Alg. 2)

def r1_penalty(d_real: torch.Tensor, real_input: torch.Tensor) -> torch.Tensor:
    """R1 = E[||grad_x D(x)||^2] on real samples (Mescheder et al.), kept in the graph."""
    (grad,) = torch.autograd.grad(d_real.sum(), real_input, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def movie_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, r1: torch.Tensor | float = 0.0,
                             lambda_r1: float = 0.0) -> torch.Tensor:
    """Alg. 2 line 11: E[max(0, 1 + D(x_t'))] + lambda_r1 R1 + E[max(0, 1 - D(x_hat_t'))]."""
    return F.relu(1 + d_real).mean() + lambda_r1 * r1 + F.relu(1 - d_fake).mean()


def movie_generator_loss(x0_hat: torch.Tensor, x0: torch.Tensor, d_fake: torch.Tensor,
                         lambda_mse: float = 1.0, lambda_gen: float = 1.0) -> torch.Tensor:
    """Alg. 2 line 14: lambda_mse ||x_hat_0 - x_0||^2 + lambda_gen E[D(x_hat_t')]."""
    return lambda_mse * F.mse_loss(x0_hat, x0) + lambda_gen * d_fake.mean()


def v_from_eps(eps: torch.Tensor, x0: torch.Tensor, alpha_t, sigma_t) -> torch.Tensor:
    """v = alpha_t * eps - sigma_t * x0 (Salimans & Ho), the student's v-prediction target."""
    return alpha_t * eps - sigma_t * x0
