"""The Stage spec: everything the pipeline needs to key, schedule, run and export a stage.

A stage is one module that ends with `STAGE = Stage(...)` and is registered in
quantbuild/stages/__init__.py. Its key is sha256 of its name, `version`, the values of the
recipe fields it `reads` and the content digests of its `inputs`' artifacts; bump `version`
whenever the stage's artifacts change for the same inputs (CHANGELOG.md keeps the history).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbuild.stages.context import Context
from quantbuild.store.entries import Artifact


def always(recipe: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One cached step of the pipeline.

    `run(ctx, out)` writes the `artifacts` files into the folder `out` and returns a small
    JSON-able summary; it needs no doit and no CLI, only its Context (recipe, upstream entries,
    datasets, a log), so it can run in another process. `applies(recipe_data)` says whether a
    recipe builds the stage at all; `inputs` not built by a recipe are simply absent."""

    name: str
    version: int
    reads: tuple[str, ...]  # JSON pointers into the resolved recipe, e.g. /quantization/bits
    inputs: tuple[str, ...]  # upstream stage names
    artifacts: tuple[Artifact, ...]
    run: Callable[[Context, Path], dict[str, Any]]
    applies: Callable[[dict[str, Any]], bool] = always
    doc: str = ""

    @property
    def exports(self) -> tuple[Artifact, ...]:
        """The artifacts copied to <out>/<recipe>/."""
        return tuple(a for a in self.artifacts if a.export)
