"""The keyframe token store (nodes/token_store.py): every place returns exactly what was put."""
from __future__ import annotations

import os

import pytest
import torch

from videoedit.nodes.tokenflow import token_store


@pytest.mark.parametrize("place", ["device", "cpu", "disk"])
def test_rows_and_whole_tensors_come_back_exactly(place, tmp_path):
    g = torch.Generator().manual_seed(0)
    store = token_store.TokenStore(place, str(tmp_path))
    tensors = {("src", 0): torch.randn(5, 7, 3, generator=g),
               ("out", 1, 0): torch.randn(5, 4, generator=g).half(),
               ("q", 2): torch.randn(3, 2, 6, generator=g).bfloat16()}
    for name, t in tensors.items():
        store.put(name, t)
    idx = torch.tensor([4, 0, 2])
    for name, t in tensors.items():
        assert name in store
        got = store.get(name)
        assert got.dtype == t.dtype and torch.equal(got, t)
        rows = idx[idx < t.shape[0]]
        assert torch.equal(store.rows(name, rows), t[rows])
    assert store.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    if place == "disk":
        assert os.listdir(tmp_path) == []  # the file was unlinked when it was created
        with pytest.raises(IndexError, match="out of range"):
            store.rows(("q", 2), torch.tensor([3]))
    # a cleared store is written over from the start and returns the new tensors
    store.clear()
    assert ("src", 0) not in store and store.nbytes == 0
    new = torch.arange(12.0).view(3, 4)
    store.put("x", new)
    assert torch.equal(store.rows("x", torch.tensor([2, 1])), new[[2, 1]])
    store.close()


def test_a_stored_tensor_is_a_copy_not_a_view(tmp_path):
    """The edited keyframe outputs go on through the UNet; what was stored must not change."""
    for place in ("cpu", "disk"):
        store = token_store.TokenStore(place, str(tmp_path))
        t = torch.ones(2, 3)
        store.put("a", t)
        t.add_(1)
        assert torch.equal(store.get("a"), torch.ones(2, 3))
        store.close()


def test_auto_offloads_only_clips_longer_than_a_chunk():
    choose = token_store.choose_place
    assert choose("auto", 16, 16, torch.device("cpu")) == "device"
    assert choose("auto", 17, 16, torch.device("cpu")) == "disk"
    assert choose("auto", 240, 16, torch.device("cuda", 0)) == "cpu"
    assert choose("memory", 240, 16, torch.device("cpu")) == "device"
    assert choose("disk", 4, 16, torch.device("cpu")) == "disk"
    with pytest.raises(ValueError, match="keyframe_store"):
        choose("ram", 4, 16, torch.device("cpu"))
