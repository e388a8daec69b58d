"""Deterministic, atomic file writing: same content, same bytes; never a half-written file."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps keep .npz files bit-identical


def file_mode() -> int:
    """The mode a new file gets from the user's umask (mkstemp's own files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a temporary file in the same folder and a rename (synced)."""
    _replace(path, lambda f: f.write(data), sync=True)


def copy_atomic(source: Path, path: Path) -> None:
    """Copy `source` to `path` via a temporary file in the same folder and a rename (not
    synced: for copies of files that are durable elsewhere, e.g. exports of store entries)."""

    def copy(f: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    _replace(path, copy, sync=False)


def _replace(path: Path, fill: Callable[[BinaryIO], object], sync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            fill(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive (deflated) whose bytes depend only on the arrays, in key order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(
                member, np.require(arrays[name], requirements="C"), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an .npz (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
