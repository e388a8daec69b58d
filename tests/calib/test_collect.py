"""collect_statistics: exact streaming min/max/histograms over calibration frames."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import attention_block, small_cnn, write_npz
from onnx import TensorProto, helper

from quantbuild.calib.collect import collect_statistics, output_forming
from quantbuild.calib.histogram import BINS, bucket_indices
from quantbuild.calib.policy import activation_ranges
from quantbuild.data.dataset import open_dataset
from quantbuild.errors import DataError
from quantbuild.graph.prepare import prepare_model
from quantbuild.quant.params import Grid
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


def _two_head_model() -> onnx.ModelProto:
    """x -> Conv (trunk) -> Relu; two 1x1 heads (box: Conv, score: Conv -> Sigmoid),
    concatenated and reshaped into the one model output, as a detection head is."""
    rng = np.random.default_rng(0)

    def weight(name, shape):
        return helper.make_tensor(
            name, TensorProto.FLOAT, shape, rng.normal(0, 0.5, shape).astype(np.float32).ravel()
        )

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w0"], ["trunk"], name="trunk"),
            helper.make_node("Relu", ["trunk"], ["t"], name="relu"),
            helper.make_node("Conv", ["t", "wb"], ["box"], name="box"),
            helper.make_node("Conv", ["t", "ws"], ["logit"], name="score"),
            helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
            helper.make_node("Concat", ["box", "prob"], ["head"], name="concat", axis=1),
            helper.make_node("Reshape", ["head", "shape"], ["y"], name="reshape"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 64])],
        [
            weight("w0", [4, 3, 3, 3]),
            weight("wb", [4, 4, 1, 1]),
            weight("ws", [1, 4, 1, 1]),
            helper.make_tensor("shape", TensorProto.INT64, [3], [1, 5, 64]),
        ],
    )
    graph.node[0].attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_tensors_assembled_into_an_output_are_outputs():
    model = _two_head_model()
    # Through Concat and Reshape: both heads; not the trunk or the logits before the Sigmoid.
    assert output_forming(model) == {"y", "head", "box", "prob"}


def test_assembled_output_tensors_keep_their_observed_range(tmp_path):
    """Model outputs are never clipped: nor are the head maps concatenated into one."""
    prepared = prepare_model(_two_head_model())[0]
    npz = tmp_path / "calib.npz"
    x = np.random.default_rng(1).normal(0, 1, (8, 1, 3, 8, 8)).astype(np.float32)
    np.savez(npz, x=x[:, 0])
    stats = collect_statistics(prepared, _dataset(npz))
    names = stats["names"].tolist()
    flagged = {n for n, out in zip(names, stats["is_output"]) if out}
    assert {"box", "prob"} <= flagged and "t" not in flagged
    ranges = activation_ranges(stats, "percentile", Grid(8, True, False), percentile=99.0)
    for name in ("box", "prob"):
        i = names.index(name)
        assert (ranges[name].min, ranges[name].max) == (stats["min"][i], stats["max"][i])
    i = names.index("t")
    assert ranges["t"].max < stats["max"][i]  # a hidden tensor is still clipped


def test_statistics_over_frames_of_different_sequence_lengths(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, length in enumerate((5, 9, 12)):
        np.save(folder / f"{i}.npy", rng.normal(0, 1, (1, length, 16)).astype(np.float32))
    dataset = open_dataset({"tensors": str(folder)}, {}, "calibration.data", "recipe.yaml")
    stats = collect_statistics(prepare_model(attention_block())[0], dataset)
    names = stats["names"].tolist()
    assert int(stats["frames"]) == 3
    assert stats["elements"][names.index("x")] == 16 * (5 + 9 + 12)
    assert stats["elements"][names.index("scores")] == 5 * 5 + 9 * 9 + 12 * 12


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_statistics_over_shards_are_bit_identical_to_one_pass(tmp_path, prepared, workers):
    from elsewhere import Elsewhere

    from quantbuild.store.files import npz_bytes

    npz = write_npz(tmp_path / "calib.npz", 7, seed=9)
    whole = collect_statistics(prepared, _dataset(npz))
    cluster = Elsewhere()
    sharded = collect_statistics(prepared, _dataset(npz), fan_out=cluster.fan_out(workers))
    jobs_seen = cluster.jobs
    assert len(jobs_seen) == workers and sum(len(j[1].frames) for j in jobs_seen) == 7
    assert whole.keys() == sharded.keys()
    for key in whole:
        assert whole[key].dtype == sharded[key].dtype, key
        np.testing.assert_array_equal(whole[key], sharded[key], err_msg=key)
    assert npz_bytes(whole) == npz_bytes(sharded)  # the stats artifact, byte for byte
