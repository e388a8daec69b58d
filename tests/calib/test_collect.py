"""collect_statistics: exact streaming min/max/histograms over calibration frames."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn, write_npz
from onnx import TensorProto, helper

from quantbuild.calib.collect import collect_statistics
from quantbuild.calib.histogram import BINS, bucket_indices
from quantbuild.data.dataset import open_dataset
from quantbuild.errors import DataError
from quantbuild.graph.prepare import prepare_model
from quantbuild.runtime import float_tensors, session, with_outputs

# Only tensors that get a grid: the Conv outputs feeding Relu are fused, and MaxPool/Flatten
# outputs stay on their input's grid.
NAMES = ["input", "r1", "r2", "a2", "gap", "logits"]


def _dataset(path):
    return open_dataset({"tensors": str(path)}, {}, "calibration.data", "recipe.yaml")


@pytest.fixture(scope="module")
def prepared():
    return prepare_model(small_cnn())[0]


def _reference(model, npz_path):
    """Every float tensor of every frame, straight from onnxruntime."""
    names = float_tensors(model)
    runner = session(with_outputs(model, names))
    frames = np.load(npz_path)["input"]
    per_tensor = {n: [] for n in names}
    for frame in frames:
        for name, value in zip(names, runner.run(names, {"input": frame[None]})):
            per_tensor[name].append(value)
    return {n: np.stack(v) for n, v in per_tensor.items()}


def test_min_max_counts_match_numpy_reference(tmp_path, prepared):
    npz = write_npz(tmp_path / "calib.npz", 6, seed=4)
    stats = collect_statistics(prepared, _dataset(npz))
    assert stats["names"].tolist() == NAMES
    assert int(stats["frames"]) == 6
    ref = _reference(prepared, npz)
    for i, name in enumerate(NAMES):
        values = ref[name]
        assert stats["min"][i] == float(values.min()), name
        assert stats["max"][i] == float(values.max()), name
        assert stats["elements"][i] == values.size, name
        assert stats["hist"][i].sum() == values.size, name
        expected = np.bincount(bucket_indices(values), minlength=BINS)
        np.testing.assert_array_equal(stats["hist"][i], expected, err_msg=name)
    # hand-checkable facts about the network
    at = {n: i for i, n in enumerate(NAMES)}
    assert stats["elements"][at["input"]] == 6 * 3 * 8 * 8
    assert stats["elements"][at["r1"]] == 6 * 4 * 8 * 8
    assert stats["elements"][at["logits"]] == 6 * 5
    assert stats["min"][at["r1"]] == 0.0 and stats["min"][at["r2"]] == 0.0


def test_array_shapes_do_not_depend_on_frames(tmp_path, prepared):
    shapes = []
    for frames in (1, 3, 12):
        npz = write_npz(tmp_path / f"calib{frames}.npz", frames, seed=frames)
        stats = collect_statistics(prepared, _dataset(npz))
        assert int(stats["frames"]) == frames
        assert stats["elements"][0] == frames * 3 * 8 * 8
        shapes.append({k: (v.shape, v.dtype) for k, v in stats.items()})
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0]["hist"] == ((len(NAMES), BINS), np.dtype(np.int64))
    assert shapes[0]["min"] == ((len(NAMES),), np.dtype(np.float64))
    assert shapes[0]["frames"] == ((), np.dtype(np.int64))


def test_statistics_are_frame_order_independent(tmp_path, prepared):
    npz = write_npz(tmp_path / "calib.npz", 5, seed=8)
    data = np.load(npz)["input"]
    reversed_npz = tmp_path / "reversed.npz"
    np.savez(reversed_npz, input=data[::-1])
    a = collect_statistics(prepared, _dataset(npz))
    b = collect_statistics(prepared, _dataset(reversed_npz))
    for key in ("min", "max", "elements", "hist"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_nan_input_is_a_data_error(tmp_path, prepared):
    data = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    data[1, 0, 2, 2] = np.nan
    npz = tmp_path / "nan.npz"
    np.savez(npz, input=data)
    with pytest.raises(DataError) as info:
        collect_statistics(prepared, _dataset(npz))
    message = str(info.value)
    assert "'input'" in message and "not finite" in message
    assert "calibration.data" in message and "nan.npz" in message
    assert "\n" not in message


def test_nan_produced_inside_the_model_is_a_data_error(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "x"], ["zero"], name="sub"),
            helper.make_node("Log", ["x"], ["log"], name="log"),
            helper.make_node("Add", ["log", "zero"], ["y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    prepared = prepare_model(model)[0]
    npz = tmp_path / "neg.npz"
    np.savez(npz, x=np.array([[1.0, 2.0, 3.0, 4.0], [1.0, -2.0, 3.0, 4.0]], np.float32))
    with pytest.raises(DataError) as info:
        collect_statistics(prepared, _dataset(npz))
    assert "'log'" in str(info.value)
    # the same model on valid data is fine: log(1) = 0 is the minimum
    ok = tmp_path / "pos.npz"
    np.savez(ok, x=np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    stats = collect_statistics(prepared, _dataset(ok))
    names = stats["names"].tolist()
    assert stats["min"][names.index("log")] == 0.0
    assert stats["max"][names.index("log")] == np.float32(np.log(np.float32(4.0)))
