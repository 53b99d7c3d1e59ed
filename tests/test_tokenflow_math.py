"""TokenFlow math (videoedit.nodes.tokenflow), checked against independent computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videoedit.nodes import tokenflow as tf

# ----------------------------------------------------------------------------- DDIM


def sd_sigmas(steps: int) -> torch.Tensor:
    """SD1.x's discrete schedule (scaled linear betas) at evenly spaced timesteps, plus 0."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    t = torch.linspace(999, 0, steps, dtype=torch.float64).round().long()
    return torch.cat([((1 - acp[t]) / acp[t]).sqrt(), torch.zeros(1, dtype=torch.float64)])


class Gaussian:
    """Data x0 ~ N(mu, diag(var)): the exact eps predictor is linear in x,
    eps(x, sigma) = sigma / (var + sigma^2) * (x - mu)."""

    def __init__(self, shape=(4, 8, 8), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
        self.var = torch.rand(shape, generator=g, dtype=torch.float64) * 1.5 + 0.1
        self.g = g

    def eps(self, x, sigma):
        return sigma / (self.var + sigma ** 2) * (x - self.mu)

    def v(self, x, sigma):
        """The same predictor as a v-prediction model sees it (VP form, alpha^2 + s^2 = 1)."""
        x0 = x - sigma * self.eps(x, sigma)
        alpha, s = 1 / math.sqrt(1 + sigma ** 2), sigma / math.sqrt(1 + sigma ** 2)
        return alpha * self.eps(x, sigma) - s * x0

    def sample(self, n):
        return self.mu + self.var.sqrt() * torch.randn((n, *self.mu.shape), generator=self.g, dtype=torch.float64)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def round_trip(eps_fn, x0, sigmas, refine_iters):
    traj = tf.ddim_invert(eps_fn, x0, sigmas, refine_iters)
    return traj, tf.ddim_sample(eps_fn, traj[0], sigmas)


def test_ddim_step_is_vp_ddim():
    """The sigma-space step equals the textbook VP DDIM update after rescaling."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    a_t, a_s = 0.3, 0.8  # alphas_cumprod at the current / next timestep
    x_vp = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    x0_hat = (x_vp - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    next_vp = math.sqrt(a_s) * x0_hat + math.sqrt(1 - a_s) * eps
    sig = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    got = tf.ddim_step(x_vp / math.sqrt(a_t), sig(a_t), sig(a_s), eps)
    torch.testing.assert_close(got, next_vp / math.sqrt(a_s))


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_round_trip_and_refinement(steps, capsys):
    data = Gaussian()
    x0 = data.sample(3)
    sigmas = sd_sigmas(steps)
    traj_plain, rec_plain = round_trip(data.eps, x0, sigmas, 0)
    traj_ref, rec_ref = round_trip(data.eps, x0, sigmas, 5)
    e_plain, e_ref = rel_err(rec_plain, x0), rel_err(rec_ref, x0)
    with capsys.disabled():
        print(f"\n[ddim round trip, {steps} steps] plain rel err {e_plain:.3e}, refined(5) {e_ref:.3e}, "
              f"ratio {e_plain / e_ref:.0f}x")
    assert traj_plain.shape == (steps + 1, *x0.shape)
    assert torch.equal(traj_ref[-1], x0)
    # the trajectory ends near the exact probability-flow solution at sigma_max
    exact_T = data.mu + (x0 - data.mu) * ((data.var + sigmas[0] ** 2) / data.var).sqrt()
    assert rel_err(traj_ref[0], exact_T) < 0.2
    assert e_plain < 0.6  # plain DDIM inversion is approximate but sane
    assert e_ref < 0.01
    assert e_plain / e_ref >= 10
    # each refined step is a fixed point: the DDIM sampling step maps traj[i] back to traj[i+1]
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        back = tf.ddim_step(traj_ref[i], s, s_next, data.eps(traj_ref[i], s))
        assert rel_err(back, traj_ref[i + 1]) < 0.02


def test_refinement_converges_monotonically():
    data = Gaussian(seed=1)
    x0 = data.sample(2)
    errs = [rel_err(round_trip(data.eps, x0, sd_sigmas(15), r)[1], x0) for r in range(5)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_v_prediction_through_denoiser_matches_eps_model():
    """A v-prediction model, converted to x0_hat as ComfyUI's model_sampling does, gives the
    same inversion as the equivalent eps model."""
    data = Gaussian(seed=2)
    x0 = data.sample(2)
    sigmas = sd_sigmas(10)

    def v_denoiser(x, sigma):  # comfy.model_sampling.V_PREDICTION.calculate_denoised, sigma_data 1
        return x / (sigma ** 2 + 1) - data.v(x, sigma) * sigma / math.sqrt(sigma ** 2 + 1)

    eps_v = tf.eps_from_denoised(v_denoiser)
    torch.testing.assert_close(tf.ddim_invert(eps_v, x0, sigmas, 2), tf.ddim_invert(data.eps, x0, sigmas, 2))
    with pytest.raises(ValueError):
        eps_v(x0, 0.0)


def test_invert_rejects_bad_sigmas_and_chunks_are_independent():
    data = Gaussian()
    with pytest.raises(ValueError):
        tf.ddim_invert(data.eps, data.sample(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        tf.ddim_invert(data.eps, data.sample(1), torch.tensor([1.0]))
    x0, sigmas = data.sample(4), sd_sigmas(6)
    whole = tf.ddim_invert(data.eps, x0, sigmas, 1)
    parts = torch.cat([tf.ddim_invert(data.eps, x0[s], sigmas, 1) for s in (slice(0, 3), slice(3, 4))], 1)
    torch.testing.assert_close(whole, parts)


def test_fingerprint():
    a = torch.arange(6.0)
    assert tf.fingerprint(a, "m", 3) == tf.fingerprint(a.clone(), "m", 3)
    assert tf.fingerprint(a, "m", 3) != tf.fingerprint(a + 1e-3, "m", 3)
    assert tf.fingerprint(a, "m", 3) != tf.fingerprint(a, "n", 3)


# ------------------------------------------------------------------------ keyframes


def test_keyframes_one_per_interval_seeded_and_redrawn():
    n, interval = 43, 8
    g = torch.Generator().manual_seed(7)
    draws = [tf.sample_keyframes(n, interval, g) for _ in range(30)]
    for kf in draws:
        assert kf.tolist() == sorted(kf.tolist())
        assert len(kf) == math.ceil(n / interval)
        assert (kf // interval).tolist() == list(range(len(kf)))  # exactly one in each interval
        assert kf[-1] < n
    g2 = torch.Generator().manual_seed(7)
    assert all(torch.equal(d, tf.sample_keyframes(n, interval, g2)) for d in draws)  # reproducible
    assert len({tuple(d.tolist()) for d in draws}) > 25  # redrawn each step
    offsets = torch.stack(draws)[:, 0]
    assert set(offsets.tolist()) == set(range(interval))  # every position of an interval is reachable
    assert set(torch.stack(draws)[:, -1].tolist()) <= {40, 41, 42}  # short last interval


def test_keyframes_even_edge_cases():
    assert tf.sample_keyframes(20, 8, mode="even").tolist() == [4, 12, 18]
    g = torch.Generator().manual_seed(0)
    assert tf.sample_keyframes(1, 8, g).tolist() == [0]
    assert tf.sample_keyframes(1, 8, mode="even").tolist() == [0]
    kf = tf.sample_keyframes(5, 100, g)  # interval longer than the clip: one keyframe
    assert len(kf) == 1 and 0 <= int(kf) < 5
    assert tf.sample_keyframes(4, 1, g).tolist() == [0, 1, 2, 3]
    for bad in ({"num_frames": 0}, {"interval": 0}, {"mode": "middle"}):
        with pytest.raises(ValueError):
            tf.sample_keyframes(**{"num_frames": 5, "interval": 2, **bad})


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
    prev, nxt = tf.adjacent_keyframes(n, torch.tensor(kf))
    assert list(zip(prev.tolist(), nxt.tolist())) == brute_adjacent(n, kf)


def test_propagation_weights_eq7():
    kf = [2, 9, 17]
    n = 20
    prev, nxt = tf.adjacent_keyframes(n, torch.tensor(kf))
    for i in range(n):
        p, f = kf[prev[i]], kf[nxt[i]]
        d_minus, d_plus = abs(i - p), abs(i - f)
        w = float(tf.propagation_weights(torch.tensor([d_minus]), torch.tensor([d_plus]))[0])
        ratio = d_minus / (d_plus + d_minus) if d_plus + d_minus else 0.5
        assert w == pytest.approx(1 / (1 + math.exp(-ratio)), abs=1e-6)
    # the values the formula gives between keyframes 8 apart, e.g. frame 3 after its past keyframe
    assert float(tf.propagation_weights(torch.tensor(3.0), torch.tensor(5.0))) == pytest.approx(
        1 / (1 + math.exp(-3 / 8)), abs=1e-6)
    assert float(tf.propagation_weights(torch.tensor(8.0), torch.tensor(0.0))) == pytest.approx(
        1 / (1 + math.exp(-1)), abs=1e-6)


def test_plan_chunks_shares_keyframes_across_borders():
    n, kf = 23, torch.tensor([3, 11, 19])
    prev, nxt = tf.adjacent_keyframes(n, kf)
    plans = tf.plan_chunks(n, kf, 5)
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
    out = tf.extended_attention(q, k, v, heads=2)
    sdpa = F.scaled_dot_product_attention(*(t.view(1, 12, 2, 8).transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(out, sdpa.transpose(1, 2).reshape(1, 12, 16))
    torch.testing.assert_close(out, manual_attention(q, k, v, 2), atol=1e-5, rtol=1e-5)


def test_extended_attention_eq3_4_over_keyframes():
    g = torch.Generator().manual_seed(1)
    K, L, C, H = 3, 10, 16, 4
    q, k, v = (torch.randn(K, L, C, generator=g) for _ in range(3))
    out = tf.extended_attention(q, k, v, heads=H)
    k_cat, v_cat = k.reshape(1, K * L, C), v.reshape(1, K * L, C)
    for i in range(K):  # frame i's queries against [K^1..K^K], [V^1..V^K]
        torch.testing.assert_close(out[i:i + 1], manual_attention(q[i:i + 1], k_cat, v_cat, H), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tf.extended_attention(q, k, v, H, frames_per_chunk=1), out)
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
    nn = tf.nearest_neighbour_field(src_t * 3.0, key_t, token_chunk=7)[0]  # scale: cosine, not L2
    h, w = src.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expected = ((ys + shift[0]) % h) * w + (xs + shift[1]) % w
    assert torch.equal(nn, expected.flatten())
    torch.testing.assert_close(tf.nearest_neighbour_field(src_t, key_t[0]), nn.unsqueeze(0))  # [M, C] keys


def test_nn_field_uses_cosine_distance():
    src = torch.tensor([[[1.0, 0.1]]])
    keys = torch.tensor([[[10.0, 0.0], [0.9, 0.5]]])  # far in L2 but same direction vs. near in L2
    assert tf.nearest_neighbour_field(src, keys).tolist() == [[0]]


def test_propagation_identical_keyframes_returns_keyframe_tokens():
    src = tokens(feature_map(seed=3))  # [N, C]
    n_frames, K = 6, 2
    edit = torch.randn(src.shape[0], 8, generator=torch.Generator().manual_seed(4))
    src_frames = src.expand(n_frames, -1, -1)
    plan = tf.plan_chunks(n_frames, torch.tensor([1, 4]), n_frames)[0]
    out = tf.tokenflow_chunk(src_frames, src.expand(K, -1, -1), edit.expand(K, -1, -1), plan)
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
    prev, nxt = tf.adjacent_keyframes(n_frames, kf)
    i = torch.arange(n_frames)
    w = tf.propagation_weights((i - kf[prev]).abs(), (kf[nxt] - i).abs()).view(-1, 1, 1)
    expected = frames @ A + w * offset[nxt] + (1 - w) * offset[prev]
    outs = {}
    for chunk in (n_frames, 4, 1):
        outs[chunk] = torch.cat([tf.tokenflow_chunk(frames[p.frames], frames[kf], edit, p, token_chunk=16)
                                 for p in tf.plan_chunks(n_frames, kf, chunk)])
        torch.testing.assert_close(outs[chunk], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[n_frames][7], edit[1])  # a keyframe keeps its own edited tokens


def test_propagate_tokens_gathers_by_slot():
    key = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # slot s, token q -> 3 s + q
    nn_prev, nn_next = torch.tensor([[2, 0]]), torch.tensor([[1, 1]])
    out = tf.propagate_tokens(key, nn_prev, nn_next, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.25]))
    assert out.flatten().tolist() == pytest.approx([0.25 * 4 + 0.75 * 2, 0.25 * 4 + 0.75 * 0])


def test_pnp_schedule():
    steps = 50
    assert sum(tf.pnp_inject(s, steps, 0.8) for s in range(steps)) == 40
    assert [s for s in range(steps) if tf.pnp_inject(s, steps, 0.5)] == list(range(25))
    assert not any(tf.pnp_inject(s, 10, 0.0) for s in range(10))
    with pytest.raises(ValueError):
        tf.pnp_inject(0, 10, 1.5)
