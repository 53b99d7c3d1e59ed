"""The loss history of a training run as an image (PIL; no ComfyUI import), readable at a glance:
axes with ticks and labels (step; loss, with "log scale" said when the y axis is logarithmic), the
trainer's phases shaded and split by a marker where it switched (SDS-only -> adversarial, v-prediction
-> adversarial), the loss drawn in its phase's colour, and a legend when there are several series
(phases, or a second loss such as the discriminator's)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BACKGROUND = (24, 24, 28)
AXIS = (150, 150, 160)
GRID = (44, 44, 52)
TEXT = (220, 220, 220)
MARKER = (255, 210, 80)  # the phase switch
PHASE_COLOURS = [(90, 170, 255), (255, 120, 90), (120, 220, 130), (200, 140, 255)]
SHADES = [(30, 34, 46), (46, 32, 32), (30, 44, 34), (40, 32, 48)]
OTHER_COLOUR = (200, 200, 200)


@dataclass
class Layout:
    """Where the plot area lies and how steps map to pixel columns."""
    left: int
    right: int
    top: int
    bottom: int
    steps: int

    def x(self, step: float) -> float:
        """Pixel column of ``step`` (1-based; steps 1 and ``steps`` at the plot's edges)."""
        return self.left + (self.right - self.left) * (step - 1) / max(self.steps - 1, 1)

    def switch_x(self, first_step: int) -> int:
        """Pixel column of the marker of a phase that starts at ``first_step``: halfway between
        the last step before it and its first."""
        return int(round(self.x(first_step - 0.5)))


def layout(width: int, height: int, steps: int) -> Layout:
    return Layout(left=62, right=width - 14, top=30, bottom=height - 44, steps=max(steps, 1))


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def step_ticks(steps: int, count: int = 6) -> list[int]:
    """Integer step ticks: 1, round values in between, and the last step."""
    if steps <= 1:
        return [1]
    inner = [int(t) for t in nice_ticks(1, steps, count) if t == int(t) and 1 < t < steps]
    ticks = [1, *inner, steps]
    # drop an inner tick that would crowd the last one's label
    if len(ticks) > 2 and steps - ticks[-2] < (steps - 1) / (2 * count):
        ticks.pop(-2)
    return ticks


def y_axis(values: list[float]) -> tuple[bool, float, float, list[float]]:
    """(log scale?, axis bottom, axis top (log10 of the loss when log), tick values): logarithmic
    when the values are positive and span more than a decade; decade ticks (with 2x and 5x when
    few decades) or round linear ticks."""
    use_log = bool(values) and min(values) > 0 and max(values) / min(values) > 10
    f = math.log10 if use_log else (lambda v: v)
    lo, hi = (f(min(values)), f(max(values))) if values else (0.0, 1.0)
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    lo, hi = lo - (hi - lo) * 0.04, hi + (hi - lo) * 0.04  # the curve clear of the frame
    if use_log:
        mults = (1, 2, 5) if hi - lo < 3 else (1,)
        ticks = [m * 10.0 ** k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mults
                 if lo <= math.log10(m * 10.0 ** k) <= hi]
    else:
        ticks = nice_ticks(lo, hi, 6)
    return use_log, lo, hi, ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def render_loss_curve(losses: list[float], width: int = 640, height: int = 320, title: str = "loss",
                      phases: list[tuple[int, str]] | None = None,
                      others: dict[str, tuple[list[int], list[float]]] | None = None):
    """The loss history (one value per step, step 1 first) as an RGB PIL image.

    ``phases``: (first step, label) of each phase of the run, in order (the first starts at
    step 1); the loss is drawn in its phase's colour, each phase's background shaded, a marker
    drawn where one phase gives way to the next, and a legend names them. ``others``: further
    series as label -> (steps, values), drawn on the same axes (e.g. the discriminator loss of the
    adversarial steps). The y axis is logarithmic (and says so) when the values are positive and
    span more than a decade."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    n = len(losses)
    lay = layout(width, height, n)
    phases = [p for p in (phases or []) if 1 <= p[0] <= max(n, 1)]
    others = {k: v for k, v in (others or {}).items() if v[0]}
    vals = [v for v in losses if math.isfinite(v)] + [v for _, (_, ys) in others.items() for v in ys if math.isfinite(v)]
    last = next((v for v in reversed(losses) if math.isfinite(v)), None)
    d.text((lay.left, 8), f"{title}: {n} steps" + (f", last {last:.4g}" if last is not None else ""),
           fill=TEXT, font=font)

    # phases: shaded backgrounds, then the markers where the trainer switched
    bounds = [(first, phases[i + 1][0] if i + 1 < len(phases) else n + 1) for i, (first, _) in enumerate(phases)]
    for i, (first, end) in enumerate(bounds):
        x0 = lay.left if first <= 1 else lay.switch_x(first)
        x1 = lay.right if end > n else lay.switch_x(end)
        d.rectangle([x0, lay.top, x1, lay.bottom], fill=SHADES[i % len(SHADES)])

    use_log, lo, hi, yt = y_axis(vals)
    f = math.log10 if use_log else (lambda v: v)

    def y(v: float) -> float:
        return lay.bottom - (lay.bottom - lay.top) * (f(v) - lo) / (hi - lo)

    for v in yt:  # y ticks with grid lines
        py = y(v)
        d.line([lay.left, py, lay.right, py], fill=GRID)
        d.line([lay.left - 4, py, lay.left, py], fill=AXIS)
        label = _fmt(v)
        d.text((lay.left - 6 - d.textlength(label, font=small), py - 6), label, fill=TEXT, font=small)
    for s in step_ticks(n):
        px = lay.x(s)
        d.line([px, lay.bottom, px, lay.bottom + 4], fill=AXIS)
        label = str(s)
        d.text((px - d.textlength(label, font=small) / 2, lay.bottom + 6), label, fill=TEXT, font=small)
    d.line([lay.left, lay.top, lay.left, lay.bottom], fill=AXIS)
    d.line([lay.left, lay.bottom, lay.right, lay.bottom], fill=AXIS)
    xlabel = "step"
    d.text(((lay.left + lay.right - d.textlength(xlabel, font=font)) / 2, lay.bottom + 22), xlabel, fill=TEXT, font=font)
    ylabel = "loss (log scale)" if use_log else "loss"
    lbl = Image.new("RGB", (int(d.textlength(ylabel, font=font)) + 2, 16), BACKGROUND)
    ImageDraw.Draw(lbl).text((0, 0), ylabel, fill=TEXT, font=font)
    lbl = lbl.rotate(90, expand=True)
    img.paste(lbl, (4, int((lay.top + lay.bottom - lbl.height) / 2)))

    for first, _ in phases[1:]:
        x = lay.switch_x(first)
        for y0 in range(lay.top, lay.bottom, 8):  # dashed
            d.line([x, y0, x, min(y0 + 4, lay.bottom)], fill=MARKER, width=1)

    # the series
    def draw(points, colour):
        if len(points) == 1:
            px, py = points[0]
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        elif points:
            d.line(points, fill=colour, width=2)

    for label, (xs, ys) in others.items():
        draw([(lay.x(s), y(v)) for s, v in zip(xs, ys) if math.isfinite(v)], OTHER_COLOUR)
    spans = bounds or [(1, n + 1)]
    for i, (first, end) in enumerate(spans):
        # each phase's line starts at the last step of the one before, so the curve is unbroken
        pts = [(lay.x(s), y(losses[s - 1])) for s in range(max(first - 1, 1), end) if math.isfinite(losses[s - 1])]
        draw(pts, PHASE_COLOURS[i % len(PHASE_COLOURS)])

    # legend: every phase (its colour), every other series; only when there are several
    def span(first: int, last: int) -> str:
        return f"steps {first}-{last}" if last > first else f"step {first}"
    entries = [(PHASE_COLOURS[i % len(PHASE_COLOURS)], f"{label} ({span(first, min(end - 1, n))})")
               for i, ((_, label), (first, end)) in enumerate(zip(phases, bounds))]
    entries += [(OTHER_COLOUR, label) for label in others]
    if len(entries) + (0 if phases else 1) > 1:
        if not phases:
            entries.insert(0, (PHASE_COLOURS[0], title))
        w = max(d.textlength(t, font=small) for _, t in entries) + 30
        x0, y0 = lay.right - w - 6, lay.top + 6
        d.rectangle([x0, y0, lay.right - 6, y0 + 16 * len(entries) + 6], fill=BACKGROUND, outline=AXIS)
        for i, (colour, text) in enumerate(entries):
            ly = y0 + 11 + 16 * i
            d.line([x0 + 6, ly, x0 + 20, ly], fill=colour, width=3)
            d.text((x0 + 25, ly - 7), text, fill=TEXT, font=small)
    return img


def image_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
