"""Weight deltas (core/weight_deltas.py): exact identity at init, the switch."""
from __future__ import annotations

import torch

from videoedit.nodes.core import weight_deltas


def test_lora_delta_identity_then_switch():
    w = torch.randn(6, 4, 3, 3)
    sw = weight_deltas.Switch()
    d = weight_deltas.LoRADelta(w.shape, 2, switch=sw)
    assert torch.equal(d(w), w)
    with torch.no_grad():
        d.up.fill_(0.1)
    assert not torch.equal(d(w), w)
    sw.enabled = False
    assert torch.equal(d(w), w)
