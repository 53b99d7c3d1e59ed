"""Warp error (nodes/eval/warp_error.py, pure torch): on the sample clip (a real photo panned by a
known shift, whose exact flow we know) the metric is 0 for the clip itself and grows with injected
flicker and shuffled frames; the occlusion mask masks pixels panned out of frame, forward-backward
disagreements and motion boundaries; the normalisation is Lai et al.'s (per channel, valid pixels).

What this cannot show: that the metric ranks real edits as the paper's does (that needs real
weights and RAFT's real flow); it proves the instrument on motion we know exactly."""
from __future__ import annotations

import pytest
import torch

from harness.sample_clip import panned_frames
from videoedit.nodes.eval import warp_error as we

SHIFT = (2, 1)


@pytest.fixture(scope="module")
def clip():
    frames, _ = panned_frames(8, 64, shift=SHIFT)
    return frames


def _pan_error(edited, source, shift=SHIFT, chunk=3):
    return we.clip_warp_error(edited, source, we.pan_flow_fn(*shift), pairs_per_chunk=chunk)


def test_the_clip_itself_scores_zero(clip):
    res = _pan_error(clip, clip)
    print(f"warp error of the panned clip against itself: max {max(res.per_pair):.3g}")
    assert len(res.per_pair) == 7
    assert max(res.per_pair) < 1e-12
    # every frame loses exactly the 2 columns and 1 row panned out of view
    assert res.valid_fraction == pytest.approx([(64 - 2) * (64 - 1) / 64 ** 2] * 7)


def test_flicker_adds_exactly_its_squared_size(clip):
    """Alternating brightness offsets +d/-d: every pair differs by 2d in every channel, so e_t = (2d)^2
    exactly (Lai's per-channel mean over valid pixels)."""
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(8)]).view(8, 1, 1, 1)
    last = 0.0
    for d in (0.005, 0.02, 0.08):
        res = _pan_error(clip + d * sign, clip)
        assert res.per_pair == pytest.approx([(2 * d) ** 2] * 7, rel=1e-4)
        assert res.mean > last
        last = res.mean


def test_shuffled_frames_score_far_worse(clip):
    order = [0, 5, 2, 7, 1, 6, 4, 3]  # no pair stays in order
    res = _pan_error(clip[order], clip)
    flicker = _pan_error(clip + 0.02 * torch.tensor([(-1.0) ** i for i in range(8)]).view(8, 1, 1, 1), clip)
    print(f"shuffled: {res.mean:.4f}, 2% flicker: {flicker.mean:.4f}")
    assert min(res.per_pair) > 1e-3 and res.mean > 5 * flicker.mean


def test_the_wrong_motion_scores_worse_than_the_right_one(clip):
    assert _pan_error(clip, clip, shift=(1, 1)).mean > 1e-3


def test_chunking_does_not_change_the_result(clip):
    noisy = clip + 0.05 * torch.randn(clip.shape, generator=torch.Generator().manual_seed(0))
    a = _pan_error(noisy, clip, chunk=1)
    b = _pan_error(noisy, clip, chunk=7)
    assert a.per_pair == pytest.approx(b.per_pair, rel=1e-6)


@pytest.mark.parametrize("shift", [(2, 1), (-3, 2), (0, -4)])
def test_mask_covers_exactly_what_left_the_frame(shift):
    dx, dy = shift
    frames = torch.rand(2, 3, 20, 24)
    fwd, bwd = we.pan_flow_fn(dx, dy)(frames[:1], frames[1:])
    occluded = we.occlusion_mask(fwd, bwd)[0]
    rows = torch.arange(20).view(-1, 1).expand(20, 24)
    cols = torch.arange(24).view(1, -1).expand(20, 24)
    # pixel (r, c) of frame t shows up at (r - dy, c - dx) in frame t+1
    gone = (cols - dx < 0) | (cols - dx > 23) | (rows - dy < 0) | (rows - dy > 19)
    assert torch.equal(occluded, gone)


def test_forward_backward_disagreement_is_masked():
    fwd = torch.zeros(1, 2, 16, 16)
    fwd[:, 0] = 3.0
    bwd = -fwd.clone()
    bwd[:, :, 4:8, 8:12] = 0.0          # frame t+1's patch claims it did not move
    occluded = we.occlusion_mask(fwd, bwd)[0]
    # pixels of frame t that land in the patch (x + 3 in 8..11, y in 4..7) fail the round trip
    assert occluded[4:8, 5:9].all()
    assert not occluded[0:4, 0:12].any() and not occluded[8:, 0:12].any()


def test_motion_boundary_is_masked():
    fwd = torch.zeros(1, 2, 12, 12)
    fwd[:, 0, :, 6:] = 1.0              # the right half moves one pixel right
    boundary = we.motion_boundary(fwd)[0]
    assert boundary[:, 5].all() and boundary.sum() == 12   # forward difference marks the left column


def test_normalisation_is_per_channel_over_valid_pixels():
    """An independent recomputation with integer flows (exact indexing, no grid_sample)."""
    g = torch.Generator().manual_seed(3)
    b, h, w = 2, 10, 12
    e_t, e_t1 = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)
    fwd = torch.randint(-2, 3, (b, 2, h, w), generator=g).float()
    occluded = torch.rand(b, h, w, generator=g) > 0.6
    errors, valid = we.pair_errors(e_t, e_t1, fwd, occluded)
    for i in range(b):
        total, n = 0.0, 0
        for r in range(h):
            for c in range(w):
                if occluded[i, r, c]:
                    continue
                x = min(max(c + int(fwd[i, 0, r, c]), 0), w - 1)   # border clamp, as Lai's Resample2d
                y = min(max(r + int(fwd[i, 1, r, c]), 0), h - 1)
                total += float(((e_t1[i, :, y, x] - e_t[i, :, r, c]) ** 2).sum())
                n += 1
        assert float(errors[i]) == pytest.approx(total / (3 * n), rel=1e-5)
        assert float(valid[i]) == pytest.approx(n / (h * w))


def test_no_valid_pixel_scores_zero_as_lai():
    e = torch.rand(1, 3, 8, 8)
    errors, valid = we.pair_errors(e, torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool))
    assert float(errors[0]) == 0.0 and float(valid[0]) == 0.0


def test_source_of_another_size_is_resized(clip):
    big = torch.nn.functional.interpolate(clip.movedim(-1, 1), scale_factor=2, mode="nearest").movedim(1, -1)
    res = we.clip_warp_error(clip, big, we.pan_flow_fn(*SHIFT))
    assert len(res.per_pair) == 7


def test_bad_inputs_are_named(clip):
    with pytest.raises(ValueError, match="source has 6"):
        _pan_error(clip, clip[:6])
    with pytest.raises(ValueError, match="at least 2"):
        _pan_error(clip[:1], clip[:1])
    with pytest.raises(ValueError, match="pairs_per_chunk"):
        _pan_error(clip, clip, chunk=0)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        _pan_error(clip[..., 0], clip[..., 0])
