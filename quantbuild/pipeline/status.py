"""What is out of date, and why: current stage key records against the store and the records
of the last build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantbuild.pipeline.plan import RecipeBuild, last_record


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str  # "up to date", "out of date", "waiting"
    reasons: list[str]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def diff_fields(old: Any, new: Any, path: str) -> list[str]:
    """Human-readable differences between two field values."""
    if isinstance(old, dict) and isinstance(new, dict):
        if ("sha256" in old or set(old) == {"frames"}) and old.keys() == new.keys():
            return [f"{path}: content changed"] if old != new else []
        out = []
        for key in sorted(set(old) | set(new)):
            out += diff_fields(old.get(key), new.get(key), f"{path}.{key}")
        return out
    if old != new:
        return [f"{path}: {_short(old)} -> {_short(new)}"]
    return []


def recipe_status(build: RecipeBuild) -> list[StageStatus]:
    """Status of every stage of one recipe, with reasons for those not up to date: the plan's
    key records now against the record each stage was last built from."""
    out = []
    name = build.recipe.name
    for spec in build.stages:
        stage = spec.name
        key = build.key(stage)
        if key is None:
            out.append(StageStatus(stage, "waiting", ["an upstream stage is out of date"]))
            continue
        entry = build.project.store.lookup(stage, key)
        if entry is not None and build.exported(stage, entry):
            out.append(StageStatus(stage, "up to date", []))
            continue
        reasons = []
        if entry is not None:
            reasons.append("exported files missing or modified (copied back from the store)")
        last = last_record(build.project.state, name, stage)
        if last is None:
            reasons.append("never built")
        else:
            current = build.fields(stage)
            for pointer in sorted(set(current) | set(last.get("fields", {}))):
                dotted = pointer.strip("/").replace("/", ".")
                reasons += diff_fields(
                    last.get("fields", {}).get(pointer), current.get(pointer), dotted
                )
            upstream = {u: build.entry(u) for u in build.inputs(stage)}
            changed = [
                u
                for u, e in upstream.items()
                if (e.digest if e else None) != last.get("inputs", {}).get(u)
            ]
            reasons += [f"input {u} changed" for u in changed]
            if last.get("version") != spec.version:
                reasons.append(f"stage version {last.get('version')} -> {spec.version}")
            if not reasons and entry is None:
                reasons.append(f"store changed (key {key[:12]} not in the store)")
        out.append(StageStatus(stage, "out of date", reasons))
    return out
