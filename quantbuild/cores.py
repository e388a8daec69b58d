"""How a build uses cores: whether this process shares the machine's with other builds
(`doit -n N`), and a cluster's workers to fan a stage's independent pieces out to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

shared = False


@dataclass(frozen=True)
class FanOut:
    """Runs independent pieces of a stage's work at once elsewhere (a cluster's workers):
    `map(function, jobs)` returns `[function(*job) for job in jobs]`, in order."""

    workers: int
    map: Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def share(workers: int) -> None:
    """Note that `workers` build processes run at once (doit's -n): onnxruntime's idle threads
    then sleep instead of spinning, so the workers do not burn each other's cores."""
    global shared
    shared = workers > 1
