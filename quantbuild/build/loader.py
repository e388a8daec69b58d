"""doit loader plugin: plain `doit` in a project folder builds every recipe.

Tasks are `<stage>:<recipe>` (prepare, stats, ranges, quantize, evaluate) plus `report`.
A task is up to date when the store holds the artifact for its current key and its exported
files match it; doit checks this just before the task would run, after its upstream tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

from doit.cmd_base import TaskLoader2
from doit.exceptions import InvalidDodoFile, TaskFailed
from doit.loader import generate_tasks

from quantbuild.build import failures
from quantbuild.build.files import write_atomic
from quantbuild.build.plan import RecipeBuild, load_builds
from quantbuild.build.project import Project
from quantbuild.build.reporter import QuantbuildReporter
from quantbuild.errors import QuantbuildError
from quantbuild.report.markdown import Row, render
from quantbuild.stages import BY_NAME, PIPELINE


def _execute(build: RecipeBuild, stage: str):
    task = f"{stage}:{build.recipe.name}"
    try:
        entry, hit = build.run(stage, log=lambda message: print(f"   {message}", flush=True))
    except QuantbuildError as err:
        failures.record(task, err)
        return TaskFailed(str(err))
    return {
        "key": entry.manifest["key"],
        "fields": build.fields(stage),
        "inputs": entry.manifest["record"]["inputs"],
        "hit": hit,
    }


def _is_current(build: RecipeBuild, stage: str) -> bool:
    try:
        return build.is_current(stage)
    except QuantbuildError:
        return False  # the action will run and report the error properly


def report_text(builds: dict[str, RecipeBuild]) -> str | None:
    """The report for the current artifacts, or None while an evaluation is missing."""
    rows = []
    for name, build in builds.items():
        metrics = None
        if "evaluation" in build.recipe.data:
            entry = build.entry("evaluate")
            if entry is None:
                return None
            metrics = json.loads(entry.path("metrics.json").read_text(encoding="utf-8"))
        quantized = build.entry("quantize")
        precision = None
        if quantized is not None and quantized.path("precision.json").is_file():
            precision = json.loads(quantized.path("precision.json").read_text(encoding="utf-8"))
        q = build.recipe.data["quantization"]
        rows.append(Row(name, build.recipe.data.get("device"), q, metrics, precision))
    return render(rows)


def _write_report(builds: dict[str, RecipeBuild], target: Path):
    try:
        text = report_text(builds)
    except QuantbuildError as err:
        failures.record("report", err)
        return TaskFailed(str(err))
    if text is None:
        return TaskFailed("an evaluation is missing; build the evaluate tasks first")
    write_atomic(target, text.encode("utf-8"))
    print(f"   {target}", flush=True)
    return None


def _report_current(builds: dict[str, RecipeBuild], target: Path) -> bool:
    try:
        text = report_text(builds)
    except QuantbuildError:
        return False
    return text is not None and target.is_file() and target.read_text(encoding="utf-8") == text


class RecipeLoader(TaskLoader2):
    """Loads the recipes of the project in `root` (default: the current folder) as doit tasks."""

    def __init__(self, project: Project | None = None):
        super().__init__()
        self.project = project or Project(Path.cwd())

    def setup(self, opt_values):
        pass

    def load_doit_config(self):
        self.project.state.mkdir(parents=True, exist_ok=True)
        return {
            "dep_file": str(self.project.state / "doit.db"),
            "backend": "sqlite3",
            "reporter": QuantbuildReporter,
            "verbosity": 2,
        }

    def builds(self) -> dict[str, RecipeBuild]:
        try:
            return load_builds(self.project)
        except QuantbuildError as err:
            raise InvalidDodoFile(str(err)) from None

    def load_tasks(self, cmd, pos_args):
        failures.clear()
        builds = self.builds()
        tasks = []
        for module in PIPELINE:
            tasks.extend(generate_tasks(module.NAME, self._stage_tasks(builds, module.NAME)))
        report = self.project.out / "report.md"
        tasks.extend(
            generate_tasks(
                "report",
                {
                    "actions": [(_write_report, [builds, report])],
                    "uptodate": [(_report_current, [builds, report])],
                    "task_dep": [
                        f"evaluate:{n}" for n, b in builds.items() if "evaluation" in b.recipe.data
                    ],
                    "targets": [str(report)],
                    "doc": "Markdown table across all recipes",
                    "verbosity": 2,
                    "clean": True,
                },
            )
        )
        return tasks

    @staticmethod
    def _stage_tasks(builds: dict[str, RecipeBuild], stage: str):
        module = BY_NAME[stage]
        yield {"basename": stage, "name": None, "doc": module.__doc__.splitlines()[0]}
        for name, build in builds.items():
            if module not in build.stages:
                continue
            yield {
                "name": name,
                "actions": [(_execute, [build, stage])],
                "uptodate": [(_is_current, [build, stage])],
                "task_dep": [f"{upstream}:{name}" for upstream in build.inputs(stage)],
                "targets": [str(p) for p in build.export_paths(stage)],
                "doc": f"{stage} {build.recipe.file.name}",
                "verbosity": 2,
                "clean": True,
            }
