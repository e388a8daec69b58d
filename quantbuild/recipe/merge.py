"""`extends:` resolution: bundled presets or relative files, deep-merged with provenance."""

from __future__ import annotations

from pathlib import Path

from quantbuild.errors import RecipeError
from quantbuild.recipe.load import Located, load_yaml
from quantbuild.resources import preset_names, presets_dir
from quantbuild.suggest import closest


def _is_prefix(prefix: tuple, path: tuple) -> bool:
    return path[: len(prefix)] == prefix


def merge(base: Located, over: Located) -> Located:
    """Deep-merge `over` onto `base`: mappings merge, lists and scalars are replaced, and
    `key: null` removes an inherited key (e.g. `images` where the base gave a folder and this
    recipe gives `tensors`)."""
    out = Located(None, dict(base.values), dict(base.keys))

    def walk(b, o, path: tuple):
        if isinstance(b, dict) and isinstance(o, dict):
            result = dict(b)
            for key, value in o.items():
                child = path + (key,)
                if value is None:
                    result.pop(key, None)
                    for table in (out.values, out.keys):
                        for p in [p for p in table if _is_prefix(child, p)]:
                            del table[p]
                    continue
                if key in b:
                    result[key] = walk(b[key], value, child)
                else:
                    _take(child)
                    result[key] = value
                out.keys[child] = over.keys.get(child, out.keys.get(child))
                out.values[child] = over.values[child]
            return result
        _take(path)
        return o

    def _take(path: tuple):
        # The override replaces everything at and below `path`: provenance follows it.
        for table, source in ((out.values, over.values), (out.keys, over.keys)):
            for p in [p for p in table if _is_prefix(path, p) and p != path]:
                del table[p]
            for p, w in source.items():
                if _is_prefix(path, p):
                    table[p] = w

    out.data = walk(base.data, over.data, ())
    out.values[()] = over.values[()]
    return out


def _locate_base(ref: str, from_file: Path, where) -> Path:
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref) if Path(ref).is_absolute() else from_file.parent / ref
        if not path.is_file():
            raise RecipeError(
                f"extends: no such file {ref!r} (relative to {from_file.name})", where
            )
        return path.resolve()
    names = preset_names()
    if ref not in names:
        hint = closest(ref, names)
        fix = f"did you mean {hint!r}?" if hint else f"bundled presets: {', '.join(names)}"
        raise RecipeError(
            f"extends: unknown preset {ref!r}; {fix} (files must end in .yaml)", where
        )
    return (presets_dir() / f"{ref}.yaml").resolve()


def load_with_extends(file: Path, _stack: tuple[Path, ...] = ()) -> Located:
    """Load `file` and everything it extends, merged in order, the file itself last."""
    file = file.resolve()
    doc = load_yaml(file)
    refs = doc.data.get("extends", [])
    if isinstance(refs, str):
        refs = [refs]
        doc.values[("extends", 0)] = doc.values.get(("extends",))
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise RecipeError(
            "extends: must be a preset name or a list of them", doc.where(("extends",))
        )
    merged: Located | None = None
    for i, ref in enumerate(refs):
        where = doc.where(("extends", i))
        base_file = _locate_base(ref, file, where)
        if base_file in _stack + (file,):
            chain = " -> ".join(p.name for p in _stack + (file, base_file))
            raise RecipeError(f"extends: cycle {chain}; remove one of these extends", where)
        base = load_with_extends(base_file, _stack + (file,))
        merged = base if merged is None else merge(merged, base)
    doc.data.pop("extends", None)
    for table in (doc.values, doc.keys):
        for p in [p for p in table if p[:1] == ("extends",)]:
            del table[p]
    return doc if merged is None else merge(merged, doc)
