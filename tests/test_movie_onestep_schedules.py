"""The one-step student's schedules (movie/onestep.py) against diffusers' schedulers (the oracle;
never a runtime path of the pack): LCM, EulerDiscrete training timesteps, v-prediction."""
from __future__ import annotations

import torch

from videoedit.nodes.movie import onestep as mo


def test_schedules_follow_the_schedulers():
    assert mo.euler_discrete_timesteps(8).tolist() == [999, 856, 714, 571, 428, 285, 143, 0]
    assert mo.lcm_timesteps(5).tolist() == [999, 799, 599, 399, 199]  # diffusers LCMScheduler, 50 original steps
    assert mo.lcm_timesteps(1).tolist() == [999]
    s = torch.tensor([0.0, 0.5, 14.6])
    a, st = mo.vp_coefficients(s)
    assert torch.allclose(a * a + st * st, torch.ones(3))  # alpha^2 + sigma^2 = 1


def _sd_scheduler(cls, **kw):
    """A diffusers scheduler on SD1.x's schedule: the oracle for our own schedule code, never a
    runtime path of the pack."""
    return cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)


def test_lcm_timesteps_match_diffusers_lcm_scheduler():
    from diffusers import LCMScheduler
    for steps in (1, 2, 4, 5, 8, 50):
        sched = _sd_scheduler(LCMScheduler)
        sched.set_timesteps(steps, original_inference_steps=mo.LCM_ORIGINAL_STEPS)
        assert mo.lcm_timesteps(steps).tolist() == sched.timesteps.tolist(), steps


def test_euler_training_timesteps_match_diffusers_euler_discrete():
    """Appendix B's 8 EulerDiscrete training timesteps ('linspace' spacing), rounded to the integer
    timesteps our schedule has (diffusers keeps 713.57 and interpolates its sigma). One step differs
    and is not used: diffusers' np.linspace(0, 999, 1) gives [0], ours [999] (the student trains at 8)."""
    from diffusers import EulerDiscreteScheduler
    for steps in (2, 4, 8, 25):
        sched = _sd_scheduler(EulerDiscreteScheduler, timestep_spacing="linspace")
        sched.set_timesteps(steps)
        assert mo.euler_discrete_timesteps(steps).tolist() == sched.timesteps.round().long().tolist(), steps


def test_v_target_matches_diffusers_get_velocity():
    """v from the teacher's eps on x_t (our k-space sigmas -> VP coefficients) = diffusers'
    get_velocity(x_0, eps, t) on the same schedule; x_0 back from v as well."""
    from diffusers import DDPMScheduler
    sched = _sd_scheduler(DDPMScheduler)
    acp = sched.alphas_cumprod.double()
    t = torch.tensor([0, 1, 250, 500, 999])
    sigma = ((1 - acp[t]) / acp[t]).sqrt()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    alpha, sig_t = (c.double() for c in mo.vp_coefficients(sigma))
    x_t = sched.add_noise(x0, eps, t)
    v = mo.v_target_from_eps(x_t, eps, alpha, sig_t)
    torch.testing.assert_close(v, sched.get_velocity(x0, eps, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mo.x0_from_v(x_t, v, alpha, sig_t), x0, rtol=1e-5, atol=1e-5)
