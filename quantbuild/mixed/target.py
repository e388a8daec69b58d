"""Accuracy-target mixed precision: the cheapest 16-bit selection whose task metric stays
within `max_drop` of float (NNCF's quantize_with_accuracy_control is the peer; this one stays
in 8/16 bits, with no float fallback, since the device runs nothing in float).

Selections come from the latency-budget greedy selection (select.select_layers) at rising
budgets; each distinct one is measured once, in order of cost, until one meets the target;
then the budget is bisected between the last that missed and the first that met it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from quantbuild.mixed.select import select_layers

# T_MP / T_8, rising; inf: every candidate, also those whose sensitivity (measured on a few
# calibration frames) showed no gain: on PP-LCNet orientation with another calibration set,
# the 22 layers with a gain reached top-1 0.985 where max_drop asked for 0.995.
BUDGETS = (1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, math.inf)
BISECTIONS = 3


@dataclass(frozen=True)
class Point:
    """One measured selection."""

    factor: float  # the budget it was selected under (inf: every candidate)
    ratio: float  # its estimated T_MP / T_8
    layers: int
    metric: float


@dataclass
class Search:
    chosen: list[str]
    point: Point  # the chosen selection's measurement
    met: bool
    points: list[Point]  # every measured selection, in the order measured

    def table(self) -> list[dict[str, Any]]:
        return [
            {**asdict(p), "factor": None if math.isinf(p.factor) else p.factor} for p in self.points
        ]


def cheapest_within(
    gains: dict[str, float],
    ratio_of: Callable[[list[str]], float],
    metric_of: Callable[[list[str]], float],
    target: float,
    cap: float = math.inf,
) -> Search:
    """The cheapest measured selection with metric_of(selection) >= target, budgets up to
    `cap`; when none reaches it, the one with the best metric (met False)."""
    measured: dict[tuple[str, ...], Point] = {}  # selection -> its measurement, in order

    def measure(factor: float) -> Point:
        if math.isinf(factor):  # last resort: every candidate, measured gain or not
            chosen = sorted(gains)
        else:
            chosen = [] if factor <= 1.0 else select_layers(gains, ratio_of, factor)
        key = tuple(chosen)
        if key not in measured:
            measured[key] = Point(factor, ratio_of(chosen), len(chosen), metric_of(chosen))
        return measured[key]

    low, high = 1.0, None
    point = measure(low)
    for factor in [b for b in BUDGETS if b <= cap] + ([cap] if cap not in BUDGETS else []):
        if point.metric >= target:
            break
        point = measure(factor)
        if point.metric >= target:
            high = factor
            break
        low = factor
    if high is not None and not math.isinf(high):
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            if measure(middle).metric >= target:
                high = middle
            else:
                low = middle
    points = list(measured.values())
    passing = [p for p in points if p.metric >= target]
    if passing:
        best = min(passing, key=lambda p: (p.ratio, -p.metric))
    else:
        best = max(points, key=lambda p: (p.metric, -p.ratio))
    chosen = next(list(key) for key, p in measured.items() if p is best)
    return Search(chosen, best, bool(passing), points)
