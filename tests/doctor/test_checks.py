"""doctor checks on tiny models built to have (or not have) each problem."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import TensorProto, helper, numpy_helper

from quantbuild.calib.histogram import BINS, accumulate
from quantbuild.doctor.activations import activation_tail_check
from quantbuild.doctor.batchnorm import batchnorm_checks
from quantbuild.doctor.float_ops import float_check
from quantbuild.doctor.weights import weight_checks
from quantbuild.graph.prepare import prepare_model


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _bn(name: str, x: str, y: str, channels: int, gamma=None) -> tuple[onnx.NodeProto, list]:
    gamma = np.ones(channels) if gamma is None else np.asarray(gamma, dtype=np.float64)
    params = [f"{name}.g", f"{name}.b", f"{name}.m", f"{name}.v"]
    inits = [
        _init(params[0], gamma),
        _init(params[1], np.zeros(channels)),
        _init(params[2], np.zeros(channels)),
        _init(params[3], np.ones(channels)),
    ]
    return helper.make_node("BatchNormalization", [x, *params], [y], name=name), inits


def _model(nodes, inits, channels=4, size=8, out="out", out_shape=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "doctor_test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv(name, x, y, weight_name, **attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, weight_name], [y], name=name, pads=[1, 1, 1, 1], **attrs)


def _stem(with_bn: bool, rng) -> onnx.ModelProto:
    """dw (depthwise 3x3) -> [BN] -> Relu -> pw (1x1) -> [BN] -> Relu -> head (1x1) -> Sigmoid."""
    nodes, inits = (
        [_conv("dw", "input", "c1", "w_dw", group=4)],
        [_init("w_dw", rng.normal(0, 0.3, (4, 1, 3, 3)))],
    )
    x = "c1"
    if with_bn:
        bn, params = _bn("bn_dw", "c1", "b1", 4)
        nodes.append(bn)
        inits += params
        x = "b1"
    nodes += [
        helper.make_node("Relu", [x], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w_pw"], ["c2"], name="pw"),
    ]
    inits.append(_init("w_pw", rng.normal(0, 0.3, (6, 4, 1, 1))))
    x = "c2"
    if with_bn:
        bn, params = _bn("bn_pw", "c2", "b2", 6)
        nodes.append(bn)
        inits += params
        x = "b2"
    nodes += [
        helper.make_node("Relu", [x], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w_head"], ["c3"], name="head"),
        helper.make_node("Sigmoid", ["c3"], ["out"], name="sigmoid"),
    ]
    inits.append(_init("w_head", rng.normal(0, 0.3, (2, 6, 1, 1))))
    return _model(nodes, inits, out_shape=[1, 2, 8, 8])


# -- BatchNormalization ----------------------------------------------------------------------


def test_convs_without_batchnorm_are_found_and_the_prediction_layer_excepted():
    depthwise, plain = batchnorm_checks(_stem(with_bn=False, rng=np.random.default_rng(0)))
    assert [(f.layer, f.values["feeds"]) for f in depthwise.findings] == [("dw", ["Relu"])]
    assert "depthwise 3x3, 4 channels" in depthwise.findings[0].evidence
    assert "if BN was folded at export this is fine" in depthwise.findings[0].evidence
    assert [f.layer for f in plain.findings] == ["pw"]  # head reaches the output: excepted
    assert "head" in plain.note and "pw" not in plain.note
    # 2 of 2 convs that should have BN do not: said once, as a likely export-time fold.
    assert "2 of 2 convolutions (1 of 1 depthwise)" in depthwise.note
    assert "folded BN" in depthwise.note


def test_convs_with_batchnorm_pass():
    depthwise, plain = batchnorm_checks(_stem(with_bn=True, rng=np.random.default_rng(0)))
    assert depthwise.findings == [] and plain.findings == []
    assert (depthwise.checked, plain.checked) == (1, 1)
    assert "folded" not in depthwise.note


def test_a_conv_before_a_gemm_is_not_a_prediction_layer():
    # small_cnn without BN: conv1 -> Relu -> ... -> conv2 -> ... -> Gemm: only Gemm predicts.
    depthwise, plain = batchnorm_checks(small_cnn(batchnorm=False))
    assert depthwise.checked == 0
    assert [f.layer for f in plain.findings] == ["conv1", "conv2"]
    assert "Conv 3x3, 3->4 channels" in plain.findings[0].evidence


def test_grouped_conv_is_not_depthwise():
    rng = np.random.default_rng(0)
    nodes = [
        _conv("grouped", "input", "c", "w", group=2),  # 2 input channels per group
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wfc"], ["out"], name="fc", transB=1),
    ]
    inits = [_init("w", rng.normal(0, 1, (4, 2, 3, 3))), _init("wfc", rng.normal(0, 1, (3, 4)))]
    depthwise, plain = batchnorm_checks(_model(nodes, inits, out_shape=[1, 3]))
    assert depthwise.findings == []
    assert [f.layer for f in plain.findings] == ["grouped"]
    assert "group 2" in plain.findings[0].evidence


# -- weights ---------------------------------------------------------------------------------


def _one_conv(weight: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["out"], name="relu"),
    ]
    return _model(nodes, [_init("w", weight)], out_shape=[1, weight.shape[0], 8, 8])


def test_channel_spread_is_reported_with_its_numbers():
    rng = np.random.default_rng(1)
    weight = rng.uniform(-1, 1, (4, 4, 1, 1))
    weight /= np.abs(weight).reshape(4, -1).max(axis=1)[:, None, None, None]  # max|w| 1 each
    weight[3] *= 12.0  # one channel 12x the others: max/median 12
    spread, outliers = weight_checks(_one_conv(weight))
    assert [f.layer for f in spread.findings] == ["conv"]
    values = spread.findings[0].values
    assert values["ratio"] == pytest.approx(12.0, rel=1e-5)
    assert values["bits_lost"] == pytest.approx(np.log2(12.0), rel=1e-5)
    assert "max/median 12.0" in spread.findings[0].evidence
    assert "params_16bit: [conv]" in spread.findings[0].remedy
    assert outliers.findings == []  # max|w| 12 < 15 and < 64 x median|w|


def test_even_channels_pass_and_per_channel_recipes_are_told_it_costs_nothing():
    weight = np.random.default_rng(2).uniform(-1, 1, (4, 4, 1, 1))
    spread, outliers = weight_checks(_one_conv(weight), per_channel=True)
    assert spread.findings == [] and outliers.findings == []
    assert "costs nothing" in spread.note


def test_tidl_clipping_rule_firing_is_reported():
    weight = np.full((4, 4, 3, 3), 0.1)
    weight[0, 0, 0, 0] = 20.0  # > 15 and > 16 * median (1.6)
    weight[1, 0, 0, 0] = -18.0
    _, outliers = weight_checks(_one_conv(weight), clipping="mse")
    [finding] = outliers.findings
    assert finding.values["tidl_clip_fires"] is True
    assert finding.values["clip_to"] == pytest.approx(1.6)
    assert finding.values["clipped"] == 2
    assert finding.values["channels_firing"] == 2
    assert "clamps to +-1.6, changing 2 of 144 weights" in finding.evidence
    assert "weight_clipping: tidl; this recipe: mse" in finding.remedy


def test_bulk_far_below_the_maximum_is_reported_without_tidl_rule():
    weight = np.full((4, 4, 3, 3), 0.01)
    weight[2, 1, 1, 1] = 5.0  # 500x the median, but below 15: the TIDL rule does not fire
    _, outliers = weight_checks(_one_conv(weight))
    [finding] = outliers.findings
    assert finding.values["tidl_clip_fires"] is False
    assert finding.values["ratio"] == pytest.approx(500.0)
    assert "median weight is 0.25 steps" in finding.evidence


def test_weight_checks_see_batchnorm_folded_weights():
    """A BN with one huge gamma makes the folded weights spread: the prepared view shows it."""
    rng = np.random.default_rng(3)
    weight = rng.uniform(0.5, 1.0, (4, 4, 1, 1)) * rng.choice([-1, 1], (4, 4, 1, 1))
    bn, params = _bn("bn", "c", "b", 4, gamma=[1.0, 1.0, 1.0, 30.0])
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
        bn,
        helper.make_node("Relu", ["b"], ["out"], name="relu"),
    ]
    model = _model(nodes, [_init("w", weight), *params], out_shape=[1, 4, 8, 8])
    assert weight_checks(model)[0].findings == []  # the raw conv weights are even
    prepared, _ = prepare_model(model)
    [finding] = weight_checks(prepared)[0].findings
    assert finding.layer == "conv" and finding.values["ratio"] > 8


# -- activations -----------------------------------------------------------------------------


def _stats(tensors: dict[str, np.ndarray], outputs=()) -> dict:
    hist = np.zeros((len(tensors), BINS), dtype=np.int64)
    for row, x in zip(hist, tensors.values()):
        accumulate(row, x)
    values = list(tensors.values())
    return {
        "names": np.array(list(tensors)),
        "min": np.array([x.min() for x in values], dtype=np.float64),
        "max": np.array([x.max() for x in values], dtype=np.float64),
        "elements": np.array([x.size for x in values], dtype=np.int64),
        "hist": hist,
        "is_output": np.array([name in outputs for name in tensors]),
    }


def test_extreme_tails_are_reported_with_producer_and_numbers():
    rng = np.random.default_rng(4)
    bulk = rng.uniform(0, 1, 100_000).astype(np.float32)
    tailed = bulk.copy()
    tailed[:3] = 50.0  # 3 in 100 000: inside the 0.01 % tail
    model = small_cnn()  # names its tensors r1 (relu1) and logits (fc)
    stats = _stats({"r1": tailed, "p1": bulk, "logits": tailed}, outputs=("logits",))
    result = activation_tail_check(model, stats, 99.99, "minmax")
    assert [(f.layer, f.values["tensor"]) for f in result.findings] == [
        ("relu1", "r1"),
        ("fc", "logits"),
    ]
    first = result.findings[0]
    assert first.values["max"] == 50.0
    assert first.values["clip_max"] == pytest.approx(1.0, abs=0.01)
    assert first.values["ratio"] == pytest.approx(50.0, rel=0.02)
    assert "accuracy_level: 1" in first.remedy
    assert "output_16bit: [fc]" in result.findings[1].remedy  # outputs are never clipped
    assert result.checked == 3


def test_clipping_recipes_get_a_different_remedy_and_normal_tensors_pass():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 100_000).astype(np.float32)
    tailed = x.copy()
    tailed[0] = 400.0
    result = activation_tail_check(small_cnn(), _stats({"r1": tailed}), 99.99, "percentile")
    assert "clipping is on in this recipe (percentile)" in result.findings[0].remedy
    clean = activation_tail_check(small_cnn(), _stats({"r1": x}), 99.99, "minmax")
    assert clean.findings == [] and clean.largest


# -- float -----------------------------------------------------------------------------------


def test_a_fully_quantized_model_has_nothing_in_float():
    prepared, _ = prepare_model(small_cnn())
    assert float_check(prepared).findings == []


def test_shared_weights_stay_float_and_an_unfoldable_batchnorm_does_not():
    rng = np.random.default_rng(6)
    bn, params = _bn("bn_after_relu", "r", "b", 4)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        bn,  # after a Relu: cannot fold into a conv
        helper.make_node("Conv", ["b", "w"], ["out"], name="conv_b", pads=[1, 1, 1, 1]),
    ]
    model = _model(
        nodes, [_init("w", rng.normal(0, 1, (4, 4, 3, 3))), *params], out_shape=[1, 4, 8, 8]
    )
    prepared, _ = prepare_model(model)
    result = float_check(prepared)
    # the BatchNorm after the Relu is prepared as a depthwise 1x1 Conv with its own weights
    assert [(f.layer, f.op) for f in result.findings] == [("conv_a", "Conv"), ("conv_b", "Conv")]
    assert "'w' [4x4x3x3] (shared)" in result.findings[0].evidence
    assert "BatchNormalization" not in result.note and "2 Conv" in result.note


def test_float_check_matches_the_qdq_writer():
    """Every constant the check calls float is left float by quantbuild's QDQ writer."""
    from quantbuild.calib.policy import minmax_ranges
    from quantbuild.quant.params import Grid
    from quantbuild.quant.qdq import WeightOptions, write_qdq

    rng = np.random.default_rng(7)
    bn, params = _bn("bn_after_relu", "r", "b", 4)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        bn,
        helper.make_node("Relu", ["b"], ["out"], name="relu_out"),
    ]
    model = _model(
        nodes, [_init("w", rng.normal(0, 1, (4, 4, 3, 3))), *params], out_shape=[1, 4, 8, 8]
    )
    prepared, _ = prepare_model(model)
    names = ["input", "r", "b", "out"]
    stats = {
        "names": np.array(names),
        "min": np.full(4, -1.0),
        "max": np.full(4, 1.0),
        "hist": np.zeros((4, 0), dtype=np.int64),
        "is_output": np.array([n == "out" for n in names]),
    }
    ranges = minmax_ranges(stats, Grid(8, False, False))
    qdq, _ = write_qdq(prepared, ranges, WeightOptions(8, True, False, 32))
    float_inits = {t.name for t in qdq.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert float_check(prepared).findings == []
    # the BatchNorm, prepared as a depthwise conv, has its weights and bias quantized too
    assert not {"w", "bn_after_relu.weight", "bn_after_relu.bias"} & float_inits
