"""Small inline SVG plots for the HTML report (no plotting dependency, no external resources).

Every function takes report.json arrays and returns an SVG string; numbers are drawn, never computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 420, 220, 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _frame(title: str, x_label: str, y_label: str, lo: float, hi: float) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="10">',
            f'<rect x="{PAD}" y="{PAD / 2}" width="{WIDTH - 1.5 * PAD}" height="{HEIGHT - 1.5 * PAD}" '
            'fill="none" stroke="#888"/>',
            f'<text x="{PAD}" y="11" font-size="11">{escape(title)}</text>',
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>',
            f'<text x="2" y="{PAD / 2 + 8}">{hi:.3g}</text>',
            f'<text x="2" y="{HEIGHT - PAD}">{lo:.3g}</text>',
            f'<text x="{PAD + 4}" y="{PAD / 2 + 12}" fill="#555">{escape(y_label)}</text>']


def line_plot(series: dict[str, Sequence[float]], title: str, x_label: str, y_label: str) -> str:
    """One polyline per named series over its index."""
    clean = {k: _finite(v) for k, v in series.items() if _finite(v)}
    if not clean:
        return ""
    everything = [x for v in clean.values() for x in v]
    lo, hi = min(everything), max(everything)
    span = (hi - lo) or 1.0
    inner_w, inner_h = WIDTH - 1.5 * PAD, HEIGHT - 1.5 * PAD
    parts = _frame(title, x_label, y_label, lo, hi)
    for i, (name, values) in enumerate(clean.items()):
        n = max(len(values) - 1, 1)
        points = " ".join(f"{PAD + inner_w * j / n:.1f},{PAD / 2 + inner_h * (1 - (v - lo) / span):.1f}"
                          for j, v in enumerate(values))
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{WIDTH - PAD * 3.5}" y="{PAD / 2 + 14 + 12 * i}" fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def heatmap(grid: Sequence[Sequence[float]], title: str) -> str:
    """A square grid of values (the loss landscape) as coloured cells, low = dark."""
    rows = [_finite(r) for r in grid]
    values = [v for r in rows for v in r]
    if not values or any(len(r) != len(rows[0]) for r in rows):
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    size = HEIGHT - 1.5 * PAD
    cell = size / max(len(rows), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * PAD}" height="{HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" font-family="sans-serif" font-size="10">',
             f'<text x="{PAD}" y="11" font-size="11">{escape(title)}</text>']
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            shade = int(40 + 200 * (v - lo) / span)
            parts.append(f'<rect x="{PAD + j * cell:.1f}" y="{PAD / 2 + i * cell:.1f}" width="{cell:.1f}" '
                         f'height="{cell:.1f}" fill="rgb({shade},{shade},255)"><title>{v:.4g}</title></rect>')
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 4}">low {lo:.3g} (dark) .. high {hi:.3g}; centre = pseudo-trigger'
                 "</text></svg>")
    return "\n".join(parts)


def spectrum(eigenvalues: Sequence[float], title: str) -> str:
    """Sorted eigenvalues as bars around zero."""
    values = sorted(_finite(eigenvalues), reverse=True)
    if not values:
        return ""
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    span = (hi - lo) or 1.0
    inner_w, inner_h = WIDTH - 1.5 * PAD, HEIGHT - 1.5 * PAD
    zero = PAD / 2 + inner_h * (1 - (0 - lo) / span)
    width = inner_w / len(values)
    parts = _frame(title, "eigenvalue rank", "eigenvalue", lo, hi)
    for i, v in enumerate(values):
        y = PAD / 2 + inner_h * (1 - (v - lo) / span)
        top, height = min(y, zero), abs(zero - y)
        colour = "#2ca02c" if v >= 0 else "#d62728"
        parts.append(f'<rect x="{PAD + i * width:.1f}" y="{top:.1f}" width="{max(width, 0.5):.1f}" '
                     f'height="{max(height, 0.5):.1f}" fill="{colour}"/>')
    parts.append("</svg>")
    return "\n".join(parts)
