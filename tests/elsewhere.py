"""A fan-out that treats a stage's pieces as a cluster does, in this process."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from quantbuild.cores import FanOut


class Elsewhere:
    """Runs each job of a fan-out as a worker would: the job and its result serialized and read
    back, so nothing is shared with the caller. Keeps the jobs and functions it was given."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []
        self.functions: set[Callable[..., Any]] = set()

    def fan_out(self, workers: int) -> FanOut:
        return FanOut(workers, self._map)

    def _map(self, function: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
        self.functions.add(function)
        self.jobs.extend(jobs)
        return [pickle.loads(pickle.dumps(function(*pickle.loads(pickle.dumps(j))))) for j in jobs]
