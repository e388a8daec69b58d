"""Command-line overrides: `-S quantization.bits=16`, typed as YAML scalars."""

from __future__ import annotations

import copy

from quantbuild.errors import RecipeError, Where
from quantbuild.recipe.load import Located, parse_scalar


def apply_overrides(doc: Located, overrides: list[str]) -> Located:
    """Return a copy of `doc` with each `dotted.path=value` applied in order."""
    out = Located(copy.deepcopy(doc.data), dict(doc.values), dict(doc.keys))
    for text in overrides:
        where = Where(f"-S {text}")
        dotted, sep, raw = text.partition("=")
        if not sep or not dotted.strip():
            raise RecipeError("expected -S path=value, e.g. -S quantization.bits=16", where)
        value = parse_scalar(raw, where)
        parts = dotted.strip().split(".")
        node = out.data
        for depth, key in enumerate(parts[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                at = ".".join(parts[: depth + 1])
                raise RecipeError(f"{at} is not a mapping, cannot set {dotted}", where)
            node = child
        node[parts[-1]] = value
        path = tuple(parts)
        for table in (out.values, out.keys):
            for p in [p for p in table if p[: len(path)] == path]:
                del table[p]
        for n in range(1, len(path) + 1):
            out.values.setdefault(path[:n], where)
            out.keys.setdefault(path[:n], where)
        out.values[path] = where
        out.keys[path] = where
    return out
