"""Array files opened for frame-by-frame reading with bounded memory.

.npy files and the members of uncompressed .npz archives (what `np.savez` writes) are
memory-mapped, so reading frame i touches only frame i. Members of compressed archives
cannot be mapped and are decompressed once per file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

_LOCAL_HEADER = 30  # fixed part of a zip local file header


def _mapped_member(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> np.ndarray | None:
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER)
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
        start = info.header_offset + _LOCAL_HEADER + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        reader = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in reader:
            return None
        shape, fortran, dtype = reader[version](f)
        if dtype.hasobject:
            raise ValueError(f"{info.filename} holds Python objects; only numeric arrays are read")
        offset = f.tell()
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def open_arrays(path: Path) -> dict[str, np.ndarray]:
    """Name -> array (memory-mapped where possible) of a .npy or .npz file. Never unpickles."""
    if path.suffix.lower() == ".npy":
        return {"": np.load(path, mmap_mode="r", allow_pickle=False)}
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            mapped = _mapped_member(path, archive, info)
            if mapped is None:
                with archive.open(info) as member:
                    mapped = np.lib.format.read_array(member, allow_pickle=False)
            arrays[name] = mapped
    return arrays
