"""A LoRA file on a MODEL through core's LoRA functions (nodes/host/lora.py), on a tiny random UNet:
the patches equal core LoraLoaderModelOnly's bit for bit (the node as the oracle), and a file that
does not fit (an AnimateDiff motion module, a LoRA whose modules only partly exist in the model,
text-encoder keys only, a corrupt file) is an error naming the file and the fraction applied, where
core's loader gives a model that silently equals the one without it."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def model(comfy):
    from harness.fixtures import build_model, tiny_unet_config
    return build_model(tiny_unet_config(), seed=3)


def _kohya(model, seed=0, rank=2) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA (what the EVE aligner writes) on every UNet matrix/conv weight, random up."""
    from videoedit.nodes.core.weight_deltas import LoRADelta
    from videoedit.nodes.eve.align import lora_state_dict
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for key, w in model.model.state_dict().items():
        if key.startswith("diffusion_model.") and key.endswith(".weight") and w.ndim >= 2:
            d = LoRADelta(tuple(w.shape), rank, generator=gen)
            with torch.no_grad():
                d.up.normal_(0, 0.1, generator=gen)
            deltas[key] = d
    return lora_state_dict(deltas)


@pytest.fixture()
def loras(comfy):
    """Writes LoRA files into models/loras by name; removes them after the test."""
    import folder_paths
    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    written = []

    def write(name: str, tensors=None, raw: bytes | None = None) -> str:
        path = os.path.join(folder, name)
        if raw is not None:
            with open(path, "wb") as f:
                f.write(raw)
        else:
            save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        written.append(path)
        return path

    yield write
    for p in written:
        os.remove(p)


def _same_patches(ours, core):
    import comfy.lora
    assert ours.patches.keys() == core.patches.keys()
    sd = ours.model.state_dict()
    for key in ours.patches:
        assert [p[0] for p in ours.patches[key]] == [p[0] for p in core.patches[key]], key  # strengths
        a = comfy.lora.calculate_weight(ours.patches[key], sd[key].clone().float(), key)
        b = comfy.lora.calculate_weight(core.patches[key], sd[key].clone().float(), key)
        assert torch.equal(a, b), key


def test_patches_equal_core_lora_loader_model_only(comfy, model, loras):
    from videoedit.nodes.host.lora import load_model_lora
    lora = _kohya(model)
    te = {f"lora_te_text_model_encoder_layers_0_mlp_fc1.{s}": torch.randn(2, 8) for s in ("lora_up.weight",
                                                                                      "lora_down.weight")}
    core_loader = comfy.node_classes["LoraLoaderModelOnly"]()
    for name, tensors in (("unet_only.safetensors", lora), ("with_text_encoder.safetensors", {**lora, **te})):
        path = loras(name, tensors)
        for strength in (1.0, -1.5):
            ours = load_model_lora(model, path, strength)
            core = core_loader.load_lora_model_only(model, name, strength)[0]
            assert len(ours.patches) == len([k for k in lora if k.endswith(".lora_up.weight")]) > 100
            _same_patches(ours, core)
        assert load_model_lora(model, path, 0.0) is model is core_loader.load_lora_model_only(model, name, 0.0)[0]
    assert not model.patches  # the input MODEL is untouched


def test_a_motion_module_as_lora_is_an_error_where_core_silently_applies_nothing(comfy, model, loras):
    from harness.fixtures import tiny_motion_module_sd
    from videoedit.nodes.host.lora import load_model_lora
    mm = tiny_motion_module_sd()
    path = loras("motion_module.safetensors", mm)
    core = comfy.node_classes["LoraLoaderModelOnly"]().load_lora_model_only(model, "motion_module.safetensors", 1.0)[0]
    assert core.patches == {}  # core: the model unchanged, one "lora key not loaded" log line per key
    with pytest.raises(ValueError, match=rf"^lora_name: only 0 of the {len(mm)} UNet keys of 'motion_module"
                                         r"\.safetensors' \(0%\) apply to this model.*video_adapter"):
        load_model_lora(model, path, 1.0)


def test_a_lora_that_only_partly_fits_names_the_fraction(model, loras):
    from videoedit.nodes.host.lora import load_model_lora
    lora = _kohya(model)
    modules = sorted({k.split(".")[0] for k in lora})
    moved = set(modules[::2])  # every other module names a layer this model does not have
    other = {(f"lora_unet_other_model_{k[len('lora_unet_'):]}" if k.split(".")[0] in moved else k): v
             for k, v in lora.items()}
    applied = sum(1 for k in other if not k.startswith("lora_unet_other_model_"))
    path = loras("another_model.safetensors", other)
    with pytest.raises(ValueError, match=rf"only {applied} of the {len(other)} UNet keys of 'another_model"
                                         rf"\.safetensors' \({100 * applied / len(other):.0f}%\)"):
        load_model_lora(model, path, 1.0)


def test_text_encoder_only_and_corrupt_files_are_errors_naming_the_file(model, loras):
    from videoedit.nodes.host.lora import load_model_lora
    te_only = loras("te_only.safetensors", {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(2.0)})
    with pytest.raises(ValueError, match=r"^lora_name: 'te_only\.safetensors' holds no UNet weights"):
        load_model_lora(model, te_only, 1.0)
    broken = loras("broken.safetensors", raw=b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors file")
    with pytest.raises(ValueError, match=r"(?s)^lora_name: 'broken\.safetensors' is (truncated or corrupt|not a weights file)"):
        load_model_lora(model, broken, 1.0)
