"""Stage keys and stage execution for one recipe.

A stage's key is sha256 of canonical JSON of: its name, VERSION, the values of the recipe
fields it reads (files and datasets by content, never by path) and the content digests of
its upstream artifacts. Nothing else: so changing `quantization.bits` never re-keys `stats`,
and two recipes with the same model and calibration data share one `stats` entry.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantbuild import cores
from quantbuild.cores import FanOut
from quantbuild.data.dataset import Dataset, open_dataset
from quantbuild.data.preprocess import check_channels
from quantbuild.errors import DataError, QuantbuildError, RecipeError, StoreError
from quantbuild.pipeline.project import Project, ProjectErrors
from quantbuild.recipe import Recipe
from quantbuild.recipe.resolve import INPUT_FILES
from quantbuild.stages import BY_NAME, PIPELINE, Stage
from quantbuild.stages.context import Context
from quantbuild.store.entries import DISK_FULL, Entry
from quantbuild.store.files import copy_atomic, write_atomic
from quantbuild.store.keys import canonical_json, digest, file_sha256

if TYPE_CHECKING:
    from quantbuild.pipeline.cluster import Cluster

RECORDS = "records"  # under the project's state folder: <recipe>/<stage>.json


def pointer_get(data: Any, pointer: str) -> Any:
    """Value at a JSON pointer such as /quantization/bits (None when absent)."""
    for part in pointer.strip("/").split("/"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


class RecipeBuild:
    """Keys, store entries and execution of the stages of one recipe.

    Memoised for the life of a command: a key is computed once (once its upstream artifacts
    exist), a store hit looked up once; `record(stage)` is both what the key hashes and what
    the published manifest holds."""

    def __init__(self, project: Project, recipe: Recipe, force: bool = False):
        self.project = project
        self.recipe = recipe
        self.force = force  # recompute every stage run, replacing its store entry
        self.fan_out: FanOut | None = None  # on a cluster worker: where stages shard their work
        self._datasets: dict[str, Dataset] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}
        self._entries: dict[str, Entry] = {}
        self.key_computations: Counter[str] = Counter()  # per stage; a test asserts <= 1

    @cached_property
    def stages(self) -> list[Stage]:
        """The stages this recipe builds, in pipeline order."""
        return [s for s in PIPELINE if s.applies(self.recipe.data)]

    def inputs(self, stage: str) -> tuple[str, ...]:
        """The upstream stages of `stage` that this recipe builds."""
        names = {s.name for s in self.stages}
        return tuple(u for u in BY_NAME[stage].inputs if u in names)

    # -- inputs -------------------------------------------------------------------------------
    def dataset(self, section: str) -> Dataset:
        """The calibration or evaluation dataset, listed once per process."""
        if section not in self._datasets:
            problem = check_channels(self.recipe.data[section].get("preprocess", {}))
            if problem:
                raise RecipeError(
                    f"{section}.preprocess: {problem}", self.recipe.where((section, "preprocess"))
                )
            data = self.recipe.data[section]["data"]
            preprocess = self.recipe.data[section].get("preprocess", {})
            where = self.recipe.where((section, "data"))
            key = self._dataset_key(section)
            shared = self.project.datasets.get(key)
            # Recipes of a project mostly share their datasets: listed once per command, each
            # recipe's copy pointing at its own recipe in messages.
            self._datasets[section] = (
                dataclasses.replace(shared, where=where)
                if shared is not None
                else open_dataset(data, preprocess, f"{section}.data", where)
            )
            self.project.datasets.setdefault(key, self._datasets[section])
        return self._datasets[section]

    def _dataset_key(self, section: str) -> str:
        data = self.recipe.data[section]
        return canonical_json([section, data["data"], data.get("preprocess", {})])

    def _frames_digest(self, section: str) -> str:
        key = self._dataset_key(section)
        if key not in self.project.frame_digests:
            dataset = self.dataset(section)
            hashes = {f: self.project.hasher.sha256(f) for f in dataset.files()}
            self.project.frame_digests[key] = digest(
                [[hashes[f.file], f.index, f.label] for f in dataset.frames]
            )
        return self.project.frame_digests[key]

    @cached_property
    def keyed_recipe(self) -> dict[str, Any]:
        """The recipe with files and datasets replaced by their content digests."""
        data = copy.deepcopy(self.recipe.data)
        data["model"] = {"sha256": self.project.hasher.sha256(self.recipe.model)}
        for field in INPUT_FILES:  # by content: a moved file with the same bytes rebuilds nothing
            given = self.recipe.get(field)
            if given:
                parent = data
                for part in field[:-1]:
                    parent = parent[part]
                parent[field[-1]] = {
                    "sha256": self.project.hasher.sha256(Path(given)),
                    "format": Path(given).suffix.lower(),
                }
        for section in ("calibration", "evaluation"):
            if section in data:
                data[section]["data"] = {"frames": self._frames_digest(section)}
        self.project.hasher.save()
        return data

    def overlap(self) -> int:
        """How many evaluation frames are also calibration frames (by content)."""
        if "evaluation" not in self.recipe.data:
            return 0
        sha = self.project.hasher.sha256
        calib = {(sha(f.file), f.index) for f in self.dataset("calibration").frames}
        return sum((sha(f.file), f.index) in calib for f in self.dataset("evaluation").frames)

    # -- keys ---------------------------------------------------------------------------------
    def fields(self, stage: str) -> dict[str, Any]:
        return {p: pointer_get(self.keyed_recipe, p) for p in BY_NAME[stage].reads}

    def record(self, stage: str) -> dict[str, Any] | None:
        """What the stage's key hashes (and its manifest records), or None while an upstream
        artifact is missing."""
        if stage not in self._records:
            inputs = {}
            for upstream in self.inputs(stage):
                entry = self.entry(upstream)
                if entry is None:
                    return None
                inputs[upstream] = entry.digest
            spec = BY_NAME[stage]
            record = {
                "stage": stage,
                "version": spec.version,
                "fields": self.fields(stage),
                "inputs": inputs,
            }
            self.key_computations[stage] += 1
            self._records[stage] = record
            self._keys[stage] = digest(record)
        return self._records[stage]

    def key(self, stage: str) -> str | None:
        """The stage's key now, or None while an upstream artifact is missing."""
        return self._keys[stage] if self.record(stage) is not None else None

    def entry(self, stage: str) -> Entry | None:
        """The stage's store entry for its current key (None: not built)."""
        if stage not in self._entries:
            key = self.key(stage)
            entry = None if key is None else self.project.store.lookup(stage, key)
            if entry is None:
                return None  # a miss is looked up again: the stage may run meanwhile
            self._entries[stage] = entry
        return self._entries[stage]

    # -- exports ------------------------------------------------------------------------------
    def export_dir(self) -> Path:
        return self.project.out / self.recipe.name

    def export_paths(self, stage: str) -> list[Path]:
        return [self.export_dir() / str(a.export) for a in BY_NAME[stage].exports]

    def exported(self, stage: str, entry: Entry) -> bool:
        for artifact in BY_NAME[stage].exports:
            target = self.export_dir() / str(artifact.export)
            if (
                not target.is_file()
                or self.project.hasher.sha256(target)
                != entry.manifest["files"][artifact.file]["sha256"]
            ):
                return False
        return True

    def export(self, stage: str, entry: Entry) -> None:
        """Copy the stage's user-facing files to <out>/<recipe>/, atomically."""
        for artifact in BY_NAME[stage].exports:
            name = str(artifact.export)
            target = self.export_dir() / name
            if (
                target.is_file()
                and file_sha256(target) == entry.manifest["files"][artifact.file]["sha256"]
            ):
                continue
            try:
                copy_atomic(entry.path(artifact), target)
            except OSError as err:
                if err.errno not in DISK_FULL:
                    raise
                raise StoreError(
                    f"cannot write {name} ({err.strerror}); free space in {self.export_dir()}",
                    str(target),
                ) from None

    # -- execution ----------------------------------------------------------------------------
    def is_current(self, stage: str) -> bool:
        """True when the stage's artifact is in the store and its exports match it."""
        entry = self.entry(stage)
        return entry is not None and self.exported(stage, entry)

    def forget(self) -> None:
        """Drop memoised keys and entries (a long-lived process, e.g. a cluster worker, whose
        store others write to)."""
        self._records.clear()
        self._keys.clear()
        self._entries.clear()
        self.project.store.refresh()

    def produce(self, stage: str, log: Callable[[str], None] = print) -> tuple[Entry, bool]:
        """The stage's store entry, computed and published here unless the store has it.
        Returns (entry, hit)."""
        spec = BY_NAME[stage]
        record = self.record(stage)
        if record is None:
            missing = [u for u in self.inputs(stage) if self.entry(u) is None]
            raise DataError(f"{stage}: upstream stage(s) not built: {', '.join(missing)}")
        key = self._keys[stage]
        entry = None if self.force else self.entry(stage)
        if entry is not None:
            log(f"store hit {key[:12]}")
            return entry, True
        shared = self.overlap() if stage == "evaluate" else 0
        if shared:
            log(f"warning: {shared} evaluation frame(s) are also calibration frames")
        inputs = {u: self._entries[u] for u in self.inputs(stage)}
        ctx = Context(self.recipe, inputs, self.dataset, log, self.fan_out)
        entry = self.project.store.publish(
            stage, key, lambda out: spec.run(ctx, out), record, replace=self.force, log=log
        )
        self._entries[stage] = entry
        return entry, False

    def _on_cluster(self, cluster: Cluster, stage: str, log: Callable[[str], None]) -> Entry:
        """Compute the stage on a cluster worker (pipeline.cluster); its entry, from the
        store the workers share with this process."""
        key = self._keys[stage]
        project = self.project
        # the worker uses this process's store, whatever its own environment says
        store = (project.store_location, project.store_readonly())
        job = (str(project.root), project.overrides, project.strict, store, self.recipe.name, stage)
        name = f"{stage}:{self.recipe.name}-{key[:12]}"
        lines, worker = cluster.run(
            (stage, key), name, run_on_worker, *job, key, self.force, cluster.threads
        )
        # Stages of several recipes finish at once: each line names its task.
        task = f"{stage}:{self.recipe.name}"
        for line in [f"computed on {worker}", *lines]:
            log(f"[{task}] {line}")
        entry = project.store.lookup(stage, key, published=True)
        if entry is None:
            raise StoreError(
                f"{stage}: built on the cluster but not found in this store; the workers and "
                "this machine must share it (an s3:// URL, or a folder all of them see)",
                str(project.root),
            )
        self._entries[stage] = entry
        return entry

    def run(self, stage: str, log: Callable[[str], None] = print) -> tuple[Entry, bool]:
        """Publish the stage's artifact (unless the store has it; on the project's cluster
        when it has one) and export it. Returns (entry, hit)."""
        cluster = self.project.cluster
        if cluster is not None and (self.force or self.entry(stage) is None):
            if self.record(stage) is None:  # the same error as produce's
                return self.produce(stage, log)
            entry = self._on_cluster(cluster, stage, log)
            hit = False
        else:
            entry, hit = self.produce(stage, log)
        self.export(stage, entry)
        self.project.hasher.save()
        write_last_record(self.project.state, self.recipe.name, stage, entry.manifest["record"])
        return entry, hit


def write_last_record(state: Path, recipe: str, stage: str, record: dict[str, Any]) -> None:
    """Remember what a recipe's stage was last built from, for `status --why` (best effort:
    without it, status says "never built")."""
    with contextlib.suppress(OSError):
        write_atomic(state / RECORDS / recipe / f"{stage}.json", canonical_json(record).encode())


def last_record(state: Path, recipe: str, stage: str) -> dict[str, Any] | None:
    """What a recipe's stage was last built from (None: never built here)."""
    try:
        record = json.loads(
            (state / RECORDS / recipe / f"{stage}.json").read_text(encoding="utf-8")
        )
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


class Plan:
    """Every recipe of a project with its datasets opened, made once per command: the doit
    loader, `status` and `show` all read the same keys and entries."""

    def __init__(self, project: Project, force: bool = False):
        self.project = project
        self.builds = load_builds(project, force)
        self.report: dict[str, bytes] | None = None  # set once every evaluation exists


def load_builds(project: Project, force: bool = False) -> dict[str, RecipeBuild]:
    """Every recipe of the project, with its datasets listed: all problems reported at once,
    before anything is built."""
    builds = {
        name: RecipeBuild(project, recipe, force) for name, recipe in project.recipes().items()
    }
    errors: list[QuantbuildError] = []
    for build in builds.values():
        for section in ("calibration", "evaluation"):
            if section in build.recipe.data:
                try:
                    build.dataset(section)
                except QuantbuildError as err:
                    errors.append(err)
    if errors:
        raise ProjectErrors(errors)
    return builds


# -- on a cluster worker ----------------------------------------------------------------------

# A project as a worker opens it: root, overrides, strict, (store location, read-only).
_ProjectId = tuple[str, tuple[str, ...], bool, tuple[str, bool]]
# Plans a worker process opened, by project: its recipes and datasets are read once.
_WORKER_PLANS: dict[_ProjectId, Plan] = {}


def run_on_worker(
    root: str,
    overrides: tuple[str, ...],
    strict: bool,
    store: tuple[str, bool],
    recipe: str,
    stage: str,
    key: str,
    force: bool,
    workers: int,
) -> tuple[list[str], str]:
    """On a cluster worker: compute and publish one stage of a recipe under `key` (unless the
    store has it), sharding its work over the cluster's `workers` where the stage can. Returns
    the lines the stage logged and the worker's address."""
    from distributed import get_worker

    _share_cores()
    project = (root, overrides, strict, store)
    for fresh in (False, True):
        build = _worker_plan(project, fresh).builds.get(recipe)
        if build is None:
            continue
        build.forget()  # others publish to the store between two stages
        if build.key(stage) == key:
            lines: list[str] = []
            build.force = force
            fan_out = functools.partial(_on_workers, project)
            build.fan_out = FanOut(workers, fan_out) if workers > 1 else None
            build.produce(stage, lines.append)
            return lines, str(get_worker().address)
    raise StoreError(
        f"{stage}:{recipe}: this worker sees other inputs than the client (key {key[:12]}); "
        "workers need the project's files at the same path, unchanged",
        root,
    )


def _worker_plan(project: _ProjectId, fresh: bool = False) -> Plan:
    """The plan of a project opened on this worker (once, unless `fresh`)."""
    if fresh or project not in _WORKER_PLANS:
        root, overrides, strict, (location, read_only) = project
        # The worker computes; it never submits to a cluster itself.
        opened = Project(
            Path(root),
            overrides,
            strict=strict,
            cluster_address="",
            store_location=location,
            store_read_only=read_only,
        )
        opened.store.while_waiting = _outside_thread_pool
        _WORKER_PLANS[project] = Plan(opened)
    return _WORKER_PLANS[project]


@contextlib.contextmanager
def _outside_thread_pool() -> Iterator[None]:
    """A task waiting for another's store lease leaves the worker's thread pool meanwhile: the
    lease holder (another client's task of the same key) may need this worker's thread for
    the pieces of its stage, and would wait for it forever."""
    from distributed import rejoin, secede

    secede()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        rejoin()  # type: ignore[no-untyped-call]


def _on_workers(
    project: _ProjectId, function: Callable[..., Any], jobs: list[tuple[Any, ...]]
) -> list[Any]:
    """`[function(*job) for job in jobs]` on the cluster's workers, from inside a task (its
    thread steps out of the worker's pool while it waits: no deadlock on busy workers). Store
    entries among a job's arguments (or the values of a dict argument) arrive as the same
    entries in the store of the worker that runs it."""
    from distributed import worker_client

    with worker_client() as client:
        futures = [
            client.submit(_piece, project, function, *job, pure=False, retries=2) for job in jobs
        ]
        return list(client.gather(futures))


def _piece(project: _ProjectId, function: Callable[..., Any], *args: Any) -> Any:
    """One job of a fan-out, on the worker that runs it."""
    _share_cores()

    def here(value: Any) -> Any:
        if isinstance(value, dict):
            return {name: here(item) for name, item in value.items()}
        if not isinstance(value, Entry):
            return value
        stage, key = value.manifest["stage"], value.manifest["key"]
        entry = _worker_plan(project).project.store.lookup(stage, key, published=True)
        if entry is None:
            raise StoreError(f"{stage}: entry {key[:12]} is not in the store this worker sees")
        return entry

    return function(*[here(arg) for arg in args])


def _share_cores() -> None:
    """Workers that share a machine: onnxruntime's idle threads sleep instead of spinning
    (spinning workers take each other's cores; measured 0.65× of one process on 2 cores)."""
    from distributed import get_worker

    worker = get_worker()
    host = worker.address.rsplit(":", 1)[0]
    with contextlib.suppress(Exception):  # best effort: the scheduler may be busy
        peers = worker.client.scheduler_info()["workers"]
        cores.share(sum(address.rsplit(":", 1)[0] == host for address in peers))
