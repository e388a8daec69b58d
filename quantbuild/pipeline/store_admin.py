"""Store maintenance behind `quantbuild cache`: list, verify and garbage-collect entries.

Works from the folder layout (`<root>/<stage>/<key[:2]>/<key>/`), so a damaged entry is listed
and reported rather than skipped. Only folders under known stage names whose names are keys
are ever touched, so a store pointed at the wrong folder loses nothing else.
"""

from __future__ import annotations

import shutil
import socket
import string
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantbuild.errors import StoreError
from quantbuild.pipeline.plan import RecipeBuild
from quantbuild.pipeline.project import Project
from quantbuild.stages import BY_NAME
from quantbuild.store.entries import (
    LOCKS,
    STAGING,
    TRASH,
    BadEntry,
    check_entry,
    discard,
    staging_owner,
    writer_alive,
)

LEFTOVER_AGE = 3600.0  # seconds; a younger staging or trash folder may belong to a live writer
DAY = 86400.0

Out = Callable[[str], None]


@dataclass(frozen=True)
class CacheEntry:
    """An entry folder as found on disk (intact or not)."""

    stage: str
    key: str
    dir: Path
    inode: int
    size: int
    used: float  # folder mtime: when it was published or first looked up by a process


def scan(root: Path) -> list[CacheEntry]:
    """Every entry folder under `root`, in pipeline order, then by key."""
    found = []
    for stage_dir in _stage_dirs(root):
        for folder in sorted(stage_dir.glob("??/*")):
            if folder.parent.name != folder.name[:2] or not _is_key(folder.name):
                continue
            try:
                st = folder.stat()
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            except OSError:
                continue  # removed while we looked
            found.append(
                CacheEntry(stage_dir.name, folder.name, folder, st.st_ino, size, st.st_mtime)
            )
    return found


def used_by(project: Project) -> dict[tuple[str, str], list[str]]:
    """(stage, key) -> the project's recipes whose current build uses that entry."""
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, recipe in project.recipes().items():
        build = RecipeBuild(project, recipe)
        for stage in build.stages:
            key = build.key(stage.name)
            if key is not None:
                users[(stage.name, key)].append(name)
    return users


def leftovers(root: Path, now: float, max_age: float = LEFTOVER_AGE) -> list[Path]:
    """Staging folders of writers that are gone (killed builds), and trash folders and lease
    files older than `max_age`."""
    candidates: list[Path] = list(root.glob(f"{LOCKS}/*"))  # leases of killed builds
    for stage_dir in _stage_dirs(root):
        candidates += stage_dir.glob(f"{STAGING}*")
        candidates += stage_dir.glob(f"??/{TRASH}*")
    old = []
    for path in sorted(candidates):
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        owner = staging_owner(path.name) if path.name.startswith(STAGING) else None
        if owner and not writer_alive(*owner):
            old.append(path)  # its writer died on this host: whatever its age
        elif age >= max_age and not (owner and owner[0] == socket.gethostname()):
            old.append(path)  # old, and its writer not known to be alive here
    return old


def ls(project: Project, out: Out = print) -> None:
    """One line per entry: stage, key prefix, size, age, the recipes that use it now."""
    users = used_by(project)
    now = time.time()
    for root, writable in _layers(project):
        entries = scan(root)
        for e in entries:
            names = ", ".join(users.get((e.stage, e.key), [])) or "-"
            age = human_age(now - e.used)
            out(f"{e.stage:9} {e.key[:12]}  {human_size(e.size):>9}  {age:>4}  {names}")
        total = human_size(sum(e.size for e in entries))
        out(
            f"{_count(len(entries), 'entry')}, {total} in {root}"
            + ("" if writable else " (read-only)")
        )


def verify(project: Project, fix: bool = False, out: Out = print) -> None:
    """Re-hash every entry (and check its signature when the project uses only signed ones);
    with `fix`, remove the bad ones. Raises StoreError if any remain."""
    remaining, stuck = 0, False
    store = project.store
    signed_by = store.key if store.require_signed else None  # forged entries are bad too
    for root, writable in _layers(project):
        entries = scan(root)
        bad = removed = 0
        for e in entries:
            try:
                check_entry(e.dir, e.stage, e.key, signed_by)
                continue
            except BadEntry as err:
                problem = str(err)
            bad += 1
            if fix and writable and discard(e.dir, e.inode):
                removed += 1
                out(f"removed bad {e.stage} {e.key[:12]}: {problem}")
            else:
                out(f"bad {e.stage} {e.key[:12]}: {problem}")
        remaining += bad - removed
        stuck |= bad > removed and not writable
        note = f", {removed} removed" if removed else ""
        out(f"verified {_count(len(entries), 'entry')} in {root}: {bad} bad{note}")
    if remaining:
        fix_hint = (
            "run `quantbuild cache verify --fix` without QUANTBUILD_CACHE_READONLY/store_readonly"
            if stuck
            else "remove them with `quantbuild cache verify --fix`"
        )
        raise StoreError(
            f"{_count(remaining, 'bad entry')} (builds treat them as misses); {fix_hint}",
            str(project.store.read_only if stuck else project.store.root),
        )


def gc(project: Project, keep_days: float = 0.0, dry_run: bool = False, out: Out = print) -> None:
    """Remove entries no recipe of the project uses now (unless used within `keep_days`) and
    leftover staging/trash folders; with `dry_run`, only say what would go."""
    users = used_by(project)  # before anything is removed: a broken recipe removes nothing
    now = time.time()
    verb = "would remove" if dry_run else "removed"
    for root, writable in _layers(project):
        if not writable:
            out(f"skipped {root} (read-only)")
            continue
        removed, freed, kept = 0, 0, 0
        for e in scan(root):
            age = now - e.used
            if (e.stage, e.key) in users or age < keep_days * DAY:
                kept += 1
            elif dry_run or discard(e.dir, e.inode):
                removed += 1
                freed += e.size
                size = human_size(e.size)
                out(f"{verb} {e.stage:9} {e.key[:12]}  {size:>9}  unused {human_age(age)}")
            else:
                kept += 1  # republished by a build meanwhile
        stale = leftovers(root, now)
        for path in stale:
            if not dry_run:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            out(f"{verb} {path.relative_to(root)}")
        out(
            f"{verb} {_count(removed, 'entry')} ({human_size(freed)}) and "
            f"{_count(len(stale), 'leftover folder')}, kept {kept} in {root}"
        )


def human_size(size: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    return f"{size:.0f}B" if unit == 0 else f"{size:.1f}{units[unit]}"


def human_age(seconds: float) -> str:
    for unit, length in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= length:
            return f"{seconds // length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _layers(project: Project) -> list[tuple[Path, bool]]:
    return [(root, root == project.store.root) for root in project.store.roots]


def _stage_dirs(root: Path) -> list[Path]:
    return [root / stage for stage in BY_NAME if (root / stage).is_dir()]


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in string.hexdigits for c in name)
