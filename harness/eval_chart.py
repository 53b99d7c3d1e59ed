"""A small PNG line chart of per-frame-pair warp error, one line per method (Pillow only: the pack
does not depend on a plotting library). Written atomically."""
from __future__ import annotations

from pathlib import Path

from .pack import import_pack

import_pack()
from videoedit.nodes.core.atomic_file import atomic_path  # noqa: E402

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
WIDTH, PLOT_HEIGHT, LEGEND_ROW = 760, 380, 18
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60   # the legend goes below the plot, one row per method


def _ticks(top: float, count: int = 5) -> list[float]:
    return [top * i / count for i in range(count + 1)]


def warp_error_chart(series: list[tuple[str, list[float]]], path: str | Path, title: str) -> Path:
    """``series``: [(label, per-pair warp errors)]; the y axis is in units of 1e-3 as in TokenFlow's Table 1."""
    from PIL import Image, ImageDraw, ImageFont
    series = [(label, values) for label, values in series if values]
    if not series:
        raise ValueError("no warp error series to draw")
    font = ImageFont.load_default()
    height = PLOT_HEIGHT + LEGEND_ROW * len(series) + 10
    img = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    n = max(len(v) for _, v in series)
    top = max(max(v) for _, v in series) * 1e3 * 1.1 or 1.0
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, PLOT_HEIGHT - BOTTOM, TOP

    def xy(i: int, value: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i / (n - 1) if n > 1 else 0.5)
        return x, y0 - (y0 - y1) * (value * 1e3 / top)

    for t in _ticks(top):
        y = y0 - (y0 - y1) * t / top
        draw.line([(x0, y), (x1, y)], fill="#e5e5e5")
        draw.text((x0 - 8, y), f"{t:.2f}", fill="black", font=font, anchor="rm")
    step = max(1, n // 10)
    for i in range(0, n, step):
        draw.text((xy(i, 0)[0], y0 + 6), str(i), fill="black", font=font, anchor="mt")
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    for k, (label, values) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        points = [xy(i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        ly = PLOT_HEIGHT + LEGEND_ROW * k
        draw.line([(x0, ly + 6), (x0 + 24, ly + 6)], fill=colour, width=3)
        draw.text((x0 + 32, ly), label, fill="black", font=font)
    draw.text((WIDTH / 2, 14), title, fill="black", font=font, anchor="mt")
    draw.text((WIDTH / 2, y0 + 30), "frame pair t -> t+1", fill="black", font=font, anchor="mm")
    draw.text((12, TOP - 18), "warp error (x1e-3)", fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
