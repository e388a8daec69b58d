"""Inline SVG charts for the HTML report: plain strings, no dependencies, deterministic.

Every chart is one <svg> element sized in pixels with a <title> tooltip on each mark, so the
report stays one static file that any browser shows without scripts or network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

BLUE = "#4c78a8"
RED = "#e45756"
ORANGE = "#f58518"
GREY = "#9d9d9d"
INK = "#333333"
GRID = "#e6e6e6"
FONT = "font-family:system-ui,sans-serif"


def _num(value: float) -> str:
    """A coordinate with at most two decimals (short, stable output)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        return f"{value:.1e}"
    return f"{value:g}"


class Svg:
    """An SVG element under construction."""

    def __init__(self, width: float, height: float, label: str):
        self.width, self.height, self.label = width, height, label
        self.parts: list[str] = []

    def rect(
        self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None, **attrs
    ) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items())
        body = f"<title>{escape(title)}</title>" if title else ""
        self.parts.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0))}" '
            f'height="{_num(max(h, 0))}" fill="{fill}"{extra}>{body}</rect>'
        )

    def line(
        self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1, dash=""
    ) -> None:
        style = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(
            f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" '
            f'stroke="{stroke}" stroke-width="{_num(width)}"{style}/>'
        )

    def circle(self, x: float, y: float, r: float, fill: str, title: str | None = None) -> None:
        body = f"<title>{escape(title)}</title>" if title else ""
        self.parts.append(
            f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{_num(r)}" fill="{fill}">{body}</circle>'
        )

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float = 11,
        anchor: str = "start",
        fill: str = INK,
        rotate: float = 0,
        bold: bool = False,
    ) -> None:
        transform = f' transform="rotate({_num(rotate)} {_num(x)} {_num(y)})"' if rotate else ""
        weight = ' font-weight="bold"' if bold else ""
        self.parts.append(
            f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" '
            f'text-anchor="{anchor}" fill="{fill}"{weight}{transform}>{escape(text)}</text>'
        )

    def render(self) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(self.width)}" '
            f'height="{_num(self.height)}" viewBox="0 0 {_num(self.width)} {_num(self.height)}" '
            f'role="img" aria-label="{escape(self.label)}" style="{FONT}">'
            + "".join(self.parts)
            + "</svg>"
        )


@dataclass(frozen=True)
class Frame:
    """Plot area inside an Svg, with linear value -> pixel maps."""

    left: float
    top: float
    width: float
    height: float
    y_low: float
    y_high: float
    x_low: float = 0.0
    x_high: float = 1.0

    def x(self, value: float) -> float:
        return self.left + (value - self.x_low) / (self.x_high - self.x_low) * self.width

    def y(self, value: float) -> float:
        span = self.y_high - self.y_low
        return self.top + self.height - (value - self.y_low) / span * self.height

    def y_axis(self, svg: Svg, title: str, ticks: Sequence[float], labels=tick_label) -> None:
        for tick in ticks:
            svg.line(self.left, self.y(tick), self.left + self.width, self.y(tick), GRID)
            svg.text(self.left - 5, self.y(tick) + 4, labels(tick), 10, "end")
        svg.line(self.left, self.top, self.left, self.top + self.height, INK)
        middle = self.top + self.height / 2
        svg.text(14, middle, title, 11, "middle", rotate=-90)


def bar_chart(
    labels: Sequence[str],
    bars: Sequence[float | None],
    dots: Sequence[float | None] | None = None,
    highlight: Sequence[bool] | None = None,
    y_title: str = "",
    bar_name: str = "value",
    dot_name: str = "",
    width: float = 1100,
    height: float = 300,
) -> str:
    """Vertical bars (None: drawn as a grey stub) with optional dots on the same axis;
    highlighted bars are red and labelled below the axis."""
    count = max(len(bars), 1)
    values = [v for v in list(bars) + list(dots or []) if v is not None]
    low = min([0.0, *values])
    high = max([1.0, *values])
    ticks = nice_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    svg = Svg(width, height, f"{y_title} per layer")
    frame = Frame(56, 28, width - 70, height - 28 - 90, low, high, 0, count)
    frame.y_axis(svg, y_title, ticks)
    slot = frame.width / count
    for i, (label, value) in enumerate(zip(labels, bars)):
        x = frame.x(i) + slot * 0.1
        if value is None:
            svg.rect(x, frame.y(high), slot * 0.8, 3, GREY, f"{label}: no {bar_name} error")
            continue
        top, bottom = sorted((frame.y(value), frame.y(0)))
        title = f"{label}: {bar_name} {value:.2f}"
        if dots and dots[i] is not None:
            title += f", {dot_name} {dots[i]:.2f}"
        svg.rect(
            x, top, slot * 0.8, bottom - top, RED if highlight and highlight[i] else BLUE, title
        )
    for i, value in enumerate(dots or []):
        if value is not None:
            svg.circle(frame.x(i + 0.5), frame.y(value), max(1.5, min(3.0, slot * 0.3)), ORANGE)
    # Labels under the highlighted bars, lowest first; one that would overlap a placed
    # neighbour is left to the tooltip.
    hot = [i for i in range(len(bars)) if highlight and highlight[i] and bars[i] is not None]
    placed: list[float] = []
    for i in sorted(hot, key=lambda i: (bars[i], i)):
        x = frame.x(i + 0.5)
        if all(abs(x - other) >= 22 for other in placed):
            placed.append(x)
            svg.text(x, frame.top + frame.height + 8, _short(labels[i]), 10, "end", RED, rotate=-40)
    svg.line(frame.left, frame.y(0), frame.left + frame.width, frame.y(0), INK)
    # Legend, top right.
    x = frame.left + frame.width - 330
    svg.rect(x, 8, 10, 10, BLUE)
    svg.text(x + 14, 17, bar_name, 11)
    svg.rect(x + 110, 8, 10, 10, RED)
    svg.text(x + 124, 17, "worst", 11)
    if dots:
        svg.circle(x + 185, 13, 4, ORANGE)
        svg.text(x + 193, 17, dot_name, 11)
    return svg.render()


def _short(label: str, limit: int = 28) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


@dataclass(frozen=True)
class Marker:
    """A vertical line on a histogram."""

    value: float
    label: str
    color: str
    dash: str = ""


def histogram_chart(
    edges: Sequence[float],
    counts: Sequence[float],
    markers: Sequence[Marker] = (),
    title: str = "",
    width: float = 520,
    height: float = 220,
) -> str:
    """Bars of counts between `edges` on a log10(1 + count) axis (activations are heavy-tailed),
    with labelled vertical markers."""
    svg = Svg(width, height, title)
    x_low, x_high = float(edges[0]), float(edges[-1])
    if not x_high > x_low:
        x_low, x_high = x_low - 1.0, x_high + 1.0
    peak = max([1.0, *counts])
    frame = Frame(56, 30, width - 72, height - 30 - 36, 0, math.log10(1 + peak), x_low, x_high)
    decades = [float(d) for d in range(0, int(math.log10(1 + peak)) + 1)]
    frame.y_axis(svg, "count", decades, labels=lambda d: f"1e{int(d)}" if d else "0")
    svg.text(frame.left, 16, title, 12, bold=True)
    svg.text(frame.left + frame.width, 16, f"peak {int(peak)}", 10, "end", GREY)
    for a, b, n in zip(edges[:-1], edges[1:], counts):
        if n <= 0:
            continue
        top = frame.y(math.log10(1 + n))
        svg.rect(
            frame.x(a),
            top,
            frame.x(b) - frame.x(a),
            frame.y(0) - top,
            BLUE,
            f"[{a:.4g}, {b:.4g}): {int(n)}",
        )
    svg.line(frame.left, frame.y(0), frame.left + frame.width, frame.y(0), INK)
    for tick in nice_ticks(x_low, x_high, 6):
        svg.text(frame.x(tick), frame.y(0) + 14, tick_label(tick), 10, "middle")
    for i, m in enumerate(markers):
        x = min(max(frame.x(m.value), frame.left), frame.left + frame.width)
        svg.line(x, frame.top - 4, x, frame.y(0), m.color, 1.5, m.dash)
        anchor = "end" if x > frame.left + frame.width / 2 else "start"
        svg.text(
            x + (-3 if anchor == "end" else 3), frame.top + 8 + 12 * i, m.label, 10, anchor, m.color
        )
    return svg.render()


def strip_chart(cells: Sequence[tuple[str, str]], width: float = 1100, cell: float = 14) -> str:
    """One small square per item (title, colour), wrapped into rows: a compact map."""
    per_row = max(int(width // cell), 1)
    rows = max(-(-len(cells) // per_row), 1)
    svg = Svg(width, rows * cell, "map")
    for i, (title, color) in enumerate(cells):
        row, col = divmod(i, per_row)
        svg.rect(col * cell, row * cell, cell - 2, cell - 2, color, title)
    return svg.render()


def line_chart(
    points: Sequence[tuple[float, float, str]],
    x_title: str,
    y_title: str,
    width: float = 560,
    height: float = 260,
) -> str:
    """Labelled points (x, y, label) joined in order: a trade-off curve."""
    svg = Svg(width, height, f"{y_title} against {x_title}")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_ticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, 6)
    y_ticks = nice_ticks(min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
    frame = Frame(
        56, 20, width - 80, height - 20 - 44, y_ticks[0], y_ticks[-1], x_ticks[0], x_ticks[-1]
    )
    frame.y_axis(svg, y_title, y_ticks)
    svg.line(frame.left, frame.y(y_ticks[0]), frame.left + frame.width, frame.y(y_ticks[0]), INK)
    for tick in x_ticks:
        svg.text(frame.x(tick), frame.y(y_ticks[0]) + 14, tick_label(tick), 10, "middle")
    svg.text(frame.left + frame.width / 2, height - 6, x_title, 11, "middle")
    for (x1, y1, _), (x2, y2, _) in zip(points, points[1:]):
        svg.line(frame.x(x1), frame.y(y1), frame.x(x2), frame.y(y2), BLUE, 1.5)
    for x, y, label in points:
        svg.circle(frame.x(x), frame.y(y), 3.5, ORANGE, f"{label}: {x:.3f}, {y:.2f}")
        svg.text(frame.x(x) + 5, frame.y(y) - 6, label, 10)
    return svg.render()
