"""core/tensor_checks.py: the first frame holding NaN / inf, found chunk by chunk."""
from __future__ import annotations

import pytest
import torch

from videoedit.nodes.core.tensor_checks import first_non_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("chunk", [1, 7, 10_000, 1 << 24])
def test_finds_the_first_bad_frame_whatever_the_chunk(bad, chunk):
    t = torch.rand(9, 3, 4, 5)
    assert first_non_finite(t, chunk) is None
    t[6, 2, 1, 3] = bad
    t[8, 0, 0, 0] = bad
    assert first_non_finite(t, chunk) == 6


def test_scalars_vectors_integers_and_empty():
    assert first_non_finite(torch.tensor(float("nan"))) == 0
    assert first_non_finite(torch.tensor(1.0)) is None
    assert first_non_finite(torch.tensor([14.6, 3.0, float("nan"), 0.0])) == 2
    assert first_non_finite(torch.tensor([1, 2, 3])) is None
    assert first_non_finite(torch.zeros(0, 4)) is None
    assert first_non_finite(torch.zeros(3, 0)) is None
    half = torch.ones(2, 4, dtype=torch.float16) * 60000
    assert first_non_finite(half) is None
    assert first_non_finite(half * 2) == 0  # overflowed float16 is inf


def test_the_mask_stays_one_chunk(monkeypatch):
    """The temporary bool mask covers at most chunk_elements values (one frame when a frame is larger)."""
    import videoedit.nodes.core.tensor_checks as tc
    seen = []
    real = torch.isfinite
    monkeypatch.setattr(tc.torch, "isfinite", lambda x: seen.append(x.numel()) or real(x))
    first_non_finite(torch.rand(10, 100), chunk_elements=300)
    assert seen == [300, 300, 300, 100]
    seen.clear()
    first_non_finite(torch.rand(3, 100), chunk_elements=10)
    assert seen == [100, 100, 100]
