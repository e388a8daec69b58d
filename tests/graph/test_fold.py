"""Graph rewrites: each is exact (onnxruntime outputs unchanged) and yields TIDL-like layers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from builders import attention_block
from onnx import TensorProto, helper, numpy_helper

from quantbuild.graph.prepare import prepare_model
from quantbuild.runtime import session


def _const(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(
    nodes, inits, shape=(1, 4, 6, 6), out_shape=None, opset=13, dynamic=False
) -> onnx.ModelProto:
    in_shape = ["N", shape[1], "H", "W"] if dynamic else list(shape)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _same_outputs(model: onnx.ModelProto, shape=(1, 4, 6, 6)) -> onnx.ModelProto:
    prepared, _ = prepare_model(model)
    x = np.random.default_rng(0).normal(0, 2, shape).astype(np.float32)
    want = session(model).run(None, {"x": x})[0]
    got = session(prepared).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return prepared


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


W = np.random.default_rng(1).normal(0, 0.5, (5, 4, 3, 3))


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("Mul", 0.7),
        ("Mul", np.linspace(0.5, 1.5, 5).reshape(1, 5, 1, 1)),
        ("Div", np.linspace(0.5, 1.5, 5).reshape(5, 1, 1)),
        ("Add", np.linspace(-1, 1, 5).reshape(1, 5, 1, 1)),
        ("Sub", 0.25),
    ],
)
def test_constant_scale_and_shift_fold_into_the_conv(op, value):
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node(op, ["c", "k"], ["y"], name="op"),
        ],
        [_const("w", W), _const("k", value)],
    )
    prepared = _same_outputs(model)
    assert _ops(prepared) == Counter({"Conv": 1})


def test_a_chain_of_mul_then_add_folds_completely_and_keeps_the_output_name():
    model = _model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["k", "c"], ["m"], name="mul"),
            helper.make_node("Add", ["m", "t"], ["y"], name="add"),
        ],
        [_const("w", W), _const("b", np.ones(5)), _const("k", [0.9]), _const("t", [0.3])],
    )
    prepared = _same_outputs(model)
    assert _ops(prepared) == Counter({"Conv": 1})
    assert prepared.graph.node[0].output[0] == "y"


def test_a_constant_broadcast_over_width_is_not_folded():
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["c", "k"], ["y"], name="mul"),
        ],
        [_const("w", W), _const("k", np.linspace(1, 2, 6))],  # varies along the last axis
    )
    assert _ops(_same_outputs(model)) == Counter({"Conv": 1, "Mul": 1})


def test_decomposed_hardswish_becomes_one_operator():
    model = _model(
        [
            helper.make_node("Add", ["x", "three"], ["a"], name="add"),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
            helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
            helper.make_node("Div", ["m", "six2"], ["y"], name="div"),
        ],
        [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("six2", 6.0)],
        opset=12,
    )
    prepared = _same_outputs(model)
    assert _ops(prepared) == Counter({"HardSwish": 1})
    assert any(o.domain in ("", "ai.onnx") and o.version >= 14 for o in prepared.opset_import)


def test_scale_then_shift_after_an_activation_becomes_one_depthwise_layer_with_symbolic_sizes():
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Mul", ["r", "s"], ["m"], name="mul"),
            helper.make_node("Add", ["m", "t"], ["y"], name="add"),
        ],
        [_const("s", [0.5]), _const("t", np.arange(4).reshape(1, 4, 1, 1))],
        dynamic=True,
    )
    prepared = _same_outputs(model)
    # one BatchNorm (TIDL's layer), run as the per-channel affine it is: a depthwise 1x1 Conv
    assert _ops(prepared) == Counter({"Relu": 1, "Conv": 1})
    conv = next(n for n in prepared.graph.node if n.op_type == "Conv")
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attributes == {"group": 4, "kernel_shape": [1, 1]} and len(conv.input) == 3


def test_identity_nodes_are_removed_and_matmul_plus_bias_becomes_gemm():
    model = _model(
        [
            helper.make_node("Identity", ["x"], ["i"], name="id"),
            helper.make_node("MatMul", ["i", "w"], ["m"], name="mm"),
            helper.make_node("Add", ["m", "b"], ["y"], name="add"),
        ],
        [_const("w", np.random.default_rng(2).normal(0, 1, (8, 3))), _const("b", [1.0, 2.0, 3.0])],
        shape=(2, 8),
    )
    prepared = _same_outputs(model, shape=(2, 8))
    assert _ops(prepared) == Counter({"Gemm": 1})


def test_the_input_model_is_not_modified():
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["c", "k"], ["y"], name="op"),
        ],
        [_const("w", W), _const("k", 0.5)],
    )
    before = model.SerializeToString()
    prepare_model(model)
    assert model.SerializeToString() == before


def test_layer_scale_folds_into_the_linear_layer_before_it():
    model = attention_block()
    prepared, summary = prepare_model(model)
    assert summary["scale_into_matmul"] == 1
    assert "layer_scale" not in {n.name for n in prepared.graph.node}
    x = np.random.default_rng(1).normal(0, 1, (2, 7, 16)).astype(np.float32)
    np.testing.assert_allclose(
        session(prepared).run(None, {"x": x})[0],
        session(model).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-5,
    )
