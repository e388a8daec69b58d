"""doit loader plugin: plain `doit` in a project folder builds every recipe.

Tasks are `<stage>:<recipe>` (prepare, equalize, stats, ranges, rounding, sensitivity, quantize,
evaluate) plus `report` (report.md and report.html).
A task is up to date when the store holds the artifact for its current key and its exported
files match it; doit checks this just before the task would run, after its upstream tasks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.cmd_base import TaskLoader2
from doit.exceptions import InvalidDodoFile, TaskFailed
from doit.loader import generate_tasks

from quantbuild import cores
from quantbuild import report as report_package
from quantbuild.errors import QuantbuildError
from quantbuild.pipeline import doit_state, failures
from quantbuild.pipeline.plan import Plan, RecipeBuild
from quantbuild.pipeline.project import Project
from quantbuild.pipeline.reporter import QuantbuildReporter
from quantbuild.report.assemble import REPORTS, RecipeFiles, report_files
from quantbuild.stages import PIPELINE, Stage
from quantbuild.stages.evaluate import LAYER_ERRORS, METRICS
from quantbuild.stages.quantize import PRECISION
from quantbuild.stages.ranges import RANGES
from quantbuild.stages.selection import SELECTION
from quantbuild.stages.sensitivity import SENSITIVITY
from quantbuild.stages.stats import STATS
from quantbuild.store.entries import Artifact, Entry
from quantbuild.store.files import write_atomic
from quantbuild.store.keys import digest, file_sha256


def _log(message: str) -> None:
    # One write per line: with a cluster, tasks run in threads and print at once.
    sys.stdout.write(f"   {message}\n")
    sys.stdout.flush()


def _execute(build: RecipeBuild, stage: str) -> TaskFailed | dict[str, Any]:
    task = f"{stage}:{build.recipe.name}"
    try:
        entry, hit = build.run(stage, log=_log)
    except QuantbuildError as err:
        failures.record(task, err)
        return TaskFailed(str(err))
    return {"key": entry.manifest["key"], "hit": hit}


def _is_current(build: RecipeBuild, stage: str) -> bool:
    try:
        return build.is_current(stage)
    except QuantbuildError:
        return False  # the action will run and report the error properly


def _report_inputs(build: RecipeBuild) -> dict[str, tuple[Entry, Artifact]] | None:
    """The artifacts the report reads of one recipe, or None while its evaluation is missing."""
    found: dict[str, tuple[Entry, Artifact]] = {}
    if "evaluation" in build.recipe.data:
        evaluated = build.entry("evaluate")
        if evaluated is None:
            return None
        found |= {"metrics": (evaluated, METRICS), "layer_errors": (evaluated, LAYER_ERRORS)}
    quantized = build.entry("quantize")
    if quantized is not None and quantized.path(PRECISION).is_file():
        found["precision"] = (quantized, PRECISION)
    for stage, artifact in (("sensitivity", SENSITIVITY), ("selection", SELECTION)):
        entry = build.entry(stage) if stage in build.inputs("quantize") else None
        if entry is not None:
            found[stage] = (entry, artifact)
    stats, ranges = build.entry("stats"), build.entry("ranges")
    if stats is not None and ranges is not None:
        found |= {"stats": (stats, STATS), "ranges": (ranges, RANGES)}
    return found


def recipe_files(build: RecipeBuild) -> RecipeFiles | None:
    """What the report reads of one recipe, or None while its evaluation is missing."""
    found = _report_inputs(build)
    if found is None:
        return None
    data = build.recipe.data
    paths = {kind: entry.path(artifact) for kind, (entry, artifact) in found.items()}
    return RecipeFiles(build.recipe.name, data.get("device"), data["quantization"], **paths)


def report_key(plan: Plan) -> str | None:
    """What the report is a function of: every recipe's settings and the content digests of
    the artifacts it reads, and the report code itself (None while an evaluation is missing).
    A no-op build compares this key instead of rendering the report again."""
    recipes = []
    for build in plan.builds.values():
        found = _report_inputs(build)
        if found is None:
            return None
        data = build.recipe.data
        digests = {
            kind: entry.manifest["files"][artifact.file]["sha256"]
            for kind, (entry, artifact) in found.items()
        }
        recipes.append([build.recipe.name, data.get("device"), data["quantization"], digests])
    return digest([_report_code(), recipes])


@functools.cache
def _report_code() -> str:
    """Digest of the report package's source: a changed report is rendered again."""
    folder = Path(report_package.__file__).parent
    return digest({p.name: file_sha256(p) for p in sorted(folder.glob("*.py"))})


def planned_report(plan: Plan) -> dict[str, bytes] | None:
    """report.md and report.html for the current artifacts, or None while an evaluation is
    missing (memoised: computed at most once after every evaluation exists)."""
    if plan.report is None:
        recipes = [recipe_files(build) for build in plan.builds.values()]
        if any(r is None for r in recipes):
            return None
        plan.report = report_files([r for r in recipes if r is not None])
    return plan.report


def _write_report(plan: Plan, out: Path) -> TaskFailed | None:
    try:
        files = planned_report(plan)
        key = report_key(plan)
    except QuantbuildError as err:
        failures.record("report", err)
        return TaskFailed(str(err))
    if files is None or key is None:
        return TaskFailed("an evaluation is missing; build the evaluate tasks first")
    for name, data in files.items():
        write_atomic(out / name, data)
        print(f"   {out / name}", flush=True)
    written = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    with contextlib.suppress(OSError):  # without it, the next build renders the report again
        write_atomic(_report_state(plan), json.dumps({"key": key, "files": written}).encode())
    return None


def _report_state(plan: Plan) -> Path:
    return plan.project.state / "report.json"


def _report_current(plan: Plan, out: Path) -> bool:
    """The report files were written for the current key and are unchanged since."""
    try:
        key = report_key(plan)
        state = json.loads(_report_state(plan).read_text(encoding="utf-8"))
        return (
            key is not None
            and state["key"] == key
            and all(
                (out / name).is_file() and plan.project.hasher.sha256(out / name) == sha
                for name, sha in state["files"].items()
            )
            and set(state["files"]) == set(REPORTS)
        )
    except (QuantbuildError, OSError, ValueError, KeyError, TypeError):
        return False


class RecipeLoader(TaskLoader2):  # type: ignore[misc]  # doit ships no types
    """Loads the recipes of the project in `root` (default: the current folder) as doit tasks;
    given a Plan, uses it instead of loading the recipes again."""

    def __init__(self, project: Project | None = None, plan: Plan | None = None):
        super().__init__()
        self.project = plan.project if plan else project or Project(Path.cwd())
        self._plan = plan
        self._force = False

    def setup(self, opt_values: dict[str, Any]) -> None:
        # `doit -a` (--always-execute) recomputes, as `quantbuild build --force` does.
        self._force = bool(opt_values.get("always"))
        cores.share(int(opt_values.get("num_process") or 0))

    def load_doit_config(self) -> dict[str, Any]:
        failures.clear()  # the first call of every doit command
        try:
            doit_state.prepare(self._state_file())
        except QuantbuildError as err:
            failures.record(doit_state.TASK, err)
            raise InvalidDodoFile(str(err)) from None
        return {
            "dep_file": str(self._state_file()),
            "backend": "sqlite3",
            "reporter": QuantbuildReporter,
            "verbosity": 2,
        }

    def plan(self) -> Plan:
        if self._plan is None:
            try:
                self._plan = Plan(self.project, force=self._force)
            except QuantbuildError as err:
                raise InvalidDodoFile(str(err)) from None
        return self._plan

    def _state_file(self) -> Path:
        return self.project.state / "doit.db"

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        doit_state.guard(cmd.dep_manager, self._state_file())
        plan = self.plan()
        tasks = []
        for stage in PIPELINE:
            tasks.extend(generate_tasks(stage.name, self._stage_tasks(plan, stage)))
        out = self.project.out
        tasks.extend(
            generate_tasks(
                "report",
                {
                    "actions": [(_write_report, [plan, out])],
                    "uptodate": [(_report_current, [plan, out])],
                    "task_dep": [f"{s.name}:{n}" for n, b in plan.builds.items() for s in b.stages],
                    "targets": [str(out / name) for name in REPORTS],
                    "doc": "Markdown and HTML reports across all recipes",
                    "verbosity": 2,
                    "clean": True,
                },
            )
        )
        return tasks

    @staticmethod
    def _stage_tasks(plan: Plan, stage: Stage) -> Iterator[dict[str, Any]]:
        yield {"basename": stage.name, "name": None, "doc": stage.doc}
        for name, build in plan.builds.items():
            if stage not in build.stages:
                continue
            yield {
                "name": name,
                "actions": [(_execute, [build, stage.name])],
                "uptodate": [(_is_current, [build, stage.name])],
                "task_dep": [f"{upstream}:{name}" for upstream in build.inputs(stage.name)],
                "targets": [str(p) for p in build.export_paths(stage.name)],
                "doc": f"{stage.name} {build.recipe.file.name}",
                "verbosity": 2,
                "clean": True,
            }
