"""The build plan: each stage key computed once per command, recipes and datasets loaded once,
stages scheduled only where a recipe uses them.

In-process builds here take no `capsys`: doit binds sys.stdout when first imported, and a
per-test capture stream is closed by the next test."""

from __future__ import annotations

from collections import Counter

import pytest
from builders import RECIPE, device_recipes, make_project
from cli_runner import run_doit

from quantbuild import cli
from quantbuild.pipeline import loader as loader_module
from quantbuild.pipeline import plan as plan_module
from quantbuild.pipeline import project as project_module
from quantbuild.pipeline.plan import Plan
from quantbuild.pipeline.project import Project


@pytest.fixture
def key_digests(monkeypatch):
    """Counts the key digests computed, per (recipe model path, stage)."""
    counts: Counter[str] = Counter()
    real = plan_module.digest

    def counting(value):
        if isinstance(value, dict) and "stage" in value and "fields" in value:
            counts[value["stage"]] += 1
        return real(value)

    monkeypatch.setattr(plan_module, "digest", counting)
    return counts


def test_cold_build_computes_each_stage_key_once(project, key_digests):
    assert cli.main(["build", "-C", str(project)]) == 0
    built = {"prepare", "equalize", "stats", "ranges", "quantize", "evaluate"}
    assert set(key_digests) == built
    assert max(key_digests.values()) == 1, key_digests


def test_noop_build_loads_each_recipe_and_dataset_once(project, key_digests, monkeypatch):
    assert cli.main(["build", "-C", str(project)]) == 0
    key_digests.clear()
    recipes, datasets = Counter(), Counter()
    load_recipe, open_dataset = project_module.load_recipe, plan_module.open_dataset

    def counting_recipe(file, *args):
        recipes[file.name] += 1
        return load_recipe(file, *args)

    def counting_dataset(spec, preprocess, field, *args):
        datasets[field] += 1
        return open_dataset(spec, preprocess, field, *args)

    monkeypatch.setattr(project_module, "load_recipe", counting_recipe)
    monkeypatch.setattr(plan_module, "open_dataset", counting_dataset)
    entries = sorted((project / ".quantbuild" / "store").glob("*/*/*"))
    assert cli.main(["build", "-C", str(project)]) == 0
    assert sorted((project / ".quantbuild" / "store").glob("*/*/*")) == entries  # nothing ran
    assert recipes == {"base.yaml": 1}
    assert datasets == {"calibration.data": 1, "evaluation.data": 1}
    assert max(key_digests.values()) == 1, key_digests


def test_recipes_sharing_a_dataset_list_and_hash_it_once(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", device_recipes())
    opened: Counter[str] = Counter()
    open_dataset = plan_module.open_dataset

    def counting(spec, preprocess, field, *args):
        opened[field] += 1
        return open_dataset(spec, preprocess, field, *args)

    monkeypatch.setattr(plan_module, "open_dataset", counting)
    plan = Plan(Project(root))
    assert opened == {"calibration.data": 1, "evaluation.data": 1}  # two recipes, one each
    a, b = plan.builds.values()
    assert a.dataset("calibration").frames == b.dataset("calibration").frames
    assert a.dataset("calibration").where != b.dataset("calibration").where  # own messages
    assert a.key("stats") == b.key("stats")  # same data, same statistics


def test_a_noop_build_does_not_render_the_report_and_an_edited_report_is_restored(
    project, monkeypatch
):
    assert cli.main(["build", "-C", str(project)]) == 0
    report = project / "build" / "report.md"
    built = report.read_bytes()
    renders = Counter()
    report_files = loader_module.report_files

    def counting(recipes):
        renders["report"] += 1
        return report_files(recipes)

    monkeypatch.setattr(loader_module, "report_files", counting)
    assert cli.main(["build", "-C", str(project)]) == 0
    assert renders["report"] == 0  # compared by key, not rendered again
    report.write_text("edited by hand\n")
    assert cli.main(["build", "-C", str(project)]) == 0
    assert renders["report"] == 1 and report.read_bytes() == built


@pytest.mark.parametrize(
    ("extra", "scheduled"),
    [
        ("quantization: {bits: 16, mixed_precision: {factor: 1.2}}\n", False),
        ("quantization: {bits: 8, mixed_precision: {factor: 1.2}}\n", True),
    ],
)
def test_sensitivity_is_scheduled_only_for_8_bit_automatic_mixed_precision(
    tmp_path, extra, scheduled
):
    root = make_project(tmp_path / "p", {"base": RECIPE.format(extra=extra)})
    stages = [s.name for s in Plan(Project(root)).builds["base"].stages]
    assert ("sensitivity" in stages) is scheduled
    assert stages[-2:] == ["quantize", "evaluate"]


def test_a_doit_cfg_naming_the_old_loader_path_still_builds(project):
    config = project / "doit.cfg"
    text = config.read_text()
    assert "quantbuild.pipeline.loader:RecipeLoader" in text
    config.write_text(text.replace("quantbuild.pipeline.loader", "quantbuild.build.loader"))
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert "quantize:base" in built.ran


def test_parallel_doit_makes_onnxruntime_threads_sleep_when_idle(project, monkeypatch):
    from quantbuild import cores
    from quantbuild.pipeline.loader import RecipeLoader

    monkeypatch.setattr(cores, "shared", False)
    loader = RecipeLoader(Project(project))
    loader.setup({"num_process": 0})
    assert not cores.shared  # one build alone: spinning threads are faster
    loader.setup({"num_process": 2})
    assert cores.shared
