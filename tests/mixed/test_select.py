"""Greedy selection of 16-bit layers under a latency budget."""

from __future__ import annotations

import numpy as np

from quantbuild.mixed.select import least_error, select_layers, select_within

COST = {"a": 0.10, "b": 0.05, "c": 0.30, "d": 0.01}


def ratio_of(layers: list[str]) -> float:
    return 1.0 + sum(COST[name] for name in layers)


def test_picks_by_gain_per_cost_within_the_budget():
    gains = {"a": 1.0, "b": 0.9, "c": 2.5, "d": 0.0}
    # gain per cost: b 18, a 10, c 8.3; d gains nothing
    assert select_layers(gains, ratio_of, 1.16) == ["b", "a"]
    assert select_layers(gains, ratio_of, 1.5) == ["b", "a", "c"]


def test_a_budget_below_any_promotion_selects_nothing():
    assert select_layers({"a": 1.0, "b": 1.0}, ratio_of, 1.01) == []


def test_skips_a_layer_that_does_not_fit_and_keeps_looking():
    gains = {"c": 30.0, "a": 1.0}  # c: 100 per cost but too expensive for 1.2
    assert select_layers(gains, ratio_of, 1.2) == ["a"]


NOISE = np.array([0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0])  # per-frame scatter


def _frames(level: float) -> np.ndarray:
    """Per-frame errors around `level` on 8 frames."""
    return level + NOISE


def test_least_error_takes_a_clearly_lower_selection_and_measures_each_once():
    errors = {("a", "b"): 0.3, ("a",): 0.2, (): 0.5}
    calls = []

    def error(chosen):
        calls.append(tuple(chosen))
        return _frames(errors[tuple(chosen)])

    assert least_error([["a", "b"], ["a"], ["a"], []], error) == ["a"]
    assert sorted(calls) == sorted(errors)


def test_least_error_keeps_the_first_selection_unless_clearly_worse():
    assert least_error([["big"], ["small"]], lambda chosen: _frames(0.1)) == ["big"]
    # One frame with a near-zero reference (huge relative error) does not decide alone: the
    # larger selection is better on 7 of 8 frames.
    big = np.array([0.02, 0.03, 0.02, 0.04, 0.03, 0.02, 0.03, 6.8])
    small = np.array([0.05, 0.06, 0.05, 0.07, 0.06, 0.05, 0.06, 4.4])
    chosen = least_error([["big"], ["small"]], lambda c: big if c == ["big"] else small)
    assert chosen == ["big"]
    assert small.mean() < big.mean()  # what a comparison of means would have chosen


def test_least_error_does_not_measure_a_lone_selection():
    def error(chosen):
        raise AssertionError("measured")

    assert least_error([["a"], ["a"]], error) == ["a"]


def test_select_within_falls_back_to_a_smaller_budget_that_measures_clearly_lower_error():
    gains = {"a": 1.0, "b": 0.9, "c": 2.5}
    errors = {("b", "a", "c"): 0.4, ("b", "a"): 0.2, ("b",): 0.3, (): 0.9}

    def error(chosen):
        return _frames(errors[tuple(chosen)])

    # 1.5 alone would take c as well; 1.16's selection measures lower, 1.1's higher.
    assert select_within(gains, ratio_of, 1.5, (1.1, 1.16, 2.0), error) == ["b", "a"]
    # Budgets above the factor are not considered; the factor's own selection wins ties.
    assert select_within(gains, ratio_of, 1.16, (1.1, 1.5), lambda c: _frames(0.0)) == ["b", "a"]
