"""How a build uses cores: whether this process shares the machine's with other builds
(`doit -n N`), and a cluster's workers to fan a stage's independent pieces out to."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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


def in_threads(function: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
    """`[function(*job) for job in jobs]`, the jobs at once in this process's threads (for work
    that runs mostly in onnxruntime, which releases the GIL). When one fails or the build is
    interrupted (Ctrl-C, SIGTERM arrive in the waiting thread), the others stop at their next
    `check_stop()` instead of running to their end."""
    if len(jobs) < 2:
        return [function(*job) for job in jobs]
    pool = ThreadPoolExecutor(len(jobs))
    try:
        futures = [pool.submit(function, *job) for job in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)  # not in job order: the first failure
        for future in futures:
            error = future.exception() if future.done() else None
            if error is not None:
                raise error
        return [future.result() for future in futures]
    except BaseException:
        _stop.set()
        raise
    finally:
        pool.shutdown(wait=True)
        _stop.clear()


class Stopped(Exception):
    """A piece of work ended early: its siblings failed or the build was interrupted."""


_stop = threading.Event()


def check_stop() -> None:
    """Raise Stopped when the pieces running side by side must end (called between frames)."""
    if _stop.is_set():
        raise Stopped


def side_by_side(limit: int) -> int:
    """How many pieces of work this process may run side by side: up to `limit`, one per core,
    one while other builds share the machine."""
    return 1 if shared else max(1, min(limit, os.cpu_count() or 1))
