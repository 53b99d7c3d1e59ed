"""TokenFlow DDIM (tokenflow/ddim.py), checked against independent computations."""
from __future__ import annotations

import math

import pytest
import torch

from videoedit.nodes.tokenflow import ddim


def sd_sigmas(steps: int) -> torch.Tensor:
    """SD1.x's discrete schedule (scaled linear betas) at evenly spaced timesteps, plus 0."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    t = torch.linspace(999, 0, steps, dtype=torch.float64).round().long()
    return torch.cat([((1 - acp[t]) / acp[t]).sqrt(), torch.zeros(1, dtype=torch.float64)])


class Gaussian:
    """Data x0 ~ N(mu, diag(var)): the exact eps predictor is linear in x,
    eps(x, sigma) = sigma / (var + sigma^2) * (x - mu)."""

    def __init__(self, shape=(4, 8, 8), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
        self.var = torch.rand(shape, generator=g, dtype=torch.float64) * 1.5 + 0.1
        self.g = g

    def eps(self, x, sigma):
        return sigma / (self.var + sigma ** 2) * (x - self.mu)

    def v(self, x, sigma):
        """The same predictor as a v-prediction model sees it (VP form, alpha^2 + s^2 = 1)."""
        x0 = x - sigma * self.eps(x, sigma)
        alpha, s = 1 / math.sqrt(1 + sigma ** 2), sigma / math.sqrt(1 + sigma ** 2)
        return alpha * self.eps(x, sigma) - s * x0

    def sample(self, n):
        return self.mu + self.var.sqrt() * torch.randn((n, *self.mu.shape), generator=self.g, dtype=torch.float64)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def round_trip(eps_fn, x0, sigmas, refine_iters):
    traj = ddim.ddim_invert(eps_fn, x0, sigmas, refine_iters)
    return traj, ddim.ddim_sample(eps_fn, traj[0], sigmas)


def test_ddim_step_is_vp_ddim():
    """The sigma-space step equals the textbook VP DDIM update after rescaling."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    a_t, a_s = 0.3, 0.8  # alphas_cumprod at the current / next timestep
    x_vp = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    x0_hat = (x_vp - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    next_vp = math.sqrt(a_s) * x0_hat + math.sqrt(1 - a_s) * eps
    sig = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    got = ddim.ddim_step(x_vp / math.sqrt(a_t), sig(a_t), sig(a_s), eps)
    torch.testing.assert_close(got, next_vp / math.sqrt(a_s))


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_round_trip_and_refinement(steps, capsys):
    data = Gaussian()
    x0 = data.sample(3)
    sigmas = sd_sigmas(steps)
    traj_plain, rec_plain = round_trip(data.eps, x0, sigmas, 0)
    traj_ref, rec_ref = round_trip(data.eps, x0, sigmas, 5)
    e_plain, e_ref = rel_err(rec_plain, x0), rel_err(rec_ref, x0)
    with capsys.disabled():
        print(f"\n[ddim round trip, {steps} steps] plain rel err {e_plain:.3e}, refined(5) {e_ref:.3e}, "
              f"ratio {e_plain / e_ref:.0f}x")
    assert traj_plain.shape == (steps + 1, *x0.shape)
    assert torch.equal(traj_ref[-1], x0)
    # the trajectory ends near the exact probability-flow solution at sigma_max
    exact_T = data.mu + (x0 - data.mu) * ((data.var + sigmas[0] ** 2) / data.var).sqrt()
    assert rel_err(traj_ref[0], exact_T) < 0.2
    assert e_plain < 0.6  # plain DDIM inversion is approximate but sane
    assert e_ref < 0.01
    assert e_plain / e_ref >= 10
    # each refined step is a fixed point: the DDIM sampling step maps traj[i] back to traj[i+1]
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        back = ddim.ddim_step(traj_ref[i], s, s_next, data.eps(traj_ref[i], s))
        assert rel_err(back, traj_ref[i + 1]) < 0.02


def test_refinement_converges_monotonically():
    data = Gaussian(seed=1)
    x0 = data.sample(2)
    errs = [rel_err(round_trip(data.eps, x0, sd_sigmas(15), r)[1], x0) for r in range(5)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_v_prediction_through_denoiser_matches_eps_model():
    """A v-prediction model, converted to x0_hat as ComfyUI's model_sampling does, gives the
    same inversion as the equivalent eps model."""
    data = Gaussian(seed=2)
    x0 = data.sample(2)
    sigmas = sd_sigmas(10)

    def v_denoiser(x, sigma):  # comfy.model_sampling.V_PREDICTION.calculate_denoised, sigma_data 1
        return x / (sigma ** 2 + 1) - data.v(x, sigma) * sigma / math.sqrt(sigma ** 2 + 1)

    eps_v = ddim.eps_from_denoised(v_denoiser)
    torch.testing.assert_close(ddim.ddim_invert(eps_v, x0, sigmas, 2), ddim.ddim_invert(data.eps, x0, sigmas, 2))
    with pytest.raises(ValueError):
        eps_v(x0, 0.0)


def test_invert_rejects_bad_sigmas_and_chunks_are_independent():
    data = Gaussian()
    with pytest.raises(ValueError):
        ddim.ddim_invert(data.eps, data.sample(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        ddim.ddim_invert(data.eps, data.sample(1), torch.tensor([1.0]))
    x0, sigmas = data.sample(4), sd_sigmas(6)
    whole = ddim.ddim_invert(data.eps, x0, sigmas, 1)
    parts = torch.cat([ddim.ddim_invert(data.eps, x0[s], sigmas, 1) for s in (slice(0, 3), slice(3, 4))], 1)
    torch.testing.assert_close(whole, parts)


def test_fingerprint():
    a = torch.arange(6.0)
    assert ddim.fingerprint(a, "m", 3) == ddim.fingerprint(a.clone(), "m", 3)
    assert ddim.fingerprint(a, "m", 3) != ddim.fingerprint(a + 1e-3, "m", 3)
    assert ddim.fingerprint(a, "m", 3) != ddim.fingerprint(a, "n", 3)
