"""Distillation losses and step sampling against the papers' equations (EVE Sec. 3.2-3.3,
MoViE Alg. 2), computed independently on hand-made inputs."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from videoedit.nodes.core import adversarial_distillation as D


# ------------------------------------------------------------------ K-bin sampling

def test_k_bin_each_step_in_its_own_bin_and_uniform_within():
    g = torch.Generator().manual_seed(0)
    k, T, n = 3, 50, 6000
    draws = torch.stack([D.k_bin_steps(k, T, g) for _ in range(n)])  # [n, k]
    edges = [0, 17, 33, 50]  # round(i*50/3)
    for i in range(k):
        col = draws[:, i]
        assert int(col.min()) >= edges[i] and int(col.max()) < edges[i + 1]
        counts = torch.bincount(col - edges[i], minlength=edges[i + 1] - edges[i]).numpy()
        assert (counts > 0).all()  # every step of the bin is reachable
        assert stats.chisquare(counts).pvalue > 1e-3  # uniform within the bin


def test_k_bin_with_one_bin_is_uniform_over_schedule():
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([D.k_bin_steps(1, 20, g) for _ in range(8000)]).flatten()
    counts = torch.bincount(draws, minlength=20).numpy()
    assert counts.sum() == 8000 and stats.chisquare(counts).pvalue > 1e-3


def test_k_larger_than_schedule_is_refused():
    with pytest.raises(ValueError, match="k = 5 .* 4 steps"):
        D.k_bin_steps(5, 4)


# ------------------------------------------------------------------------ SDS

def test_sds_gradient_is_weighted_residual_and_teacher_gets_none():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 4, 8, 8, generator=g, requires_grad=True)
    eps = torch.randn(1, 4, 8, 8, generator=g)
    teacher_w = torch.tensor(1.7, requires_grad=True)
    eps_pred = teacher_w * torch.randn(1, 4, 8, 8, generator=g)  # a "teacher" with a parameter
    c_t = 0.37
    D.sds_loss(x0, eps_pred, eps, c_t).backward()
    assert torch.allclose(x0.grad, c_t * (eps_pred.detach() - eps), atol=1e-7)
    assert teacher_w.grad is None  # sg(.): nothing reaches the teacher


def test_sds_per_sample_weights_and_batch_mean():
    x0 = torch.ones(2, 3, requires_grad=True)
    eps_pred, eps = torch.full((2, 3), 2.0), torch.zeros(2, 3)
    loss = D.sds_loss(x0, eps_pred, eps, torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((1 * 2 * 3 + 3 * 2 * 3) / 2)


# --------------------------------------------------------------- hinge losses

def test_eve_hinge_losses_match_hand_computation():
    d_teacher = torch.tensor([2.0, 0.5, -1.0])   # max(0, 1 - d) = 0, 0.5, 2
    d_student = torch.tensor([-2.0, 0.0, 1.5])   # max(0, 1 + d) = 0, 1, 2.5
    assert D.eve_discriminator_loss(d_teacher, d_student).item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert D.eve_generator_loss(d_student).item() == pytest.approx(-3.5 / 3)


def test_fdd_combination_uses_alpha_beta_lambda():
    g_e, s_e, g_v, s_v = map(torch.tensor, (0.3, 1.1, -0.7, 0.2))
    expect = 0.5 * (0.3 + 2.5 * 1.1) + 0.5 * (-0.7 + 2.5 * 0.2)
    assert D.fdd_generator_loss(g_e, s_e, g_v, s_v).item() == pytest.approx(expect)
    assert D.fdd_generator_loss(None, s_e, None, s_v).item() == pytest.approx(0.5 * 2.5 * (1.1 + 0.2))  # SDS phase
    assert D.fdd_generator_loss(g_e, s_e).item() == pytest.approx(0.5 * (0.3 + 2.5 * 1.1))  # image-only
    assert D.fdd_discriminator_loss(torch.tensor(1.2), torch.tensor(0.4)).item() == pytest.approx(0.8)


def test_movie_losses_match_alg2():
    d_real, d_fake = torch.tensor([-2.0, 0.5]), torch.tensor([0.0, 3.0])
    # E[max(0,1+D(real))] = (0 + 1.5)/2 ; E[max(0,1-D(fake))] = (1 + 0)/2
    assert D.movie_discriminator_loss(d_real, d_fake, r1=2.0, lambda_r1=0.1).item() == pytest.approx(0.75 + 0.2 + 0.5)
    x0, x0_hat = torch.zeros(2, 2), torch.ones(2, 2)
    assert D.movie_generator_loss(x0_hat, x0, d_fake, 2.0, 0.5).item() == pytest.approx(2.0 * 1.0 + 0.5 * 1.5)


def test_r1_penalty_on_hand_computed_case():
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    d = (x ** 2).sum(1)  # grad = 2x
    r1 = D.r1_penalty(d, x)
    assert r1.item() == pytest.approx(((4 * (1 + 4)) + (4 * (0.25 + 9))) / 2)
    r1.backward()  # create_graph: the penalty itself is differentiable (for the D update)
    assert torch.allclose(x.grad, 8 * x.detach() / 2)


def test_discriminator_noise_is_logit_normal():
    t = D.logit_normal_timesteps(20000, -1.0, 1.0, 1000, torch.Generator().manual_seed(3))
    assert float(t.min()) > 0 and float(t.max()) < 1000
    z = torch.logit(t / 1000).double().numpy()
    assert stats.kstest(z, "norm", args=(-1.0, 1.0)).pvalue > 1e-3
    assert abs(z.mean() + 1) < 0.03 and abs(z.std() - 1) < 0.03


def test_v_from_eps_is_the_v_parameterisation():
    # For x_t = a x0 + s eps with a^2 + s^2 = 1: x0 = a x_t - s v and eps = s x_t + a v.
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    a = math.cos(0.7)
    s = math.sin(0.7)
    v = D.v_from_eps(eps, x0, a, s)
    xt = a * x0 + s * eps
    assert torch.allclose(a * xt - s * v, x0, atol=1e-6)
    assert torch.allclose(s * xt + a * v, eps, atol=1e-6)
