"""Array files read frame by frame with bounded memory.

.npy files and the members of uncompressed .npz archives (what `np.savez` writes) are read
one frame at a time with positioned reads, so memory does not depend on the number of frames.
Members of compressed archives cannot be read that way and are decompressed once per file.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LOCAL_HEADER = 30  # fixed part of a zip local file header
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


@dataclass(frozen=True)
class FileArray:
    """A C-ordered array stored at `offset` in a file; frames are read on demand."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def frame(self, index: int) -> np.ndarray:
        """Element `index` of the first axis, with that axis kept (length 1)."""
        count = int(np.prod(self.shape[1:], dtype=np.int64))
        size = count * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, self.offset + index * size)
        finally:
            os.close(fd)
        if len(data) != size:
            raise ValueError(f"{self.path.name} is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((1, *self.shape[1:]))

    def whole(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            count = int(np.prod(self.shape, dtype=np.int64))
            return np.fromfile(f, dtype=self.dtype, count=count).reshape(self.shape)


def _read_header(f, path: Path, start: int) -> FileArray | None:
    f.seek(start)
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
        return None
    shape, fortran, dtype = _HEADER_READERS[version](f)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects; only numeric arrays are read")
    if fortran and len(shape) > 1:
        return None
    return FileArray(path, f.tell(), dtype, tuple(shape))


def open_arrays(path: Path) -> dict[str, FileArray | np.ndarray]:
    """Name -> array of a .npy ("" for its single array) or .npz file. Never unpickles."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            array: FileArray | np.ndarray | None = _read_header(f, path, 0)
        return {"": array if array is not None else np.load(path, allow_pickle=False)}
    arrays: dict[str, FileArray | np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            array = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                header = raw.read(_LOCAL_HEADER)
                name_len = int.from_bytes(header[26:28], "little")
                extra_len = int.from_bytes(header[28:30], "little")
                array = _read_header(
                    raw, path, info.header_offset + _LOCAL_HEADER + name_len + extra_len
                )
            if array is None:
                with archive.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
            arrays[name] = array
    return arrays


def take_frame(array: FileArray | np.ndarray, index: int) -> np.ndarray:
    """Frame `index` (first axis kept) of an opened array."""
    if isinstance(array, FileArray):
        return array.frame(index)
    return array[index : index + 1]


def load_all(array: FileArray | np.ndarray) -> np.ndarray:
    """The whole array in memory."""
    return array.whole() if isinstance(array, FileArray) else np.asarray(array)
