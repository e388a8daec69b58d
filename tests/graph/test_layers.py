"""layer_table: MACs and parameter counts, checked against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import onnx
from builders import attention_block, small_cnn
from onnx import TensorProto, helper, numpy_helper, shape_inference

from quantbuild.graph.layers import layer_table
from quantbuild.graph.prepare import prepare_model


def _f32(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def _table(nodes, inputs, outputs, inits) -> dict[str, dict]:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model = shape_inference.infer_shapes(model, strict_mode=True)
    return {row["name"]: row for row in layer_table(model)}


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_macs_and_params():
    rows = _table(
        [
            # 3->4 channels, 3x3, pad 1: out [1,4,8,8]
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            # depthwise 4 groups, 3x3, stride 2, no pad: out [1,4,3,3]
            helper.make_node("Conv", ["c", "wd"], ["d"], name="dw", group=4, strides=[2, 2]),
            helper.make_node("Relu", ["d"], ["y"], name="relu"),
        ],
        [_vi("x", [1, 3, 8, 8])],
        [_vi("y", [1, 4, 3, 3])],
        [_f32("w", (4, 3, 3, 3)), _f32("b", (4,)), _f32("wd", (4, 1, 3, 3))],
    )
    conv = rows["conv"]
    assert conv["output_shape"] == [1, 4, 8, 8]
    assert conv["macs"] == (1 * 4 * 8 * 8) * (3 * 3 * 3)  # 6912
    assert conv["macs"] == 6912
    assert conv["params"] == 4 * 3 * 3 * 3 + 4  # 112
    dw = rows["dw"]
    assert dw["output_shape"] == [1, 4, 3, 3]
    assert dw["macs"] == 36 * 9  # one input channel per output channel
    assert dw["params"] == 36
    assert rows["relu"]["macs"] == 0 and rows["relu"]["params"] == 0


def test_gemm_macs_and_params():
    rows = _table(
        [
            # [2,6] x [5,6]^T + b: out [2,5]
            helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1),
            # A^T B with A [7,3] (transA): out [3,4], K = 7
            helper.make_node("Gemm", ["a", "w2"], ["h"], name="fc_t", transA=1),
        ],
        [_vi("x", [2, 6]), _vi("a", [7, 3])],
        [_vi("g", [2, 5]), _vi("h", [3, 4])],
        [_f32("w", (5, 6)), _f32("b", (5,)), _f32("w2", (7, 4))],
    )
    assert rows["fc"]["output_shape"] == [2, 5]
    assert rows["fc"]["macs"] == 2 * 5 * 6  # 60
    assert rows["fc"]["params"] == 30 + 5
    # transA: A is [K, M] = [7, 3], so K = 7
    assert rows["fc_t"]["output_shape"] == [3, 4]
    assert rows["fc_t"]["macs"] == 3 * 4 * 7  # 84
    assert rows["fc_t"]["params"] == 28


def test_matmul_macs_and_params():
    rows = _table(
        [
            # batched [2,3,5] x [5,7]: out [2,3,7]
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            # initializer on the left: [4,2] x [2,3] -> [4,3]
            helper.make_node("MatMul", ["wl", "z"], ["n"], name="mm_left"),
        ],
        [_vi("x", [2, 3, 5]), _vi("z", [2, 3])],
        [_vi("m", [2, 3, 7]), _vi("n", [4, 3])],
        [_f32("w", (5, 7)), _f32("wl", (4, 2))],
    )
    assert rows["mm"]["output_shape"] == [2, 3, 7]
    assert rows["mm"]["macs"] == 2 * 3 * 7 * 5  # 210
    assert rows["mm"]["params"] == 35
    assert rows["mm_left"]["macs"] == 4 * 3 * 2  # 24
    assert rows["mm_left"]["params"] == 8


def test_symbolic_batch_counts_one_frame_other_symbolic_dims_give_unknown_macs():
    rows = _table(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")],
        [_vi("x", ["batch", 3, 8, 8])],
        [_vi("c", ["batch", 2, 6, 6])],
        [_f32("w", (2, 3, 3, 3))],
    )
    assert rows["conv"]["macs"] == 2 * 6 * 6 * 27
    assert rows["conv"]["output_shape"] == [1, 2, 6, 6]
    rows = _table(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")],
        [_vi("x", [1, 3, "h", "w"])],
        [_vi("c", [1, 2, "h2", "w2"])],
        [_f32("w", (2, 3, 3, 3))],
    )
    assert rows["conv"]["macs"] is None
    assert rows["conv"]["output_shape"] is None
    assert rows["conv"]["params"] == 54


def test_small_cnn_table():
    prepared, _ = prepare_model(small_cnn())
    rows = layer_table(prepared)
    by_name = {r["name"]: r for r in rows}
    assert [r["op"] for r in rows] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"
    ]  # fmt: skip
    assert by_name["conv1"]["macs"] == 4 * 8 * 8 * 3 * 9  # 6912
    assert by_name["conv1"]["params"] == 4 * 3 * 9 + 4  # BN folded into a bias
    assert by_name["conv2"]["macs"] == 6 * 4 * 4 * 4 * 9  # 3456
    assert by_name["conv2"]["params"] == 6 * 4 * 9 + 6
    assert by_name["fc"]["macs"] == 5 * 6
    assert by_name["fc"]["params"] == 35
    assert by_name["add2"]["params"] == 6
    assert sum(r["macs"] for r in rows) == 6912 + 3456 + 30


def test_macs_per_frame_with_a_symbolic_batch_and_unknown_with_a_symbolic_sequence():
    model = prepare_model(attention_block())[0]  # x: [batch, seq, 16]
    rows = {r["name"]: r for r in layer_table(model)}
    assert rows["fc1.matmul"]["macs"] is None  # the sequence length is not known
    fixed = attention_block()
    fixed.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 10  # [batch, 10, 16]
    rows = {r["name"]: r for r in layer_table(prepare_model(fixed)[0])}
    assert rows["fc1.matmul"]["output_shape"] == [1, 10, 32]
    assert rows["fc1.matmul"]["macs"] == 10 * 16 * 32
    assert rows["scores"]["macs"] == 10 * 10 * 16  # two activations: Q (10x16) by K^T (16x10)
