"""Automatic mixed precision: the sensitivity stage's candidate names, and its measurements
on a cluster's workers."""

from __future__ import annotations

import pytest
from builders import RECIPE, make_project
from elsewhere import Elsewhere

from quantbuild.pipeline.plan import Plan
from quantbuild.pipeline.project import Project
from quantbuild.stages.sensitivity import SENSITIVITY, measure_shard, split_candidates


def test_split_candidates_drops_params_of_layers_promoted_whole():
    assert split_candidates(["c1", "c1:params", "c2:params"]) == (["c1"], ["c2"])


@pytest.mark.parametrize("workers", [2, 5])
def test_sensitivity_measured_on_workers_is_bit_identical(tmp_path, monkeypatch, workers):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    recipe = RECIPE.format(extra="quantization: {mixed_precision: {factor: 1.5}}\n")
    build = Plan(Project(make_project(tmp_path / "proj", {"base": recipe}))).builds["base"]
    for stage in build.stages:
        if stage.name != "evaluate":
            build.produce(stage.name, lambda line: None)
    whole = build.entry("sensitivity").path(SENSITIVITY).read_bytes()
    cluster = Elsewhere()
    build.fan_out = cluster.fan_out(workers)
    build.force = True
    lines = []
    entry, _ = build.produce("sensitivity", lines.append)
    assert cluster.functions == {measure_shard}
    assert len(cluster.jobs) == 2 * workers  # both backgrounds, every worker a share of each
    assert entry.path(SENSITIVITY).read_bytes() == whole
    assert any(f"measured on {workers} workers" in line for line in lines)
