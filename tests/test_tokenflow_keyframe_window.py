"""Keyframe attention windows (nodes/tokenflow/keyframe_window.py) and the windowed extended
attention (propagation.extended_attention with groups): pure torch, no ComfyUI.

What these cannot show: whether a window keeps a real model's edit as consistent as the paper's
all-keyframes attention (random tensors have no appearance to share); the README says what the
window changes relative to the paper."""
from __future__ import annotations

import math

import pytest
import torch

from harness.measure import count_flops, peak_live_bytes
from videoedit.nodes.tokenflow import keyframe_window as kw
from videoedit.nodes.tokenflow import propagation


def _qkv(K, L=6, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, L, C, generator=g) for _ in range(3)]


def _reference(q, k, v, heads, sets):
    """Each keyframe's queries against the concatenated keys/values of its set, by hand."""
    K, L, C = q.shape
    d = C // heads
    out = torch.empty_like(q)
    for i, slots in enumerate(sets):
        kc, vc = k[slots].reshape(1, -1, C), v[slots].reshape(1, -1, C)
        qh, kh, vh = (t.view(1, t.shape[1], heads, d).transpose(1, 2) for t in (q[i:i + 1], kc, vc))
        a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out[i] = (a @ vh).transpose(1, 2).reshape(L, C)
    return out


def test_auto_is_all_keyframes_up_to_one_window_and_the_window_beyond():
    assert kw.resolve_mode("auto", 97, 48) == "all"
    assert kw.resolve_mode("auto", 98, 48) == "window"
    assert kw.resolve_mode("auto", 16, 48) == "all"
    assert kw.resolve_mode("auto", 240, 48) == "window"
    assert kw.resolve_mode("all", 240, 48) == "all" and kw.resolve_mode("window", 16, 48) == "window"
    with pytest.raises(ValueError, match="keyframe_attention"):
        kw.resolve_mode("sliding", 16, 48)
    with pytest.raises(ValueError, match="keyframe_window"):
        kw.resolve_mode("auto", 16, 0)


@pytest.mark.parametrize("n,interval,window,seed", [(240, 8, 48, 0), (100, 8, 20, 1), (37, 3, 7, 2), (9, 8, 1, 3)])
@pytest.mark.parametrize("anchor", [True, False])
def test_each_keyframe_attends_to_the_keyframes_in_its_window_and_the_anchor(n, interval, window, seed, anchor):
    kf = propagation.sample_keyframes(n, interval, torch.Generator().manual_seed(seed))
    sets = kw.attention_sets(kf, window, anchor)
    assert len(sets) == len(kf)
    for i, slots in enumerate(sets):
        want = {j for j in range(len(kf)) if abs(int(kf[j]) - int(kf[i])) <= window}
        assert i in want
        if anchor:
            want.add(0)
        assert slots.tolist() == sorted(want)  # sorted, distinct, exactly the rule
    if anchor:
        assert all(int(s[0]) == 0 for s in sets)
    # far keyframes are out of reach on a long clip (the window does bound the sets)
    if n > 4 * window and len(kf) > 3:
        assert max(len(s) for s in sets) < len(kf)


def test_sets_reject_unsorted_keyframes():
    with pytest.raises(ValueError, match="sorted"):
        kw.attention_sets(torch.tensor([3, 1]), 8, True)


@pytest.mark.parametrize("query_chunk", [1, 3, 16])
def test_groups_cover_every_keyframe_once_with_its_own_set(query_chunk):
    kf = propagation.sample_keyframes(120, 8, torch.Generator().manual_seed(4))
    sets = kw.attention_sets(kf, 20, True)
    groups = kw.attention_groups(sets, query_chunk)
    covered = []
    for g in groups:
        assert g.queries.stop - g.queries.start <= query_chunk
        for i in range(g.queries.start, g.queries.stop):
            covered.append(i)
            keys = torch.arange(len(kf)) if g.keys is None else g.keys
            assert torch.equal(keys, sets[i])
    assert covered == list(range(len(kf)))


@pytest.mark.parametrize("anchor", [True, False])
def test_windowed_attention_is_attention_over_each_keyframes_set(anchor):
    kf = propagation.sample_keyframes(96, 8, torch.Generator().manual_seed(5))
    q, k, v = _qkv(len(kf), seed=1)
    sets = kw.attention_sets(kf, 17, anchor)
    out = propagation.extended_attention(q, k, v, 2, groups=kw.attention_groups(sets, 4))
    torch.testing.assert_close(out, _reference(q, k, v, 2, sets), atol=1e-5, rtol=1e-5)
    # it is not the all-keyframes result (the window excludes far keyframes)
    assert not torch.allclose(out, propagation.extended_attention(q, k, v, 2), atol=1e-3)


@pytest.mark.parametrize("anchor", [True, False])
@pytest.mark.parametrize("query_chunk", [2, 16])
def test_window_covering_the_clip_is_the_all_keyframes_result_exactly(anchor, query_chunk):
    n = 60
    kf = propagation.sample_keyframes(n, 8, torch.Generator().manual_seed(6))
    q, k, v = _qkv(len(kf), seed=2)
    all_mode = propagation.extended_attention(q, k, v, 2, frames_per_chunk=query_chunk)
    for window in (n - 1, 10 * n):
        groups = kw.keyframe_groups(kf, "window", window, anchor, query_chunk)
        assert torch.equal(propagation.extended_attention(q, k, v, 2, groups=groups), all_mode)
    assert torch.equal(propagation.extended_attention(q, k, v, 2, groups=kw.keyframe_groups(
        kf, "all", 1, anchor, query_chunk)), all_mode)
    # and that is Eq. 3-4 by hand
    torch.testing.assert_close(all_mode, _reference(q, k, v, 2, [torch.arange(len(kf))] * len(kf)),
                               atol=1e-5, rtol=1e-5)


def _cost(K, mode, window=24, L=16, C=8, chunk=4):
    """FLOPs (CPU attention counted) and working memory (peak minus the [K, L, C] output) of one
    keyframe-pass attention over K evenly spaced keyframes (interval 8)."""
    q, k, v = _qkv(K, L, C, seed=3)
    kf = torch.arange(K) * 8 + 4
    groups = kw.keyframe_groups(kf, mode, window, True, chunk)
    flops, _ = count_flops(propagation.extended_attention, q, k, v, 2, groups=groups)
    peak, out = peak_live_bytes(propagation.extended_attention, q, k, v, 2, groups=groups)
    return flops, peak - out.numel() * out.element_size()


def test_windowed_attention_grows_linearly_in_keyframes_all_keyframes_quadratically(capsys):
    sizes = (16, 32, 64, 128)
    win = {K: _cost(K, "window") for K in sizes}
    full = {K: _cost(K, "all") for K in sizes}
    with capsys.disabled():
        print("\n[keyframe attention] K: window FLOPs / working bytes | all FLOPs / working bytes")
        for K in sizes:
            print(f"  {K:4d}: {win[K][0]:>10d} / {win[K][1]:>8d} | {full[K][0]:>11d} / {full[K][1]:>8d}")
    # window: every extra keyframe costs the same (edges and the anchor are a constant), i.e.
    # FLOPs = a*K + b exactly; the working memory does not grow at all
    steps = [win[b][0] - win[a][0] for a, b in zip(sizes, sizes[1:])]
    assert steps[1] == 2 * steps[0] and steps[2] == 2 * steps[1]
    assert len({w for _, w in win.values()}) == 1
    # all keyframes: each of K keyframes attends to K keyframes -> K^2 (its working memory is flat too:
    # the keys of a call are a view of all keyframes' keys, and the CPU kernel works in blocks)
    assert full[128][0] == 64 * full[16][0]
    # the window's saving grows with K (about doubles with every doubling)
    assert full[128][0] / win[128][0] > 1.9 * full[64][0] / win[64][0]
