"""Safe YAML loading that remembers where every key and value came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from quantbuild.errors import RecipeError, Where

Path_ = tuple  # a path into the document: ("quantization", "bits") or ("extends", 0)


@dataclass
class Located:
    """Plain data plus the file position of every value and mapping key in it."""

    data: Any
    values: dict[Path_, Where] = field(default_factory=dict)
    keys: dict[Path_, Where] = field(default_factory=dict)

    def where(self, path: Path_) -> Where | None:
        """Position of the value at `path`, or of its nearest located parent."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return None


def _yaml() -> YAML:
    # The round-trip loader keeps positions; it builds only plain maps, lists and scalars
    # (unknown tags become tagged scalars), so it never constructs Python objects.
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    return yaml


def _plain(node: Any, file: str, path: Path_, out: Located) -> Any:
    if isinstance(node, CommentedMap):
        result = {}
        for key, value in node.items():
            if not isinstance(key, str):
                line, col = node.lc.key(key)
                raise RecipeError(
                    f"{'.'.join(map(str, path + (key,)))}: keys must be strings",
                    Where(file, line + 1, col + 1),
                )
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            out.keys[path + (key,)] = Where(file, kline + 1, kcol + 1)
            out.values[path + (key,)] = Where(file, vline + 1, vcol + 1)
            result[key] = _plain(value, file, path + (key,), out)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            line, col = node.lc.item(i)
            out.values[path + (i,)] = Where(file, line + 1, col + 1)
            items.append(_plain(value, file, path + (i,), out))
        return items
    if node is None or isinstance(node, (bool, int, float, str)):
        # ruamel's scalar subclasses (ScalarFloat, ...) become builtins
        for kind in (bool, int, float, str):
            if isinstance(node, kind):
                return kind(node)
        return None
    tag = getattr(getattr(node, "tag", None), "value", None) or type(node).__name__
    where = out.values.get(path, Where(file))
    raise RecipeError(
        f"{'.'.join(map(str, path)) or 'document'}: unsupported YAML value {tag}", where
    )


def load_yaml(file: Path) -> Located:
    """Load one YAML file into plain data with positions; errors name file:line:column."""
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("file not found", name) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read: {err}", name) from None
    try:
        node = _yaml().load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = (err.problem or err.context or "invalid YAML").strip()
        where = Where(name, mark.line + 1, mark.column + 1) if mark else Where(name)
        raise RecipeError(f"invalid YAML: {problem}", where) from None
    except YAMLError as err:
        raise RecipeError(f"invalid YAML: {str(err).splitlines()[0]}", name) from None
    out = Located(None)
    out.values[()] = Where(name, 1, 1)
    if node is None:
        node = CommentedMap()
    if not isinstance(node, CommentedMap):
        raise RecipeError("a recipe must be a YAML mapping (key: value lines)", Where(name, 1, 1))
    out.data = _plain(node, name, (), out)
    return out


def parse_scalar(text: str) -> Any:
    """Type a command-line value as a YAML scalar or flow collection (`16`, `true`, `[a, b]`)."""
    located = Located(None)
    node = YAML(typ="rt", pure=True).load(text) if text.strip() else None
    return _plain(node, "-S", (), located)
