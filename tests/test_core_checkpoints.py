"""Training checkpoints (core/checkpoints.py): exact round trip, atomic writes."""
from __future__ import annotations

import pytest
import torch

from videoedit.nodes.core import checkpoints


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    p = {"a": torch.nn.Parameter(torch.randn(3, 2)), "b": torch.nn.Parameter(torch.randn(4))}
    opt = torch.optim.Adam(p.values(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (p["a"].sum() ** 2 + p["b"].pow(3).sum()).backward()
        opt.step()
    path = str(tmp_path / "ck.safetensors")
    checkpoints.save_checkpoint(path, 3, p, opt, [1.0, 0.5, 0.25], {"lr": 1e-2})
    assert [x.name for x in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp file left
    q = {k: torch.nn.Parameter(torch.zeros_like(v)) for k, v in p.items()}
    opt2 = torch.optim.Adam(q.values(), lr=1e-2)
    step, losses = checkpoints.load_checkpoint(path, q, opt2, {"lr": 1e-2})
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
        checkpoints.load_checkpoint(path, q, opt2, {"lr": 2e-2})
