"""Multi-node TIDL layers in exported graphs: LayerNorm, GELU, a MatMul's bias."""

from __future__ import annotations

import numpy as np
import onnx
from builders import attention_block
from onnx import TensorProto, helper, numpy_helper

from quantbuild.graph.patterns import fused_layers, linear_biases


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(nodes, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_attention_block_layers_are_found_with_their_inner_tensors():
    model = attention_block()
    layers = fused_layers(model)
    assert [f.kind for f in layers] == ["LayerNorm", "LayerNorm", "GELU"]
    ln1, _, gelu = layers
    assert (ln1.input, ln1.output) == ("x", "ln1.out")
    assert len(ln1.nodes) == 9 and "ln1.std" in ln1.internal and "ln1.out" not in ln1.internal
    assert (gelu.input, gelu.output) == ("fc1.out", "gelu")
    assert set(gelu.internal) == {"g.div", "g.erf", "g.add", "g.mul"}
    biases = linear_biases(model)
    assert set(biases) == {f"{p}.matmul" for p in ("q", "k", "v", "proj", "fc1", "fc2")}
    assert biases["fc1.matmul"].bias == "fc1.b" and biases["fc1.matmul"].output == "fc1.out"
    # A MatMul of two activations has no bias to own.
    assert "scores" not in biases and "context" not in biases


def test_gelu_variants_half_first_and_tanh_approximation():
    half_first = _model(
        [
            helper.make_node("Mul", ["x", "c"], ["a"], name="pre"),
            helper.make_node("Erf", ["a"], ["e"], name="erf"),
            helper.make_node("Add", ["one", "e"], ["f"], name="add"),
            helper.make_node("Mul", ["x", "half"], ["h"], name="half"),
            helper.make_node("Mul", ["h", "f"], ["y"], name="out"),
        ],
        [_const("c", np.sqrt(0.5)), _const("one", 1.0), _const("half", 0.5)],
    )
    (gelu,) = fused_layers(half_first)
    assert (gelu.kind, gelu.input, gelu.output) == ("GELU", "x", "y")
    assert set(gelu.nodes) == {"pre", "erf", "add", "half", "out"}
    tanh = _model(
        [
            helper.make_node("Pow", ["x", "three"], ["p"], name="pow"),
            helper.make_node("Mul", ["p", "k"], ["pk"], name="cubic"),
            helper.make_node("Add", ["x", "pk"], ["u"], name="inner"),
            helper.make_node("Mul", ["u", "c"], ["a"], name="pre"),
            helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
            helper.make_node("Add", ["t", "one"], ["f"], name="add"),
            helper.make_node("Mul", ["x", "f"], ["g"], name="mul"),
            helper.make_node("Mul", ["g", "half"], ["y"], name="out"),
        ],
        [
            _const("three", 3.0),
            _const("k", 0.044715),
            _const("c", np.sqrt(2 / np.pi)),
            _const("one", 1.0),
            _const("half", 0.5),
        ],
    )
    (gelu,) = fused_layers(tanh)
    assert gelu.kind == "GELU" and gelu.input == "x" and len(gelu.nodes) == 8


def test_a_pattern_whose_inner_tensor_is_read_elsewhere_is_no_layer():
    model = attention_block()
    # The first LayerNorm's mean also feeds the output: it is not internal to one layer.
    model.graph.node.append(helper.make_node("Identity", ["ln1.mean"], ["m"], name="leak"))
    model.graph.output.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    assert [f.kind for f in fused_layers(model)] == ["LayerNorm", "GELU"]


def test_wrong_constants_are_not_a_gelu_or_a_layernorm():
    model = attention_block()
    for init in model.graph.initializer:
        if init.name in ("sqrt2", "two"):
            init.CopyFrom(_const(init.name, 3.0))
    assert fused_layers(model) == []
