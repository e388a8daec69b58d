"""Greedy selection of 16-bit layers under a latency budget."""

from __future__ import annotations

from quantbuild.mixed.select import select_layers

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
