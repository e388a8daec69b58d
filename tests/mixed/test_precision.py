"""assign / promote: TIDL's mixed-precision rules on small real ONNX graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import TensorProto, helper, numpy_helper, shape_inference

from quantbuild.errors import RecipeError
from quantbuild.graph.prepare import prepare_model
from quantbuild.mixed.precision import assign, promote

FIELD = "quantization.mixed_precision"


def _model(nodes, inputs: dict, inits: dict, output_shape=None) -> onnx.ModelProto:
    """A checked, shape-inferred model; `inits` maps names to arrays or to shapes (zeros)."""
    arrays = {n: v if isinstance(v, np.ndarray) else np.zeros(v) for n, v in inits.items()}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)  # inference fills in the output's shape if not given
    return model


def _conv(x: str, w: str, y: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])


def concat_model() -> onnx.ModelProto:
    """x -> convA -> a; x -> convB -> b -> MaxPool -> p; Concat(a, p) -> cat -> convC -> y."""
    return _model(
        [
            _conv("x", "wa", "a", "convA"),
            _conv("x", "wb", "b", "convB"),
            helper.make_node("MaxPool", ["b"], ["p"], name="pool", kernel_shape=[1, 1]),
            helper.make_node("Concat", ["a", "p"], ["cat"], name="concat", axis=1),
            _conv("cat", "wc", "y", "convC"),
        ],
        {"x": [1, 2, 4, 4]},
        {"wa": (2, 2, 3, 3), "wb": (2, 2, 3, 3), "wc": (2, 4, 3, 3)},
    )


def chain_model() -> onnx.ModelProto:
    """x -> conv1 -> c1 -> Relu (fused) -> r1 -> MaxPool -> p1 -> Resize -> u1 -> conv2 -> y."""
    return _model(
        [
            _conv("x", "w1", "c1", "conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node(
                "MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
            ),
            helper.make_node("Resize", ["p1", "", "scales"], ["u1"], name="resize"),
            _conv("u1", "w2", "y", "conv2"),
        ],
        {"x": [1, 2, 4, 4]},
        {"w1": (2, 2, 3, 3), "scales": np.array([1, 1, 2, 2]), "w2": (2, 2, 3, 3)},
    )


def deep_model() -> onnx.ModelProto:
    """x -> conv1 -> relu1 -> conv2 -> relu2 -> {conv3a, conv3b} -> Add -> conv4 -> y."""
    nodes = [
        _conv("x", "w1", "c1", "conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        _conv("r1", "w2", "c2", "conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        _conv("r2", "w3a", "c3a", "conv3a"),
        _conv("r2", "w3b", "c3b", "conv3b"),
        helper.make_node("Add", ["c3a", "c3b"], ["s"], name="add"),
        _conv("s", "w4", "y", "conv4"),
    ]
    inits = {w: (2, 2, 3, 3) for w in ("w1", "w2", "w3a", "w3b", "w4")}
    return _model(nodes, {"x": [1, 2, 4, 4]}, inits)


def head_model() -> onnx.ModelProto:
    """x -> conv -> GlobalAveragePool -> Flatten -> Gemm -> y."""
    return _model(
        [
            _conv("x", "w", "c", "conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "wfc"], ["y"], name="fc", transB=1),
        ],
        {"x": [1, 2, 4, 4]},
        {"w": (3, 2, 3, 3), "wfc": (5, 3)},
    )


def test_16bit_concat_makes_its_inputs_16bit():
    a = assign(concat_model(), output_16bit=["concat"])
    # MaxPool cannot change precision: its input goes 16-bit too; the convs can, so x stays 8.
    assert a.tensors_16bit == {"a", "p", "b", "cat"}
    assert a.weights_16bit == set()  # producers forced to 16-bit outputs keep 8-bit weights
    layers = a.layers
    assert layers["concat"] == {
        "op": "Concat",
        "output_bits": 16,
        "weight_bits": None,
        "why": "listed",
    }
    assert layers["convA"] == {
        "op": "Conv",
        "output_bits": 16,
        "weight_bits": 8,
        "why": "propagated from concat",
    }
    assert layers["pool"]["why"] == "propagated from concat"
    assert layers["convC"] == {"op": "Conv", "output_bits": 8, "weight_bits": 8, "why": "default"}


def test_listed_conv_has_16bit_weights_and_output_not_input():
    a = assign(chain_model(), output_16bit=["conv1"])
    assert "x" not in a.tensors_16bit
    assert a.bits("x") == 8 and a.bits("c1") == 16
    assert a.weights_16bit == {"w1"}
    assert a.layers["conv1"] == {
        "op": "Conv",
        "output_bits": 16,
        "weight_bits": 16,
        "why": "listed",
    }


def test_maxpool_and_resize_after_16bit_conv_stay_16bit():
    a = assign(chain_model(), output_16bit=["conv1"])
    # the fused Relu, MaxPool and Resize cannot change precision; conv2 takes 16 bits in, 8 out
    assert a.tensors_16bit == {"c1", "r1", "p1", "u1"}
    for name in ("relu1", "pool", "resize"):
        assert a.layers[name]["output_bits"] == 16
        assert a.layers[name]["why"] == "propagated from conv1"
    assert a.layers["conv2"] == {"op": "Conv", "output_bits": 8, "weight_bits": 8, "why": "default"}
    assert "scales" not in a.tensors_16bit


def test_16bit_input_of_a_layer_that_cannot_change_spreads_to_its_output():
    # the model input is 16-bit; conv1 can change precision, so nothing else follows
    assert assign(chain_model(), output_16bit=["x"]).tensors_16bit == {"x"}
    # MaxPool's 16-bit output ties its input, the fused Relu ties conv1's output to it
    a = assign(chain_model(), output_16bit=["pool"])
    assert a.tensors_16bit == {"c1", "r1", "p1", "u1"}
    assert a.weights_16bit == set()


def test_names_are_nodes_or_tensors_and_fused_activations_name_their_layer():
    by_node = assign(chain_model(), output_16bit=["conv1"])
    # TIDL names the merged Conv+Relu layer by its output tensor, r1
    for name in ("c1", "r1", "relu1"):
        other = assign(chain_model(), output_16bit=[name])
        assert other.tensors_16bit == by_node.tensors_16bit
        assert other.weights_16bit == {"w1"}


def test_params_16bit_changes_weights_only():
    a = assign(chain_model(), params_16bit=["conv2"])
    assert a.weights_16bit == {"w2"}
    assert a.tensors_16bit == set()
    assert a.layers["conv2"] == {"op": "Conv", "output_bits": 8, "weight_bits": 16, "why": "listed"}
    assert a.layers["conv1"]["weight_bits"] == 8


def test_gemm_cannot_change_precision_so_its_weights_follow_its_features():
    a = assign(head_model(), output_16bit=["gap"])
    # Flatten and Gemm cannot change: 16-bit features and weights; GAP can, so c stays 8-bit
    assert a.tensors_16bit == {"g", "f", "y"}
    assert a.weights_16bit == {"wfc"}
    assert a.layers["fc"]["why"] == "propagated from gap"
    assert a.layers["conv"]["output_bits"] == 8


def test_standalone_relu_can_change_precision_but_sigmoid_cannot():
    def model(act: str) -> onnx.ModelProto:
        return _model(
            [
                _conv("x", "w1", "a", "conv1"),
                _conv("x", "w2", "b", "conv2"),
                helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
                helper.make_node(act, ["cat"], ["act"], name="act"),
                _conv("act", "w3", "y", "conv3"),
            ],
            {"x": [1, 2, 4, 4]},
            {"w1": (2, 2, 3, 3), "w2": (2, 2, 3, 3), "w3": (2, 4, 3, 3)},
        )

    # a Relu after a Concat is not fused: TIDL imports it as a BatchNorm layer
    assert "act" not in assign(model("Relu"), output_16bit=["concat"]).tensors_16bit
    assert "act" in assign(model("Sigmoid"), output_16bit=["concat"]).tensors_16bit


def test_ranges_cover_every_node_on_a_path():
    a = assign(deep_model(), ranges=[("conv2", "add")])
    listed = {n for n, info in a.layers.items() if info["why"] == "listed"}
    # both branches of the diamond; relu2 (fused) names conv2's layer
    assert listed == {"conv2", "conv3a", "conv3b", "add"}
    assert a.weights_16bit == {"w2", "w3a", "w3b"}
    assert a.tensors_16bit == {"c2", "r2", "c3a", "c3b", "s"}
    assert a.layers["conv1"]["why"] == "default"
    assert a.layers["conv4"] == {"op": "Conv", "output_bits": 8, "weight_bits": 8, "why": "default"}
    # tensor names as ends, and a one-node range
    assert assign(deep_model(), ranges=[("r1", "c2")]).weights_16bit == {"w1", "w2"}
    assert assign(deep_model(), ranges=[("conv4", "conv4")]).weights_16bit == {"w4"}


def test_a_range_without_a_path_is_an_error():
    with pytest.raises(RecipeError, match=r"ranges\[0\]: no path from 'conv3a' to 'conv1'"):
        assign(deep_model(), ranges=[("conv3a", "conv1")])
    with pytest.raises(RecipeError, match=r"no path from 'conv3a' to 'conv3b'"):
        assign(deep_model(), ranges=[("conv3a", "conv3b")])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"output_16bit": ["conv1", "conv_2"]},
            f"{FIELD}.output_16bit[1]: no layer or tensor named 'conv_2'; did you mean 'conv2'?",
        ),
        (
            {"params_16bit": ["cnov4"]},
            f"{FIELD}.params_16bit[0]: no layer or tensor named 'cnov4'; did you mean 'conv4'?",
        ),
        (
            {"ranges": [("conv1", "ad")]},
            f"{FIELD}.ranges[0]: no layer or tensor named 'ad'; did you mean 'add'?",
        ),
        (
            {"output_16bit": ["backbone.layer1"]},
            f"{FIELD}.output_16bit[0]: no layer or tensor named 'backbone.layer1'",
        ),
        ({"params_16bit": ["x"]}, f"{FIELD}.params_16bit[0]: 'x' is a model input, not a layer"),
    ],
)
def test_unknown_names_are_one_line_errors_with_suggestions(kwargs, message):
    with pytest.raises(RecipeError) as caught:
        assign(deep_model(), **kwargs, where="det.yaml")
    assert caught.value.message == message
    assert str(caught.value) == f"det.yaml: {message}"
    assert caught.value.exit_code == 2


def test_custom_field_name():
    with pytest.raises(RecipeError, match=r"^mp\.output_16bit\[0\]: "):
        assign(deep_model(), output_16bit=["nope"], field="mp")


def test_promote_is_output_16bit_on_the_promoted_nodes():
    listed = assign(concat_model(), output_16bit=["convB", "concat"])
    promoted = promote(concat_model(), {"concat", "convB"})
    assert promoted.tensors_16bit == listed.tensors_16bit
    assert promoted.weights_16bit == listed.weights_16bit == {"wb"}
    assert promoted.layers["concat"]["why"] == "promoted"


def test_table_is_in_graph_order_and_default_is_all_8bit():
    a = assign(deep_model())
    assert a.tensors_16bit == set() and a.weights_16bit == set()
    rows = a.table()
    assert [r["layer"] for r in rows] == [
        "conv1",
        "relu1",
        "conv2",
        "relu2",
        "conv3a",
        "conv3b",
        "add",
        "conv4",
    ]
    assert {r["why"] for r in rows} == {"default"}
    assert rows[1] == {
        "layer": "relu1",
        "op": "Relu",
        "output_bits": 8,
        "weight_bits": None,
        "why": "default",
    }


def test_shape_tensors_do_not_carry_precision():
    # Reshape's shape input comes from Shape (int64): not a feature map
    model = _model(
        [
            _conv("x", "w", "c", "conv"),
            helper.make_node("Shape", ["c"], ["shape"], name="shape"),
            helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
            _conv("r", "w2", "y", "conv2"),
        ],
        {"x": [1, 2, 4, 4]},
        {"w": (2, 2, 3, 3), "w2": (2, 2, 3, 3)},
        output_shape=[1, 2, 4, 4],
    )
    a = assign(model, output_16bit=["reshape"])
    assert a.tensors_16bit == {"c", "r"}
    assert a.layers["shape"]["output_bits"] == 8


def test_list_order_does_not_matter():
    one = assign(concat_model(), output_16bit=["concat", "convB"])
    other = assign(concat_model(), output_16bit=["convB", "concat"])
    assert one == other


def test_prepared_model_with_lists_and_a_range():
    # conv1 (BN folded) -> relu1 -> pool1 -> conv2 -> relu2 -> add2 -> gap -> flatten -> fc
    model = prepare_model(small_cnn())[0]
    a = assign(model, output_16bit=["fc"], ranges=[("conv1", "pool1")])
    assert a.tensors_16bit == {"bn1", "r1", "p1", "gap", "flat", "logits"}
    assert a.weights_16bit == {"w1", "wfc"}
    whys = {name: info["why"] for name, info in a.layers.items()}
    assert whys == {
        "conv1": "listed",
        "relu1": "propagated from conv1",
        "pool1": "listed",
        "conv2": "default",
        "relu2": "default",
        "add2": "default",
        "gap": "propagated from fc",
        "flatten": "propagated from fc",
        "fc": "listed",
    }


def test_transformer_layers_follow_tidl_layer_mapping():
    """In an attention block, a MatMul's bias Add belongs to its inner product layer and a
    LayerNorm is one layer: neither changes precision, so promoting the query projection makes
    the whole attention branch 16-bit up to the residual Add, and stops there. GELU is an
    activation layer of its own (it changes precision)."""
    from builders import attention_block

    model = attention_block()
    attention = promote(model, ["q.matmul"])
    for tensor in ("ln1.out", "q.out", "k.out", "v.out", "scores", "probs", "attn", "proj.out"):
        assert attention.bits(tensor) == 16, tensor
    assert attention.bits("x") == 16  # the LayerNorm ties its input
    assert attention.bits("res1") == 8 and attention.bits("ln2.out") == 8
    assert attention.layers["q.add"]["output_bits"] == 16  # the bias Add is the same layer
    assert {"q.w", "k.w", "v.w", "proj.w"} <= attention.weights_16bit
    assert "fc1.w" not in attention.weights_16bit
    # The same assignment whichever MatMul of the branch is named.
    assert promote(model, ["scores"]).tensors_16bit == attention.tensors_16bit
    # fc1 ends at the GELU, which changes precision; fc2 takes its input from it.
    fc1 = promote(model, ["fc1.matmul"])
    assert fc1.bits("fc1.out") == 16 and fc1.bits("gelu") == 8
    assert fc1.bits("ln2.out") == 16 and fc1.bits("res1") == 16
    assert promote(model, ["fc2.matmul"]).bits("gelu") == 16
    # A layer named by a tensor inside a pattern resolves to the pattern's layer.
    assert promote(model, ["ln2.var"]).tensors_16bit == promote(model, ["ln2.beta"]).tensors_16bit
