"""Files shipped with quantbuild: the recipe schema and the bundled presets."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    # Installed wheel: quantbuild/_bundled/<name>; source checkout: <repo>/<name>.
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"quantbuild installation is missing its {name}/ folder")


def schema_path() -> Path:
    """The recipe JSON Schema (source of truth for every recipe field)."""
    return _bundled("schemas") / "recipe.v1.schema.json"


@cache
def recipe_schema() -> dict:
    """The parsed recipe JSON Schema."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


def presets_dir() -> Path:
    """Folder of bundled recipe presets (devices/*.yaml, ...)."""
    return _bundled("recipes")


def preset_names() -> list[str]:
    """Names usable in `extends:`, e.g. 'devices/am68a'."""
    root = presets_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
