"""host.model_identity: the same weights and patches give the same identity in any load, anything
that changes the numbers (other weights, a LoRA, its strength, the model sampling) another one,
named. Tiny random-weight models built twice stand in for a checkpoint loaded twice (a new
``BaseModel`` object each time, as after ``/free`` or a restart); the real server's reload and
restart are in test_tokenflow_inversion_reload.py."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def identity(comfy):
    from harness.pack import pack_module
    return pack_module(comfy.node_classes["VideoEditTokenFlowDDIMInverter"], "host.model_identity")


def _model(seed=3):
    from harness.fixtures import build_model, tiny_unet_config
    return build_model(tiny_unet_config(), seed=seed)


def _lora(model, seed=0, rank=2, scale=0.1):
    """A kohya-layout LoRA for every attention projection of ``model``, loaded by core's loader."""
    import comfy.sd
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, w in model.model.diffusion_model.state_dict().items():
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
            base = "lora_unet_" + key[:-len(".weight")].replace(".", "_")
            sd[f"{base}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * scale
            sd[f"{base}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * scale
            sd[f"{base}.alpha"] = torch.tensor(float(rank))
    return sd


def _with_lora(model, lora, strength=1.0):
    import comfy.sd
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0.0)
    assert patched.patches, "the LoRA patched nothing"
    return patched


def test_same_weights_in_another_load_give_the_same_identity(identity):
    a, b = _model(), _model()
    assert a.model is not b.model
    assert identity.identity_string(a) == identity.identity_string(b)
    assert identity.identity_string(a.clone()) == identity.identity_string(a)
    with torch.inference_mode():  # as ComfyUI's executor loads checkpoints: inference tensors
        loaded = _model()
        assert identity.identity_string(loaded) == identity.identity_string(a)
    # the same numbers stored as float16 (an fp16 load of the same file) are the same model
    half = _model()
    half.model.diffusion_model.half()
    assert identity.weights_digest(half) == identity.weights_digest(a)


def test_other_weights_lora_strength_and_sampling_are_named(comfy, identity):
    base = _model()
    ref = identity.model_identity(base)
    diffs = identity.identity_differences(ref, identity.model_identity(_model(seed=4)))
    assert len(diffs) == 1 and diffs[0].startswith("weights: another checkpoint")

    lora = _lora(base)
    with_lora = identity.model_identity(_with_lora(base, lora))
    [diff] = identity.identity_differences(ref, with_lora)
    n = len(_with_lora(base, lora).patches)
    assert diff == f"weight patches (LoRAs, merges): made with 0 patched weights, this model has {n}"
    # the same LoRA file loaded again (other tensor objects, same content) into another load
    again = {k: v.clone() for k, v in lora.items()}
    assert identity.model_identity(_with_lora(_model(), again)) == with_lora
    [diff] = identity.identity_differences(with_lora, identity.model_identity(_with_lora(base, lora, 0.5)))
    assert "same" in diff and "other strengths or other LoRA files" in diff
    [diff] = identity.identity_differences(with_lora, identity.model_identity(_with_lora(base, _lora(base, seed=1))))
    assert "other strengths or other LoRA files" in diff

    v_pred = comfy.node_classes["ModelSamplingDiscrete"]().patch(base, "v_prediction", False)[0]
    [diff] = identity.identity_differences(ref, identity.model_identity(v_pred))
    assert diff.startswith("model sampling: made with ModelSamplingDiscrete+EPS") and "V_PREDICTION" in diff
    # the node's eps without zsnr is the model's own sampling: the same identity
    eps = comfy.node_classes["ModelSamplingDiscrete"]().patch(base, "eps", False)[0]
    assert identity.model_identity(eps) == ref


def test_weights_patched_in_place_are_read_from_the_backup(identity):
    """While ComfyUI has a LoRA applied in place (a loaded model), the weights hash is still the
    file's: the patched weights are read from the patcher's backup."""
    fresh = _model()
    expected = identity.weights_digest(_model())
    patched = _with_lora(fresh, _lora(fresh))
    patched.patch_model()
    try:
        key = next(iter(patched.patches))
        assert key in patched.backup  # really patched in place
        assert identity.weights_digest(fresh) == expected
    finally:
        patched.unpatch_model()


def test_the_weights_hash_is_cached_beside_the_model_not_on_it(identity, monkeypatch):
    model = _model()
    attrs = (set(vars(model)), set(vars(model.model)))
    first = identity.weights_digest(model)
    assert (set(vars(model)), set(vars(model.model))) == attrs  # nothing written onto the MODEL
    calls = []
    real = identity.tensor_digest
    monkeypatch.setattr(identity, "tensor_digest", lambda t: calls.append(1) or real(t))
    assert identity.weights_digest(model.clone()) == first and calls == []  # once per loaded model
