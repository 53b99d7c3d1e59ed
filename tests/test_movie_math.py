"""MoViE pure-torch math and the generic training pieces, without ComfyUI."""
from __future__ import annotations

import math

import pytest
import torch

from videoedit.nodes import movie, training


def test_eq1_reduces_to_its_passes():
    g = torch.Generator().manual_seed(0)
    u, i, f = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    assert torch.allclose(movie.two_knob_guidance(u, i, f, 1.0, 1.0), f)
    assert torch.allclose(movie.two_knob_guidance(u, i, f, 0.0, 0.0), u)
    assert torch.allclose(movie.two_knob_guidance(u, i, f, 1.0, 0.0), i)
    s = torch.tensor([1.5, 2.0]).view(2, 1, 1, 1)
    per = movie.two_knob_guidance(u, i, f, s, 7.0)
    assert torch.allclose(per[1], movie.two_knob_guidance(u[1], i[1], f[1], 2.0, 7.0))


def test_anchor_selection():
    assert movie.select_anchors(9, "middle") == [4]
    assert movie.select_anchors(8, "middle") == [4]
    assert movie.select_anchors(1, "middle") == [0]
    assert movie.select_anchors(9, "first") == [0]
    assert movie.select_anchors(9, "evenly spaced", 3) == [0, 4, 8]
    assert movie.select_anchors(2, "evenly spaced", 3) == [0, 1]
    with pytest.raises(ValueError, match="anchor mode"):
        movie.select_anchors(3, "last")


def _ref_frame(q, k, v, heads, i, keys):
    """Attention of frame i over the listed frames' tokens, written out with softmax."""
    b, n, c = q.shape
    d = c // heads
    kk = torch.cat([k[j] for j in keys], 0).reshape(-1, heads, d).transpose(0, 1)
    vv = torch.cat([v[j] for j in keys], 0).reshape(-1, heads, d).transpose(0, 1)
    qq = q[i].reshape(n, heads, d).transpose(0, 1)
    w = torch.softmax(qq @ kk.transpose(1, 2) / math.sqrt(d), -1)
    return (w @ vv).transpose(0, 1).reshape(n, c)


@pytest.mark.parametrize("mode,count", [("middle", 1), ("first", 1), ("evenly spaced", 3)])
def test_cross_frame_attention_matches_written_out_softmax(mode, count):
    g = torch.Generator().manual_seed(1)
    groups, f, n, c, h = 2, 5, 6, 8, 2
    q, k, v = (torch.randn(groups * f, n, c, generator=g) for _ in range(3))
    out = movie.cross_frame_attention(q, k, v, h, groups, lambda F: movie.select_anchors(F, mode, count))
    for gi in range(groups):
        anchors = [gi * f + a for a in movie.select_anchors(f, mode, count)]
        for i in range(f):
            fi = gi * f + i
            keys = [fi] + [a for a in anchors if a != fi]
            assert torch.allclose(out[fi], _ref_frame(q, k, v, h, fi, keys), atol=1e-5), (gi, i)


def test_cross_frame_one_frame_is_self_attention():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 7, 8, generator=g) for _ in range(3))
    out = movie.cross_frame_attention(q, k, v, 2, 1, lambda F: movie.select_anchors(F, "middle"))
    assert torch.equal(out, movie.sdpa_attention(q, k, v, 2))


def test_guidance_embedding_zero_init_and_sinusoid():
    emb = movie.GuidanceScaleEmbedding(32, 128)
    assert torch.equal(emb(torch.tensor([[1.5, 7.5], [3.0, 2.0]])), torch.zeros(2, 128))
    s = movie.sinusoidal_embedding(torch.tensor([0.0, 250.0]), 6)
    half = torch.exp(-math.log(10000.0) * torch.arange(3) / 3)
    assert torch.allclose(s[1], torch.cat([torch.cos(250 * half), torch.sin(250 * half)]))
    assert movie.scales_for_batch(torch.tensor([1.0, 2.0]), 3).shape == (3, 2)
    two = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(movie.scales_for_batch(two, 4), torch.cat([two, two]))


def test_lora_delta_identity_then_switch():
    w = torch.randn(6, 4, 3, 3)
    sw = movie.Switch()
    d = movie.LoRADelta(w.shape, 2, switch=sw)
    assert torch.equal(d(w), w)
    with torch.no_grad():
        d.up.fill_(0.1)
    assert not torch.equal(d(w), w)
    sw.enabled = False
    assert torch.equal(d(w), w)


def test_training_draw_ranges():
    t, s = movie.sample_training_draw(4000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and t.max() > 990
    assert 1.0 <= s[:, 0].min() and s[:, 0].max() <= 3.0 and 2.0 <= s[:, 1].min() and s[:, 1].max() <= 14.0


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    p = {"a": torch.nn.Parameter(torch.randn(3, 2)), "b": torch.nn.Parameter(torch.randn(4))}
    opt = torch.optim.Adam(p.values(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (p["a"].sum() ** 2 + p["b"].pow(3).sum()).backward()
        opt.step()
    path = str(tmp_path / "ck.safetensors")
    training.save_checkpoint(path, 3, p, opt, [1.0, 0.5, 0.25], {"lr": 1e-2})
    assert [x.name for x in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp file left
    q = {k: torch.nn.Parameter(torch.zeros_like(v)) for k, v in p.items()}
    opt2 = torch.optim.Adam(q.values(), lr=1e-2)
    step, losses = training.load_checkpoint(path, q, opt2, {"lr": 1e-2})
    assert step == 3 and losses == [1.0, 0.5, 0.25]
    for k in p:
        assert torch.equal(p[k], q[k])
    for o in (opt, opt2):  # one more identical step
        o.zero_grad()
    for params, o in ((p, opt), (q, opt2)):
        (params["a"].sum() ** 2 + params["b"].pow(3).sum()).backward()
        o.step()
    assert all(torch.equal(p[k], q[k]) for k in p)
    with pytest.raises(ValueError, match="different settings"):
        training.load_checkpoint(path, q, opt2, {"lr": 2e-2})


def test_output_name_refuses_paths():
    assert training.check_output_name("my_adapter") == "my_adapter"
    assert training.check_output_name("x.safetensors") == "x"
    for bad in ("../x", "a/b", "/abs", "a\\b", "", ".hidden", ".."):
        with pytest.raises(ValueError, match="output_name"):
            training.check_output_name(bad)


def test_loss_curve_image():
    img = training.render_loss_curve([1.0, 0.5, 0.3, 0.1, 0.05], 200, 100)
    t = training.image_to_tensor(img)
    assert t.shape == (1, 100, 200, 3) and 0 <= t.min() and t.max() <= 1
    assert (t[0, :, :, 2] > 0.9).sum() > 20  # the blue curve is drawn
    training.render_loss_curve([], 64, 64)


def test_step_generator_depends_only_on_seed_step_rank():
    a = torch.rand(3, generator=training.step_generator(1, 5, 0))
    assert torch.equal(a, torch.rand(3, generator=training.step_generator(1, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=training.step_generator(1, 6, 0)))
    assert not torch.equal(a, torch.rand(3, generator=training.step_generator(1, 5, 1)))
