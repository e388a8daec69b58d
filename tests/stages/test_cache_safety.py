"""Cache safety: a stage's output depends only on the recipe fields it declares in `reads`.

Each stage is re-run on the artifacts of a real build with one recipe field it does NOT declare
changed; its files must come out byte for byte the same. A stage that secretly reads a field
would serve stale artifacts from the store after that field is edited."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from builders import RECIPE, make_project

from quantbuild import cli
from quantbuild.pipeline.plan import RecipeBuild
from quantbuild.pipeline.project import Project
from quantbuild.stages import PIPELINE
from quantbuild.stages.context import Context

# (JSON pointer, change): each a value the schema accepts, applied to the resolved recipe.
MUTATIONS = {
    "/device": lambda v: "tda4vm" if v != "tda4vm" else "am68a",
    "/name": lambda v: "renamed",
    "/quantization/bits": lambda v: 16 if v == 8 else 8,
    "/quantization/activations": lambda v: "symmetric" if v != "symmetric" else "asymmetric",
    "/quantization/scale": lambda v: "float" if v != "float" else "power_of_2",
    "/quantization/weights/per_channel": lambda v: not v,
    "/quantization/activation_clipping": lambda v: "minmax" if v != "minmax" else "percentile",
    "/quantization/percentile": lambda v: 99.0,
    "/quantization/weight_clipping": lambda v: "none" if v != "none" else "mse",
    "/quantization/bias_calibration": lambda v: False if v else {"frames": 8, "iterations": 5},
    "/quantization/accuracy_level": lambda v: 0 if v != 0 else 1,
    "/quantization/mixed_precision/factor": lambda v: 1.5,
    "/evaluation/metrics": lambda v: ["cosine"],
}
RECIPES = {
    "base": RECIPE.format(extra="quantization: {equalization: true}\n"),
    "auto": RECIPE.format(
        extra="quantization: {weight_rounding: gptq, mixed_precision: {max_drop: 0.5}}\n"
    ),
}


def _declared(pointer: str, reads: tuple[str, ...]) -> bool:
    return any(
        pointer.startswith(r.rstrip("/") + "/") or pointer == r or r.startswith(pointer + "/")
        for r in reads
    )


def _set(data: dict, pointer: str, change) -> None:
    *parents, leaf = pointer.strip("/").split("/")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = change(data.get(leaf))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("safety") / "p", RECIPES)
    assert cli.main(["build", "-C", str(root)]) == 0
    project = Project(root)
    return {name: RecipeBuild(project, recipe) for name, recipe in project.recipes().items()}


def _cases():
    for stage in PIPELINE:
        for pointer in MUTATIONS:
            if not _declared(pointer, stage.reads):
                yield pytest.param(stage, pointer, id=f"{stage.name}{pointer}")


@pytest.mark.parametrize(("stage", "pointer"), list(_cases()))
def test_an_undeclared_field_does_not_change_a_stage(built, tmp_path, stage, pointer):
    runs = [b for b in built.values() if stage in b.stages]
    assert runs, f"no test recipe builds {stage.name}"
    build = runs[0]
    entry = build.entry(stage.name)
    assert entry is not None
    data = copy.deepcopy(build.recipe.data)
    _set(data, pointer, MUTATIONS[pointer])
    recipe = dataclasses.replace(build.recipe, data=data)
    inputs = {u: build.entry(u) for u in build.inputs(stage.name)}
    out = tmp_path / "out"
    out.mkdir()
    try:
        stage.run(Context(recipe, inputs, build.dataset, lambda line: None), out)
    except Exception as err:  # failing on the field is reading it too
        pytest.fail(f"{stage.name} failed with {pointer} changed (declare it in reads): {err}")
    assert _files(out) == _files(entry.dir), (
        f"{stage.name}'s artifacts depend on {pointer}, which it does not declare in reads"
    )
