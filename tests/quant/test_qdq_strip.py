"""Stripping a QDQ model: the float graph it simulates and the grids it states."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from quantbuild.errors import ModelError
from quantbuild.quant.qdq_strip import is_qdq, strip_qdq
from quantbuild.runtime import session


class _Frames(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.frames = iter(rng.normal(0, 1, (4, 1, 3, 8, 8)).astype(np.float32))

    def get_next(self):
        frame = next(self.frames, None)
        return None if frame is None else {"input": frame}


@pytest.fixture(scope="module")
def ort_qdq(tmp_path_factory) -> onnx.ModelProto:
    folder = tmp_path_factory.mktemp("qdq")
    onnx.save(small_cnn(batchnorm=False), str(folder / "float.onnx"))
    quantize_static(
        str(folder / "float.onnx"),
        str(folder / "q.onnx"),
        _Frames(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return onnx.load(str(folder / "q.onnx"))


def test_stripped_graph_has_no_qdq_and_runs(ort_qdq):
    assert is_qdq(ort_qdq)
    float_model, found = strip_qdq(ort_qdq)
    assert not is_qdq(float_model)
    onnx.checker.check_model(float_model)
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    (logits,) = session(float_model).run(None, {"input": x})
    assert logits.shape == (1, 5) and np.isfinite(logits).all()
    assert [o.name for o in float_model.graph.output] == ["logits"]
    assert {"input", "logits"} <= set(found.activations)


def test_weights_become_their_dequantized_values_with_their_grids(ort_qdq):
    float_model, found = strip_qdq(ort_qdq)
    inits = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    conv = next(n for n in float_model.graph.node if n.op_type == "Conv")
    weight = inits[conv.input[1]]
    qp = found.weights[conv.input[1]]
    assert qp.dtype == "int8" and qp.axis == 0 and qp.scale.shape == (weight.shape[0],)
    np.testing.assert_array_equal(qp.dequantize(qp.quantize(weight)), weight)
    bias = next(n for n in float_model.graph.node if n.op_type == "Gemm").input[2]
    # per-channel weights: per-channel bias grids (input scale x each weight scale)
    assert found.weights[bias].dtype == "int32" and found.weights[bias].axis == 0


def test_dequantize_of_a_non_qdq_input_is_rejected():
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [
            numpy_helper.from_array(np.float32(0.5), "s"),
            numpy_helper.from_array(np.uint8(0), "z"),
        ],
    )
    with pytest.raises(ModelError, match="only QDQ-format models"):
        strip_qdq(helper.make_model(graph))
