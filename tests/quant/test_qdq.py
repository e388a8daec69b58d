"""write_qdq: the QDQ model simulates exactly the grids of the ranges file.

Pipeline as the build runs it: prepare -> collect_statistics -> minmax_ranges -> ranges file
(dumps/loads) -> write_qdq; then every check runs the QDQ model in onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import pytest
from builders import attention_block, small_cnn, write_npz
from onnx import TensorProto, helper, numpy_helper

from quantbuild.calib.collect import collect_statistics
from quantbuild.calib.policy import minmax_ranges
from quantbuild.data.dataset import open_dataset
from quantbuild.graph.onnx_utils import opset_version
from quantbuild.graph.prepare import prepare_model
from quantbuild.interop.ranges_file import TensorRange, dumps, loads
from quantbuild.quant.params import Grid
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.runtime import session, with_outputs

_ONNX_DTYPE = {
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "int32": TensorProto.INT32,
}


@dataclass
class Built:
    float_model: onnx.ModelProto
    qdq: onnx.ModelProto
    record: dict
    ranges: dict[str, TensorRange]
    frames: np.ndarray  # calibration frames, [N, 1, C, H, W]


def _dataset(path):
    return open_dataset({"tensors": str(path)}, {}, "calibration.data", "recipe.yaml")


def _calibrate(model: onnx.ModelProto, npz) -> tuple[onnx.ModelProto, dict, np.ndarray]:
    prepared = prepare_model(model)[0]
    stats = collect_statistics(prepared, _dataset(npz))
    frames = np.load(npz)["input"][:, None]
    return prepared, stats, frames


def _build(calibrated, bits=8, symmetric=True, power_of_2=False, per_channel=True, bias_bits=32):
    prepared, stats, frames = calibrated
    ranges = minmax_ranges(stats, Grid(bits, symmetric, power_of_2))
    # through the ranges file, as the build does
    ranges, _ = loads(dumps(ranges, {"bits": bits}), "ranges.yaml")
    qdq, record = write_qdq(
        prepared, ranges, WeightOptions(bits, per_channel, power_of_2, bias_bits)
    )
    return Built(prepared, qdq, record, ranges, frames)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    npz = write_npz(tmp_path_factory.mktemp("calib") / "calib.npz", 8, seed=1)
    return _calibrate(small_cnn(), npz)


@pytest.fixture(scope="module")
def cnn21(tmp_path_factory):
    npz = write_npz(tmp_path_factory.mktemp("calib21") / "calib.npz", 8, seed=1)
    return _calibrate(small_cnn(opset=21), npz)


# -- helpers over the QDQ graph ---------------------------------------------------------------


def _inits(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _nodes(model, op_type) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def _quantize_node_of(model, name: str) -> onnx.NodeProto:
    """The QuantizeLinear that quantizes activation `name` (graph input or renamed output)."""
    found = [n for n in _nodes(model, "QuantizeLinear") if n.input[0] in (name, f"{name}_float")]
    assert len(found) == 1, (name, [list(n.input) for n in found])
    return found[0]


def _dequantize_node_of(model, quant: onnx.NodeProto) -> onnx.NodeProto:
    found = [n for n in _nodes(model, "DequantizeLinear") if n.input[0] == quant.output[0]]
    assert len(found) == 1
    return found[0]


def _dequantized_name(model, name: str) -> str:
    return _dequantize_node_of(model, _quantize_node_of(model, name)).output[0]


def _inputs(built: Built, extra_seed: int = 3) -> list[np.ndarray]:
    """Calibration frames, plus frames beyond the calibrated range (saturation)."""
    rng = np.random.default_rng(extra_seed)
    shape = built.frames.shape[1:]
    extra = [rng.normal(0, 4, shape).astype(np.float32) for _ in range(2)]
    return list(built.frames) + extra


def _run_all(model, names: list[str], frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    runner = session(with_outputs(model, names))
    outs = [runner.run(names, {"input": f}) for f in frames]
    return {n: np.stack([o[i] for o in outs]) for i, n in enumerate(names)}


def _assert_on_grid(values, scale, zero_point, qmin, qmax, axis=None, what=""):
    values = np.asarray(values, np.float32)
    scale = np.asarray(scale, np.float32)
    zero_point = np.asarray(zero_point, np.int64)
    if axis is not None:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = np.rint(values.astype(np.float64) / scale.astype(np.float64)) + zero_point
    assert q.min() >= qmin and q.max() <= qmax, (what, q.min(), q.max(), qmin, qmax)
    rebuilt = ((q - zero_point).astype(np.float32) * scale).astype(np.float32)
    off = np.nonzero(rebuilt != values)
    assert off[0].size == 0, (what, values[off][:5], rebuilt[off][:5])
    return q


_CONFIGS = [
    dict(bits=8, symmetric=True, power_of_2=False),
    dict(bits=8, symmetric=False, power_of_2=False),
    dict(bits=8, symmetric=True, power_of_2=True),
    dict(bits=8, symmetric=False, power_of_2=True),
    dict(bits=16, symmetric=True, power_of_2=False),
    dict(bits=16, symmetric=False, power_of_2=True),
]
_IDS = ["8-sym", "8-asym", "8-sym-p2", "8-asym-p2", "16-sym", "16-asym-p2"]


# -- the central property ----------------------------------------------------------------------


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_activations_lie_exactly_on_the_ranges_file_grid(cnn, config):
    built = _build(cnn, **config)
    onnx.checker.check_model(built.qdq)
    activations = built.record["activations"]
    assert list(activations) == ["input", "r1", "r2", "a2", "gap", "logits"]
    inits = _inits(built.qdq)
    names = [_dequantized_name(built.qdq, a) for a in activations]
    values = _run_all(built.qdq, names, _inputs(built))
    at_limits = 0
    for act, dq_name in zip(activations, names):
        entry = built.ranges[act]
        qp = entry.qparams
        bits = config["bits"]
        assert entry.bits == bits
        # the model's Q and DQ use the ranges file's scale and zero point, bit for bit
        quant = _quantize_node_of(built.qdq, act)
        dequant = _dequantize_node_of(built.qdq, quant)
        assert list(quant.input[1:]) == list(dequant.input[1:]), act
        scale = numpy_helper.to_array(inits[quant.input[1]])
        zero = inits[quant.input[2]]
        assert scale.dtype == np.float32 and scale.shape == ()
        assert scale.tobytes() == np.float32(qp.scale).tobytes(), act
        assert zero.data_type == _ONNX_DTYPE[qp.dtype], act
        assert int(numpy_helper.to_array(zero)) == int(qp.zero_point), act
        assert activations[act]["scale"] == float(qp.scale)
        assert activations[act]["zero_point"] == int(qp.zero_point)
        assert activations[act]["dtype"] == qp.dtype
        # every dequantized value is scale * (q - zero_point) for an integer q in [qmin, qmax]
        q = _assert_on_grid(values[dq_name], qp.scale, qp.zero_point, qp.qmin, qp.qmax, what=act)
        at_limits += int(np.any(q == qp.qmax) or np.any(q == qp.qmin))
    # the out-of-range frames saturate somewhere, still on the grid
    assert at_limits > 0


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_dtypes_follow_the_range_sign(cnn, config):
    built = _build(cnn, **config)
    bits = config["bits"]
    dtypes = {name: e["dtype"] for name, e in built.record["activations"].items()}
    # ReLU outputs are never negative: unsigned with zero point 0 in both modes
    assert dtypes["r1"] == dtypes["r2"] == f"uint{bits}"
    signed = "int" if config["symmetric"] else "uint"
    assert dtypes["input"] == dtypes["logits"] == f"{signed}{bits}"
    if not config["symmetric"]:
        assert 0 < int(built.ranges["input"].qparams.zero_point) < 2**bits - 1


def test_weights_dequantize_to_per_channel_grids(cnn):
    built = _build(cnn, per_channel=True)
    weights = built.record["weights"]
    assert set(weights) == {"w1", "w2", "wfc", "offset"}
    float_inits = {t.name: numpy_helper.to_array(t) for t in built.float_model.graph.initializer}
    qdq_inits = _inits(built.qdq)
    values = _run_all(built.qdq, list(weights), _inputs(built)[:1])
    expected_axis = {"w1": 0, "w2": 0, "wfc": 0, "offset": None}  # Gemm transB=1: axis 0
    for name, rec in weights.items():
        axis = rec["axis"]
        assert axis == expected_axis[name], name
        w = float_inits[name]
        dq = values[name][0]
        assert name not in qdq_inits  # the float weight is gone
        stored = qdq_inits[f"{name}_quantized"]
        assert stored.data_type == TensorProto.INT8
        scale = np.asarray(rec["scale"], np.float32)
        if axis is None:
            assert scale.shape == ()
            np.testing.assert_array_equal(scale, np.float32(np.abs(w).max() / 127))
        else:
            other = tuple(i for i in range(w.ndim) if i != axis)
            assert scale.shape == (w.shape[axis],)
            expected = (np.abs(w.astype(np.float64)).max(axis=other) / 127).astype(np.float32)
            np.testing.assert_array_equal(scale, expected)
            assert len(set(scale.tolist())) == scale.size  # really per channel
        q = _assert_on_grid(dq, scale, rec["zero_point"], -128, 127, axis=axis, what=name)
        np.testing.assert_array_equal(q, numpy_helper.to_array(stored))
        # close to the float weight: within half a step
        step = (
            scale
            if axis is None
            else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
        )
        assert np.all(np.abs(dq - w) <= step / 2 * (1 + 1e-6)), name


def _dense_model() -> onnx.ModelProto:
    """input[1,6] -> Gemm(W[6,4], transB=0) -> Relu -> MatMul(W2[4,3]) -> out."""
    rng = np.random.default_rng(6)
    scales = np.array([0.1, 1.0, 10.0, 0.5], np.float32)  # very different columns
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "wg", "bg"], ["g"], name="gemm"),
            helper.make_node("Relu", ["g"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "wm"], ["out"], name="matmul"),
        ],
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array((rng.normal(0, 1, (6, 4)) * scales).astype(np.float32), "wg"),
            numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "bg"),
            numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "wm"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_gemm_and_matmul_weights_are_per_output_column(tmp_path):
    npz = write_npz(tmp_path / "calib.npz", 6, shape=(1, 6), seed=3)
    built = _build(_calibrate(_dense_model(), npz), per_channel=True)
    onnx.checker.check_model(built.qdq)
    weights = built.record["weights"]
    assert weights["wg"]["axis"] == 1 and len(weights["wg"]["scale"]) == 4
    assert weights["wm"]["axis"] == 1 and len(weights["wm"]["scale"]) == 3
    float_inits = {t.name: numpy_helper.to_array(t) for t in built.float_model.graph.initializer}
    values = _run_all(built.qdq, ["wg", "wm", "bg", "out"], list(built.frames))
    for name in ("wg", "wm"):
        scale = np.asarray(weights[name]["scale"], np.float32)
        expected = (np.abs(float_inits[name].astype(np.float64)).max(axis=0) / 127).astype(
            np.float32
        )
        np.testing.assert_array_equal(scale, expected)
        _assert_on_grid(values[name][0], scale, 0, -128, 127, axis=1, what=name)
    # Gemm bias: one scale per output column, input scale x column scale
    x_scale = np.float32(built.ranges["input"].qparams.scale)
    bias_scale = np.asarray(built.record["biases"]["bg"]["scale"], np.float32)
    np.testing.assert_array_equal(
        bias_scale, (x_scale * np.asarray(weights["wg"]["scale"], np.float32)).astype(np.float32)
    )
    # the output is on its own grid and close to float
    qp = built.ranges["out"].qparams
    _assert_on_grid(values["out"], qp.scale, qp.zero_point, qp.qmin, qp.qmax, what="out")
    ref = _run_all(built.float_model, ["out"], list(built.frames))["out"]
    assert _sqnr_db(ref, values["out"]) > 25


def test_weights_per_tensor_when_not_per_channel(cnn):
    built = _build(cnn, per_channel=False)
    for name, rec in built.record["weights"].items():
        assert rec["axis"] is None, name
        assert np.asarray(rec["scale"]).shape == (), name
    values = _run_all(built.qdq, ["w1"], _inputs(built)[:1])
    rec = built.record["weights"]["w1"]
    _assert_on_grid(values["w1"][0], rec["scale"], 0, -128, 127, what="w1")


def test_biases_are_int32_on_input_times_weight_scale(cnn):
    built = _build(cnn, per_channel=True)
    biases = built.record["biases"]
    assert set(biases) == {"conv1.bias", "bias2", "bfc"}
    inits = _inits(built.qdq)
    input_of = {"conv1.bias": "input", "bias2": "r1", "bfc": "gap"}  # through MaxPool / Flatten
    weight_of = {"conv1.bias": "w1", "bias2": "w2", "bfc": "wfc"}
    for name, rec in biases.items():
        assert inits[f"{name}_quantized"].data_type == TensorProto.INT32
        x_scale = np.float32(built.ranges[input_of[name]].qparams.scale)
        w_scale = np.asarray(built.record["weights"][weight_of[name]]["scale"], np.float32)
        np.testing.assert_array_equal(
            np.asarray(rec["scale"], np.float32), (x_scale * w_scale).astype(np.float32)
        )
        assert rec["bits"] == 32 and rec["weight_scales_raised"] == 0


def test_relu_fused_conv_outputs_are_not_quantized(cnn):
    built = _build(cnn)
    acts = built.record["activations"]
    assert "bn1" not in acts and "c2" not in acts
    quantized_inputs = {n.input[0] for n in _nodes(built.qdq, "QuantizeLinear")}
    assert not {"bn1", "c2", "bn1_float", "c2_float"} & quantized_inputs
    producer = {o: n for n in built.qdq.graph.node for o in n.output}
    for relu in _nodes(built.qdq, "Relu"):
        assert producer[relu.input[0]].op_type == "Conv"
    # exactly one QDQ pair per recorded activation
    assert len(_nodes(built.qdq, "QuantizeLinear")) == len(acts)


def test_maxpool_and_flatten_reuse_their_input_grid(cnn):
    built = _build(cnn)
    acts = built.record["activations"]
    assert "p1" not in acts and "flat" not in acts
    quantized_inputs = {n.input[0] for n in _nodes(built.qdq, "QuantizeLinear")}
    assert not {"p1", "flat", "p1_float", "flat_float"} & quantized_inputs
    producer = {o: n for n in built.qdq.graph.node for o in n.output}
    assert producer["p1"].op_type == "MaxPool" and producer["p1"].input[0] == "r1"
    assert producer["flat"].op_type == "Flatten" and producer["flat"].input[0] == "gap"
    values = _run_all(built.qdq, ["p1", "flat"], _inputs(built))
    for name, source in (("p1", "r1"), ("flat", "gap")):
        qp = built.ranges[source].qparams
        _assert_on_grid(values[name], qp.scale, qp.zero_point, qp.qmin, qp.qmax, what=name)


def _chain_model() -> onnx.ModelProto:
    """input -> Conv -> Relu -> MaxPool -> Flatten -> Gemm: two value-preserving ops in a row."""
    rng = np.random.default_rng(4)

    def f32(name, shape, sd=0.5):
        return numpy_helper.from_array(rng.normal(0, sd, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["out"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
        [f32("w", (4, 3, 3, 3)), f32("b", (4,)), f32("wf", (5, 64), 0.2), f32("bf", (5,))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_chained_value_preserving_ops_reuse_the_first_grid(tmp_path):
    npz = write_npz(tmp_path / "calib.npz", 4, seed=2)
    built = _build(_calibrate(_chain_model(), npz))
    acts = built.record["activations"]
    # MaxPool and the Flatten after it only move values of r: no new grid for either
    assert list(acts) == ["input", "r", "out"], list(acts)
    quantized_inputs = {n.input[0] for n in _nodes(built.qdq, "QuantizeLinear")}
    assert not {"p", "f", "p_float", "f_float"} & quantized_inputs


# -- 16 bits ------------------------------------------------------------------------------------


def test_16_bit_below_opset_21_uses_com_microsoft(cnn):
    built = _build(cnn, bits=16)
    onnx.checker.check_model(built.qdq)
    assert opset_version(built.qdq) == 13
    domains = {o.domain: o.version for o in built.qdq.opset_import}
    assert domains.get("com.microsoft") == 1
    inits = _inits(built.qdq)
    seen = set()
    for node in built.qdq.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = inits[node.input[2]].data_type
        seen.add(zero)
        if zero in (TensorProto.INT16, TensorProto.UINT16):
            assert node.domain == "com.microsoft", node.name
        else:
            assert zero == TensorProto.INT32 and node.domain == "", node.name
    assert seen == {TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32}
    session(built.qdq).run(None, {"input": built.frames[0]})


def test_16_bit_at_opset_21_uses_the_standard_domain(cnn21):
    built = _build(cnn21, bits=16)
    onnx.checker.check_model(built.qdq)
    assert opset_version(built.qdq) == 21
    assert {o.domain for o in built.qdq.opset_import} == {""}
    assert {n.domain for n in built.qdq.graph.node} == {""}
    out = session(built.qdq).run(None, {"input": built.frames[0]})[0]
    ref = session(built.float_model).run(None, {"input": built.frames[0]})[0]
    np.testing.assert_allclose(out, ref, atol=1e-2)


def test_8_bit_needs_no_contrib_domain(cnn):
    built = _build(cnn, bits=8)
    assert {o.domain for o in built.qdq.opset_import} == {""}
    assert {n.domain for n in built.qdq.graph.node} == {""}


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    x, q = reference.astype(np.float64), test.astype(np.float64)
    return 10 * np.log10(np.sum(x * x) / np.sum((x - q) ** 2))


def test_16_bit_output_sqnr_much_higher_than_8_bit(cnn):
    b8, b16 = _build(cnn, bits=8), _build(cnn, bits=16)
    frames = list(b8.frames)
    ref = _run_all(b8.float_model, ["logits"], frames)["logits"]
    s8 = _sqnr_db(ref, _run_all(b8.qdq, ["logits"], frames)["logits"])
    s16 = _sqnr_db(ref, _run_all(b16.qdq, ["logits"], frames)["logits"])
    assert s8 > 20, s8
    assert s16 > s8 + 30, (s8, s16)


# -- large biases ------------------------------------------------------------------------------

_HUGE_BIAS = np.array([1000.0, -1000.0, 0.01], np.float32)


def _huge_bias_model() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["out"], name="conv")],
        "bias",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])],
        [
            numpy_helper.from_array(rng.normal(0, 0.5, (3, 2, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(_HUGE_BIAS, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def huge_bias(tmp_path_factory):
    npz = write_npz(tmp_path_factory.mktemp("bias") / "calib.npz", 4, shape=(1, 2, 4, 4))
    return _calibrate(_huge_bias_model(), npz)


def _bias_parts(built: Built):
    """(stored int32 bias, its scale, dequantized bias, dequantized weight, weight record)."""
    rec = built.record["biases"]["b"]
    stored = numpy_helper.to_array(_inits(built.qdq)["b_quantized"])
    values = _run_all(built.qdq, ["b", "w"], list(built.frames[:1]))
    return stored, np.asarray(rec["scale"], np.float32), values["b"][0], values["w"][0]


def _assert_bias_reproduced(stored, scale, dq, limit):
    assert stored.dtype == np.int32
    assert np.abs(stored.astype(np.int64)).max() <= limit
    np.testing.assert_array_equal(dq, stored.astype(np.float32) * scale)
    # no saturation: every bias value within half a step of its float value
    # (plus the float32 rounding of the dequantized value itself)
    bias = _HUGE_BIAS.astype(np.float64)
    err = np.abs(dq.astype(np.float64) - bias)
    assert np.all(err <= scale.astype(np.float64) * 0.5 * (1 + 1e-6) + np.abs(bias) * 2.0**-23), (
        dq,
        scale,
    )


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("power_of_2", [False, True])
def test_8_bit_layers_fit_large_biases_in_16_bits(huge_bias, per_channel, power_of_2):
    built = _build(huge_bias, bias_bits=16, per_channel=per_channel, power_of_2=power_of_2)
    rec = built.record["biases"]["b"]
    assert rec["bits"] == 16 and rec["dtype"] == "int32"
    assert rec["weight_scales_raised"] == (2 if per_channel else 1)
    stored, scale, dq, dq_w = _bias_parts(built)
    _assert_bias_reproduced(stored, scale, dq, 32767)
    assert np.abs(stored[:2].astype(np.int64)).min() > 16383  # the raise is not wasteful
    w_rec = built.record["weights"]["w"]
    w_scale = np.asarray(w_rec["scale"], np.float32)
    x_scale = np.float32(built.ranges["input"].qparams.scale)
    np.testing.assert_array_equal(
        scale, (x_scale * np.broadcast_to(w_scale, (3,))).astype(np.float32)
    )
    # the raised weight scales make room for the bias: |b| <= 32767 * s_x * s_w
    room = x_scale.astype(np.float64) * np.broadcast_to(w_scale, (3,)) * 32767
    assert np.all(room[:2] >= np.abs(_HUGE_BIAS[:2]) * (1 - 1e-6)), room
    w = numpy_helper.to_array(_inits(built.float_model)["w"])
    if per_channel:
        # the third channel's bias fits: its weight scale is untouched
        untouched = weight_scale = np.abs(w[2]).max() / 127
        if power_of_2:
            untouched = 2.0 ** np.ceil(np.log2(weight_scale))
        assert w_scale[2] == np.float32(untouched)
    if power_of_2:
        mantissa, _ = np.frexp(w_scale.astype(np.float64))
        assert np.all(mantissa == 0.5)
    # the weights are on the (raised) grid that the record states
    _assert_on_grid(dq_w, w_scale, 0, -128, 127, axis=0 if per_channel else None, what="w")


def test_8_bit_layers_with_32_bit_biases_keep_weight_scales(huge_bias):
    built = _build(huge_bias, bias_bits=32, per_channel=True)
    rec = built.record["biases"]["b"]
    assert rec["bits"] == 32 and rec["weight_scales_raised"] == 0
    stored, scale, dq, _ = _bias_parts(built)
    _assert_bias_reproduced(stored, scale, dq, 2**31 - 1)
    w = numpy_helper.to_array(_inits(built.float_model)["w"])
    expected = (np.abs(w.astype(np.float64)).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(built.record["weights"]["w"]["scale"], np.float32), expected
    )


def test_8_bit_weights_on_a_16_bit_input_get_32_bit_biases_not_raised_weights(huge_bias):
    # Mixed precision: the producer went 16-bit, this 8-bit layer did not. At the 16-bit
    # input scale a 16-bit bias would need ~256x coarser weights; it gets 32 bits instead.
    prepared, stats, frames = huge_bias
    ranges = minmax_ranges(stats, Grid(8, True, False))
    ranges["input"] = minmax_ranges(stats, Grid(16, True, False))["input"]
    qdq, record = write_qdq(prepared, ranges, WeightOptions(8, True, False, bias_bits=16))
    assert record["biases"]["b"]["bits"] == 32
    assert record["biases"]["b"]["weight_scales_raised"] == 0
    w = numpy_helper.to_array(_inits(prepared)["w"])
    expected = (np.abs(w.astype(np.float64)).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(record["weights"]["w"]["scale"], np.float32), expected)


@pytest.mark.parametrize("bias_bits", [16, 32])
def test_16_bit_layers_shift_overflowing_biases(huge_bias, bias_bits):
    built = _build(huge_bias, bits=16, bias_bits=bias_bits, per_channel=True)
    rec = built.record["biases"]["b"]
    assert rec["bits"] == 32 and rec["weight_scales_raised"] == 0
    stored, scale, dq, _ = _bias_parts(built)
    _assert_bias_reproduced(stored, scale, dq, 2**31 - 1)
    # weights untouched; the bias scale is s_x * s_w times a power of two (1 where it fits)
    w = numpy_helper.to_array(_inits(built.float_model)["w"])
    w_scale = np.asarray(built.record["weights"]["w"]["scale"], np.float32)
    expected = (np.abs(w.astype(np.float64)).max(axis=(1, 2, 3)) / 32767).astype(np.float32)
    np.testing.assert_array_equal(w_scale, expected)
    x_scale = np.float32(built.ranges["input"].qparams.scale)
    shift = scale.astype(np.float64) / (x_scale * w_scale).astype(np.float32)
    assert shift[2] == 1.0
    assert np.all(shift[:2] > 1.0)
    mantissa, _ = np.frexp(shift)
    assert np.all(mantissa == 0.5), shift


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_quantized_output_close_to_float(cnn, config):
    built = _build(cnn, **config)
    rng = np.random.default_rng(21)
    frames = [rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(16)]
    ref = _run_all(built.float_model, ["logits"], frames)["logits"].ravel().astype(np.float64)
    out = _run_all(built.qdq, ["logits"], frames)["logits"].ravel().astype(np.float64)
    cosine = ref @ out / np.sqrt((ref @ ref) * (out @ out))
    assert cosine > 0.99, cosine


def test_input_model_is_not_modified(cnn):
    prepared = cnn[0]
    before = prepared.SerializeToString()
    _build(cnn)
    assert prepared.SerializeToString() == before


# -- transformer layers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    npz = write_npz(
        tmp_path_factory.mktemp("calib") / "calib.npz", 6, shape=(1, 5, 16), seed=1, name="x"
    )
    prepared = prepare_model(attention_block())[0]
    stats = collect_statistics(prepared, _dataset(npz))
    return prepared, stats


def test_transformer_layers_get_grids_only_at_their_outputs(block):
    prepared, stats = block
    names = set(stats["names"].tolist())
    # LayerNorm and GELU outputs, both operands of the attention MatMuls, the probabilities
    assert {"ln1.out", "ln2.out", "gelu", "scores", "probs", "attn", "q.out", "k.out"} <= names
    # nothing inside a LayerNorm or a GELU, no MatMul output before its bias
    assert not names & {"ln1.mean", "ln1.std", "ln2.norm", "g.erf", "g.mul", "fc1.mm", "q.mm"}
    probability = dict(zip(stats["names"].tolist(), stats["is_probability"].tolist()))
    assert probability["probs"] and not probability["scores"]


def test_matmul_biases_are_int32_and_layernorm_parameters_stay_with_their_layer(block):
    prepared, stats = block
    ranges = minmax_ranges(stats, Grid(8, True, False))
    qdq, record = write_qdq(prepared, ranges, WeightOptions(8, True, False, 32))
    onnx.checker.check_model(qdq, full_check=True)
    inits = _inits(qdq)
    bias = record["biases"]["fc1.b"]
    assert bias["dtype"] == "int32" and bias["output"] == "fc1.out" and bias["channel_axis"] == -1
    w_scale = np.asarray(record["weights"]["fc1.w"]["scale"])
    x_scale = float(ranges["ln2.out"].qparams.scale)
    np.testing.assert_allclose(bias["scale"], x_scale * w_scale, rtol=1e-6)
    assert inits["fc1.b_quantized"].data_type == TensorProto.INT32
    # the LayerNorm's scale and shift and the GELU's constants are the layers' own parameters
    assert {"ln1.gamma", "ln1.beta", "sqrt2", "half"} <= set(inits)
    assert "ln1.gamma" not in record["weights"]
    x = np.random.default_rng(4).normal(0, 1, (1, 9, 16)).astype(np.float32)  # another length
    want = session(prepared).run(None, {"x": x})[0]
    got = session(qdq).run(None, {"x": x})[0]
    cosine = float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cosine > 0.98  # 8 bits, six calibration frames of a random block


def test_clip_memo_gives_the_same_model_and_clips_each_weight_once(cnn, monkeypatch):
    """The mixed-precision probe writes one model many times: with a memo, each weight is
    clipped once per grid and the models are byte-identical to those written without it."""
    import quantbuild.quant.qdq as qdq

    prepared, stats, _ = cnn
    ranges = minmax_ranges(stats, Grid(8, True, False))
    plain = WeightOptions(8, True, False, 32, clipping="mse")
    expected = write_qdq(prepared, ranges, plain)[0].SerializeToString()
    calls = []
    clip = qdq.clip_weights
    monkeypatch.setattr(qdq, "clip_weights", lambda *a: calls.append(a[1:]) or clip(*a))
    memo = WeightOptions(8, True, False, 32, clipping="mse", clip_memo={})
    for _ in range(3):
        assert write_qdq(prepared, ranges, memo)[0].SerializeToString() == expected
    assert len(calls) == 3  # w1, w2, wfc: once each
    # A 16-bit layer clips its weights on its own grid, once.
    wide = replace(memo, wide_layers=frozenset({prepared.graph.node[0].name}))
    write_qdq(prepared, ranges, wide)
    write_qdq(prepared, ranges, wide)
    assert len(calls) == 4 and calls[-1][1] == 16


def test_mask_paths_get_no_grid_and_embeddings_do():
    """Float tensors computed from an int64 attention mask alone (cast, inverted, scaled) carry
    the input's structure, not features: no grid. An embedding looked up by int64 ids is a
    feature, and so is the sum of features and the mask."""
    from quantbuild.quant.qdq import activation_tensors, index_derived

    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("Cast", ["mask"], ["mask_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"], name="invert"),
        helper.make_node("Mul", ["inverted", "big"], ["bias"], name="scale"),
        helper.make_node("Add", ["embedded", "bias"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "masked",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 4])],
        [
            numpy_helper.from_array(np.ones((10, 4), np.float32), "table"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(-1e4, np.float32), "big"),
        ],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph))
    assert index_derived(model) == {"mask_f", "inverted", "bias"}
    every = {"embedded", "mask_f", "inverted", "bias", "y"}
    assert activation_tensors(model, every) == ["embedded", "y"]
