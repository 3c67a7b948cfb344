"""Inline SVG plots for the HTML report (no plotting dependency, no external resources).

Every function takes report.json arrays and returns an SVG string with a title, labelled axes with ticks and
a legend outside the data; numbers are drawn, never computed. Every text is escaped for XML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 34, 48  # margins around the plotting area
FONT = 13
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _tick(value: float) -> str:
    return f"{value:.3g}"


def _open(title: str, width: float, height: float) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="{FONT}">',
            f'<text x="{LEFT}" y="{FONT + 4}" font-size="{FONT + 1}" font-weight="bold">{escape(title)}</text>']


def _axes(x_label: str, y_label: str, x_range: tuple[float, float], y_range: tuple[float, float],
          area: tuple[float, float, float, float], ticks: int = 5) -> list[str]:
    """The frame of the plotting ``area`` (x, y, w, h), ticks with values on both axes, and the axis labels."""
    x0, y0, w, h = area
    parts = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    for i in range(ticks):
        fx = i / (ticks - 1)
        vx = x_range[0] + fx * (x_range[1] - x_range[0])
        px = x0 + fx * w
        parts.append(f'<line x1="{px:.1f}" y1="{y0 + h}" x2="{px:.1f}" y2="{y0 + h + 5}" stroke="#888"/>')
        parts.append(f'<text x="{px:.1f}" y="{y0 + h + 5 + FONT}" text-anchor="middle">{_tick(vx)}</text>')
        vy = y_range[0] + fx * (y_range[1] - y_range[0])
        py = y0 + h - fx * h
        parts.append(f'<line x1="{x0 - 5}" y1="{py:.1f}" x2="{x0}" y2="{py:.1f}" stroke="#888"/>')
        parts.append(f'<text x="{x0 - 8}" y="{py + 4:.1f}" text-anchor="end">{_tick(vy)}</text>')
    parts.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 2 * FONT + 10}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text transform="translate({FONT + 2},{y0 + h / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 f'{escape(y_label)}</text>')
    return parts


def line_plot(series: dict[str, Sequence[float]], title: str, x_label: str, y_label: str) -> str:
    """One polyline per named series over its index; the legend sits below the x-axis label."""
    clean = {k: _finite(v) for k, v in series.items() if _finite(v)}
    if not clean:
        return ""
    everything = [x for v in clean.values() for x in v]
    lo, hi = min(everything), max(everything)
    span = (hi - lo) or 1.0
    steps = max(len(v) for v in clean.values()) - 1 or 1
    legend_rows = len(clean)
    height = HEIGHT + legend_rows * (FONT + 4)
    area = (LEFT, TOP, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM)
    x0, y0, w, h = area
    parts = _open(title, WIDTH, height) + _axes(x_label, y_label, (0, steps), (lo, hi), area)
    for i, (name, values) in enumerate(clean.items()):
        points = " ".join(f"{x0 + w * j / steps:.1f},{y0 + h * (1 - (v - lo) / span):.1f}"
                          for j, v in enumerate(values))
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = HEIGHT + i * (FONT + 4)
        parts.append(f'<line x1="{LEFT}" y1="{ly - 4}" x2="{LEFT + 24}" y2="{ly - 4}" stroke="{colour}" '
                     'stroke-width="3"/>')
        parts.append(f'<text x="{LEFT + 30}" y="{ly}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(grid: Sequence[Sequence[float]], title: str, coords: Sequence[float], x_label: str, y_label: str,
            value_label: str) -> str:
    """A square grid of values as coloured cells (low = dark); row i is ``coords[i]`` on the y axis, column j
    ``coords[j]`` on the x axis; a colour key below."""
    rows = [_finite(r) for r in grid]
    values = [v for r in rows for v in r]
    if not values or any(len(r) != len(rows[0]) for r in rows) or len(rows) != len(rows[0]):
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    axis = _finite(coords) if len(_finite(coords)) == len(rows) else [float(i) for i in range(len(rows))]
    size = HEIGHT - TOP - BOTTOM
    cell = size / len(rows)
    height = HEIGHT + 2 * (FONT + 4)
    parts = _open(title, WIDTH, height)
    for i, row in enumerate(rows):  # row 0 is the lowest coordinate: drawn at the bottom
        for j, v in enumerate(row):
            shade = int(40 + 200 * (v - lo) / span)
            parts.append(f'<rect x="{LEFT + j * cell:.1f}" y="{TOP + size - (i + 1) * cell:.1f}" '
                         f'width="{cell + 0.3:.1f}" height="{cell + 0.3:.1f}" fill="rgb({shade},{shade},255)">'
                         f"<title>{_tick(v)}</title></rect>")
    centre = LEFT + size / 2
    parts.append(f'<circle cx="{centre:.1f}" cy="{TOP + size / 2:.1f}" r="4" fill="none" stroke="#d62728" '
                 'stroke-width="2"/>')
    parts += _axes(x_label, y_label, (axis[0], axis[-1]), (axis[0], axis[-1]), (LEFT, TOP, size, size), ticks=3)
    key = HEIGHT + FONT
    for k in range(10):
        shade = int(40 + 200 * k / 9)
        parts.append(f'<rect x="{LEFT + k * 14}" y="{key - FONT + 2}" width="14" height="{FONT}" '
                     f'fill="rgb({shade},{shade},255)"/>')
    parts.append(f'<text x="{LEFT + 150}" y="{key}">{escape(value_label)}: {_tick(lo)} (dark) to {_tick(hi)}; '
                 'red ring: the pseudo-trigger</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def spectrum(eigenvalues: Sequence[float], title: str, x_label: str, y_label: str) -> str:
    """Eigenvalues sorted from largest to smallest as bars around zero (positive green, negative red)."""
    values = sorted(_finite(eigenvalues), reverse=True)
    if not values:
        return ""
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    span = (hi - lo) or 1.0
    area = (LEFT, TOP, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM)
    x0, y0, w, h = area
    zero = y0 + h * (1 - (0 - lo) / span)
    width = w / len(values)
    parts = _open(title, WIDTH, HEIGHT + FONT + 4) + _axes(x_label, y_label, (1, len(values)), (lo, hi), area)
    parts.append(f'<line x1="{x0}" y1="{zero:.1f}" x2="{x0 + w}" y2="{zero:.1f}" stroke="#444"/>')
    for i, v in enumerate(values):
        y = y0 + h * (1 - (v - lo) / span)
        top, height = min(y, zero), abs(zero - y)
        colour = "#2ca02c" if v >= 0 else "#d62728"
        parts.append(f'<rect x="{x0 + i * width:.1f}" y="{top:.1f}" width="{max(width, 0.5):.1f}" '
                     f'height="{max(height, 0.5):.1f}" fill="{colour}"/>')
    positive = sum(v > 0 for v in values) / len(values)
    parts.append(f'<text x="{LEFT}" y="{HEIGHT + FONT}">green: curving up (bowl-like), red: curving down; '
                 f"{positive:.0%} positive</text>")
    parts.append("</svg>")
    return "\n".join(parts)
