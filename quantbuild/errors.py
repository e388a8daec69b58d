"""User-facing errors: one line each, with a distinct exit code per kind.

Anything that is *not* a `QuantbuildError` is a bug in quantbuild and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Where:
    """A place in a file that set a value (1-based line and column; 0 = unknown)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


class QuantbuildError(Exception):
    """A failure caused by the user's input, reported as one line without a traceback."""

    exit_code = 1

    def __init__(self, message: str, where: Where | str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class RecipeError(QuantbuildError):
    """Invalid recipe, preset, override or project configuration."""

    exit_code = 2


class ModelError(QuantbuildError):
    """The ONNX model is missing, unreadable or unsupported."""

    exit_code = 3


class DataError(QuantbuildError):
    """A dataset is missing, empty, unreadable or does not fit the model."""

    exit_code = 4


class StoreError(QuantbuildError):
    """The artifact store cannot be used (permissions, read-only, disk full)."""

    exit_code = 5


EXIT_OK = 0
EXIT_BUILD_FAILED = 1  # a task failed for a reason that is not one of the kinds above
EXIT_INTERNAL = 70  # a bug in quantbuild (EX_SOFTWARE)
