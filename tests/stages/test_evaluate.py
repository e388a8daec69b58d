"""The evaluate stage sharded over workers: the same artifacts as one pass, byte for byte."""

from __future__ import annotations

import pytest
from builders import make_project
from elsewhere import Elsewhere

from quantbuild import cores
from quantbuild.pipeline.plan import Plan
from quantbuild.pipeline.project import Project
from quantbuild.stages import evaluate


def _artifacts(entry) -> dict[str, bytes]:
    return {a.file: entry.path(a).read_bytes() for a in evaluate.STAGE.artifacts}


def _built(tmp_path, monkeypatch):
    """A project's build with every stage published, and its evaluate artifacts from one frame
    pipeline. Fewer analysed frames than frames: some pieces analyse layers, some only score
    outputs, and with 7 pieces the analysed frames span several."""
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    monkeypatch.setattr(evaluate, "LAYER_FRAMES", 3)
    monkeypatch.setattr(cores, "shared", True)  # other builds share the machine: one pipeline
    build = Plan(Project(make_project(tmp_path / "proj", val_frames=7))).builds["base"]
    for stage in build.stages:
        build.produce(stage.name, lambda line: None)
    build.force = True  # the tests' own produce() computes again
    return build, _artifacts(build.entry("evaluate"))


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_evaluation_over_shards_is_bit_identical_to_one_pass(tmp_path, monkeypatch, workers):
    build, whole = _built(tmp_path, monkeypatch)
    cluster = Elsewhere()
    build.fan_out = cluster.fan_out(workers)
    entry, hit = build.produce("evaluate", lambda line: None)
    assert not hit
    assert [job[3] for job in cluster.jobs] == {2: [0, 4], 3: [0, 3, 5], 7: list(range(7))}[workers]
    assert _artifacts(entry) == whole
    assert b'"top1"' in whole["metrics.json"] and b'"layers"' in whole["layers.json"]


def test_frame_pipelines_side_by_side_give_the_artifacts_of_one(tmp_path, monkeypatch):
    build, one = _built(tmp_path, monkeypatch)
    pipelines = []
    monkeypatch.setattr(cores, "shared", False)
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(evaluate, "LOCAL_PIPELINES", 3)
    in_threads = cores.in_threads  # the real one, watched
    monkeypatch.setattr(
        cores, "in_threads", lambda f, jobs: pipelines.extend(jobs) or in_threads(f, jobs)
    )
    entry, _ = build.produce("evaluate", lambda line: None)
    assert [job[4] for job in pipelines] == [0, 3, 5]
    assert _artifacts(entry) == one
