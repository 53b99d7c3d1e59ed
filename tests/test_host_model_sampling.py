"""Another discrete noise schedule on a MODEL (nodes/host/model_sampling.py): the object patch
equals core ModelSamplingDiscrete's (the node as the oracle) bit for bit, for the schedules the
pack uses (EVE's zero-terminal SNR with eps and v-prediction, MoViE's v-prediction student) and
the others, and the input MODEL is untouched."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def model(comfy):
    from harness.fixtures import build_model, tiny_unet_config
    return build_model(tiny_unet_config(), seed=3)


@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
@pytest.mark.parametrize("zsnr", [True, False])
def test_sampling_equals_core_model_sampling_discrete(comfy, model, prediction, zsnr):
    import comfy.model_sampling as cms
    from videoedit.nodes.host.model_sampling import with_discrete_sampling
    ours = with_discrete_sampling(model, prediction, zsnr=zsnr)
    core = comfy.node_classes["ModelSamplingDiscrete"]().patch(model, prediction, zsnr)[0]
    assert ours.object_patches.keys() == core.object_patches.keys() == {"model_sampling"}
    a, b = ours.get_model_object("model_sampling"), core.get_model_object("model_sampling")
    kind = cms.V_PREDICTION if prediction == "v_prediction" else cms.EPS
    assert isinstance(a, cms.ModelSamplingDiscrete) and isinstance(a, kind)
    assert isinstance(a, cms.V_PREDICTION) == isinstance(b, cms.V_PREDICTION)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.zsnr == b.zsnr == zsnr and a.sigma_data == b.sigma_data
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([14.6, 0.03])
    assert torch.equal(a.calculate_denoised(sigma, out, x), b.calculate_denoised(sigma, out, x))
    assert torch.equal(a.calculate_input(sigma, x), b.calculate_input(sigma, x))
    assert torch.equal(a.timestep(sigma), b.timestep(sigma))
    assert a.percent_to_sigma(0.3) == b.percent_to_sigma(0.3)
    assert "model_sampling" not in model.object_patches


def test_an_unknown_prediction_is_refused(model):
    from videoedit.nodes.host.model_sampling import with_discrete_sampling
    with pytest.raises(ValueError, match="prediction must be one of eps, v_prediction"):
        with_discrete_sampling(model, "lcm", zsnr=False)
