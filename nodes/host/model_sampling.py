"""A MODEL with another discrete noise schedule (ComfyUI-bound), from ``comfy.model_sampling``'s
classes rather than the ModelSamplingDiscrete node: the same object patch core's node adds
(``ModelSamplingDiscrete`` + the prediction type, built from the model's own sampling settings),
for EVE's zero-terminal-SNR schedule and MoViE's v-prediction one-step student."""
from __future__ import annotations

import comfy.model_sampling


class DiscreteEps(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """Discrete schedule, epsilon prediction."""


class DiscreteVPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
    """Discrete schedule, v prediction."""


PREDICTIONS = {"eps": DiscreteEps, "v_prediction": DiscreteVPrediction}


def with_discrete_sampling(model, prediction: str, zsnr: bool):
    """A clone of ``model`` sampling with the discrete schedule of its config, ``prediction``
    ("eps" / "v_prediction") and, with ``zsnr``, zero terminal SNR (rescaled betas)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got '{prediction}'")
    m = model.clone()
    m.add_object_patch("model_sampling", PREDICTIONS[prediction](model.model.model_config, zsnr=zsnr))
    return m
