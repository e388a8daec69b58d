"""Canonical JSON and digests, the cached file hasher, deterministic .npz and atomic writes."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from quantbuild.store.files import load_npz, npz_bytes, write_atomic
from quantbuild.store.keys import FileHasher, canonical_json, digest, file_sha256

# -- canonical JSON and digests ---------------------------------------------------------------


def test_canonical_json_is_sorted_and_compact():
    value = {"b": 1, "a": {"d": [3, 2, {"z": 0, "y": None}], "c": "é"}, "0": True}
    assert canonical_json(value) == '{"0":true,"a":{"c":"é","d":[3,2,{"y":null,"z":0}]},"b":1}'


def test_digest_stable_under_dict_order():
    one = {"model": "m.onnx", "quantization": {"bits": 8, "scale": "float"}, "frames": [1, 2]}
    two = {"frames": [1, 2], "quantization": {"scale": "float", "bits": 8}, "model": "m.onnx"}
    assert canonical_json(one) == canonical_json(two)
    assert digest(one) == digest(two)
    expected = hashlib.sha256(canonical_json(one).encode("utf-8")).hexdigest()
    assert digest(one) == expected
    # but list order and values matter
    assert digest({**one, "frames": [2, 1]}) != digest(one)
    assert digest({**one, "quantization": {"bits": 16, "scale": "float"}}) != digest(one)
    # a known value, so the key scheme cannot drift silently
    assert digest({}) == hashlib.sha256(b"{}").hexdigest()


def test_canonical_json_rejects_nan():
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # several read blocks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# -- FileHasher ---------------------------------------------------------------------------------

SENTINEL = "f" * 64


def _poison(cache_file: Path, path: Path) -> None:
    """Replace the cached digest of `path` by a sentinel: visible only if not re-hashed."""
    cache = json.loads(cache_file.read_text(encoding="utf-8"))
    key = str(path.resolve())
    assert key in cache
    cache[key][3] = SENTINEL
    cache_file.write_text(json.dumps(cache), encoding="utf-8")


def test_file_hasher_persists_and_trusts_an_unchanged_file(tmp_path):
    data_file = tmp_path / "calib.npz"
    data_file.write_bytes(b"A" * 1000)
    cache_file = tmp_path / "state" / "filehashes.json"
    hasher = FileHasher(cache_file)
    assert hasher.sha256(data_file) == hashlib.sha256(b"A" * 1000).hexdigest()
    assert not cache_file.exists()  # saved only on request
    hasher.save()
    cache = json.loads(cache_file.read_text(encoding="utf-8"))
    st = os.stat(data_file)
    assert cache == {
        str(data_file.resolve()): [
            1000,
            st.st_mtime_ns,
            st.st_ino,
            hashlib.sha256(b"A" * 1000).hexdigest(),
        ]
    }
    assert [p.name for p in cache_file.parent.iterdir()] == ["filehashes.json"]  # no temp left
    _poison(cache_file, data_file)
    # a new hasher loads the cache and does not re-read the unchanged file
    assert FileHasher(cache_file).sha256(data_file) == SENTINEL


def test_file_hasher_rehashes_when_size_changes(tmp_path):
    data_file = tmp_path / "calib.npz"
    data_file.write_bytes(b"A" * 1000)
    cache_file = tmp_path / "hashes.json"
    hasher = FileHasher(cache_file)
    hasher.sha256(data_file)
    hasher.save()
    _poison(cache_file, data_file)
    data_file.write_bytes(b"B" * 1001)
    assert FileHasher(cache_file).sha256(data_file) == hashlib.sha256(b"B" * 1001).hexdigest()


def test_file_hasher_rehashes_when_mtime_changes(tmp_path):
    data_file = tmp_path / "calib.npz"
    data_file.write_bytes(b"A" * 1000)
    cache_file = tmp_path / "hashes.json"
    hasher = FileHasher(cache_file)
    hasher.sha256(data_file)
    hasher.save()
    _poison(cache_file, data_file)
    st = os.stat(data_file)
    data_file.write_bytes(b"C" * 1000)  # same size, same inode
    os.utime(data_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fresh = FileHasher(cache_file)
    assert fresh.sha256(data_file) == hashlib.sha256(b"C" * 1000).hexdigest()
    # and the new digest is persisted
    fresh.save()
    assert FileHasher(cache_file).sha256(data_file) == hashlib.sha256(b"C" * 1000).hexdigest()
    assert json.loads(cache_file.read_text())[str(data_file.resolve())][3] != SENTINEL


def test_file_hasher_rehashes_a_replaced_file(tmp_path):
    data_file = tmp_path / "calib.npz"
    data_file.write_bytes(b"A" * 1000)
    st = os.stat(data_file)
    cache_file = tmp_path / "hashes.json"
    hasher = FileHasher(cache_file)
    hasher.sha256(data_file)
    hasher.save()
    _poison(cache_file, data_file)
    # a new file renamed into place, with the old size and mtime: only the inode differs
    keep = tmp_path / "keep"
    keep.write_bytes(b"x")  # keeps the old inode number from being reused
    os.rename(data_file, tmp_path / "old")
    replacement = tmp_path / "new"
    replacement.write_bytes(b"D" * 1000)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(replacement, data_file)
    assert os.stat(data_file).st_ino != st.st_ino
    assert FileHasher(cache_file).sha256(data_file) == hashlib.sha256(b"D" * 1000).hexdigest()


def test_file_hasher_unreadable_cache_is_a_cold_start(tmp_path):
    data_file = tmp_path / "calib.npz"
    data_file.write_bytes(b"E" * 10)
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{broken", encoding="utf-8")
    hasher = FileHasher(cache_file)
    assert hasher.sha256(data_file) == hashlib.sha256(b"E" * 10).hexdigest()
    hasher.save()
    assert json.loads(cache_file.read_text())[str(data_file.resolve())][0] == 10


def test_file_hasher_without_cache_file(tmp_path):
    data_file = tmp_path / "x"
    data_file.write_bytes(b"abc")
    hasher = FileHasher()
    assert hasher.sha256(data_file) == hashlib.sha256(b"abc").hexdigest()
    hasher.save()  # nothing to write to
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


# -- npz_bytes ------------------------------------------------------------------------------------


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "min": rng.normal(size=10),
        "hist": rng.integers(0, 100, (3, 65536)),
        "names": np.array(["input", "conv1_out", "logits"]),
        "frames": np.array(12, dtype=np.int64),
        "scale": np.float32(0.25) * np.ones((), np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 3)).astype(np.float32)),
        "view": rng.normal(size=(6, 6))[::2, ::-1],
    }


def test_npz_bytes_is_bit_identical_across_calls_and_key_order():
    arrays = _arrays()
    first = npz_bytes(arrays)
    assert npz_bytes(arrays) == first
    assert npz_bytes(dict(reversed(list(arrays.items())))) == first
    copies = {k: np.array(v, copy=True) for k, v in arrays.items()}
    assert npz_bytes(copies) == first
    # content matters
    changed = dict(arrays, frames=np.array(13, dtype=np.int64))
    assert npz_bytes(changed) != first


def test_npz_bytes_round_trip_keeps_values_dtypes_and_0d(tmp_path):
    arrays = _arrays()
    path = tmp_path / "stats.npz"
    path.write_bytes(npz_bytes(arrays))
    loaded = load_npz(path)
    assert sorted(loaded) == sorted(arrays)
    for name, value in arrays.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert loaded["frames"].ndim == 0 and int(loaded["frames"]) == 12
    assert loaded["scale"].ndim == 0
    # also readable by numpy directly from memory
    with np.load(io.BytesIO(npz_bytes(arrays))) as npz:
        assert npz["frames"].shape == ()


def test_npz_bytes_refuses_object_arrays():
    with pytest.raises(ValueError):
        npz_bytes({"bad": np.array([{"a": 1}], dtype=object)})


# -- write_atomic -----------------------------------------------------------------------------------


def test_write_atomic_writes_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "folder" / "out.json"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
