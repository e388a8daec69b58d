"""User errors raised inside doit actions, kept for the reporter and for exit codes."""

from __future__ import annotations

from quantbuild.errors import QuantbuildError

_BY_TASK: dict[str, QuantbuildError] = {}


def record(task: str, error: QuantbuildError) -> None:
    _BY_TASK[task] = error


def for_task(task: str) -> QuantbuildError | None:
    return _BY_TASK.get(task)


def first() -> QuantbuildError | None:
    return next(iter(_BY_TASK.values()), None)


def clear() -> None:
    _BY_TASK.clear()
