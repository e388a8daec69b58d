"""Store keys and layout: canonical JSON, sha256 keys, file digests (cached by path, size and
mtime) and where an entry lives under a store root."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from quantbuild.store.files import write_atomic

MANIFEST = "manifest.json"  # an entry's file list, hashes and record; written last


def entry_path(stage: str, key: str) -> str:
    """Where an entry lives under a store's root, local or remote: <stage>/<key[:2]>/<key>."""
    return f"{stage}/{key[:2]}/{key}"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of a value."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FileHasher:
    """File digests, re-hashed only when a file's size, mtime or inode changed."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self._cache: dict[str, list[Any]] = {}  # path -> [size, mtime_ns, inode, sha256]
        self._dirty = False
        self._lock = threading.Lock()  # a cluster build's client runs tasks in threads
        if cache_file and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._cache = {}  # an unreadable cache is only a slower start

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        key = os.path.abspath(path)  # no resolve(): a syscall per path component, per file
        cached = self._cache.get(key)
        if cached and cached[:3] == stamp:
            return str(cached[3])
        value = file_sha256(path)
        with self._lock:
            self._cache[key] = stamp + [value]
            self._dirty = True
        return value

    def save(self) -> None:
        """Persist the cache atomically (best effort: a failure only costs re-hashing)."""
        if not (self.cache_file and self._dirty):
            return
        with self._lock:
            data = json.dumps(self._cache).encode("utf-8")
            self._dirty = False
        with contextlib.suppress(OSError):
            write_atomic(self.cache_file, data)
