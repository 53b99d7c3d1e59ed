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


# ------------------------------------------------------------------------ keyframes


# ------------------------------------------------------------------ diffusers as the oracle

def _sd_ddim(inverse: bool = False):
    """diffusers' DDIM (inverse) scheduler on SD1.x's schedule, in float64 (the oracle, never a
    runtime path of the pack)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    s = cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=inverse, steps_offset=0 if inverse else 1)
    s.alphas_cumprod = s.alphas_cumprod.double()
    return s


def _eps_model(shape, seed=0):
    """A deterministic, nonlinear stand-in for a UNet: eps(x_vp, t), VP input as diffusers feeds it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    return lambda x, t: torch.tanh(w * x + b) * (0.5 + t / 1000.0)


def _scale_free_eps_model(shape, seed=0):
    """An eps model that depends on its input only through x / ||x|| (per sample): the same for any
    positive scaling of the input (see the inversion test)."""
    model = _eps_model(shape, seed)
    return lambda x, t: model(x / x.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1)), t)


def test_ddim_sampling_matches_diffusers_ddim_scheduler():
    """ddim_sample in ComfyUI's sigma space = DDIMScheduler.step (eta 0) at SD's timesteps
    (steps_offset 1, last step to alphas_cumprod[0]), for a nonlinear eps model."""
    sched = _sd_ddim()
    sched.set_timesteps(10)
    acp = sched.alphas_cumprod
    ts = sched.timesteps.tolist()  # 901, 801, ..., 1
    sig = lambda a: float(((1 - a) / a).sqrt())  # noqa: E731
    sigmas = torch.tensor([sig(acp[t]) for t in ts] + [sig(acp[0])], dtype=torch.float64)
    t_of = {round(float(s), 9): t for s, t in zip(sigmas[:-1].tolist(), ts)}
    model = _eps_model((2, 4, 8, 8))
    x_vp = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    ref = x_vp
    for t in ts:
        ref = sched.step(model(ref, t), t, ref, eta=0.0).prev_sample

    def eps_fn(x, sigma):  # ComfyUI's call: the model sees c_in(sigma) * x = the VP latent
        return model(x / math.sqrt(1 + sigma ** 2), t_of[round(sigma, 9)])

    ours = ddim.ddim_sample(eps_fn, x_vp * math.sqrt(1 + sigmas[0] ** 2), sigmas) * math.sqrt(acp[0])
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_ddim_inversion_update_matches_diffusers_inverse_scheduler():
    """ddim_invert from the clean latent = DDIMInverseScheduler.step at the same timesteps (the eps
    of each step taken at the target timestep, as TokenFlow's preprocess.py does). What this cannot
    show: our eps_fn sees the current latent scaled by c_in of the *target* sigma, diffusers' UNet
    the current VP latent; an eps model that depends on its input only through its direction (used
    here) cannot tell the two apart, a real UNet can (slightly)."""
    sched = _sd_ddim(inverse=True)
    sched.set_timesteps(10)  # step ratio 100
    acp = sched.alphas_cumprod
    targets = [k * 100 - 1 for k in range(1, 11)]  # 99 ... 999; the first starts from the clean latent
    sig = lambda a: float(((1 - a) / a).sqrt())  # noqa: E731
    sigmas = torch.tensor([sig(acp[t]) for t in reversed(targets)] + [0.0], dtype=torch.float64)
    t_of = {round(float(s), 9): t for s, t in zip(sigmas[:-1].tolist(), reversed(targets))}
    model = _scale_free_eps_model((2, 4, 8, 8))
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    ref, ref_traj = x0, []
    for t in targets:
        ref = sched.step(model(ref, t), t, ref).prev_sample
        ref_traj.append(ref)

    def eps_fn(x, sigma):
        return model(x / math.sqrt(1 + sigma ** 2), t_of[round(sigma, 9)])

    traj = ddim.ddim_invert(eps_fn, x0, sigmas)
    for i, t in enumerate(targets):  # traj is in sampling order: traj[-2] is the first inverted step
        torch.testing.assert_close(traj[len(targets) - 1 - i] * math.sqrt(acp[t]), ref_traj[i], rtol=1e-9, atol=1e-9)
