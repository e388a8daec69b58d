"""Automatic mixed precision: the stage's pure helpers."""

from __future__ import annotations

from quantbuild.stages.sensitivity import least_error, split_candidates


def test_least_error_takes_the_lowest_measured_selection_and_measures_each_once():
    errors = {("a", "b"): 0.3, ("a",): 0.2, (): 0.5}
    calls = []

    def error(chosen):
        calls.append(tuple(chosen))
        return errors[tuple(chosen)]

    assert least_error([["a", "b"], ["a"], ["a"], []], error) == ["a"]
    assert sorted(calls) == sorted(errors)


def test_least_error_prefers_the_first_selection_on_ties():
    assert least_error([["big"], ["small"]], lambda chosen: 0.1) == ["big"]


def test_split_candidates_drops_params_of_layers_promoted_whole():
    assert split_candidates(["c1", "c1:params", "c2:params"]) == (["c1"], ["c2"])
