"""The loss-curve image (core/loss_curve.py)."""
from __future__ import annotations

from videoedit.nodes.core import loss_curve


def test_loss_curve_image():
    img = loss_curve.render_loss_curve([1.0, 0.5, 0.3, 0.1, 0.05], 200, 100)
    t = loss_curve.image_to_tensor(img)
    assert t.shape == (1, 100, 200, 3) and 0 <= t.min() and t.max() <= 1
    assert (t[0, :, :, 2] > 0.9).sum() > 20  # the blue curve is drawn
    loss_curve.render_loss_curve([], 64, 64)
