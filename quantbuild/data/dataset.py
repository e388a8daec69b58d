"""Datasets as ordered, sampled lists of frames, each loaded on demand (bounded memory)."""

from __future__ import annotations

import dataclasses
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbuild.data.arrays import load_all, open_arrays, take_frame
from quantbuild.data.preprocess import preprocess_image
from quantbuild.errors import DataError, Where
from quantbuild.textfile import read_utf8

# PIL is imported where images are decoded: a no-op build only lists and hashes the files

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
_INT = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (None for symbolic dimensions) and element type."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype = np.dtype(np.float32)  # token ids are int64, attention masks int64/bool


@dataclass(frozen=True)
class FrameRef:
    """One frame: a file, and an index into it for multi-frame arrays."""

    file: Path
    index: int | None = None
    label: int | None = None


@dataclass
class Dataset:
    """A dataset section of a recipe, listed and sampled, not yet loaded."""

    kind: str  # "images" or "tensors"
    root: Path
    frames: list[FrameRef]
    preprocess: dict
    field: str  # e.g. "calibration.data", for messages
    where: Where | str
    # the array file being read: (path, arrays)
    _open: tuple = dataclasses.field(default=(None, None), repr=False)

    @property
    def has_labels(self) -> bool:
        return bool(self.frames) and all(f.label is not None for f in self.frames)

    def describe(self, frame: FrameRef) -> str:
        """A frame as a user finds it: path within the dataset, and index in an array file."""
        try:
            name = (
                frame.file.relative_to(self.root).as_posix()
                if self.root.is_dir()
                else frame.file.name
            )
        except ValueError:
            name = frame.file.name
        return name if frame.index is None else f"{name}[{frame.index}]"

    def subset(self, frames: list[FrameRef]) -> Dataset:
        """The dataset with only `frames` (opening its own files: it may travel to another
        process)."""
        return dataclasses.replace(self, frames=frames, _open=(None, None))

    def shards(self, count: int) -> list[Dataset]:
        """The frames in at most `count` consecutive runs of near-equal size, as datasets."""
        count = max(min(count, len(self.frames)), 1)
        size, extra = divmod(len(self.frames), count)
        parts, start = [], 0
        for part in range(count):
            end = start + size + (part < extra)
            parts.append(self.subset(self.frames[start:end]))
            start = end
        return parts

    def files(self) -> list[Path]:
        """Distinct files the frames come from, in order."""
        return list(dict.fromkeys(f.file for f in self.frames))

    def load(self, frame: FrameRef, inputs: list[InputSpec]) -> dict[str, np.ndarray]:
        """The model feed for one frame, checked against the model inputs."""
        if self.kind == "images":
            if len(inputs) != 1:
                names = ", ".join(repr(spec.name) for spec in inputs)
                raise DataError(
                    f"{self.field}: images feed one model input, but the model has "
                    f"{len(inputs)} ({names}); give tensors: an .npz with one array per input",
                    self.where,
                )
            feed = {inputs[0].name: self._image(frame)}
        else:
            feed = self._tensors(frame, inputs)
        for spec in inputs:
            _check_shape(feed[spec.name], spec, self, frame)
        return feed

    def iterate(self, inputs: list[InputSpec]) -> Iterator[tuple[FrameRef, dict[str, np.ndarray]]]:
        """Frames in order, each loaded just before it is used."""
        for frame in self.frames:
            yield frame, self.load(frame, inputs)

    def _image(self, frame: FrameRef) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(frame.file) as image:
                return preprocess_image(image, self.preprocess)
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(
                f"{self.field}: cannot decode image {frame.file}: {err}", self.where
            ) from None

    def _tensors(self, frame: FrameRef, inputs: list[InputSpec]) -> dict[str, np.ndarray]:
        if self._open[0] != frame.file:
            try:
                self._open = (frame.file, open_arrays(frame.file))
            except (ValueError, OSError, zipfile.BadZipFile) as err:
                raise DataError(
                    f"{self.field}: cannot read {frame.file}: {err}", self.where
                ) from None
        arrays = self._open[1]
        if "" in arrays:  # a .npy file feeds the only input
            arrays = {inputs[0].name: arrays[""]}
        missing = [s.name for s in inputs if s.name not in arrays]
        if missing:
            raise DataError(
                f"{self.field}: {frame.file.name} has no array {missing[0]!r}; "
                f"arrays: {', '.join(sorted(arrays))}; name one array per model input",
                self.where,
            )
        feed = {}
        for spec in inputs:
            array = arrays[spec.name]
            if frame.index is not None:
                array = take_frame(array, frame.index)
            else:
                array = load_all(array)
                if len(spec.shape) == array.ndim + 1:
                    array = array[None]
            feed[spec.name] = _as_input_type(np.asarray(array), spec, self, frame)
        return feed


def _as_input_type(
    array: np.ndarray, spec: InputSpec, dataset: Dataset, frame: FrameRef
) -> np.ndarray:
    """The array in the input's own element type; integer and bool inputs (token ids, masks)
    take only integral values, never a silently truncated float."""
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{dataset.field}: {frame.file.name}: array {spec.name!r} holds {array.dtype} "
            f"values, but the model input is {spec.dtype}; store numbers",
            dataset.where,
        )
    integral = array.dtype.kind != "f" or np.array_equal(array, np.round(array))
    if spec.dtype.kind in "iub" and not integral:
        raise DataError(
            f"{dataset.field}: {frame.file.name}: array {spec.name!r} holds fractional "
            f"values, but the model input is {spec.dtype}; store integers",
            dataset.where,
        )
    return np.array(array, dtype=spec.dtype)


def _check_shape(array: np.ndarray, spec: InputSpec, dataset: Dataset, frame: FrameRef) -> None:
    ok = array.ndim == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, array.shape)
    )
    if not ok:
        want = [d if d is not None else "?" for d in spec.shape]
        hint = (
            "preprocess (color, resize, crop, layout)" if dataset.kind == "images" else "the arrays"
        )
        raise DataError(
            f"{dataset.field}: frame {dataset.describe(frame)} has shape {list(array.shape)} but model input "
            f"{spec.name!r} expects {want}; fix {hint}",
            dataset.where,
        )


def _image_files(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _folder_labels(root: Path, files: list[Path], field: str, where) -> list[int]:
    classes = []
    for f in files:
        parts = f.relative_to(root).parts
        if len(parts) < 2:
            raise DataError(
                f"{field}.labels: 'folders' needs class sub-folders; {f.name} is at the top", where
            )
        classes.append(parts[0])
    names = sorted(set(classes))
    if all(_INT.match(n) for n in names):
        return [int(c) for c in classes]
    index = {n: i for i, n in enumerate(names)}
    return [index[c] for c in classes]


def _file_labels(root: Path, files: list[Path], labels_file: Path, field: str, where) -> list[int]:
    table: dict[str, int] = {}
    text = read_utf8(labels_file, DataError, "labels file")
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not _INT.match(parts[1]):
            raise DataError(
                "expected 'relative/path label' per line", Where(str(labels_file), number, 1)
            )
        table[Path(parts[0]).as_posix()] = int(parts[1])
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel not in table:
            raise DataError(f"{field}.labels: no label for {rel} in {labels_file.name}", where)
        out.append(table[rel])
    return out


def _array_frames(path: Path, field: str, where, labels: str | None) -> list[FrameRef]:
    try:
        arrays = open_arrays(path)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{field}.tensors: cannot read {path}: {err}", where) from None
    data_names = [n for n in arrays if n != labels]
    if not data_names:
        raise DataError(f"{field}.tensors: {path.name} holds no arrays", where)
    counts = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in data_names}
    if len(counts) != 1:
        raise DataError(
            f"{field}.tensors: arrays in {path.name} have different frame counts {sorted(counts)}",
            where,
        )
    label_values = None
    frames = counts.pop()
    if labels:
        if labels not in arrays:
            raise DataError(f"{field}.labels: {path.name} has no array {labels!r}", where)
        raw = load_all(arrays[labels])
        if raw.dtype.kind not in "biuf" or (
            raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw))
        ):
            raise DataError(
                f"{field}.labels: array {labels!r} in {path.name} holds {raw.dtype} values; "
                "store class indices (integers)",
                where,
            )
        label_values = raw.astype(np.int64).reshape(-1).tolist()
        if len(label_values) != frames:
            raise DataError(
                f"{field}.labels: array {labels!r} in {path.name} has {len(label_values)} labels "
                f"for {frames} frames; give one label per frame",
                where,
            )
    return [FrameRef(path, i, label_values[i] if label_values else None) for i in range(frames)]


def open_dataset(section: dict, preprocess: dict, field: str, where: Where | str) -> Dataset:
    """List and sample the frames of a recipe dataset section (deterministic order)."""
    labels = section.get("labels")
    if "images" in section:
        root = Path(section["images"])
        files = _image_files(root) if root.is_dir() else [root]
        label_list: Sequence[int | None]
        if root.is_dir():
            if labels == "folders":
                label_list = _folder_labels(root, files, field, where)
            elif labels:
                label_list = _file_labels(root, files, Path(labels), field, where)
            else:
                label_list = [None] * len(files)
        else:
            label_list = [None]
        frames = [FrameRef(f, None, lab) for f, lab in zip(files, label_list)]
        kind = "images"
    else:
        root = Path(section["tensors"])
        if root.is_dir():
            files = sorted(
                (
                    p
                    for p in root.rglob("*")
                    if p.suffix.lower() in (".npy", ".npz") and p.is_file()
                ),
                key=lambda p: p.relative_to(root).as_posix(),
            )
            frames = [FrameRef(f) for f in files]
        else:
            frames = _array_frames(root, field, where, labels)
        kind = "tensors"
    if not frames:
        what = "images (.png .jpg ...)" if kind == "images" else ".npy/.npz frames"
        raise DataError(
            f"{field}.{kind}: no {what} found in {root}; point it at a non-empty dataset", where
        )
    limit = section.get("limit")
    if limit is not None and limit < len(frames):
        rng = np.random.default_rng(section.get("seed", 0))
        chosen = np.sort(rng.choice(len(frames), size=limit, replace=False))
        frames = [frames[i] for i in chosen]
    return Dataset(kind, root, frames, preprocess, field, where)
