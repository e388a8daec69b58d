"""doit loader plugin: plain `doit` in a project folder builds every recipe.

Tasks are `<stage>:<recipe>` (prepare, equalize, stats, ranges, rounding, sensitivity, quantize,
evaluate) plus `report` (report.md and report.html).
A task is up to date when the store holds the artifact for its current key and its exported
files match it; doit checks this just before the task would run, after its upstream tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

from doit.cmd_base import TaskLoader2
from doit.exceptions import InvalidDodoFile, TaskFailed
from doit.loader import generate_tasks

from quantbuild.errors import QuantbuildError
from quantbuild.interop.ranges_file import read as read_ranges
from quantbuild.pipeline import failures
from quantbuild.pipeline.plan import RecipeBuild, load_builds
from quantbuild.pipeline.project import Project
from quantbuild.pipeline.reporter import QuantbuildReporter
from quantbuild.report import html
from quantbuild.report.html import RecipeDetails
from quantbuild.report.markdown import Row, render
from quantbuild.stages import BY_NAME, PIPELINE
from quantbuild.store.files import load_npz, write_atomic

REPORTS = ("report.md", "report.html")


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


def report_files(builds: dict[str, RecipeBuild]) -> dict[str, bytes] | None:
    """report.md and report.html for the current artifacts, or None while an evaluation is
    missing."""
    rows, details = [], []
    stats_cache: dict[str, dict] = {}  # recipes that share calibration share one stats entry
    for name, build in builds.items():
        metrics = layers = None
        if "evaluation" in build.recipe.data:
            entry = build.entry("evaluate")
            if entry is None:
                return None
            metrics = _json(entry.path("metrics.json"))
            layers = _json(entry.path("layers.json"))["layers"]
        quantized = build.entry("quantize")
        precision = None
        if quantized is not None and quantized.path("precision.json").is_file():
            precision = _json(quantized.path("precision.json"))
        q = build.recipe.data["quantization"]
        row = Row(name, build.recipe.data.get("device"), q, metrics, precision)
        rows.append(row)
        sweep = None
        if "sensitivity" in build.inputs("quantize") and build.entry("sensitivity") is not None:
            sweep = _json(build.entry("sensitivity").path("sensitivity.json")).get("sweep")
        selection = None
        if "selection" in build.inputs("quantize") and build.entry("selection") is not None:
            selection = _json(build.entry("selection").path("selection.json"))
        histograms = _histograms(build, layers, stats_cache)
        details.append(RecipeDetails(row, layers, histograms, sweep, selection))
    return {
        "report.md": render(rows).encode("utf-8"),
        "report.html": html.render(details).encode("utf-8"),
    }


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _histograms(build: RecipeBuild, layers: list[dict] | None, cache: dict) -> list[html.Histogram]:
    """Histograms of the worst layers' activations, with the ranges the recipe chose."""
    tensors = html.worst_tensors(layers)
    stats, chosen = build.entry("stats"), build.entry("ranges")
    if not tensors or stats is None or chosen is None:
        return []
    if stats.digest not in cache:
        cache[stats.digest] = load_npz(stats.path("stats.npz"))
    ranges, _ = read_ranges(chosen.path("ranges.yaml"))
    return html.display_histograms(cache[stats.digest], ranges, tensors)


def _write_report(builds: dict[str, RecipeBuild], out: Path):
    try:
        files = report_files(builds)
    except QuantbuildError as err:
        failures.record("report", err)
        return TaskFailed(str(err))
    if files is None:
        return TaskFailed("an evaluation is missing; build the evaluate tasks first")
    for name, data in files.items():
        write_atomic(out / name, data)
        print(f"   {out / name}", flush=True)
    return None


def _report_current(builds: dict[str, RecipeBuild], out: Path) -> bool:
    try:
        files = report_files(builds)
    except QuantbuildError:
        return False
    return files is not None and all(
        (out / name).is_file() and (out / name).read_bytes() == data for name, data in files.items()
    )


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
        out = self.project.out
        tasks.extend(
            generate_tasks(
                "report",
                {
                    "actions": [(_write_report, [builds, out])],
                    "uptodate": [(_report_current, [builds, out])],
                    "task_dep": [
                        f"evaluate:{n}" for n, b in builds.items() if "evaluation" in b.recipe.data
                    ],
                    "targets": [str(out / name) for name in REPORTS],
                    "doc": "Markdown and HTML reports across all recipes",
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
