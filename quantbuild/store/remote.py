"""A shared store behind fsspec (S3 or any fsspec URL), read through the local store.

The remote store has the local store's layout: `<url>/<stage>/<key[:2]>/<key>/<files>` and a
manifest.json. Its manifest is written last, so an entry exists for readers only once all its
files are there; a reader downloads the files into a staging folder of the local store, checks
them against the manifest's sha256 (and signature, when the store requires one) and installs
them like a locally built entry. Later lookups are local: a warm build makes no round trip; a
cold one lists each stage's remote entries once, then fetches the hits.

S3: credentials and region come from the usual AWS variables and profiles; the endpoint from
AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (S3-compatible servers: MinIO, SeaweedFS, Ceph).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from quantbuild.errors import StoreError
from quantbuild.store.keys import MANIFEST, entry_path


def is_url(location: str) -> bool:
    """Whether a store location is an fsspec URL rather than a local folder."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme not in ("", "file") and scheme.replace("+", "").isalnum()


def _options(protocol: str) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # fail fast when the server is down: a build should not hang in botocore's retries
    config = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}
    options: dict[str, Any] = {"config_kwargs": config}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


class RemoteStore:
    """Entries under an fsspec URL; `read_only` never writes there."""

    def __init__(self, url: str, read_only: bool = False):
        self.url = url.rstrip("/")
        self.read_only = read_only
        self.protocol = url.split("://", 1)[0]
        self._listed: dict[str, set[str]] = {}  # stage -> keys with a manifest, listed once
        self._bad: set[tuple[str, str]] = set()  # entries found damaged: replaced on publish
        self._checked = False

    @cached_property
    def _location(self) -> tuple[Any, str]:
        # Opened on first use: a no-op build never imports fsspec and its S3 client.
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.url, **_options(self.protocol))
        except (ImportError, ValueError) as err:
            raise StoreError(
                f"cannot open the store {self.url}: {err}; install the package for its "
                "protocol (s3: `pip install 'quantbuild[s3]'`)",
                self.url,
            ) from None
        return fs, str(root)

    @property
    def fs(self) -> Any:
        """The fsspec filesystem."""
        return self._location[0]

    @property
    def root(self) -> str:
        """The store's path on that filesystem (bucket/prefix for S3)."""
        return self._location[1]

    def _dir(self, stage: str, key: str) -> str:
        return f"{self.root}/{entry_path(stage, key)}"

    def _call(self, what: str, action: Callable[..., Any], *args: Any) -> Any:
        """`action(*args)` on the remote store; an unreachable server or a missing bucket is a
        StoreError (a missing file stays FileNotFoundError)."""
        try:
            return action(*args)
        except FileNotFoundError:
            raise
        except Exception as err:  # botocore/aiohttp/fsspec errors have no common base
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StoreError(
                f"the store at {self.url} cannot be used ({what}: {reason}); check the URL, "
                "the endpoint (AWS_ENDPOINT_URL), the credentials and that the bucket exists",
                self.url,
            ) from None

    def check(self) -> None:
        """Fail with one line unless the store's location can be reached (bucket exists);
        once per process, before the first use (a missing bucket stops a build before it
        computes anything)."""
        if self._checked:
            return
        if self.protocol in ("s3", "s3a"):  # elsewhere a folder appears with its first file
            bucket = self.root.split("/", 1)[0]
            try:
                self._call("reaching the bucket", self.fs.info, bucket)
            except FileNotFoundError:
                raise StoreError(
                    f"the store at {self.url} cannot be used: bucket {bucket!r} does not "
                    "exist; create it or fix the URL",
                    self.url,
                ) from None
        self._checked = True

    def forget(self) -> None:
        """Forget the listings (a long-lived process: others publish meanwhile)."""
        self._listed.clear()

    def has(self, stage: str, key: str) -> bool:
        """Whether (stage, key) is published: one listing of the stage per process."""
        if stage not in self._listed:
            self.check()
            pattern = f"{self.root}/{stage}/*/*/{MANIFEST}"
            try:
                found = self._call(f"listing {stage}", self.fs.glob, pattern)
            except FileNotFoundError:
                found = []
            self._listed[stage] = {Path(p).parent.name for p in found}
        return key in self._listed[stage]

    def fetch(self, stage: str, key: str, into: Path, listed: bool = True) -> dict[str, Any] | None:
        """Download (stage, key)'s files and manifest into the folder `into`; its manifest, or
        None when the entry is not (or no longer) there. The caller verifies the files. With
        `listed` False the stage's listing is not consulted (an entry known to have been
        published since, e.g. by a cluster worker)."""
        if listed and not self.has(stage, key):
            return None
        self.check()
        folder = self._dir(stage, key)
        try:
            text = self._call("reading a manifest", self.fs.cat_file, f"{folder}/{MANIFEST}")
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(text)
            names = [str(name) for name in manifest["files"]]
        except (ValueError, KeyError, TypeError):
            names = []  # written as it is: the caller's checks name the problem
            manifest = {}
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = into / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                self.damaged(stage, key)
                return None  # a manifest must not write outside its entry
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._call(f"downloading {name}", self.fs.get_file, f"{folder}/{name}", str(target))
            except FileNotFoundError:
                return None
        (into / MANIFEST).write_bytes(text)
        return dict(manifest)

    def damaged(self, stage: str, key: str) -> None:
        """Note that (stage, key) failed its checks here: the next publish replaces it."""
        self._bad.add((stage, key))

    def push(self, folder: Path, stage: str, key: str, manifest: dict[str, Any]) -> None:
        """Upload a local entry: its files first, the manifest last (readers see all or
        nothing). An entry already published is left as it is (same key, same inputs)."""
        if self.read_only:
            return
        target = self._dir(stage, key)
        if (stage, key) not in self._bad and (
            self.has(stage, key)
            or self._call("checking an entry", self.fs.exists, f"{target}/{MANIFEST}")
        ):
            return
        self._bad.discard((stage, key))
        for name in [*manifest["files"], MANIFEST]:  # the manifest last
            self._call(
                f"uploading {name}", self.fs.put_file, str(folder / name), f"{target}/{name}"
            )
        self._listed.setdefault(stage, set()).add(key)
