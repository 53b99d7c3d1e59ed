"""MoViE cross-frame attention (movie/cross_frame.py) against written-out softmax attention."""
from __future__ import annotations

import math

import pytest
import torch

from videoedit.nodes.movie import cross_frame


def test_anchor_selection():
    assert cross_frame.select_anchors(9, "middle") == [4]
    assert cross_frame.select_anchors(8, "middle") == [4]
    assert cross_frame.select_anchors(1, "middle") == [0]
    assert cross_frame.select_anchors(9, "first") == [0]
    assert cross_frame.select_anchors(9, "evenly spaced", 3) == [0, 4, 8]
    assert cross_frame.select_anchors(2, "evenly spaced", 3) == [0, 1]
    with pytest.raises(ValueError, match="anchor mode"):
        cross_frame.select_anchors(3, "last")


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
    out = cross_frame.cross_frame_attention(q, k, v, h, groups, lambda F: cross_frame.select_anchors(F, mode, count))
    for gi in range(groups):
        anchors = [gi * f + a for a in cross_frame.select_anchors(f, mode, count)]
        for i in range(f):
            fi = gi * f + i
            keys = [fi] + [a for a in anchors if a != fi]
            assert torch.allclose(out[fi], _ref_frame(q, k, v, h, fi, keys), atol=1e-5), (gi, i)


def test_cross_frame_one_frame_is_self_attention():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 7, 8, generator=g) for _ in range(3))
    out = cross_frame.cross_frame_attention(q, k, v, 2, 1, lambda F: cross_frame.select_anchors(F, "middle"))
    assert torch.equal(out, cross_frame.sdpa_attention(q, k, v, 2))
