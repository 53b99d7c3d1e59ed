"""EVE's sliding-window plan (eve/windows.py): every frame's blend weights sum to one."""
from __future__ import annotations

import pytest

from videoedit.nodes.eve import windows


@pytest.mark.parametrize("frames,length,overlap,anchor", [
    (20, 8, 4, True), (20, 8, 4, False), (17, 8, 2, True), (9, 8, 7, True), (64, 8, 4, True), (30, 7, 0, False)])
def test_window_weights_cover_every_frame_once(frames, length, overlap, anchor):
    plan = windows.window_plan(frames, length, overlap, anchor)
    sums = windows.frame_weight_sums(plan, frames)
    assert all(abs(s - 1.0) < 1e-12 for s in sums), sums
    for i, w in enumerate(plan):
        body = w.frames[1:] if (anchor and w.frames[0] == 0 and i > 0) else w.frames
        assert len(body) == length and list(body) == list(range(body[0], body[0] + length))
        if anchor:
            assert w.frames[0] == 0 and len(w.frames) == length + (i > 0)
            if i > 0:
                assert w.weights[0] == 0.0
    # neighbours share at least `overlap` frames, and shared frames are blended (weights in (0, 1))
    for a, b in zip(plan, plan[1:]):
        shared = (set(a.frames) & set(b.frames)) - ({0} if anchor else set())
        assert len(shared) >= overlap
        for f in shared:
            wa = a.weights[a.frames.index(f)]
            wb = b.weights[b.frames.index(f)]
            assert 0 < wa < 1 and 0 < wb < 1
    # a cross-fade: in the overlap of the first two windows the second's weight rises
    if overlap >= 2:
        shared = sorted((set(plan[0].frames) & set(plan[1].frames)) - {0})
        ws = [plan[1].weights[plan[1].frames.index(f)] for f in shared]
        assert ws == sorted(ws) and ws[0] < ws[-1]


@pytest.mark.parametrize("frames", [1, 5, 8])
def test_clip_within_one_window_is_one_plain_window(frames):
    plan = windows.window_plan(frames, 8, 4, anchor=True)
    assert plan == [windows.Window(tuple(range(frames)), (1.0,) * frames)]


def test_window_argument_errors():
    with pytest.raises(ValueError, match="context_overlap"):
        windows.window_plan(10, 4, 4)
    with pytest.raises(ValueError, match="zero|at least one"):
        windows.window_plan(0, 4, 1)
    assert windows.frames_for_batch(16, 2) == 8
    with pytest.raises(ValueError):
        windows.frames_for_batch(15, 2)
