"""GPTQ weight rounding: the numpy algorithm, and on a real model run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import heavy_cnn, small_cnn, write_npz
from onnx import helper, numpy_helper

from quantbuild.calib.collect import collect_statistics
from quantbuild.calib.policy import activation_ranges
from quantbuild.calib.rounding import conv_patches, gptq_round, output_error, second_moment
from quantbuild.calib.rounding_runner import Rounding, apply_rounding, gptq_rounding
from quantbuild.data.dataset import open_dataset
from quantbuild.graph.prepare import prepare_model
from quantbuild.quant.params import Grid
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.runtime import session


def _correlated(rng, groups: int, k: int, n: int) -> np.ndarray:
    mixing = rng.normal(size=(groups, k, k))
    return np.einsum("gkl,gln->gkn", mixing, rng.normal(size=(groups, k, n)))


@pytest.mark.parametrize("groups, rows, k", [(1, 16, 27), (8, 1, 9), (2, 4, 64)])
def test_gptq_has_less_output_error_than_nearest_rounding(groups, rows, k):
    rng = np.random.default_rng(0)
    x = _correlated(rng, groups, k, 4000)
    h = second_moment(x)
    w = rng.normal(size=(groups, rows, k)) * rng.uniform(0.05, 1.0, size=(groups, rows, 1))
    scale = 2.0**-4
    nearest = np.clip(np.rint(w / scale), -128, 127)
    rounded = gptq_round(w, h, scale, -128, 127)
    assert output_error(w, h, rounded, scale) < 0.8 * output_error(w, h, nearest, scale)
    # Same grid: integers in range, each within a few steps of its weight.
    assert rounded.min() >= -128 and rounded.max() <= 127
    assert np.abs(rounded * scale - w).max() < 8 * scale


def test_gptq_with_per_row_scales_and_a_dead_input():
    rng = np.random.default_rng(1)
    x = _correlated(rng, 1, 12, 3000)
    x[0, 5] = 0.0  # an input channel that is always zero
    h = second_moment(x)
    w = rng.normal(size=(1, 6, 12))
    scale = np.abs(w).max(axis=2) / 127
    rounded = gptq_round(w, h, scale, -128, 127)
    nearest = np.clip(np.rint(w / scale[..., None]), -128, 127)
    assert np.isfinite(rounded).all()
    assert output_error(w, h, rounded, scale) <= output_error(w, h, nearest, scale)


@pytest.mark.parametrize(
    "group, stride, pads, dilation",
    [(1, 1, (1, 1, 1, 1), 1), (4, 2, (1, 0, 1, 2), 1), (2, 1, (2, 2, 2, 2), 2)],
)
def test_conv_patches_times_weights_is_the_convolution(group, stride, pads, dilation):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 4, 9, 11)).astype(np.float32)
    w = rng.normal(size=(8, 4 // group, 3, 3)).astype(np.float32)
    attrs = dict(
        kernel_shape=[3, 3], strides=[stride] * 2, pads=list(pads), dilations=[dilation] * 2
    )
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = session(model).run(None, {"x": x})[0]
    positions = np.arange(y.shape[2] * y.shape[3])
    patches = conv_patches(x, (3, 3), (stride,) * 2, pads, (dilation,) * 2, group, positions)
    rows = w.reshape(group, 8 // group, -1)
    got = np.einsum("grk,gkn->grn", rows, patches).reshape(8, *y.shape[2:])
    assert np.allclose(got, y[0], atol=1e-4)


def _small_build(tmp_path, network=None):
    """A prepared CNN, its calibration data, ranges and per-tensor power-of-2 QDQ model."""
    model, _ = prepare_model(network or small_cnn(size=16, seed=3))
    data = open_dataset(
        {"tensors": str(write_npz(tmp_path / "c.npz", 16, (1, 3, 16, 16), seed=5))},
        {},
        "calibration.data",
        "r.yaml",
    )
    ranges = activation_ranges(collect_statistics(model, data), "minmax", Grid(8, True, True))
    qdq, record = write_qdq(model, ranges, WeightOptions(8, False, True, 16))
    return model, data, ranges, qdq, record


def test_applied_rounding_changes_only_weight_and_bias_integers(tmp_path):
    model, data, _, qdq, record = _small_build(tmp_path)
    logged: list[str] = []
    rounding = gptq_rounding(model, qdq, record, data, log=logged.append)
    assert "weight rounding (gptq)" in logged[0] and "layers re-rounded" in logged[0]
    # the stage stores it as arrays; what comes back applies the same
    rounding = Rounding.from_arrays(rounding.arrays())
    rounded, applied = apply_rounding(qdq, record, rounding)
    assert applied == len(rounding.integers) > 0
    changed = {
        t.name
        for t, u in zip(qdq.graph.initializer, rounded.graph.initializer)
        if t.SerializeToString() != u.SerializeToString()
    }
    allowed = {f"{n}_quantized" for n in [*record["weights"], *record["biases"]]}
    assert changed and changed <= allowed
    assert [n.SerializeToString() for n in qdq.graph.node] == [
        n.SerializeToString() for n in rounded.graph.node
    ]
    onnx.checker.check_model(rounded)
    session(rounded)


def test_rounding_is_not_applied_to_a_weight_on_another_grid(tmp_path):
    model, data, ranges, qdq, record = _small_build(tmp_path)
    rounding = gptq_rounding(model, qdq, record, data, log=lambda _: None)
    assert rounding.integers
    # the same weights on per-channel grids (as mixed precision or a changed recipe would give)
    other, other_record = write_qdq(model, ranges, WeightOptions(8, True, True, 16))
    unchanged, applied = apply_rounding(other, other_record, rounding)
    assert applied == 0
    assert unchanged.SerializeToString() == other.SerializeToString()


@pytest.mark.parametrize("workers", [2, 5])
def test_rounding_solved_on_workers_is_bit_identical(tmp_path, workers):
    from elsewhere import Elsewhere

    from quantbuild.store.files import npz_bytes

    model, data, _, qdq, record = _small_build(tmp_path, heavy_cnn(size=16, width=8))
    here = gptq_rounding(model, qdq, record, data, log=lambda _: None)
    cluster = Elsewhere()
    spread = gptq_rounding(model, qdq, record, data, lambda _: None, cluster.fan_out(workers))
    pieces = cluster.jobs
    layers = sum(len(job[0]) for job in pieces)
    assert len(pieces) == min(workers, layers) and layers == 3 and here.integers
    assert npz_bytes(spread.arrays()) == npz_bytes(here.arrays())  # the stage's artifact
