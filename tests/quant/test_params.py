"""Scales and zero points: activation/weight parameters, QuantizeLinear semantics, bias."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbuild.quant.params import (
    QParams,
    activation_qparams,
    bias_int32,
    fit_weights_to_bias,
    weight_qparams,
)
from quantbuild.runtime import session

_ONNX = {
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
}
_NP = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}


def _f32(x) -> np.float32:
    return np.float32(x)


def _is_power_of_two(scale) -> bool:
    mantissa, _ = np.frexp(np.asarray(scale, dtype=np.float64))
    return bool(np.all(mantissa == 0.5))


def _roundtrip_error(qp: QParams, x: np.ndarray) -> np.ndarray:
    return np.abs(qp.dequantize(qp.quantize(x)).astype(np.float64) - x.astype(np.float64))


# -- activation_qparams ----------------------------------------------------------------------


def test_symmetric_signed():
    qp = activation_qparams(-2.0, 1.0, 8, symmetric=True, power_of_2=False)
    assert qp.dtype == "int8" and qp.axis is None
    assert qp.zero_point.dtype == np.int8 and int(qp.zero_point) == 0
    assert qp.scale.dtype == np.float32
    assert qp.scale == _f32(2.0 / 127)
    assert (qp.qmin, qp.qmax) == (-128, 127)
    # the larger magnitude decides, whichever side it is on
    assert activation_qparams(-0.5, 3.0, 8, True, False).scale == _f32(3.0 / 127)


@pytest.mark.parametrize("symmetric", [True, False])
def test_never_negative_is_unsigned_with_zero_point_0(symmetric):
    qp = activation_qparams(0.0, 5.0, 8, symmetric, power_of_2=False)
    assert qp.dtype == "uint8"
    assert qp.zero_point.dtype == np.uint8 and int(qp.zero_point) == 0
    assert qp.scale == _f32(5.0 / 255)
    # a strictly positive range is widened down to 0: same grid
    positive = activation_qparams(1.0, 5.0, 8, symmetric, power_of_2=False)
    assert positive.scale == qp.scale and int(positive.zero_point) == 0
    assert positive.quantize(np.array([0.0, 5.0], np.float32)).tolist() == [0, 255]


@pytest.mark.parametrize(
    "low, high",
    [(-1.0, 2.0), (-0.3, 7.1), (-5.0, 0.01), (-3.0, -1.0), (-1e-3, 40.0), (-123.4, 56.7)],
)
@pytest.mark.parametrize("power_of_2", [False, True])
def test_asymmetric_unsigned_zero_exact_range_covered(low, high, power_of_2):
    qp = activation_qparams(low, high, 8, symmetric=False, power_of_2=power_of_2)
    assert qp.dtype == "uint8" and qp.zero_point.dtype == np.uint8
    zp = int(qp.zero_point)
    assert 0 <= zp <= 255
    # zero is exactly representable
    assert qp.quantize(np.array([0.0], np.float32)).tolist() == [zp]
    assert qp.dequantize(np.array([zp], np.uint8)).tolist() == [0.0]
    if power_of_2:
        assert _is_power_of_two(qp.scale)
    else:
        lo, hi = min(low, 0.0), max(high, 0.0)
        assert qp.scale == _f32((hi - lo) / 255)
    # every value of the (zero-widened) range is reproduced to within half a step: no clipping
    xs = np.linspace(min(low, 0.0), max(high, 0.0), 1001).astype(np.float32)
    err = _roundtrip_error(qp, xs)
    assert err.max() <= 0.5 * float(qp.scale) * (1 + 1e-5), err.max()


def test_asymmetric_exact_example():
    qp = activation_qparams(-1.0, 2.0, 8, symmetric=False, power_of_2=False)
    assert qp.scale == _f32(3.0 / 255)
    assert int(qp.zero_point) == 85
    assert qp.quantize(np.array([-1.0, 0.0, 2.0], np.float32)).tolist() == [0, 85, 255]


@pytest.mark.parametrize(
    "low, high, symmetric, dtype, qmax",
    [
        (-3.3, 1.2, True, "int8", 127),
        (0.0, 6.0, True, "uint8", 255),
        (0.0, 0.0371, False, "uint8", 255),
        (-1000.0, 2.5, True, "int8", 127),
        (-0.001, 0.002, True, "int16", 32767),
        (0.0, 1.0, True, "uint16", 65535),
    ],
)
def test_power_of_2_scales_are_exact_and_cover(low, high, symmetric, dtype, qmax):
    bits = 16 if dtype.endswith("16") else 8
    qp = activation_qparams(low, high, bits, symmetric, power_of_2=True)
    assert qp.dtype == dtype and int(qp.zero_point) == 0
    assert qp.scale.dtype == np.float32
    assert _is_power_of_two(qp.scale), float(qp.scale)
    amax = max(-low, high)
    # covers the range, and is the smallest power of two that does
    assert float(qp.scale) * qmax >= amax
    assert float(qp.scale) / 2 * qmax < amax


def test_16_bit_dtypes():
    signed = activation_qparams(-4.0, 2.0, 16, symmetric=True, power_of_2=False)
    assert signed.dtype == "int16" and signed.zero_point.dtype == np.int16
    assert signed.scale == _f32(4.0 / 32767)
    assert (signed.qmin, signed.qmax) == (-32768, 32767)
    unsigned = activation_qparams(0.0, 2.0, 16, symmetric=True, power_of_2=False)
    assert unsigned.dtype == "uint16" and unsigned.zero_point.dtype == np.uint16
    assert unsigned.scale == _f32(2.0 / 65535)
    asym = activation_qparams(-1.0, 3.0, 16, symmetric=False, power_of_2=False)
    assert asym.dtype == "uint16" and asym.scale == _f32(4.0 / 65535)
    assert int(asym.zero_point) == round(65535 / 4)


def test_all_zero_range_gets_a_positive_scale():
    qp = activation_qparams(0.0, 0.0, 8, True, False)
    assert qp.scale == 1.0 and int(qp.zero_point) == 0
    assert qp.quantize(np.zeros(3, np.float32)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("power_of_2", [False, True])
@pytest.mark.parametrize("amax", [1e-30, 1e-38, 1e-44])
def test_tiny_ranges_still_get_a_positive_scale(amax, power_of_2):
    # a zero scale makes QuantizeLinear divide by zero
    for low, symmetric in ((0.0, True), (-amax, True), (-amax, False)):
        qp = activation_qparams(low, amax, 8, symmetric, power_of_2)
        assert float(qp.scale) > 0.0, (low, amax, symmetric, power_of_2, qp)
    w = np.array([[amax, -amax], [1.0, 0.5]], np.float32)
    wq = weight_qparams(w, 8, per_channel=True, power_of_2=power_of_2)
    assert np.all(wq.scale > 0.0), wq


# -- weight_qparams ---------------------------------------------------------------------------


def _weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, shape).astype(np.float32)
    return w


def test_weight_per_tensor():
    w = _weights((4, 3, 3, 3))
    qp = weight_qparams(w, 8, per_channel=False, power_of_2=False)
    assert qp.dtype == "int8" and qp.axis is None
    assert qp.scale.shape == () and qp.zero_point.shape == ()
    assert qp.scale == _f32(np.abs(w).max() / 127)
    q = qp.quantize(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert np.abs(q.astype(int)).max() == 127
    assert _roundtrip_error(qp, w).max() <= float(qp.scale) / 2 * (1 + 1e-6)


@pytest.mark.parametrize(
    "shape, axis", [((4, 3, 3, 3), 0), ((6, 5), 1), ((6, 5), 0), ((2, 7, 3), 2)]
)
def test_weight_per_channel(shape, axis):
    w = _weights(shape, seed=axis)
    # make channel magnitudes very different
    scale_shape = [1] * w.ndim
    scale_shape[axis] = -1
    w = w * (10.0 ** np.arange(w.shape[axis], dtype=np.float32)).reshape(scale_shape) / 100
    qp = weight_qparams(w, 8, per_channel=True, power_of_2=False, axis=axis)
    assert qp.axis == axis
    assert qp.scale.shape == (w.shape[axis],) and qp.scale.dtype == np.float32
    assert qp.zero_point.shape == (w.shape[axis],) and qp.zero_point.dtype == np.int8
    assert not qp.zero_point.any()
    other = tuple(i for i in range(w.ndim) if i != axis)
    expected = (np.abs(w.astype(np.float64)).max(axis=other) / 127).astype(np.float32)
    np.testing.assert_array_equal(qp.scale, expected)
    q = qp.quantize(w)
    # every channel uses its full range
    assert np.abs(q.astype(int)).max(axis=other).tolist() == [127] * w.shape[axis]
    err = _roundtrip_error(qp, w)
    assert np.all(err <= qp.scale.reshape(scale_shape) / 2 * (1 + 1e-6))


def test_weight_power_of_2_and_16_bit():
    w = _weights((3, 8))
    qp = weight_qparams(w, 16, per_channel=True, power_of_2=True)
    assert qp.dtype == "int16" and qp.zero_point.dtype == np.int16
    assert _is_power_of_two(qp.scale)
    amax = np.abs(w).max(axis=1)
    assert np.all(qp.scale * 32767 >= amax) and np.all(qp.scale / 2 * 32767 < amax)


def test_weight_all_zero_channel():
    w = np.zeros((2, 3), np.float32)
    w[1] = [0.5, -1.0, 0.25]
    qp = weight_qparams(w, 8, per_channel=True, power_of_2=False)
    assert qp.scale.tolist() == [1.0, np.float32(1.0 / 127)]
    assert qp.quantize(w).tolist() == [[0, 0, 0], [64, -127, 32]]


# -- QuantizeLinear semantics --------------------------------------------------------------------


def _ort_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    opset = 21 if qp.dtype.endswith("16") else 13
    attrs = {"axis": qp.axis} if qp.axis is not None else {}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", _ONNX[qp.dtype], list(x.shape))],
        [
            numpy_helper.from_array(np.asarray(qp.scale, np.float32), "s"),
            numpy_helper.from_array(np.asarray(qp.zero_point, _NP[qp.dtype]), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return session(model).run(None, {"x": x})[0]


_TIES = [0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.25, 63.75, -64.25]  # at scale 0.5: k + 0.5
_SATURATING = [1000.0, -1000.0, 1e6, -1e6, 3e9, -3e9]
_BEYOND_INT64 = [1e20, -1e20, 3e38, -3e38, np.inf, -np.inf]  # x / scale does not fit an int64
_QPARAMS = [
    QParams(np.array(0.5, np.float32), np.array(0, np.int8), "int8"),
    QParams(np.array(0.5, np.float32), np.array(17, np.uint8), "uint8"),
    QParams(np.array(0.5, np.float32), np.array(-7, np.int16), "int16"),
    QParams(np.array(0.5, np.float32), np.array(1000, np.uint16), "uint16"),
    QParams(np.array(0.037, np.float32), np.array(3, np.int8), "int8"),
]
_IDS = ["int8", "uint8", "int16", "uint16", "int8-odd-scale"]


def _assert_same(x: np.ndarray, qp: QParams) -> None:
    with np.errstate(all="ignore"):
        ours = qp.quantize(x)
    theirs = _ort_quantize(x, qp)
    assert ours.dtype == theirs.dtype
    mismatch = np.nonzero(ours != theirs)[0]
    assert mismatch.size == 0, [(float(x[i]), int(ours[i]), int(theirs[i])) for i in mismatch]


@pytest.mark.parametrize("qp", _QPARAMS, ids=_IDS)
def test_quantize_matches_onnxruntime(qp):
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [_TIES, _SATURATING, rng.normal(0, 30, 200), rng.normal(0, 3e4, 50), [0.0, -0.0]]
    ).astype(np.float32)
    _assert_same(x, qp)


@pytest.mark.parametrize("qp", _QPARAMS, ids=_IDS)
def test_quantize_matches_onnxruntime_for_huge_values(qp):
    _assert_same(np.array(_BEYOND_INT64, np.float32), qp)


def test_quantize_round_half_to_even_and_saturation_hand_values():
    qp = QParams(np.array(0.5, np.float32), np.array(0, np.int8), "int8")
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 63.25, 63.75, 64.0, -64.0, -64.5], np.float32)
    assert qp.quantize(x).tolist() == [0, 2, 2, 0, -2, 126, 127, 127, -128, -128]


def test_quantize_saturates_huge_values_to_the_right_end():
    qp = QParams(np.array(0.001, np.float32), np.array(0, np.int8), "int8")
    with np.errstate(all="ignore"):
        q = qp.quantize(np.array([1e20, -1e20, 3e38, -3e38, np.inf, -np.inf], np.float32))
    assert q.tolist() == [127, -128, 127, -128, 127, -128]


def test_quantize_per_axis_matches_onnxruntime():
    w = _weights((3, 4, 2), seed=5) * 5
    qp = QParams(
        np.array([0.01, 0.1, 0.02, 0.5], np.float32), np.array([0, 3, -2, 1], np.int8), "int8", 1
    )
    np.testing.assert_array_equal(qp.quantize(w), _ort_quantize(w, qp))


# -- bias ------------------------------------------------------------------------------------------


def test_bias_int32_at_16_bits_saturates():
    bias = np.array([1.0, -1.0, 0.1, 0.00123, 0.5], np.float32)
    input_scale = np.array(0.01, np.float32)
    weight_scale = np.full(5, 0.001, np.float32)
    q16, scale = bias_int32(bias, input_scale, weight_scale, 16)
    assert q16.dtype == np.int32
    assert scale.dtype == np.float32 and scale.shape == (5,)
    assert np.all(scale == np.float32(np.float32(0.01) * np.float32(0.001)))
    assert q16.tolist() == [32767, -32768, 10000, 123, 32767]
    q32, _ = bias_int32(bias, input_scale, weight_scale, 32)
    assert q32.tolist() == [100000, -100000, 10000, 123, 50000]


def test_bias_int32_per_channel_scale():
    bias = np.array([0.5, -0.25], np.float32)
    q, scale = bias_int32(bias, np.array(0.5, np.float32), np.array([0.25, 0.0625], np.float32), 32)
    assert scale.tolist() == [0.125, 0.03125]
    assert q.tolist() == [4, -8]


def test_bias_int32_shift_scales_overflowing_channels_by_powers_of_two():
    bias = np.array([1.0, 0.1, -5.0], np.float32)
    base = np.float32(np.float32(0.01) * np.float32(0.001))
    q, scale = bias_int32(
        bias, np.array(0.01, np.float32), np.full(3, 0.001, np.float32), 16, shift=True
    )
    # 1.0 / (1e-5 * 32767) = 3.05 -> x4; 0.1 fits -> x1; 5.0 -> 15.3 -> x16
    np.testing.assert_array_equal(scale, np.array([4, 1, 16], np.float32) * base)
    assert q.tolist() == [25000, 10000, -31250]
    assert np.abs(q).max() <= 32767


def test_fit_weights_to_bias_raises_only_overflowing_channels():
    weights = QParams(np.array([0.001, 0.001], np.float32), np.zeros(2, np.int8), "int8", 0)
    bias = np.array([1.0, 0.1], np.float32)
    x_scale = np.array(0.01, np.float32)
    fitted, raised = fit_weights_to_bias(weights, bias, x_scale, 16, power_of_2=False)
    assert raised == 1
    assert fitted.axis == 0 and fitted.dtype == "int8"
    assert fitted.scale.dtype == np.float32
    assert fitted.scale[1] == np.float32(0.001)  # untouched
    assert fitted.scale[0] == pytest.approx(1.0 / (0.01 * 32767), rel=2e-6)
    assert fitted.scale[0] >= np.float32(1.0 / (0.01 * 32767))
    q, _ = bias_int32(bias, x_scale, fitted.scale, 16)
    assert q.tolist() == [32767, 10000]  # fits without saturating


def test_fit_weights_to_bias_per_tensor_and_power_of_2():
    weights = QParams(np.array(0.001, np.float32), np.array(0, np.int8), "int8")
    bias = np.array([1.0, -0.1], np.float32)
    fitted, raised = fit_weights_to_bias(
        weights, bias, np.array(0.01, np.float32), 16, power_of_2=True
    )
    assert raised == 1 and fitted.axis is None
    assert fitted.scale == np.float32(2.0**-8)  # next power of two above 1 / 327.67
    q, _ = bias_int32(bias, np.array(0.01, np.float32), np.full(2, fitted.scale), 16)
    assert np.abs(q).max() <= 32767


def test_fit_weights_to_bias_leaves_fitting_biases_alone():
    weights = QParams(np.array([0.01, 0.02], np.float32), np.zeros(2, np.int8), "int8", 0)
    fitted, raised = fit_weights_to_bias(
        weights, np.array([0.5, -0.5], np.float32), np.array(0.01, np.float32), 16, False
    )
    assert raised == 0
    np.testing.assert_array_equal(fitted.scale, weights.scale)
