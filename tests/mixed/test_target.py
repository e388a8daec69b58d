"""Mixed precision to an accuracy target: the cheapest measured selection that meets it."""

from __future__ import annotations

import math

from quantbuild.mixed.target import cheapest_within

COST = {"a": 0.02, "b": 0.05, "c": 0.10, "d": 0.40, "e": 1.5}
GAINS = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}  # greedy order: a b c d e


def ratio_of(layers: list[str]) -> float:
    return 1.0 + sum(COST[name] for name in layers)


def metric_with(needed: set[str]):
    """A task metric of 0.9 once every layer of `needed` is 16-bit, else 0.5; records calls."""
    calls: list[tuple[str, ...]] = []

    def metric(chosen: list[str]) -> float:
        calls.append(tuple(chosen))
        return 0.9 if needed <= set(chosen) else 0.5

    return metric, calls


def test_8bit_meeting_the_target_promotes_nothing_and_measures_once():
    metric, calls = metric_with(set())
    search = cheapest_within(GAINS, ratio_of, metric, 0.8)
    assert search.chosen == [] and search.met and calls == [()]


def test_takes_the_cheapest_selection_that_meets_the_target():
    metric, calls = metric_with({"a", "b", "c"})
    search = cheapest_within(GAINS, ratio_of, metric, 0.8)
    assert search.met and search.chosen == ["a", "b", "c"]
    assert search.point.ratio == ratio_of(["a", "b", "c"]) and search.point.metric == 0.9
    assert len(calls) == len(set(calls))  # each distinct selection measured once
    # the 1.2 budget met it; bisection between 1.1 and 1.2 finds nothing cheaper that does
    assert all(p.metric < 0.8 for p in search.points if p.ratio < search.point.ratio)


def test_bisection_finds_a_cheaper_selection_between_two_budgets():
    cost, gains = {"a": 0.06, "b": 0.01}, {"a": 6.0, "b": 0.5}  # gain per cost: a 100, b 50
    ratio = lambda layers: 1.0 + sum(cost[n] for n in layers)  # noqa: E731
    metric, calls = metric_with({"a"})
    search = cheapest_within(gains, ratio, metric, 0.8)
    # 1.05 fits b only (misses), 1.1 fits a and b (meets); the budget 1.0625 between fits a
    # but no longer b: cheaper, and it meets the target.
    assert calls[:3] == [(), ("b",), ("a", "b")]
    assert search.met and search.chosen == ["a"]


def test_unreachable_target_keeps_the_best_measured_and_says_so():
    metric, _ = metric_with({"zzz"})  # never met
    search = cheapest_within(GAINS, ratio_of, metric, 0.8)
    assert not search.met
    assert search.point.metric == 0.5 and search.point.ratio == 1.0  # ties: the cheapest
    assert any(math.isinf(p.factor) for p in search.points)  # tried every candidate


def test_the_last_resort_promotes_candidates_without_a_measured_gain():
    gains = {"a": 1.0, "z": 0.0}  # z showed no gain on the sensitivity frames
    metric, calls = metric_with({"a", "z"})
    search = cheapest_within(gains, lambda c: 1.0 + 0.1 * len(c), metric, 0.8)
    assert search.met and search.chosen == ["a", "z"] and calls[-1] == ("a", "z")


def test_a_factor_caps_the_search():
    metric, _ = metric_with({"e"})
    search = cheapest_within(GAINS, ratio_of, metric, 0.8, cap=1.3)
    assert not search.met and all(p.ratio <= 1.3 for p in search.points)
