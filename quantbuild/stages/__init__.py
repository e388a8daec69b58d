"""Pipeline stages: each module ends with a `STAGE = Stage(...)` spec (quantbuild.stages.spec),
registered here in dependency order. `register` adds one more (see CONTRIBUTING.md)."""

from __future__ import annotations

from quantbuild.stages.spec import Stage

PIPELINE: list[Stage] = []
BY_NAME: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage after those it reads from (which must be registered already)."""
    if stage.name in BY_NAME:
        raise ValueError(f"stage {stage.name!r} is registered already")
    unknown = [u for u in stage.inputs if u not in BY_NAME]
    if unknown:
        raise ValueError(f"stage {stage.name!r}: inputs not registered: {', '.join(unknown)}")
    PIPELINE.append(stage)
    BY_NAME[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage that no other stage reads from (tests and plugins)."""
    readers = [s.name for s in PIPELINE if name in s.inputs]
    if readers:
        raise ValueError(f"stage {name!r} is read by {', '.join(readers)}")
    PIPELINE.remove(BY_NAME.pop(name))


def _register_builtin() -> None:
    from quantbuild.stages import (
        equalize,
        evaluate,
        prepare,
        quantize,
        ranges,
        rounding,
        selection,
        sensitivity,
        stats,
    )

    for module in (
        prepare,
        equalize,
        stats,
        ranges,
        rounding,
        sensitivity,
        selection,
        quantize,
        evaluate,
    ):
        register(module.STAGE)


_register_builtin()

__all__ = ["BY_NAME", "PIPELINE", "Stage", "register", "unregister"]
