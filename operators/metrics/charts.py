"""The report's charts as inline SVG: a line chart (VPQ versus k) and grouped bars (VPQ per
class and k), written as text.

Why not a plotting library: ``report.html`` is written at the end of every evaluation, and
importing and rendering matplotlib took ~0.8 s of a 3 s job on 72 frames (its start-up alone
is longer than scoring a video). Two fixed-layout charts need none of its generality; SVG
keeps them sharp at any zoom and inside the one HTML file.

Values are percentages on a fixed 0–100 axis; a missing value (``None`` or NaN: a class
with no segment anywhere) draws nothing.
"""
from __future__ import annotations

import html
import math
from typing import Sequence

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_LEFT, _TOP, _RIGHT = 52, 28, 12    # margins around the plot area, px
_Y_TICKS = range(0, 101, 20)


def _present(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(text)}</text>'


class _Frame:
    """The plot area of one chart: its pixel box, the 0–100 y axis, the legend."""

    def __init__(self, plot_width: float, plot_height: float, bottom: float) -> None:
        self.width, self.height = plot_width, plot_height
        self.total_width, self.total_height = _LEFT + plot_width + _RIGHT, _TOP + plot_height + bottom

    def y(self, percent: float) -> float:
        return _TOP + self.height * (1 - min(max(percent, 0.0), 100.0) / 100)

    def axes(self, y_label: str, x_label: str) -> list[str]:
        parts = []
        for tick in _Y_TICKS:
            y = self.y(tick)
            parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + self.width}" y2="{y:.1f}" '
                         f'stroke="#ddd"/>')
            parts.append(_text(_LEFT - 6, y + 4, str(tick), "end"))
        parts.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{self.width}" height="{self.height}" fill="none" '
                     f'stroke="#444"/>')
        middle = _TOP + self.height / 2
        parts.append(_text(14, middle, y_label, extra=f' transform="rotate(-90 14 {middle:.1f})"'))
        if x_label:
            parts.append(_text(_LEFT + self.width / 2, self.total_height - 6, x_label))
        return parts

    def legend(self, names: Sequence[str]) -> list[str]:
        parts, x = [], _LEFT
        for i, name in enumerate(names):
            parts.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
            parts.append(_text(x + 16, 18, name, "start"))
            x += 24 + 7 * len(name)
        return parts

    def svg(self, title: str, parts: list[str]) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.total_width:.0f}" '
                f'height="{self.total_height:.0f}" font-family="sans-serif" font-size="11" role="img">'
                f'<title>{html.escape(title)}</title>{"".join(parts)}</svg>')


def line_chart(xs: Sequence[int], series: dict[str, Sequence[float | None]], x_label: str, y_label: str,
               title: str) -> str:
    """One polyline with markers per series over evenly spaced ``xs`` (labelled by value)."""
    frame = _Frame(plot_width=360, plot_height=220, bottom=36)
    step = frame.width / max(len(xs), 1)

    def x_of(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    parts = frame.axes(y_label, x_label)
    parts += [_text(x_of(i), _TOP + frame.height + 14, str(x)) for i, x in enumerate(xs)]
    for j, (name, values) in enumerate(series.items()):
        colour = COLOURS[j % len(COLOURS)]
        points = [(x_of(i), frame.y(v)) for i, v in enumerate(values) if _present(v)]
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in points]
    return frame.svg(title, parts + frame.legend(list(series)))


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], y_label: str,
                 title: str) -> str:
    """Per group (a class), one bar per series (a k) side by side; group names slanted below."""
    per_group = max(18.0, 6.0 * len(series) + 6)
    longest = max((len(g) for g in groups), default=0)
    frame = _Frame(plot_width=max(300.0, per_group * len(groups)), plot_height=220, bottom=14 + 5.5 * longest)
    bar = (per_group - 4) / max(len(series), 1)
    parts = frame.axes(y_label, "")
    base = frame.y(0)
    for g, name in enumerate(groups):
        left = _LEFT + g * per_group + 2
        for j, values in enumerate(series.values()):
            value = values[g]
            if _present(value):
                top = frame.y(value)
                parts.append(f'<rect x="{left + j * bar:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                             f'height="{base - top:.1f}" fill="{COLOURS[j % len(COLOURS)]}"/>')
        x, y = left + per_group / 2, base + 12
        parts.append(_text(x, y, name, "end", f' transform="rotate(-60 {x:.1f} {y:.1f})"'))
    return frame.svg(title, parts + frame.legend(list(series)))
