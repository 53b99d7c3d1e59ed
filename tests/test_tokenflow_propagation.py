"""TokenFlow keyframes, extended attention and propagation (tokenflow/propagation.py), checked
against independent computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videoedit.nodes.tokenflow import propagation


def test_keyframes_one_per_interval_seeded_and_redrawn():
    n, interval = 43, 8
    g = torch.Generator().manual_seed(7)
    draws = [propagation.sample_keyframes(n, interval, g) for _ in range(30)]
    for kf in draws:
        assert kf.tolist() == sorted(kf.tolist())
        assert len(kf) == math.ceil(n / interval)
        assert (kf // interval).tolist() == list(range(len(kf)))  # exactly one in each interval
        assert kf[-1] < n
    g2 = torch.Generator().manual_seed(7)
    assert all(torch.equal(d, propagation.sample_keyframes(n, interval, g2)) for d in draws)  # reproducible
    assert len({tuple(d.tolist()) for d in draws}) > 25  # redrawn each step
    offsets = torch.stack(draws)[:, 0]
    assert set(offsets.tolist()) == set(range(interval))  # every position of an interval is reachable
    assert set(torch.stack(draws)[:, -1].tolist()) <= {40, 41, 42}  # short last interval


def test_keyframes_even_edge_cases():
    assert propagation.sample_keyframes(20, 8, mode="even").tolist() == [4, 12, 18]
    g = torch.Generator().manual_seed(0)
    assert propagation.sample_keyframes(1, 8, g).tolist() == [0]
    assert propagation.sample_keyframes(1, 8, mode="even").tolist() == [0]
    kf = propagation.sample_keyframes(5, 100, g)  # interval longer than the clip: one keyframe
    assert len(kf) == 1 and 0 <= int(kf) < 5
    assert propagation.sample_keyframes(4, 1, g).tolist() == [0, 1, 2, 3]
    for bad in ({"num_frames": 0}, {"interval": 0}, {"mode": "middle"}):
        with pytest.raises(ValueError):
            propagation.sample_keyframes(**{"num_frames": 5, "interval": 2, **bad})


def brute_adjacent(n, kf):
    out = []
    for i in range(n):
        past = [k for k in kf if k <= i]
        fut = [k for k in kf if k >= i]
        p = past[-1] if past else fut[0]
        f = fut[0] if fut else past[-1]
        out.append((kf.index(p), kf.index(f)))
    return out


@pytest.mark.parametrize("n,kf", [(20, [2, 9, 17]), (8, [0]), (8, [7]), (1, [0]), (5, [0, 1, 2, 3, 4])])
def test_adjacent_keyframes(n, kf):
    prev, nxt = propagation.adjacent_keyframes(n, torch.tensor(kf))
    assert list(zip(prev.tolist(), nxt.tolist())) == brute_adjacent(n, kf)


def test_propagation_weights_eq7():
    kf = [2, 9, 17]
    n = 20
    prev, nxt = propagation.adjacent_keyframes(n, torch.tensor(kf))
    for i in range(n):
        p, f = kf[prev[i]], kf[nxt[i]]
        d_minus, d_plus = abs(i - p), abs(i - f)
        w = float(propagation.propagation_weights(torch.tensor([d_minus]), torch.tensor([d_plus]))[0])
        ratio = d_minus / (d_plus + d_minus) if d_plus + d_minus else 0.5
        assert w == pytest.approx(1 / (1 + math.exp(-ratio)), abs=1e-6)
    # the values the formula gives between keyframes 8 apart, e.g. frame 3 after its past keyframe
    assert float(propagation.propagation_weights(torch.tensor(3.0), torch.tensor(5.0))) == pytest.approx(
        1 / (1 + math.exp(-3 / 8)), abs=1e-6)
    assert float(propagation.propagation_weights(torch.tensor(8.0), torch.tensor(0.0))) == pytest.approx(
        1 / (1 + math.exp(-1)), abs=1e-6)


def test_plan_chunks_shares_keyframes_across_borders():
    n, kf = 23, torch.tensor([3, 11, 19])
    prev, nxt = propagation.adjacent_keyframes(n, kf)
    plans = propagation.plan_chunks(n, kf, 5)
    assert [(p.frames.start, p.frames.stop) for p in plans] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    for p in plans:
        torch.testing.assert_close(p.slots[p.prev_local], prev[p.frames])
        torch.testing.assert_close(p.slots[p.next_local], nxt[p.frames])
    # frames 5-9 lie between keyframes 3 and 11, both outside the chunk: read across the borders
    assert plans[1].slots.tolist() == [0, 1]


# ------------------------------------------------------------- attention and tokens


def manual_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out (independent of SDPA)."""
    b, n, c = q.shape
    d = c // heads
    qh, kh, vh = (t.view(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (a @ vh).permute(0, 2, 1, 3).reshape(b, n, c)


def test_extended_attention_single_keyframe_is_self_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 16, generator=g) for _ in range(3))
    out = propagation.extended_attention(q, k, v, heads=2)
    sdpa = F.scaled_dot_product_attention(*(t.view(1, 12, 2, 8).transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(out, sdpa.transpose(1, 2).reshape(1, 12, 16))
    torch.testing.assert_close(out, manual_attention(q, k, v, 2), atol=1e-5, rtol=1e-5)


def test_extended_attention_eq3_4_over_keyframes():
    g = torch.Generator().manual_seed(1)
    K, L, C, H = 3, 10, 16, 4
    q, k, v = (torch.randn(K, L, C, generator=g) for _ in range(3))
    out = propagation.extended_attention(q, k, v, heads=H)
    k_cat, v_cat = k.reshape(1, K * L, C), v.reshape(1, K * L, C)
    for i in range(K):  # frame i's queries against [K^1..K^K], [V^1..V^K]
        torch.testing.assert_close(out[i:i + 1], manual_attention(q[i:i + 1], k_cat, v_cat, H), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(propagation.extended_attention(q, k, v, H, frames_per_chunk=1), out)
    # not plain per-frame attention
    assert not torch.allclose(out, manual_attention(q, k, v, H), atol=1e-3)


def feature_map(c=16, h=9, w=11, seed=0):
    return torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed))


def tokens(fmap):  # [C, H, W] -> [H*W, C]
    return fmap.flatten(1).T.contiguous()


@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-4, 5)])
def test_nn_field_recovers_shift(shift):
    src = feature_map()
    key = torch.roll(src, shifts=shift, dims=(1, 2))  # key[p + shift] = src[p]
    key = key + 0.05 * torch.randn(key.shape, generator=torch.Generator().manual_seed(9))
    src_t, key_t = tokens(src).unsqueeze(0), tokens(key).unsqueeze(0)
    nn = propagation.nearest_neighbour_field(src_t * 3.0, key_t, token_chunk=7)[0]  # scale: cosine, not L2
    h, w = src.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expected = ((ys + shift[0]) % h) * w + (xs + shift[1]) % w
    assert torch.equal(nn, expected.flatten())
    torch.testing.assert_close(propagation.nearest_neighbour_field(src_t, key_t[0]), nn.unsqueeze(0))  # [M, C] keys


def test_nn_field_uses_cosine_distance():
    src = torch.tensor([[[1.0, 0.1]]])
    keys = torch.tensor([[[10.0, 0.0], [0.9, 0.5]]])  # far in L2 but same direction vs. near in L2
    assert propagation.nearest_neighbour_field(src, keys).tolist() == [[0]]


def test_propagation_identical_keyframes_returns_keyframe_tokens():
    src = tokens(feature_map(seed=3))  # [N, C]
    n_frames, K = 6, 2
    edit = torch.randn(src.shape[0], 8, generator=torch.Generator().manual_seed(4))
    src_frames = src.expand(n_frames, -1, -1)
    plan = propagation.plan_chunks(n_frames, torch.tensor([1, 4]), n_frames)[0]
    out = propagation.tokenflow_chunk(src_frames, src.expand(K, -1, -1), edit.expand(K, -1, -1), plan)
    torch.testing.assert_close(out, edit.expand(n_frames, -1, -1))


def test_propagation_follows_motion_and_is_chunk_invariant():
    """Frames are a feature map moving 1 pixel per frame; keyframes' edited tokens are a
    fixed function of their source tokens (plus a per-keyframe offset). Propagation must
    give each frame that function of its *own* tokens, blended by Eq. 6-7."""
    base = feature_map(c=12, h=8, w=10, seed=5)
    n_frames = 13
    frames = torch.stack([tokens(torch.roll(base, i, dims=2)) for i in range(n_frames)])  # [F, N, C]
    A = torch.randn(12, 6, generator=torch.Generator().manual_seed(6))
    kf = torch.tensor([2, 7, 11])
    offset = torch.tensor([0.0, 1.0, 5.0]).view(3, 1, 1)
    edit = frames[kf] @ A + offset  # T_base
    prev, nxt = propagation.adjacent_keyframes(n_frames, kf)
    i = torch.arange(n_frames)
    w = propagation.propagation_weights((i - kf[prev]).abs(), (kf[nxt] - i).abs()).view(-1, 1, 1)
    expected = frames @ A + w * offset[nxt] + (1 - w) * offset[prev]
    outs = {}
    for chunk in (n_frames, 4, 1):
        outs[chunk] = torch.cat([propagation.tokenflow_chunk(frames[p.frames], frames[kf], edit, p, token_chunk=16)
                                 for p in propagation.plan_chunks(n_frames, kf, chunk)])
        torch.testing.assert_close(outs[chunk], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[n_frames][7], edit[1])  # a keyframe keeps its own edited tokens


def test_propagate_tokens_gathers_by_slot():
    key = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # slot s, token q -> 3 s + q
    nn_prev, nn_next = torch.tensor([[2, 0]]), torch.tensor([[1, 1]])
    out = propagation.propagate_tokens(key, nn_prev, nn_next, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.25]))
    assert out.flatten().tolist() == pytest.approx([0.25 * 4 + 0.75 * 2, 0.25 * 4 + 0.75 * 0])


def test_pnp_schedule():
    steps = 50
    assert sum(propagation.pnp_inject(s, steps, 0.8) for s in range(steps)) == 40
    assert [s for s in range(steps) if propagation.pnp_inject(s, steps, 0.5)] == list(range(25))
    assert not any(propagation.pnp_inject(s, 10, 0.0) for s in range(10))
    with pytest.raises(ValueError):
        propagation.pnp_inject(0, 10, 1.5)
