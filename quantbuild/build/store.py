"""Content-addressed artifact store: `<root>/<stage>/<key[:2]>/<key>/` with a manifest.json.

Entries are published atomically (written in a temporary folder, then renamed into place);
an entry that cannot be read is a cache miss, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantbuild.build.keys import canonical_json, digest, file_sha256
from quantbuild.errors import StoreError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Entry:
    """A published store entry."""

    dir: Path
    manifest: dict

    @property
    def digest(self) -> str:
        """Content digest of the entry's files (what downstream keys depend on)."""
        return self.manifest["digest"]

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta", {})


class Store:
    """The artifact store rooted at `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def lookup(self, stage: str, key: str) -> Entry | None:
        """The entry for (stage, key) if present and intact, else None."""
        folder = self.entry_dir(stage, key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("key") != key or manifest.get("stage") != stage:
                return None
            for name, info in manifest["files"].items():
                if (folder / name).stat().st_size != info["size"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return Entry(folder, manifest)

    def publish(self, stage: str, key: str, build: Callable[[Path], dict], record: dict) -> Entry:
        """Run `build(tmpdir) -> meta` and publish the files it wrote as (stage, key)."""
        final = self.entry_dir(stage, key)
        staging = self.root / stage / f".tmp-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
        except OSError as err:
            raise StoreError(f"cannot write the artifact store: {err}", str(self.root)) from None
        try:
            meta = build(staging)
            files = {}
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    name = path.relative_to(staging).as_posix()
                    files[name] = {"sha256": file_sha256(path), "size": path.stat().st_size}
            manifest = {
                "stage": stage,
                "key": key,
                "digest": digest({n: f["sha256"] for n, f in files.items()}),
                "files": files,
                "record": record,
                "meta": meta,
            }
            (staging / MANIFEST).write_text(canonical_json(manifest) + "\n", encoding="utf-8")
            _fsync_tree(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                existing = self.lookup(stage, key)
                if existing is not None:  # another writer got there first: same content
                    shutil.rmtree(staging, ignore_errors=True)
                    return existing
                _discard(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Entry(final, manifest)

    def remove(self) -> None:
        """Delete the whole store."""
        shutil.rmtree(self.root, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _discard(folder: Path) -> None:
    trash = folder.with_name(f".trash-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
