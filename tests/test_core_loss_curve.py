"""The loss-curve image (core/loss_curve.py): axes, ticks, the phases of a run marked where the
trainer switched, a legend when there are several series."""
from __future__ import annotations

import numpy as np
import pytest

from videoedit.nodes.core import loss_curve as lc


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _columns_with(arr: np.ndarray, colour, lay: lc.Layout) -> list[int]:
    """Columns of the plot area holding ``colour`` in more than a third of its rows."""
    area = arr[lay.top:lay.bottom + 1]
    hits = (np.abs(area - np.array(colour)).max(axis=-1) <= 2).sum(axis=0)
    return [int(x) for x in np.nonzero(hits > (lay.bottom - lay.top) / 3)[0]]


def test_loss_curve_image():
    img = lc.render_loss_curve([1.0, 0.5, 0.3, 0.1, 0.05], 200, 100)
    t = lc.image_to_tensor(img)
    assert t.shape == (1, 100, 200, 3) and 0 <= t.min() and t.max() <= 1
    arr = _pixels(img)
    assert (np.abs(arr - np.array(lc.PHASE_COLOURS[0])).max(axis=-1) <= 2).sum() > 20  # the curve is drawn
    lc.render_loss_curve([], 64, 64)
    lc.render_loss_curve([float("nan"), 0.2], 64, 64)


@pytest.mark.parametrize("switch", [31, 61])
def test_phase_marker_is_drawn_where_the_trainer_switched(switch):
    losses = [1.0 / (1 + i) for i in range(100)]
    img = lc.render_loss_curve(losses, 640, 320, phases=[(1, "SDS only"), (switch, "SDS + adversarial")])
    lay = lc.layout(640, 320, 100)
    cols = _columns_with(_pixels(img), lc.MARKER, lay)
    assert cols == [lay.switch_x(switch)]
    assert lay.x(switch - 1) < cols[0] < lay.x(switch)  # between the last SDS-only step and the first adversarial
    # the phases' backgrounds change at the marker
    arr = _pixels(img)
    row = (lay.top + lay.bottom) // 2 + 40
    assert tuple(arr[row, cols[0] - 3]) == lc.SHADES[0] and tuple(arr[row, cols[0] + 3]) == lc.SHADES[1]
    # no marker without a switch
    assert _columns_with(_pixels(lc.render_loss_curve(losses, 640, 320)), lc.MARKER, lay) == []


def test_each_phase_in_its_colour_and_a_legend_for_several_series():
    losses = [1.0] * 50 + [0.5] * 50
    lay = lc.layout(640, 320, 100)
    arr = _pixels(lc.render_loss_curve(losses, 640, 320, phases=[(1, "v-prediction"), (51, "adversarial")]))

    def has(colour, x0, x1):
        return bool((np.abs(arr[:, x0:x1] - np.array(colour)).max(axis=-1) <= 2).any())
    split = lay.switch_x(51)
    assert has(lc.PHASE_COLOURS[0], lay.left, split - 2) and not has(lc.PHASE_COLOURS[1], lay.left, split - 10)
    # the legend (top right) holds both colours' swatches
    right = arr[lay.top:lay.top + 60, lay.right - 260:lay.right]
    for colour in lc.PHASE_COLOURS[:2]:
        assert (np.abs(right - np.array(colour)).max(axis=-1) <= 2).sum() >= 14  # a 15 px swatch, 3 px thick
    # one series, no phases: no legend box (its outline) in that corner
    single = _pixels(lc.render_loss_curve([0.5] * 100, 640, 320))[lay.top:lay.top + 60, lay.right - 260:lay.right]
    assert not (np.abs(single - np.array(lc.AXIS)).max(axis=-1) <= 2).any()
    assert (np.abs(right - np.array(lc.AXIS)).max(axis=-1) <= 2).sum() > 100
    # a second loss gets the legend too
    two = _pixels(lc.render_loss_curve(losses, 640, 320, others={"discriminator": ([60, 70, 80], [0.7, 0.6, 0.7])}))
    corner = two[lay.top:lay.top + 60, lay.right - 260:lay.right]
    assert (np.abs(corner - np.array(lc.OTHER_COLOUR)).max(axis=-1) <= 2).sum() >= 14


def test_y_axis_is_logarithmic_over_a_decade_with_decade_ticks():
    use_log, lo, hi, ticks = lc.y_axis([1.0, 0.5, 0.05])
    assert use_log and ticks == pytest.approx([0.05, 0.1, 0.2, 0.5, 1.0]) and lo < np.log10(0.05) and hi > 0
    use_log, _, _, ticks = lc.y_axis([3.0] + [1e-4] * 10)
    assert use_log and ticks == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    use_log, lo, hi, ticks = lc.y_axis([0.4, 0.9])
    assert not use_log and lo < 0.4 and hi > 0.9 and ticks == pytest.approx([0.4, 0.6, 0.8])
    assert not lc.y_axis([-0.5, 2.0])[0]  # negative losses (e.g. a hinge): linear


def test_ticks():
    assert lc.nice_ticks(0.0, 1.0, 6) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert lc.nice_ticks(0.17, 2.1, 6) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lc.step_ticks(100) == [1, 20, 40, 60, 80, 100] and lc.step_ticks(1) == [1] and lc.step_ticks(3) == [1, 2, 3]


def test_trainer_phases():
    from videoedit.nodes.eve import align
    from videoedit.nodes.movie import onestep
    # EVE: round(2/3 * 30) = 20 SDS-only steps, adversarial from step 21
    assert align.loss_phases(30, 2 / 3) == [(1, "SDS only"), (21, "SDS + adversarial")]
    assert align.loss_phases(30, 0.0) == [(1, "SDS + adversarial")]
    assert align.loss_phases(30, 1.0) == [(1, "SDS only")]
    assert onestep.loss_phases(2, 5) == [(1, "v-prediction"), (3, "adversarial (generator)")]
    assert onestep.loss_phases(0, 5) == [(1, "adversarial (generator)")]
    assert onestep.loss_phases(5, 5) == [(1, "v-prediction")]


def test_trainers_loss_curves_mark_their_switch(comfy):
    """What the trainer nodes output: the One-Step Distill curve switches after its v-prediction
    steps and draws this session's discriminator losses; the EVE aligner's after its SDS-only
    steps (engine functions on stand-ins for the finished runs)."""
    from types import SimpleNamespace

    from videoedit.nodes.eve import engine_align_data
    from videoedit.nodes.movie import engine_onestep_distill
    history = [1.0 / (1 + i) for i in range(40)]
    lay = lc.layout(640, 320, 40)
    run = SimpleNamespace(cfg=SimpleNamespace(v_steps=10), d_losses=[0.7] * 30)
    image = (engine_onestep_distill.loss_curve(history, run)[0].numpy() * 255).round().astype(np.int16)
    assert _columns_with(image, lc.MARKER, lay) == [lay.switch_x(11)]
    plot = image[lay.top:lay.bottom, int(lay.x(12)):int(lay.x(40))]
    assert (np.abs(plot - np.array(lc.OTHER_COLOUR)).max(axis=-1) <= 2).sum() > 50  # the discriminator loss
    image = (engine_align_data.loss_curve(history, SimpleNamespace(steps=40, sds_fraction=0.75))[0].numpy() * 255)
    assert _columns_with(image.round().astype(np.int16), lc.MARKER, lay) == [lay.switch_x(31)]
