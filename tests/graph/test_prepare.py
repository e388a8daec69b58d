"""prepare_model: BatchNorm folding, constants, opset upgrade, node names, shapes; load_model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import TensorProto, helper, numpy_helper

from quantbuild.errors import ModelError
from quantbuild.graph.onnx_utils import graph_inputs, load_model, opset_version
from quantbuild.graph.prepare import prepare_model
from quantbuild.runtime import session


def _f32(name: str, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    # prepare_model may edit its argument in place: always keep an untouched reference copy
    return onnx.load_from_string(model.SerializeToString())


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return session(model).run(None, feed)


def _random_input(shape=(1, 3, 8, 8), seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _conv_bn(bias: str, extra_consumer: bool = False, shared_weight: bool = False):
    """input -> Conv(w[, b]) -> BatchNormalization -> out (optionally c also feeds an Add)."""
    rng = np.random.default_rng(3)
    conv_inputs = ["input", "w"] + {"bias": ["b"], "none": [], "empty": [""]}[bias]
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "g", "beta", "m", "v"], ["bn"], name="bn", epsilon=1e-3
        ),
    ]
    out = "bn"
    if extra_consumer:
        nodes.append(helper.make_node("Add", ["c", "bn"], ["sum"], name="add"))
        out = "sum"
    if shared_weight:
        nodes.append(
            helper.make_node(
                "Conv", ["input", "w"], ["c_other"], name="conv_other", pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Add", ["bn", "c_other"], ["sum"], name="add"))
        out = "sum"
    inits = [
        _f32("w", rng.normal(0, 0.5, (4, 3, 3, 3))),
        _f32("g", rng.uniform(0.5, 1.5, 4)),
        _f32("beta", rng.normal(0, 0.3, 4)),
        _f32("m", rng.normal(0, 0.3, 4)),
        _f32("v", rng.uniform(0.2, 2.0, 4)),
    ]
    if bias == "bias":
        inits.append(_f32("b", rng.normal(0, 0.3, 4)))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )


def test_small_cnn_batchnorm_folded_and_outputs_unchanged():
    original = small_cnn()
    reference = _copy(original)
    prepared, info = prepare_model(original)
    assert "BatchNormalization" not in _ops(prepared)
    assert info == {"opset": 13, "batchnorm_folded": 1, "nodes": 9}
    # the BN parameters are gone, the folded bias exists
    inits = _inits(prepared)
    assert not {"g1", "b1", "m1", "v1"} & set(inits)
    conv = prepared.graph.node[0]
    assert conv.op_type == "Conv" and conv.output[0] == "bn1" and len(conv.input) == 3
    assert inits[conv.input[2]].shape == (4,)
    x = _random_input()
    (want,) = _run(reference, {"input": x})
    (got,) = _run(prepared, {"input": x})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bias", ["bias", "none", "empty"])
def test_fold_into_conv_with_and_without_bias(bias):
    model = _conv_bn(bias)
    reference = _copy(model)
    prepared, info = prepare_model(model)
    assert _ops(prepared) == ["Conv"]
    assert info["batchnorm_folded"] == 1
    conv = prepared.graph.node[0]
    assert list(conv.output) == ["bn"]
    assert len(conv.input) == 3 and conv.input[2] != ""
    inits = _inits(prepared)
    assert set(inits) == {"w", conv.input[2]}
    # hand-folded parameters
    ref = _inits(reference)
    factor = ref["g"].astype(np.float64) / np.sqrt(ref["v"].astype(np.float64) + 1e-3)
    bias0 = ref["b"].astype(np.float64) if bias == "bias" else 0.0
    np.testing.assert_allclose(inits["w"], ref["w"] * factor[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(
        inits[conv.input[2]], (bias0 - ref["m"]) * factor + ref["beta"], rtol=1e-6, atol=1e-7
    )
    x = _random_input(seed=11)
    np.testing.assert_allclose(
        _run(prepared, {"input": x})[0], _run(reference, {"input": x})[0], rtol=0, atol=1e-5
    )


def test_no_fold_when_conv_output_has_two_consumers():
    model = _conv_bn("bias", extra_consumer=True)
    reference = _copy(model)
    prepared, info = prepare_model(model)
    assert info["batchnorm_folded"] == 0
    # the BatchNorm the conv cannot absorb becomes a depthwise 1x1 layer (quantized, not float)
    assert _ops(prepared) == ["Conv", "Conv", "Add"] and info["batchnorm_as_depthwise"] == 1
    np.testing.assert_array_equal(_inits(prepared)["w"], _inits(reference)["w"])
    np.testing.assert_array_equal(_inits(prepared)["b"], _inits(reference)["b"])
    x = _random_input(seed=12)
    np.testing.assert_allclose(
        _run(prepared, {"input": x})[0], _run(reference, {"input": x})[0], rtol=0, atol=1e-5
    )


def test_no_fold_when_conv_weight_is_shared():
    model = _conv_bn("none", shared_weight=True)
    reference = _copy(model)
    prepared, info = prepare_model(model)
    assert info["batchnorm_folded"] == 0
    assert "BatchNormalization" not in _ops(prepared) and info["batchnorm_as_depthwise"] == 1
    x = _random_input(seed=13)
    np.testing.assert_allclose(
        _run(prepared, {"input": x})[0], _run(reference, {"input": x})[0], rtol=0, atol=1e-5
    )


def test_constant_nodes_become_initializers():
    tensor = np.arange(6, dtype=np.float32).reshape(1, 6) / 10
    nodes = [
        helper.make_node("Constant", [], ["k"], name="ck", value=numpy_helper.from_array(tensor)),
        helper.make_node("Constant", [], ["two"], name="c2", value_float=2.0),
        helper.make_node("Constant", [], ["shape"], name="cs", value_ints=[2, 3]),
        helper.make_node("Add", ["x", "k"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "two"], ["m"], name="mul"),
        helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [],
    )
    reference = _copy(model)
    prepared, _ = prepare_model(model)
    assert _ops(prepared) == ["Add", "Mul", "Reshape"]
    inits = _inits(prepared)
    assert set(inits) == {"k", "two", "shape"}
    np.testing.assert_array_equal(inits["k"], tensor)
    assert inits["two"].dtype == np.float32 and inits["two"].shape == () and inits["two"] == 2.0
    assert inits["shape"].dtype == np.int64 and inits["shape"].tolist() == [2, 3]
    # initializers are not listed as graph inputs
    assert [i.name for i in prepared.graph.input] == ["x"]
    x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    (got,) = _run(prepared, {"x": x})
    np.testing.assert_array_equal(got, _run(reference, {"x": x})[0])
    np.testing.assert_allclose(got, ((x + tensor) * 2).reshape(2, 3), rtol=1e-6)


def test_opset_11_is_upgraded_to_13():
    original = small_cnn(opset=11)
    reference = _copy(original)
    assert opset_version(original) == 11
    prepared, info = prepare_model(original)
    assert opset_version(prepared) == 13
    assert info["opset"] == 13
    assert "BatchNormalization" not in _ops(prepared)
    onnx.checker.check_model(prepared)
    x = _random_input(seed=3)
    np.testing.assert_allclose(
        _run(prepared, {"input": x})[0], _run(reference, {"input": x})[0], rtol=0, atol=1e-5
    )


def test_newer_opset_is_kept():
    prepared, info = prepare_model(small_cnn(opset=17))
    assert opset_version(prepared) == 17 and info["opset"] == 17


def test_empty_and_duplicate_node_names_become_unique():
    names = ["", "dup", "dup", "", "keep", "Relu_0"]
    nodes = []
    previous = "x"
    for i, name in enumerate(names):
        nodes.append(helper.make_node("Relu", [previous], [f"t{i}"], name=name))
        previous = f"t{i}"
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [2, 3])],
        [],
    )
    prepared, _ = prepare_model(model)
    got = [n.name for n in prepared.graph.node]
    assert all(got), got
    assert len(set(got)) == len(got), got
    # names that were already unique are kept, in place
    assert got[4] == "keep" and got[5] == "Relu_0"
    # the empty names do not collide with the existing "Relu_0"
    assert got[0] != "Relu_0"
    # renaming is deterministic
    again, _ = prepare_model(_copy(model))
    assert [n.name for n in again.graph.node] == got


def test_shapes_are_inferred():
    prepared, _ = prepare_model(small_cnn())
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in prepared.graph.value_info
    }
    assert shapes == {
        "bn1": [1, 4, 8, 8],
        "r1": [1, 4, 8, 8],
        "p1": [1, 4, 4, 4],
        "c2": [1, 6, 4, 4],
        "r2": [1, 6, 4, 4],
        "a2": [1, 6, 4, 4],
        "gap": [1, 6, 1, 1],
        "flat": [1, 6],
    }
    types = {v.type.tensor_type.elem_type for v in prepared.graph.value_info}
    assert types == {TensorProto.FLOAT}


# -- load_model --------------------------------------------------------------------------


def _assert_one_line_model_error(path):
    with pytest.raises(ModelError) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text
    assert path.name in text
    assert info.value.exit_code == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_load_model_random_bytes(tmp_path, seed):
    path = tmp_path / f"garbage{seed}.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    _assert_one_line_model_error(path)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_load_model_truncated(tmp_path, fraction):
    data = small_cnn().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    _assert_one_line_model_error(path)


def test_load_model_missing_file(tmp_path):
    _assert_one_line_model_error(tmp_path / "missing.onnx")


def test_load_model_valid_file(tmp_path):
    path = tmp_path / "ok.onnx"
    onnx.save(small_cnn(), str(path))
    model = load_model(path)
    assert _ops(model) == _ops(small_cnn())


def test_graph_inputs_carry_their_element_types():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    (spec,) = graph_inputs(helper.make_model(graph))
    assert (spec.name, spec.shape, spec.dtype) == ("ids", (None, None), np.dtype(np.int64))
