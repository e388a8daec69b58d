"""open_dataset / Dataset.load on real image folders and .npy/.npz files."""

from __future__ import annotations

import numpy as np
import pytest
from builders import write_images, write_npz
from PIL import Image

from quantbuild.data.dataset import InputSpec, open_dataset
from quantbuild.errors import DataError, Where

WHERE = Where("r.yaml", 4, 9)
FIELD = "calibration.data"
INPUT = [InputSpec("input", (1, 3, 8, 8))]


def _open(section: dict, preprocess: dict | None = None):
    return open_dataset(section, preprocess or {}, FIELD, WHERE)


def _png(path, value, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)
    return path


def _rel(dataset, root) -> list[str]:
    return [f.file.relative_to(root).as_posix() for f in dataset.frames]


# --- image folders ----------------------------------------------------------------------


def test_image_folder_with_class_subfolders_and_folder_labels(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=2, classes=3)
    ds = _open({"images": str(root), "labels": "folders"})
    assert ds.kind == "images"
    assert ds.root == root
    assert _rel(ds, root) == ["0/0.png", "0/1.png", "1/0.png", "1/1.png", "2/0.png", "2/1.png"]
    assert [f.label for f in ds.frames] == [0, 0, 1, 1, 2, 2]
    assert [f.index for f in ds.frames] == [None] * 6
    assert ds.has_labels
    assert ds.files() == [f.file for f in ds.frames]


def test_integer_folder_names_are_the_class_numbers(tmp_path):
    root = tmp_path / "imgs"
    for name in ("7", "10", "3", "007"):
        _png(root / name / "a.png", 1)
    ds = _open({"images": str(root), "labels": "folders"})
    # sorted by relative path (as text), labels are the numbers themselves
    assert _rel(ds, root) == ["007/a.png", "10/a.png", "3/a.png", "7/a.png"]
    assert [f.label for f in ds.frames] == [7, 10, 3, 7]


def test_non_integer_folder_names_are_numbered_in_sorted_order(tmp_path):
    root = tmp_path / "imgs"
    for name in ("dog", "cat", "bird"):
        _png(root / name / "x.png", 1)
        _png(root / name / "y.png", 2)
    _png(root / "cat" / "deep" / "z.png", 3)  # class = first sub-folder
    ds = _open({"images": str(root), "labels": "folders"})
    assert _rel(ds, root) == [
        "bird/x.png",
        "bird/y.png",
        "cat/deep/z.png",
        "cat/x.png",
        "cat/y.png",
        "dog/x.png",
        "dog/y.png",
    ]
    assert [f.label for f in ds.frames] == [0, 0, 1, 1, 1, 2, 2]


def test_mixed_folder_names_are_numbered_in_sorted_order(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "cat" / "a.png", 1)
    _png(root / "1" / "a.png", 1)
    _png(root / "20" / "a.png", 1)
    ds = _open({"images": str(root), "labels": "folders"})
    assert _rel(ds, root) == ["1/a.png", "20/a.png", "cat/a.png"]
    assert [f.label for f in ds.frames] == [0, 1, 2]


def test_folder_labels_need_subfolders(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "0" / "a.png", 1)
    _png(root / "top.png", 1)
    with pytest.raises(DataError) as info:
        _open({"images": str(root), "labels": "folders"})
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data.labels: 'folders' needs class sub-folders; top.png is at the top"
    )


def test_labels_text_file(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "b" / "2.png", 1)
    _png(root / "a" / "1.png", 1)
    _png(root / "c.png", 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("# path label\n\na/1.png 4\nb/2.png, 9\n./c.png 0\n", encoding="utf-8")
    ds = _open({"images": str(root), "labels": str(labels)})
    assert _rel(ds, root) == ["a/1.png", "b/2.png", "c.png"]
    assert [f.label for f in ds.frames] == [4, 9, 0]
    assert ds.has_labels


def test_labels_text_file_missing_an_image(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "1.png", 1)
    _png(root / "a" / "2.png", 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("a/1.png 4\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _open({"images": str(root), "labels": str(labels)})
    assert (
        str(info.value) == "r.yaml:4:9: calibration.data.labels: no label for a/2.png in labels.txt"
    )


def test_labels_text_file_bad_line_names_the_line(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "1.png", 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("a/1.png 4\na/2.png cat\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _open({"images": str(root), "labels": str(labels)})
    assert str(info.value) == f"{labels}:2:1: expected 'relative/path label' per line"


def test_image_folder_without_labels(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=1, classes=2)
    ds = _open({"images": str(root)})
    assert [f.label for f in ds.frames] == [None, None]
    assert not ds.has_labels


def test_image_folder_ignores_other_files_and_accepts_upper_case_suffixes(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "b.PNG", 1)
    _png(root / "a.png", 1)
    (root / "notes.txt").write_text("x", encoding="utf-8")
    (root / "dir.png").mkdir()
    (root / "dir.png" / "c.png").write_bytes((root / "a.png").read_bytes())
    ds = _open({"images": str(root)})
    assert _rel(ds, root) == ["a.png", "b.PNG", "dir.png/c.png"]


def test_single_image_file(tmp_path):
    image = _png(tmp_path / "one.png", 5)
    ds = _open({"images": str(image)})
    assert [f.file for f in ds.frames] == [image]
    np.testing.assert_array_equal(ds.load(ds.frames[0], INPUT)["input"], np.full((1, 3, 8, 8), 5))


def test_image_frames_load_as_preprocessed_tensors(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=1, classes=2, size=10)
    ds = _open({"images": str(root)}, {"mean": [10.0], "scale": [0.5]})
    feed = ds.load(ds.frames[1], [InputSpec("input", (1, 3, 10, 10))])
    pixels = np.asarray(Image.open(root / "1" / "0.png"), dtype=np.float32)
    expected = ((pixels - 10.0) * 0.5).transpose(2, 0, 1)[None]
    assert list(feed) == ["input"]
    assert feed["input"].dtype == np.float32
    np.testing.assert_array_equal(feed["input"], expected)


def test_image_shape_mismatch_names_the_frame_and_expected_shape(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=1, classes=1, size=10)
    ds = _open({"images": str(root)})
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[0], INPUT)
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data: frame 0/0.png has shape [1, 3, 10, 10] but model input "
        "'input' expects [1, 3, 8, 8]; fix preprocess (color, resize, crop, layout)"
    )
    assert info.value.exit_code == 4


def test_symbolic_dimensions_accept_any_size(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=1, classes=1, size=10)
    ds = _open({"images": str(root)})
    spec = [InputSpec("input", (None, 3, None, None))]
    assert ds.load(ds.frames[0], spec)["input"].shape == (1, 3, 10, 10)
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[0], [InputSpec("input", (None, 1, None, None))])
    assert "expects ['?', 1, '?', '?']" in str(info.value)


def test_undecodable_image_is_a_data_error(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "broken.png").write_bytes(b"not a png")
    ds = _open({"images": str(root)})
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[0], INPUT)
    assert str(info.value).startswith(
        f"r.yaml:4:9: calibration.data: cannot decode image {root / 'broken.png'}: "
    )


@pytest.mark.parametrize("kind", ["images", "tensors"])
def test_empty_folder_is_a_data_error_naming_the_folder(tmp_path, kind):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "readme.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _open({kind: str(root)})
    what = "images (.png .jpg ...)" if kind == "images" else ".npy/.npz frames"
    assert str(info.value) == (
        f"r.yaml:4:9: calibration.data.{kind}: no {what} found in {root}; "
        "point it at a non-empty dataset"
    )


# --- tensors ------------------------------------------------------------------------------


def test_npz_with_per_input_arrays_and_labels(tmp_path):
    a = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    b = -np.arange(5 * 3, dtype=np.float64).reshape(5, 3)
    path = tmp_path / "multi.npz"
    np.savez(path, a=a, b=b, labels=np.array([3, 1, 4, 1, 5]))
    ds = _open({"tensors": str(path), "labels": "labels"})
    assert ds.kind == "tensors"
    assert [(f.file, f.index) for f in ds.frames] == [(path, i) for i in range(5)]
    assert [f.label for f in ds.frames] == [3, 1, 4, 1, 5]
    assert ds.has_labels
    assert ds.files() == [path]
    feed = ds.load(ds.frames[2], [InputSpec("a", (1, 2)), InputSpec("b", (1, 3))])
    assert sorted(feed) == ["a", "b"]
    np.testing.assert_array_equal(feed["a"], a[2:3])
    np.testing.assert_array_equal(feed["b"], b[2:3])
    assert feed["b"].dtype == np.float32


def test_npz_without_labels_field_has_no_labels(tmp_path):
    path = write_npz(tmp_path / "c.npz", 4)
    ds = _open({"tensors": str(path)})
    assert len(ds.frames) == 4
    assert not ds.has_labels


def test_npz_missing_the_labels_array(tmp_path):
    path = write_npz(tmp_path / "c.npz", 4)
    with pytest.raises(DataError) as info:
        _open({"tensors": str(path), "labels": "labels"})
    assert str(info.value) == "r.yaml:4:9: calibration.data.labels: c.npz has no array 'labels'"


def test_npz_labels_array_shorter_than_the_frames(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, input=np.zeros((5, 3, 8, 8), np.float32), labels=np.arange(3))
    with pytest.raises(DataError) as info:
        _open({"tensors": str(path), "labels": "labels"})
    assert "labels" in str(info.value)
    assert str(info.value).startswith("r.yaml:4:9: calibration.data.")


def test_multi_input_npz_missing_an_input_lists_the_arrays(tmp_path):
    path = tmp_path / "multi.npz"
    np.savez(path, a=np.zeros((3, 2), np.float32), labels=np.arange(3))
    ds = _open({"tensors": str(path), "labels": "labels"})
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[0], [InputSpec("a", (1, 2)), InputSpec("b", (1, 3))])
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data: multi.npz has no array 'b'; arrays: a, labels; "
        "name one array per model input"
    )


def test_npz_arrays_with_different_frame_counts(tmp_path):
    path = tmp_path / "multi.npz"
    np.savez(path, a=np.zeros((5, 2), np.float32), b=np.zeros((4, 2), np.float32))
    with pytest.raises(DataError) as info:
        _open({"tensors": str(path)})
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data.tensors: arrays in multi.npz have different frame counts [4, 5]"
    )


def test_tensor_shape_mismatch_names_the_frame_and_expected_shape(tmp_path):
    path = write_npz(tmp_path / "calib.npz", 3, shape=(1, 3, 4, 4))
    ds = _open({"tensors": str(path)})
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[1], INPUT)
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data: frame calib.npz[1] has shape [1, 3, 4, 4] but model input "
        "'input' expects [1, 3, 8, 8]; fix the arrays"
    )


def test_compressed_npz_loads_the_same_values(tmp_path):
    data = np.arange(3 * 3 * 8 * 8, dtype=np.float32).reshape(3, 3, 8, 8)
    np.savez(tmp_path / "plain.npz", input=data)
    np.savez_compressed(tmp_path / "packed.npz", input=data)
    for name in ("plain.npz", "packed.npz"):
        ds = _open({"tensors": str(tmp_path / name)})
        loaded = [feed["input"] for _, feed in ds.iterate(INPUT)]
        assert len(loaded) == 3
        np.testing.assert_array_equal(np.concatenate(loaded), data)


def test_npy_first_axis_is_frames(tmp_path):
    data = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
    np.save(tmp_path / "x.npy", data)
    ds = _open({"tensors": str(tmp_path / "x.npy")})
    assert [f.index for f in ds.frames] == [0, 1, 2, 3]
    feed = ds.load(ds.frames[3], INPUT)
    np.testing.assert_array_equal(feed["input"], data[3:4])


def test_not_an_npz_is_a_data_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("not a zip", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _open({"tensors": str(path)})
    assert str(info.value).startswith(f"r.yaml:4:9: calibration.data.tensors: cannot read {path}: ")


def test_folder_of_per_frame_files_in_sorted_order(tmp_path):
    root = tmp_path / "frames"
    (root / "sub").mkdir(parents=True)
    np.save(root / "f2.npy", np.full((3, 8, 8), 2, np.float32))  # no batch axis
    np.save(root / "f10.npy", np.full((1, 3, 8, 8), 10, np.float32))  # with batch axis
    np.savez(root / "f1.npz", input=np.full((3, 8, 8), 1, np.float32))
    np.save(root / "sub" / "a.npy", np.full((3, 8, 8), 7, np.float32))
    (root / "notes.txt").write_text("x", encoding="utf-8")
    ds = _open({"tensors": str(root)})
    assert _rel(ds, root) == ["f1.npz", "f10.npy", "f2.npy", "sub/a.npy"]
    assert [f.index for f in ds.frames] == [None] * 4
    values = []
    for _, feed in ds.iterate(INPUT):
        assert feed["input"].shape == (1, 3, 8, 8)
        assert feed["input"].dtype == np.float32
        values.append(float(feed["input"][0, 0, 0, 0]))
    assert values == [1.0, 10.0, 2.0, 7.0]


def test_folder_of_frames_skips_directories_named_like_arrays(tmp_path):
    root = tmp_path / "frames"
    (root / "old.npy").mkdir(parents=True)
    np.save(root / "old.npy" / "a.npy", np.zeros((3, 8, 8), np.float32))
    np.save(root / "b.npy", np.zeros((3, 8, 8), np.float32))
    ds = _open({"tensors": str(root)})
    assert _rel(ds, root) == ["b.npy", "old.npy/a.npy"]


def test_per_frame_file_with_wrong_shape_names_it(tmp_path):
    root = tmp_path / "frames"
    root.mkdir()
    np.save(root / "a.npy", np.zeros((3, 8, 8), np.float32))
    np.save(root / "b.npy", np.zeros((3, 8, 7), np.float32))
    ds = _open({"tensors": str(root)})
    ds.load(ds.frames[0], INPUT)
    with pytest.raises(DataError) as info:
        ds.load(ds.frames[1], INPUT)
    assert str(info.value) == (
        "r.yaml:4:9: calibration.data: frame b.npy has shape [1, 3, 8, 7] but model input "
        "'input' expects [1, 3, 8, 8]; fix the arrays"
    )


# --- order and sampling -------------------------------------------------------------------


def test_order_does_not_depend_on_creation_order(tmp_path):
    names = ["b/2.png", "a/10.png", "a/9.png", "c.png", "a/1.png"]
    for i, name in enumerate(names):
        _png(tmp_path / "one" / name, i)
    for i, name in enumerate(reversed(names)):
        _png(tmp_path / "two" / name, i)
    one = _rel(_open({"images": str(tmp_path / "one")}), tmp_path / "one")
    two = _rel(_open({"images": str(tmp_path / "two")}), tmp_path / "two")
    assert one == two == ["a/1.png", "a/10.png", "a/9.png", "b/2.png", "c.png"]


def _indices(path, **section) -> list[int]:
    return [f.index for f in _open({"tensors": str(path), **section}).frames]


def test_limit_with_seed_is_deterministic_and_sorted(tmp_path):
    path = write_npz(tmp_path / "c.npz", 20)
    first = _indices(path, limit=5, seed=3)
    assert first == _indices(path, limit=5, seed=3)
    assert len(first) == 5
    assert len(set(first)) == 5
    assert first == sorted(first)
    assert all(0 <= i < 20 for i in first)


def test_limit_sampling_depends_on_the_seed(tmp_path):
    path = write_npz(tmp_path / "c.npz", 20)
    samples = {tuple(_indices(path, limit=5, seed=s)) for s in range(4)}
    assert len(samples) == 4
    assert _indices(path, limit=5) == _indices(path, limit=5, seed=0)


def test_limit_samples_image_frames_with_their_labels(tmp_path):
    root = write_images(tmp_path / "imgs", per_class=4, classes=3, size=4)
    full = _open({"images": str(root), "labels": "folders"}).frames
    sampled = _open({"images": str(root), "labels": "folders", "limit": 5, "seed": 1}).frames
    assert len(sampled) == 5
    positions = [full.index(f) for f in sampled]
    assert positions == sorted(positions)
    assert all(f.label == int(f.file.parent.name) for f in sampled)


@pytest.mark.parametrize("limit", [20, 21, 100])
def test_limit_at_or_above_the_size_keeps_every_frame(tmp_path, limit):
    path = write_npz(tmp_path / "c.npz", 20)
    assert _indices(path, limit=limit, seed=7) == list(range(20))


def test_arrays_are_fed_in_the_model_inputs_own_element_types(tmp_path):
    path = tmp_path / "tokens.npz"
    ids = np.array([[101, 7592, 102, 0], [101, 2088, 999, 102]], dtype=np.int64)
    np.savez(path, input_ids=ids, attention_mask=(ids > 0).astype(np.float64))
    ds = _open({"tensors": str(path)})
    specs = [
        InputSpec("input_ids", (1, None), np.dtype(np.int64)),
        InputSpec("attention_mask", (1, None), np.dtype(np.int64)),
    ]
    feed = ds.load(ds.frames[1], specs)
    assert feed["input_ids"].dtype == np.int64 and feed["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(feed["input_ids"], ids[1:2])
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 1, 1]])
    masks = ds.load(ds.frames[0], [InputSpec("attention_mask", (1, None), np.dtype(bool))])
    assert masks["attention_mask"].dtype == bool


def test_fractional_values_for_an_integer_input_are_an_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, input_ids=np.array([[1.0, 2.5]]))
    ds = _open({"tensors": str(path)})
    with pytest.raises(DataError, match="'input_ids' holds fractional values.*int64"):
        ds.load(ds.frames[0], [InputSpec("input_ids", (1, None), np.dtype(np.int64))])


def test_strings_for_a_numeric_input_are_an_error(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, input=np.array([["a", "b"]]))
    ds = _open({"tensors": str(path)})
    with pytest.raises(DataError, match="'input' holds <U1 values.*float32; store numbers"):
        ds.load(ds.frames[0], [InputSpec("input", (1, 2), np.dtype(np.float32))])


@pytest.mark.parametrize("labels", [np.array(["cat", "dog"]), np.array([0.5, 1.0])])
def test_labels_that_are_not_integers_are_an_error(tmp_path, labels):
    path = tmp_path / "l.npz"
    np.savez(path, input=np.zeros((2, 1, 4, 4), np.float32), labels=labels)
    with pytest.raises(DataError, match="'labels' in l.npz holds .* store class indices"):
        _open({"tensors": str(path), "labels": "labels"})


def test_a_labels_file_that_is_not_utf8_names_the_line(tmp_path):
    write_images(tmp_path / "imgs", 2)
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"0.png 1\n1.png \xff\n")
    with pytest.raises(DataError) as info:
        _open({"images": str(tmp_path / "imgs"), "labels": str(labels)})
    assert (
        str(info.value)
        == f"{labels}:2:7: not UTF-8 text (byte 0xff); save the labels file as UTF-8"
    )
