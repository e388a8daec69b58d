"""The final recipe as YAML, each value annotated with the file:line that set it."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from quantbuild.recipe.resolve import Recipe


def _origin(recipe: Recipe, path: tuple) -> str:
    where = recipe.doc.values.get(path)
    if where is None:
        return "default"
    file = where.file
    if os.path.isabs(file):
        base = recipe.file.parent
        with contextlib.suppress(ValueError):  # another drive on Windows
            file = os.path.relpath(file, base)
    return f"{file}:{where.line}" if where.line else file


def _annotated(value: Any, recipe: Recipe, path: tuple) -> Any:
    if isinstance(value, dict):
        out = CommentedMap()
        for key, child in value.items():
            out[key] = _annotated(child, recipe, path + (key,))
            if not isinstance(child, dict) or not child:
                out.yaml_add_eol_comment(_origin(recipe, path + (key,)), key)
        return out
    if isinstance(value, list):
        seq = CommentedSeq(_annotated(v, recipe, path + (i,)) for i, v in enumerate(value))
        seq.fa.set_flow_style()
        return seq
    return value


def resolved_yaml(recipe: Recipe) -> str:
    """YAML text of the resolved recipe (defaults filled, paths absolute) with provenance."""
    yaml = YAML(typ="rt", pure=True)
    buffer = io.StringIO()
    buffer.write(f"# {recipe.name}: resolved from {recipe.file}\n")
    yaml.dump(_annotated(recipe.data, recipe, ()), buffer)
    return buffer.getvalue()
