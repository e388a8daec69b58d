"""Safe YAML loading that remembers where every key and value came from."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from quantbuild.errors import RecipeError, Where
from quantbuild.textfile import read_utf8

# A path into the document: ("quantization", "bits") or ("extends", 0).
DocPath = tuple[str | int, ...]

# Bounds on what a recipe may be: a real one is a few kB, a few hundred values, depth < 10.
# They stop YAML alias bombs (anchors expanding exponentially) and stray huge files early.
MAX_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64


@dataclass
class Located:
    """Plain data plus the file position of every value and mapping key in it."""

    data: Any
    values: dict[DocPath, Where | None] = field(default_factory=dict)
    keys: dict[DocPath, Where | None] = field(default_factory=dict)

    def where(self, path: DocPath) -> Where | None:
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


_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_TAGS = {None, "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _dotted(path: DocPath) -> str:
    return ".".join(map(str, path)) or "document"


def _reject_tag(node: Any, path: DocPath, out: Located) -> None:
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag is not None and tag not in _PLAIN_TAGS:
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        raise RecipeError(
            f"{_dotted(path)}: explicit YAML tag {shown} is not supported; remove it",
            out.where(path),
        )


def _position(lookup, key, fallback: Where, file: str) -> Where:
    # Keys brought in by a YAML merge (<<) and items of some tagged nodes have no position.
    try:
        line, col = lookup(key)
    except (KeyError, IndexError, TypeError):
        return fallback
    return Where(file, line + 1, col + 1)


def _plain(node: Any, file: str, path: DocPath, out: Located) -> Any:
    here = out.where(path) or Where(file)
    if len(out.values) > MAX_VALUES:
        raise RecipeError(
            f"more than {MAX_VALUES} values (YAML aliases expanding?); a recipe is a few hundred",
            here,
        )
    if len(path) > MAX_DEPTH:
        raise RecipeError(f"{_dotted(path)}: nested deeper than {MAX_DEPTH} levels", here)
    if isinstance(node, CommentedMap):
        _reject_tag(node, path, out)
        result = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise RecipeError(f"{_dotted(path + (key,))}: keys must be strings", here)
            key_at = _position(node.lc.key, key, here, file)
            out.keys[path + (key,)] = key_at
            # An empty value has no token of its own: point at its key, not the next line.
            out.values[path + (key,)] = (
                key_at if value is None else _position(node.lc.value, key, key_at, file)
            )
            result[key] = _plain(value, file, path + (key,), out)
        return result
    if isinstance(node, CommentedSeq):
        _reject_tag(node, path, out)
        items = []
        for i, value in enumerate(node):
            out.values[path + (i,)] = _position(node.lc.item, i, here, file)
            items.append(_plain(value, file, path + (i,), out))
        return items
    if isinstance(node, TaggedScalar):
        if getattr(node.tag, "value", None) == _STR_TAG:
            return str(node.value)
        _reject_tag(node, path, out)
    if node is None or isinstance(node, (bool, int, float, str)):
        # ruamel's scalar subclasses (ScalarFloat, ...) become builtins
        for kind in (bool, int, float, str):
            if isinstance(node, kind):
                return kind(node)
        return None
    raise RecipeError(f"{_dotted(path)}: unsupported YAML value {type(node).__name__}", here)


def _problem(err: MarkedYAMLError) -> str:
    problem = (err.problem or "").strip()
    if err.context and (not problem or problem.startswith("but ")):
        return f"{err.context.strip()}, {problem}".rstrip(", ")  # "expected X, but found Y"
    return problem or "invalid YAML"


# Parsed files by (path, size, mtime, inode): recipes of one project share their base files and
# presets, and a command loads each once (callers get a copy: merging mutates).
_PARSED: dict[tuple[str, int, int, int], Located] = {}


def load_yaml(file: Path) -> Located:
    """Load one YAML file into plain data with positions; errors name file:line:column."""
    try:
        st = os.stat(file)
        stamp: tuple[str, int, int, int] | None = (
            os.path.abspath(file),
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
        )
    except OSError:
        stamp = None  # read_utf8 names the problem
    if stamp is None or stamp not in _PARSED:
        located = _parse(file)
        if stamp is None:
            return located
        if len(_PARSED) > 4096:  # a long-lived process (tests, a server) stays bounded
            _PARSED.clear()
        _PARSED[stamp] = located
    cached = _PARSED[stamp]
    return Located(copy.deepcopy(cached.data), dict(cached.values), dict(cached.keys))


def _parse(file: Path) -> Located:
    name = str(file)
    text = read_utf8(file, RecipeError, "recipe", MAX_BYTES)
    try:
        node = _yaml().load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Where(name, mark.line + 1, mark.column + 1) if mark else Where(name)
        raise RecipeError(f"invalid YAML: {_problem(err)}", where) from None
    except ReaderError as err:
        before = text[: err.position]
        where = Where(name, before.count("\n") + 1, len(before) - before.rfind("\n"))
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise RecipeError(
            f"invalid YAML: unacceptable character #x{code:04x} (control characters are not allowed)",
            where,
        ) from None
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


def parse_scalar(text: str, where: Where) -> Any:
    """Type a command-line value as a YAML scalar or flow collection (`16`, `true`, `[a, b]`)."""
    located = Located(None)
    located.values[()] = where
    try:
        node = YAML(typ="rt", pure=True).load(text) if text.strip() else None
    except MarkedYAMLError as err:
        raise RecipeError(f"value is not valid YAML ({_problem(err)})", where) from None
    except YAMLError as err:
        raise RecipeError(f"value is not valid YAML ({str(err).splitlines()[0]})", where) from None
    return _plain(node, where.file, (), located)
