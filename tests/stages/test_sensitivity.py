"""Automatic mixed precision: the sensitivity stage's candidate names."""

from __future__ import annotations

from quantbuild.stages.sensitivity import split_candidates


def test_split_candidates_drops_params_of_layers_promoted_whole():
    assert split_candidates(["c1", "c1:params", "c2:params"]) == (["c1"], ["c2"])
