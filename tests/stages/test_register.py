"""A new stage is one module-level Stage spec and a register() call: the plan keys it, doit runs
it after its inputs, its artifact is exported, and it re-runs only when what it reads changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import RECIPE

from quantbuild import cli, stages
from quantbuild.pipeline.plan import RecipeBuild
from quantbuild.pipeline.project import Project
from quantbuild.pipeline.status import recipe_status
from quantbuild.stages.context import Context
from quantbuild.stages.spec import Stage
from quantbuild.stages.stats import STATS
from quantbuild.store.entries import Artifact
from quantbuild.store.files import load_npz

SUMMARY = Artifact("frames.json", export="frames.json")
RUNS: list[str] = []


def count_frames(ctx: Context, out: Path) -> dict:
    """Frames behind the statistics and the bits they will be quantized to."""
    RUNS.append(ctx.recipe.name)
    stats = load_npz(ctx.inputs["stats"].path(STATS))
    bits = ctx.recipe.data["quantization"]["bits"]
    (out / SUMMARY.file).write_text(json.dumps({"frames": int(stats["frames"]), "bits": bits}))
    return {"frames": int(stats["frames"])}


FRAME_COUNT = Stage(
    name="frame_count",
    version=1,
    reads=("/quantization/bits",),
    inputs=("stats",),
    artifacts=(SUMMARY,),
    run=count_frames,
    doc="frame_count: a toy stage",
)


@pytest.fixture
def toy_stage():
    stages.register(FRAME_COUNT)
    RUNS.clear()
    try:
        yield FRAME_COUNT
    finally:
        stages.unregister(FRAME_COUNT.name)


def test_a_registered_stage_is_built_exported_and_cached(project, toy_stage):
    assert cli.main(["build", "-C", str(project)]) == 0
    assert RUNS == ["base"]
    summary = json.loads((project / "build" / "base" / "frames.json").read_text())
    assert summary == {"frames": 8, "bits": 8}

    assert cli.main(["build", "-C", str(project)]) == 0
    assert RUNS == ["base"]  # up to date: not run again
    build = RecipeBuild(Project(project), Project(project).find("base"))
    assert {s.stage: s.state for s in recipe_status(build)}["frame_count"] == "up to date"

    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 16}\n"))
    build = RecipeBuild(Project(project), Project(project).find("base"))
    why = {s.stage: s.reasons for s in recipe_status(build)}
    assert why["frame_count"] == ["quantization.bits: 8 -> 16"]
    assert why["stats"] == []
    assert cli.main(["build", "-C", str(project), "base"]) == 0
    assert RUNS == ["base", "base"]
    summary = json.loads((project / "build" / "base" / "frames.json").read_text())
    assert summary == {"frames": 8, "bits": 16}


def test_registration_checks_names_and_inputs(toy_stage):
    with pytest.raises(ValueError, match="registered already"):
        stages.register(FRAME_COUNT)
    orphan = Stage("orphan", 1, (), ("no_such_stage",), (), count_frames)
    with pytest.raises(ValueError, match="inputs not registered: no_such_stage"):
        stages.register(orphan)
    with pytest.raises(ValueError, match="read by"):
        stages.unregister("stats")
