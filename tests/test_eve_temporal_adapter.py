"""EVE temporal layers (eve/temporal_adapter.py): AnimateDiff layout and math, identity init,
anchoring, frame mixing, key mapping."""
from __future__ import annotations

import math

import pytest
import torch

from videoedit.nodes.eve import temporal_adapter as ta


def _ad_sd(channels, prefix="down_blocks.0.motion_modules.0", seed=0, max_len=32):
    from harness.fixtures import _motion_module_sd
    return _motion_module_sd(channels, prefix, torch.Generator().manual_seed(seed), max_len)


def _reference_motion_module(sd: dict, x: torch.Tensor, frames: int, heads: int = 8) -> torch.Tensor:
    """guoyww/AnimateDiff VanillaTemporalModule written out op by op (bmm softmax attention)."""
    t = "temporal_transformer."
    lin = lambda h, n, bias=True: h @ sd[n + ".weight"].T + (sd[n + ".bias"] if bias else 0)
    bf, c, hh, ww = x.shape
    h = torch.nn.functional.group_norm(x, 32, sd[t + "norm.weight"], sd[t + "norm.bias"], eps=1e-6)
    h = h.permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
    h = lin(h, t + "proj_in")
    b = t + "transformer_blocks.0."
    for i in range(2):
        a = f"{b}attention_blocks.{i}."
        n = torch.nn.functional.layer_norm(h, (c,), sd[f"{b}norms.{i}.weight"], sd[f"{b}norms.{i}.bias"])
        d = n.shape[1]
        s = n.reshape(-1, frames, d, c).permute(0, 2, 1, 3).reshape(-1, frames, c)  # (b f) d c -> (b d) f c
        s = s + sd[a + "pos_encoder.pe"][:, :frames]
        q, k, v = (lin(s, a + p, bias=False) for p in ("to_q", "to_k", "to_v"))
        split = lambda z: z.reshape(z.shape[0], frames, heads, c // heads).permute(0, 2, 1, 3).reshape(-1, frames, c // heads)
        q, k, v = split(q), split(k), split(v)
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (c // heads) ** -0.5, dim=-1)
        o = torch.bmm(p, v).reshape(-1, heads, frames, c // heads).permute(0, 2, 1, 3).reshape(-1, frames, c)
        o = lin(o, a + "to_out.0")
        o = o.reshape(-1, d, frames, c).permute(0, 2, 1, 3).reshape(-1, d, c)  # (b d) f c -> (b f) d c
        h = o + h
    n = torch.nn.functional.layer_norm(h, (c,), sd[b + "ff_norm.weight"], sd[b + "ff_norm.bias"])
    g, gate = lin(n, b + "ff.net.0.proj").chunk(2, dim=-1)
    h = lin(g * torch.nn.functional.gelu(gate), b + "ff.net.2") + h
    h = lin(h, t + "proj_out").reshape(bf, hh, ww, c).permute(0, 3, 1, 2)
    return h + x


def _loaded(channels=64, seed=0):
    sd = _ad_sd(channels, seed=seed)
    adapter = ta.adapter_from_state_dict(sd, "test.safetensors")
    (_, mod), = adapter.items()
    return sd, mod


def test_motion_module_matches_original_animatediff_math():
    sd, mod = _loaded(64)
    x = torch.randn(2 * 5, 64, 3, 4, generator=torch.Generator().manual_seed(1))
    sub = {k.split(".", 4)[4]: v for k, v in sd.items()}
    ours = mod(x, frames=5)
    ref = _reference_motion_module(sub, x, 5)
    assert (ours - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    assert (ours - x).abs().max().item() > 1e-2  # it does something


def test_fresh_adapter_is_exact_identity():
    layout = ta.unet_layout(32, (1, 2, 2), 2, temporal_conv=True)
    adapter = ta.fresh_adapter(layout, temporal_conv=True)
    kinds = {type(m).__name__ for _, m in adapter.items()}
    assert kinds == {"TemporalAttentionBlock", "TemporalConvBlock"}
    for prefix, mod in adapter.items():
        x = torch.randn(8, layout[prefix].channels, 2, 2)
        assert torch.equal(mod(x, frames=4), x)


def test_frames_mix_only_with_the_adapter_and_anchor_stays_fixed():
    _, mod = _loaded(64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 64, 2, 2, generator=g)
    y = x.clone()
    y[3] += torch.randn(64, 2, 2, generator=g)
    a, b = mod(x, 6), mod(y, 6)
    for f in (0, 1, 2, 4, 5):
        assert (a[f] - b[f]).abs().max() > 1e-4, f"frame {f} did not see frame 3"
    # two clips in one batch (cond/uncond) stay separate
    two = mod(torch.cat([x, y]), 6)
    assert torch.allclose(two[:6], a, atol=1e-5) and torch.allclose(two[6:], b, atol=1e-5)
    # anchoring: frame 0 unchanged, still attended to by the others
    anc = mod(x, 6, anchor=True)
    assert torch.equal(anc[0], x[0])
    assert torch.allclose(anc[1:], a[1:])
    z = x.clone()
    z[0] += torch.randn(64, 2, 2, generator=g)
    assert (mod(z, 6, anchor=True)[1:] - anc[1:]).abs().max() > 1e-4


def test_temporal_conv_mixes_neighbours():
    conv = ta.TemporalConvBlock(32)
    torch.nn.init.normal_(conv.conv.weight, std=0.1)
    x = torch.randn(5, 32, 2, 2)
    y = x.clone()
    y[2] += 1
    d = (conv(x, 5) - conv(y, 5)).abs().flatten(1).amax(1)
    assert d[1] > 0 and d[3] > 0 and d[0] == 0 and d[4] == 0  # kernel 3: only neighbours


def test_key_layout_round_trip_and_sd15_layout():
    layout = ta.unet_layout(320, (1, 2, 4, 4), 2, temporal_conv=False)
    assert len([k for k in layout if "motion_modules" in k]) == 8 + 12 + 1
    assert layout["down_blocks.3.motion_modules.1"] == ta.Placement("input", 11, "spatial", 1280)
    assert layout["up_blocks.0.motion_modules.2"] == ta.Placement("output", 2, "spatial", 1280)
    assert layout["up_blocks.3.motion_modules.0"] == ta.Placement("output", 9, "spatial", 320)
    sd = {}
    for prefix in ("down_blocks.0.motion_modules.0", "mid_block.motion_modules.0"):
        sd.update(_ad_sd(320 if prefix.startswith("down") else 1280, prefix))
    adapter = ta.adapter_from_state_dict(sd, "mm.safetensors")
    ta.check_adapter(adapter, layout)
    out = adapter.adapter_state_dict()
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k].float()) for k in sd)


def test_wrong_family_and_wrong_file_name_the_file():
    sdxl_like = _ad_sd(640, "down_blocks.0.motion_modules.0")  # level 0 of SD1.5 has 320 channels
    adapter = ta.adapter_from_state_dict(sdxl_like, "mm_sdxl_v10.safetensors")
    with pytest.raises(ValueError, match="mm_sdxl_v10.safetensors.*640 channels.*320.*another backbone family"):
        ta.check_adapter(adapter, ta.unet_layout(320, (1, 2, 4, 4), 2))
    with pytest.raises(ValueError, match="lora.safetensors: no AnimateDiff motion-module keys"):
        ta.adapter_from_state_dict({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, "lora.safetensors")
    broken = dict(sdxl_like)
    del broken["down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"]
    with pytest.raises(ValueError, match="broken.ckpt.*down_blocks.0.motion_modules.0"):
        ta.adapter_from_state_dict(broken, "broken.ckpt")


def test_too_many_frames_for_positional_encoding():
    _, mod = _loaded(32)
    with pytest.raises(ValueError, match="32-frame positional encoding"):
        mod(torch.randn(33, 32, 1, 1), 33)


# ------------------------------------------------------------------ sliding windows


def test_temporal_layers_return_contiguous_nchw():
    # a channels-last result would change the kernels (and the bits) of the next convolutions
    _, mod = _loaded(32)
    x = torch.randn(4, 32, 3, 3)
    assert mod(x, 4).is_contiguous() and mod(x, 4, anchor=True).is_contiguous()
    assert ta.TemporalConvBlock(32)(x, 4).is_contiguous()
