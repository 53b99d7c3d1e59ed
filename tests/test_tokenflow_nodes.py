"""TokenFlow DDIM Inverter node on a tiny random-weight SD1.5-shaped model."""
from __future__ import annotations

import pytest
import torch


UNET_SHARE = 0.01


@pytest.fixture(scope="module")
def tiny(comfy):
    from harness.fixtures import build_clip, build_model, tiny_unet_config
    model = build_model(tiny_unet_config(), seed=3)
    # A random UNet's eps has a huge Jacobian (no inversion or sampler is stable on it), so
    # the round trip is checked on a well-posed model: through a unet_function_wrapper on a
    # clone (a patch point the inverter must honour), the exact denoiser of Gaussian data
    # (per-element mean/variance) plus a small share of the UNet's own eps, so the UNet
    # still runs on every call. The wrapper's timestep is ComfyUI's sigma.
    g = torch.Generator().manual_seed(5)
    mu, var = torch.randn(4, 8, 8, generator=g) * 0.5, torch.rand(4, 8, 8, generator=g) + 0.5
    model = model.clone()

    def gaussian_denoiser(apply, args):
        x, sigma = args["input"], args["timestep"].view(-1, 1, 1, 1)
        unet_eps = (x - apply(x, args["timestep"], **args["c"])) / sigma
        return mu + var / (var + sigma ** 2) * (x - mu) - sigma * UNET_SHARE * unet_eps
    model.set_model_unet_function_wrapper(gaussian_denoiser)
    clip = build_clip(tiny=True)
    positive = comfy.node_classes["CLIPTextEncode"]().encode(clip, "a dog running on grass")[0]
    return model, positive


@pytest.fixture(scope="module")
def inverter(comfy):
    return comfy.node_classes["VideoEditTokenFlowDDIMInverter"]


def _latent(n=3, seed=0):
    return {"samples": torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))}


def _sample_back(model, positive, noised, sigmas):
    """Core ComfyUI DDIM sampler (cfg 1) from the noised latent down the same sigmas."""
    import comfy.samplers
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)
    lat = noised["samples"]
    return guider.sample(torch.zeros_like(lat), lat, comfy.samplers.sampler_object("ddim"), sigmas,
                         disable_pbar=True, seed=0)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_inverter_round_trip_with_core_ddim_sampler(tiny, inverter, capsys):
    model, positive = tiny
    latent = _latent()
    errs = {}
    for r in (0, 6):
        inv, noised = inverter.execute(model, positive, latent, 8, "ddim_uniform", r, 2).result
        assert inv.trajectory.shape == (9, 3, 4, 8, 8)
        assert inv.steps == 8 and inv.sigmas[-1] == 0
        # the trajectory ends at the frames (in model space) and starts at the output latent
        lf = model.get_model_object("latent_format")
        torch.testing.assert_close(inv.trajectory[-1], lf.process_in(latent["samples"]))
        torch.testing.assert_close(lf.process_out(inv.trajectory[0]), noised["samples"], atol=1e-5, rtol=1e-5)
        errs[r] = _rel(_sample_back(model, positive, noised, inv.sigmas), latent["samples"])
    with capsys.disabled():
        print(f"\n[DDIM Inverter node, tiny UNet + Gaussian denoiser, 8 steps] round trip rel err plain {errs[0]:.3e}, "
              f"refined(6) {errs[6]:.3e}")
    assert errs[6] < errs[0] / 10
    assert errs[6] < 0.05


def test_inverter_chunking_fingerprint_and_input_model_untouched(tiny, inverter):
    model, positive = tiny
    latent = _latent(seed=1)
    before = {k: v.clone() for k, v in list(model.model.diffusion_model.state_dict().items())[:3]}
    patches = dict(model.model_options)
    a, _ = inverter.execute(model, positive, latent, 4, "normal", 1, 1).result
    b, _ = inverter.execute(model, positive, latent, 4, "normal", 1, 16).result
    torch.testing.assert_close(a.trajectory, b.trajectory, atol=1e-5, rtol=1e-5)
    assert a.fingerprint == b.fingerprint
    c, _ = inverter.execute(model, positive, _latent(seed=2), 4, "normal", 1, 16).result
    assert c.fingerprint != a.fingerprint
    d, _ = inverter.execute(model, positive, latent, 5, "normal", 1, 16).result
    assert d.fingerprint != a.fingerprint
    for k, v in before.items():
        assert torch.equal(model.model.diffusion_model.state_dict()[k], v)
    assert model.model_options == patches


def test_inverter_rejects_bad_latents(tiny, inverter):
    model, positive = tiny
    with pytest.raises(ValueError, match="latent: .*channels"):
        inverter.execute(model, positive, {"samples": torch.zeros(2, 16, 8, 8)}, 2, "normal", 0, 4)
    with pytest.raises(ValueError, match="latent: expected"):
        inverter.execute(model, positive, {"samples": torch.zeros(1, 4, 2, 8, 8)}, 2, "normal", 0, 4)
