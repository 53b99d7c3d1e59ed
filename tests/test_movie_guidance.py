"""MoViE guidance math (movie/guidance.py) without ComfyUI: Eq. 1, the guidance-scale embedding,
Alg. 1's draws."""
from __future__ import annotations

import math

import torch

from videoedit.nodes.core import embeddings
from videoedit.nodes.movie import guidance


def test_eq1_reduces_to_its_passes():
    g = torch.Generator().manual_seed(0)
    u, i, f = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    assert torch.allclose(guidance.two_knob_guidance(u, i, f, 1.0, 1.0), f)
    assert torch.allclose(guidance.two_knob_guidance(u, i, f, 0.0, 0.0), u)
    assert torch.allclose(guidance.two_knob_guidance(u, i, f, 1.0, 0.0), i)
    s = torch.tensor([1.5, 2.0]).view(2, 1, 1, 1)
    per = guidance.two_knob_guidance(u, i, f, s, 7.0)
    assert torch.allclose(per[1], guidance.two_knob_guidance(u[1], i[1], f[1], 2.0, 7.0))


def test_guidance_embedding_zero_init_and_sinusoid():
    emb = guidance.GuidanceScaleEmbedding(32, 128)
    assert torch.equal(emb(torch.tensor([[1.5, 7.5], [3.0, 2.0]])), torch.zeros(2, 128))
    s = embeddings.sinusoidal_embedding(torch.tensor([0.0, 250.0]), 6)
    half = torch.exp(-math.log(10000.0) * torch.arange(3) / 3)
    assert torch.allclose(s[1], torch.cat([torch.cos(250 * half), torch.sin(250 * half)]))
    assert guidance.scales_for_batch(torch.tensor([1.0, 2.0]), 3).shape == (3, 2)
    two = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(guidance.scales_for_batch(two, 4), torch.cat([two, two]))


def test_training_draw_ranges():
    t, s = guidance.sample_training_draw(4000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and t.max() > 990
    assert 1.0 <= s[:, 0].min() and s[:, 0].max() <= 3.0 and 2.0 <= s[:, 1].min() and s[:, 1].max() <= 14.0
