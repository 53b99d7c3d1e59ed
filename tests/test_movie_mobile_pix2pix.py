"""Mobile-Pix2Pix patch: removes exactly the highest-resolution attention, nothing else."""
from __future__ import annotations

import torch

from harness.fixtures import build_model, sd15_unet_config, tiny_unet_config
from videoedit.nodes.movie.mobile_pix2pix import highest_resolution_attention


def _transformer_paths(unet):
    return {n for n, m in unet.named_modules() if type(m).__name__ == "SpatialTransformer"}


def test_sd15_layout_has_five_highest_resolution_transformers(comfy):
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops as ops
    with torch.device("meta"):  # full-size layout, no memory
        unet = oam.UNetModel(**sd15_unet_config(), operations=ops.disable_weight_init)
    paths = highest_resolution_attention(unet)
    assert paths == ["input_blocks.1.1", "input_blocks.2.1", "output_blocks.9.1", "output_blocks.10.1",
                     "output_blocks.11.1"]
    assert len(_transformer_paths(unet)) == 16  # SD1.5: 6 down + 1 mid + 9 up


def test_patch_removes_exactly_those_layers_and_keeps_every_other_layer(comfy):
    node = comfy.node_classes["VideoEditMobilePix2Pix"]
    model = build_model(tiny_unet_config(ip2p=True))
    unet = model.model.diffusion_model
    modules_before = dict(unet.named_modules())
    removed = highest_resolution_attention(unet)
    assert len(removed) == 5  # the tiny config keeps SD1.5's pattern: 2 encoder + 3 decoder
    patched = node.execute(model).result[0]

    x, t, ctx = torch.randn(2, 8, 16, 16), torch.tensor([500.0, 500.0]), torch.randn(2, 5, 64)
    run = lambda m: m.model.apply_model(x[:, :4], t, c_crossattn=ctx, c_concat=x[:, 4:])
    with torch.inference_mode():
        ref = run(model)
    patched.patch_model()
    try:
        after = dict(patched.model.diffusion_model.named_modules())
        gone = [p for p in modules_before if any(p == r or p.startswith(r + ".") for r in removed)]
        for path in removed:
            assert type(after[path]).__name__ == "RemovedAttention"
        # every other layer is the very same module, so it computes the same output for the
        # same input; only the removed transformers (and their children) are missing
        kept = {p: m for p, m in modules_before.items() if p not in gone}
        assert all(after[p] is m for p, m in kept.items())
        assert set(after) == set(kept) | set(removed)
        n_before = sum(type(m).__name__ == "SpatialTransformer" for m in modules_before.values())
        n_after = sum(type(m).__name__ == "SpatialTransformer" for m in after.values())
        assert n_before - n_after == 5
        with torch.inference_mode():
            assert not torch.allclose(run(patched), ref)  # the removed blocks did contribute
    finally:
        patched.unpatch_model()
    with torch.inference_mode():
        assert torch.equal(run(model), ref)  # the input MODEL is back to vanilla


def test_non_unet_model_is_refused():
    import pytest
    with pytest.raises(ValueError, match="needs a UNet"):
        highest_resolution_attention(torch.nn.Linear(2, 2))
