"""Content-addressed artifact store: `<root>/<stage>/<key[:2]>/<key>/` with a manifest.json.

Entries are published atomically (written in a staging folder, then renamed into place) and
never change afterwards. An entry whose files do not match the sha256 in its manifest is a
cache miss, never a crash; several processes may build into one store at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import uuid

try:
    import fcntl
except ImportError:  # not POSIX: no leases, concurrent builds may compute twice
    fcntl = None  # type: ignore[assignment]
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbuild.errors import StoreError
from quantbuild.store.keys import MANIFEST, canonical_json, digest, entry_path, file_sha256
from quantbuild.store.remote import RemoteStore
from quantbuild.store.signing import sign, signature_problem

LOCKS = ".locks"  # <root>/.locks/<stage>-<key>: build leases (empty files, flock), while held
STAGING = ".tmp-"  # <root>/<stage>/.tmp-<host>-<pid>-<hex>: a build in progress
TRASH = ".trash-"  # <root>/<stage>/<xx>/.trash-<hex>: an entry being deleted

READ_ONLY_HINT = (
    "fix its permissions, or set QUANTBUILD_CACHE_READONLY=1 to build misses into the "
    "project's own store"
)
# When the unwritable store is the project's own, read-only mode cannot help.
OWN_STORE_HINT = (
    "fix its permissions, or set QUANTBUILD_CACHE to a writable folder (a shared store that "
    "must stay read-only needs a writable project folder for the misses)"
)


# Write failures that mean "no room", whatever the file: the store or the disk is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _unwritable(err: OSError, where: str, hint: str = READ_ONLY_HINT) -> StoreError:
    return StoreError(f"cannot write the artifact store ({err.strerror}); {hint}", where)


@dataclass(frozen=True)
class Artifact:
    """A file a stage writes into its store entry; `export` names its copy under
    <out>/<recipe>/ (None: it stays in the store)."""

    file: str
    export: str | None = None


@dataclass(frozen=True)
class Entry:
    """A published store entry."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        """Content digest of the entry's files (what downstream keys depend on)."""
        return str(self.manifest["digest"])

    def path(self, artifact: Artifact | str) -> Path:
        """Where one of the entry's files is."""
        return self.dir / (artifact.file if isinstance(artifact, Artifact) else artifact)

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.manifest.get("meta", {})
        return meta


class BadEntry(Exception):
    """Why an entry folder cannot be used (a miss for builds, a report for `cache verify`)."""


class Store:
    """The artifact store rooted at `root`; with `read_only`, a shared store searched first
    and never written (misses are built into `root`)."""

    def __init__(
        self,
        root: Path,
        read_only: Path | None = None,
        key: bytes | None = None,
        require_signed: bool = False,
        strict: bool = False,
        warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
        remote: RemoteStore | None = None,
    ):
        self.root = Path(root)
        self.read_only = Path(read_only) if read_only else None
        self.key = key  # signs what this process publishes
        self.require_signed = require_signed  # use only entries signed with `key`
        self.strict = strict  # an entry refused for its signature stops the build
        self.warn = warn
        self.remote = remote  # a shared store behind fsspec, read through `root`
        self.hint = READ_ONLY_HINT  # what to do when `root` cannot be written (see Project)
        # Around the wait for another process's lease: a cluster worker hands its thread back
        # while it waits (the holder may need that thread for its own pieces).
        self.while_waiting: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        )
        self._refused: set[Path] = set()  # warned about once per process
        # entry folder -> stamp of its files when their hashes last matched, in this process
        self._verified: dict[Path, tuple[Any, ...]] = {}

    @property
    def roots(self) -> list[Path]:
        """Where entries are looked up, in order."""
        return [self.read_only, self.root] if self.read_only else [self.root]

    def entry_dir(self, stage: str, key: str, root: Path | None = None) -> Path:
        return (root or self.root) / entry_path(stage, key)

    def lookup(self, stage: str, key: str, published: bool = False) -> Entry | None:
        """The entry for (stage, key) if present and intact, else None. `published`: it was
        just published elsewhere (by a cluster worker): ask the remote store directly."""
        for root in self.roots:
            entry = self._load(self.entry_dir(stage, key, root), stage, key, root == self.root)
            if entry is not None:
                return entry
        return self._fetch(stage, key, listed=not published) if self.remote else None

    def refresh(self) -> None:
        """Forget what the remote store listed (a long-lived process, e.g. a cluster worker:
        others publish between two of its lookups)."""
        if self.remote is not None:
            self.remote.forget()

    def _fetch(self, stage: str, key: str, listed: bool = True) -> Entry | None:
        """The remote store's entry for (stage, key), downloaded, checked like a local one and
        installed into `root`; None when it has none (or a bad one: a miss, with a warning)."""
        assert self.remote is not None
        staging = self._staging(stage)
        installed = False
        try:
            manifest = self.remote.fetch(stage, key, staging, listed)
            if manifest is None:
                return None
            try:
                manifest = read_manifest(staging, stage, key)
                if self.require_signed:
                    self._check_signature(staging, manifest)
                verify_files(staging, manifest)
            except BadEntry as err:
                self.warn(f"warning: {self.remote.url} entry {stage}/{key[:12]} not used: {err}")
                self.remote.damaged(stage, key)
                return None
            entry = self._install(staging, stage, key, manifest)
            installed = True
            return entry
        finally:
            if not installed:
                shutil.rmtree(staging, ignore_errors=True)

    def _staging(self, stage: str) -> Path:
        """A new staging folder for an entry of `stage` (named for its writer)."""
        staging = self.root / stage / f"{STAGING}{socket.gethostname()}-{os.getpid()}-{_unique()}"
        try:
            staging.mkdir(parents=True)
        except OSError as err:
            raise _unwritable(err, str(self.root), self.hint) from None
        return staging

    def _load(self, folder: Path, stage: str, key: str, writable: bool = True) -> Entry | None:
        """The entry in `folder`, its files hashed once per process (re-hashed when their size,
        mtime or inode change: a large model is not re-read on every lookup)."""
        try:
            manifest = read_manifest(folder, stage, key)
            if self.require_signed:
                self._check_signature(folder, manifest)
            stamp = file_stamp(folder, manifest)
            if self._verified.get(folder) != stamp:
                verify_files(folder, manifest)
                self._verified[folder] = stamp
                if writable:
                    _touch(folder)  # the folder's mtime is its last use, for `cache gc`
        except BadEntry:
            return None
        return Entry(folder, manifest)

    def _check_signature(self, folder: Path, manifest: dict[str, Any]) -> None:
        assert self.key is not None  # Project refuses require_signed without a key
        problem = signature_problem(manifest, self.key)
        if problem is None:
            return
        if self.strict:
            raise StoreError(
                f"store entry not used: {problem} (store_signed = strict); remove it with "
                "`quantbuild cache verify --fix` or build without --strict to replace it",
                str(folder),
            )
        if folder not in self._refused:
            self._refused.add(folder)
            self.warn(f"warning: store entry {folder} not used: {problem}; rebuilding it")
        raise BadEntry(problem)

    def publish(
        self,
        stage: str,
        key: str,
        build: Callable[[Path], dict[str, Any]],
        record: dict[str, Any],
        replace: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> Entry:
        """Run `build(tmpdir) -> meta` and publish the files it wrote as (stage, key); with
        `replace`, in place of an existing entry (a forced rebuild).

        Under a lease on the key: a second process asking for the same entry waits for the
        first and takes its result instead of computing it again."""
        with self._lease(stage, key, log or self.warn):
            if not replace:
                existing = self._load(self.entry_dir(stage, key), stage, key)
                if existing is None and self.remote is not None:
                    existing = self._fetch(stage, key)
                if existing is not None:
                    return existing  # built by another process while we waited
            entry = self._publish(stage, key, build, record, replace)
            if self.remote is not None:
                self.remote.push(entry.dir, stage, key, entry.manifest)
            return entry

    @contextlib.contextmanager
    def _lease(self, stage: str, key: str, log: Callable[[str], None]) -> Iterator[None]:
        """Exclusive right to build (stage, key) among the processes using this store
        (flock: local disks and NFS with locking; without fcntl, no lease)."""
        if fcntl is None:
            yield
            return
        folder = self.root / LOCKS
        path = folder / f"{stage}-{key}"
        waited = False
        while True:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                handle = open(path, "a+b")  # noqa: SIM115  (closed below)
            except OSError as err:
                raise _unwritable(err, str(self.root), self.hint) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log(f"waiting for another process building this {stage} entry ({key[:12]})")
                    waited = True
                with self.while_waiting():
                    fcntl.flock(handle, fcntl.LOCK_EX)
            try:  # the holder before us removed the file: lock the one at the path now
                current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still holding it: no lease files pile up
            handle.close()  # releases the lock

    def _publish(
        self,
        stage: str,
        key: str,
        build: Callable[[Path], dict[str, Any]],
        record: dict[str, Any],
        replace: bool,
    ) -> Entry:
        for leftover in dead_staging(self.root / stage):  # what killed builds left behind
            shutil.rmtree(leftover, ignore_errors=True)
        staging = self._staging(stage)
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
            if self.key is not None:
                manifest["signature"] = sign(manifest, self.key)
            (staging / MANIFEST).write_text(canonical_json(manifest) + "\n", encoding="utf-8")
            _fsync_tree(staging)
            return self._install(staging, stage, key, manifest, replace)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno not in DISK_FULL:
                raise
            raise StoreError(
                f"cannot write the {stage} artifact into the store ({err.strerror}); free "
                "space there, or point QUANTBUILD_CACHE (doit.cfg `store`) elsewhere",
                str(self.root),
            ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _install(
        self, staging: Path, stage: str, key: str, manifest: dict[str, Any], replace: bool = False
    ) -> Entry:
        """Rename `staging` into place. When another writer got there first, keep its entry:
        same key, same inputs (unless `replace`). A bad entry in the way is discarded, then the
        rename retried."""
        final = self.entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                os.rename(staging, final)
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise _unwritable(err, str(final), self.hint) from None
            else:
                # These bytes were hashed a moment ago: no need to read them again.
                with contextlib.suppress(BadEntry):
                    self._verified[final] = file_stamp(final, manifest)
                return Entry(final, manifest)
            try:
                judged = final.stat().st_ino
            except FileNotFoundError:
                continue  # discarded meanwhile by another process: the path is free again
            existing = None if replace else self._load(final, stage, key)
            if existing is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return existing
            discard(final, judged)
            replace = False  # ours goes in now; a writer racing us publishes the same bytes
        raise StoreError(
            f"other processes keep replacing this entry; check what else writes to {self.root}",
            str(final),
        )

    def remove(self) -> None:
        """Delete the whole (writable) store."""
        shutil.rmtree(self.root, ignore_errors=True)


def read_manifest(folder: Path, stage: str, key: str) -> dict[str, Any]:
    """The manifest of the entry in `folder`, checked for shape, stage and key."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadEntry("no manifest") from None
    except (OSError, ValueError) as err:
        raise BadEntry(f"unreadable manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise BadEntry("malformed manifest")
    if manifest.get("stage") != stage or manifest.get("key") != key:
        raise BadEntry("manifest names another stage or key")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(i, dict) and isinstance(i.get("size"), int) and isinstance(i.get("sha256"), str)
        for i in files.values()
    ):
        raise BadEntry("malformed manifest")
    if manifest.get("digest") != digest({n: i["sha256"] for n, i in files.items()}):
        raise BadEntry("manifest digest does not match its file list")
    return manifest


def file_stamp(folder: Path, manifest: dict[str, Any]) -> tuple[Any, ...]:
    """Size, mtime and inode of every file of an entry; a missing or resized file is bad."""
    stamp = []
    for name, info in sorted(manifest["files"].items()):
        try:
            st = (folder / name).stat()
        except OSError:
            raise BadEntry(f"{name}: missing") from None
        if st.st_size != info["size"]:
            raise BadEntry(f"{name}: {st.st_size} bytes, the manifest says {info['size']}")
        stamp.append((name, info["sha256"], st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every file of an entry against its manifest."""
    for name, info in manifest["files"].items():
        try:
            actual = file_sha256(folder / name)
        except OSError as err:
            raise BadEntry(f"{name}: unreadable ({err.strerror})") from None
        if actual != info["sha256"]:
            raise BadEntry(f"{name}: content does not match its sha256")


def check_entry(
    folder: Path, stage: str, key: str, signed_by: bytes | None = None
) -> dict[str, Any]:
    """Re-read and re-hash an entry from scratch (and, given a key, check it signed the
    entry); raises BadEntry. Returns its manifest."""
    manifest = read_manifest(folder, stage, key)
    if signed_by is not None:
        problem = signature_problem(manifest, signed_by)
        if problem:
            raise BadEntry(problem)
    file_stamp(folder, manifest)
    verify_files(folder, manifest)
    return manifest


def discard(folder: Path, judged: int) -> bool:
    """Delete the entry folder whose inode is `judged`. Entries never change in place, so a
    folder with another inode is a fresh entry another writer published after our check: it
    is put back, never deleted. Returns whether the judged folder was removed."""
    trash = folder.with_name(f"{TRASH}{_unique()}")
    try:
        os.rename(folder, trash)
    except OSError:
        return False  # gone already: another process discarded it
    inode = trash.stat().st_ino
    if inode != judged:
        try:
            os.rename(trash, folder)
            return False
        except OSError:
            pass  # yet another writer published meanwhile: this copy is redundant
    shutil.rmtree(trash, ignore_errors=True)
    return inode == judged


def writer_alive(host: str, pid: int) -> bool:
    """Whether the process that made a staging folder may still run: certainly not when it
    was on this host and its pid is gone; from another host, unknowable (assumed alive)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def dead_staging(stage_dir: Path) -> list[Path]:
    """Staging folders in a stage folder whose writer died on this host (a killed build)."""
    try:
        names = [n for n in os.listdir(stage_dir) if n.startswith(STAGING)]
    except OSError:
        return []
    out = []
    for name in sorted(names):
        owner = staging_owner(name)
        if owner and not writer_alive(*owner):
            out.append(stage_dir / name)
    return out


def staging_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made a staging folder, from its name."""
    host, _, rest = name.removeprefix(STAGING).rpartition("-")[0].rpartition("-")
    return (host, int(rest)) if host and rest.isdigit() else None


def _unique() -> str:
    return uuid.uuid4().hex[:12]


def _touch(folder: Path) -> None:
    # Best effort: in a store we may read but not write, an entry's age is only informative.
    with contextlib.suppress(OSError):
        os.utime(folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
