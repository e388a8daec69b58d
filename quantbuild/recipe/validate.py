"""JSON Schema validation with file:line:column errors, and schema defaults."""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from quantbuild.errors import RecipeError
from quantbuild.recipe.load import Located
from quantbuild.suggest import closest


class RecipeErrors(RecipeError):
    """Several recipe errors, one line each, sorted by position."""

    def __init__(self, errors: list[RecipeError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors

    def __str__(self) -> str:
        return self.message


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "recipe"


def subschema(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _explain(error: ValidationError, doc: Located, root: dict) -> list[RecipeError]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(subschema(error.schema, root).get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        out = []
        for key in extra:
            hint = closest(key, allowed)
            fix = f"did you mean {hint!r}?" if hint else f"allowed: {', '.join(allowed)}"
            where = doc.keys.get(path + (key,)) or doc.where(path)
            out.append(RecipeError(f"{_dotted(path + (key,))}: unknown key; {fix}", where))
        return out
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [RecipeError(f"{_dotted(path)}: missing required key {missing!r}", doc.where(path))]
    if error.validator == "oneOf" and error.context:
        # Explain the alternative closest to what the user wrote (deepest error).
        best = max(error.context, key=lambda e: len(e.absolute_path))
        if best.absolute_path:
            return _explain(best, doc, root)
        kinds = [subschema(s, root).get("type", "?") for s in error.validator_value]
        return [
            RecipeError(
                f"{_dotted(path)}: {error.instance!r} is not valid; expected one of: {', '.join(map(str, kinds))}",
                doc.where(path),
            )
        ]
    return [RecipeError(f"{_dotted(path)}: {error.message}", doc.where(path))]


def validate(doc: Located, schema: dict) -> None:
    """Raise `RecipeErrors` listing every schema violation with its position."""
    validator = Draft202012Validator(schema)
    errors: list[RecipeError] = []
    for error in validator.iter_errors(doc.data):
        errors.extend(_explain(error, doc, schema))
    if errors:

        def order(e: RecipeError):
            w = e.where
            return (getattr(w, "file", str(w)), getattr(w, "line", 0), getattr(w, "column", 0))

        unique = {str(e): e for e in sorted(errors, key=order)}
        raise RecipeErrors(list(unique.values()))


def fill_defaults(data: Any, schema: dict, root: dict | None = None) -> Any:
    """Return `data` with schema defaults filled in for absent object properties."""
    root = root or schema
    schema = subschema(schema, root)
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, sub in schema.get("properties", {}).items():
        sub = subschema(sub, root)
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub, root)
    return out
