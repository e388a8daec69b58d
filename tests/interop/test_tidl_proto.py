"""TIDL quant-proto text files: the descriptor matches TI's proto, exact round trips, a real
record from write_qdq turned into TIDL layers, and one-line errors for what TIDL rejects."""

from __future__ import annotations

import numpy as np
import pytest
from builders import small_cnn
from google.protobuf import descriptor
from onnx import TensorProto, helper, numpy_helper

from quantbuild.errors import ModelError, RecipeError
from quantbuild.graph.prepare import prepare_model
from quantbuild.interop import tidl_proto as tp
from quantbuild.interop.ranges_file import TensorRange
from quantbuild.quant.params import activation_qparams
from quantbuild.quant.qdq import WeightOptions, write_qdq


def _ranges(model, bits: int, symmetric: bool) -> dict[str, TensorRange]:
    """Deterministic ranges for every tensor (ReLU outputs never negative)."""
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    rng = np.random.default_rng(7)
    out = {}
    for name in names:
        low, high = -float(rng.uniform(0.1, 3.0)), float(rng.uniform(0.1, 5.0))
        if name.startswith("r"):
            low = 0.0
        out[name] = TensorRange(low, high, activation_qparams(low, high, bits, symmetric, False))
    return out


def _record(bits=8, symmetric=False, per_channel=True):
    model = prepare_model(small_cnn())[0]
    _, record = write_qdq(
        model, _ranges(model, bits, symmetric), WeightOptions(bits, per_channel, False, 32)
    )
    return model, record


@pytest.fixture(scope="module")
def built():
    model, record = _record()
    return model, record, tp.from_record(record, model)


# -- the descriptor is TI's proto -------------------------------------------------------------

F = descriptor.FieldDescriptor
# (message, field) -> (number, type, repeated), from edgeai-tidl-tools docs/tidl_quantParams.md
TI_FIELDS = {
    ("TIDLNetQuantParams", "num_layers"): (1, F.TYPE_INT32, False),
    ("TIDLNetQuantParams", "quant_type"): (2, F.TYPE_ENUM, False),
    ("TIDLNetQuantParams", "calib_type"): (3, F.TYPE_ENUM, False),
    ("TIDLNetQuantParams", "layers"): (4, F.TYPE_MESSAGE, True),
    ("TidlLayerQuantParams", "layer_name"): (1, F.TYPE_STRING, False),
    ("TidlLayerQuantParams", "layer_type"): (2, F.TYPE_STRING, False),
    ("TidlLayerQuantParams", "bit_depth"): (3, F.TYPE_UINT32, False),
    ("TidlLayerQuantParams", "outputs"): (4, F.TYPE_MESSAGE, True),
    ("TidlLayerQuantParams", "weights"): (5, F.TYPE_MESSAGE, True),
    ("TidlLayerQuantParams", "bias"): (6, F.TYPE_MESSAGE, True),
    ("TidlLayerQuantParams", "slope"): (7, F.TYPE_MESSAGE, True),
    ("TidlTensorQuantParams", "min"): (1, F.TYPE_FLOAT, False),
    ("TidlTensorQuantParams", "max"): (2, F.TYPE_FLOAT, False),
    ("TidlTensorQuantParams", "size"): (3, F.TYPE_UINT32, False),
    ("TidlTensorQuantParams", "element_type"): (4, F.TYPE_UINT32, False),
    ("TidlTensorQuantParams", "scale"): (5, F.TYPE_DOUBLE, True),
    ("TidlTensorQuantParams", "zero_point"): (6, F.TYPE_UINT32, True),
    ("TidlTensorQuantParams", "value"): (7, F.TYPE_DOUBLE, True),
}


def test_descriptor_matches_ti_proto():
    messages = {m.DESCRIPTOR.name: m.DESCRIPTOR for m in (tp.NetMessage, tp.LayerMessage)}
    messages["TidlTensorQuantParams"] = tp.TensorMessage.DESCRIPTOR
    found = {
        (name, f.name): (f.number, f.type, f.is_repeated)
        for name, d in messages.items()
        for f in d.fields
    }
    assert found == TI_FIELDS
    net = tp.NetMessage.DESCRIPTOR
    assert net.full_name == "tidl_quant_params.TIDLNetQuantParams"
    assert {v.name: v.number for v in net.fields_by_name["quant_type"].enum_type.values} == {
        "SYMMETRIC": 1,
        "ASYMMETRIC": 2,
    }
    assert {v.name: v.number for v in net.fields_by_name["calib_type"].enum_type.values} == {
        "PERTENSOR": 1,
        "PERCHANNEL": 2,
    }
    empty = tp.TensorMessage()  # TI's defaults: ±FLT_MAX mark an uncalibrated range
    assert (empty.min, empty.max) == (-tp.FLT_MAX, tp.FLT_MAX)
    assert tp.LayerMessage().bit_depth == 8


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_is_exact(built):
    _, _, net = built
    text = tp.dumps(net)
    back = tp.loads(text, "net.prototxt")
    assert back == net
    assert tp.dumps(back) == text
    # every float is bit-identical, not just equal
    for a, b in zip(net.layers, back.layers):
        for key in ("outputs", "weights", "bias"):
            for ta, tb in zip(getattr(a, key), getattr(b, key)):
                assert np.array(ta.scale).tobytes() == np.array(tb.scale).tobytes()
                assert np.array(ta.value).tobytes() == np.array(tb.value).tobytes()
                assert np.float32(ta.min).tobytes() == np.float32(tb.min).tobytes()


def test_awkward_values_round_trip():
    tensor = tp.TensorQuantParams(
        min=-1e-40,  # float32 denormal
        max=3.0e38,
        size=3,
        element_type=5,
        scale=(1 / 3, 1e-300, 1.7976931348623157e308),
        zero_point=(0, 4294967295, 7),
        value=(0.1, -0.0, 5e-324),
    )
    net = tp.NetQuantParams(
        (tp.LayerQuantParams("x", "TIDL_ConvolutionLayer", 2, bias=(tensor,)),),
        tp.QuantType.ASYMMETRIC,
        tp.CalibType.PERCHANNEL,
    )
    back = tp.loads(tp.dumps(net), "x")
    assert back == net
    assert np.array(back.layers[0].bias[0].value).tobytes() == np.array(tensor.value).tobytes()


def test_min_max_are_float32_like_the_proto_field():
    t = tp.TensorQuantParams(min=0.1, max=0.2)
    assert t.min == float(np.float32(0.1)) and t.max == float(np.float32(0.2))


# -- from a real record -----------------------------------------------------------------------


def test_layers_follow_tidl_naming(built):
    _, _, net = built
    # small_cnn after prepare: conv1(+BN folded)+relu1, pool1, conv2+relu2, add2, gap, flatten, fc
    assert [(layer.layer_name, layer.layer_type) for layer in net.layers] == [
        ("input", "TIDL_DataLayer"),
        ("r1", "TIDL_ConvolutionLayer"),  # Conv fused with its Relu: named by the Relu output
        ("p1", "TIDL_PoolingLayer"),
        ("r2", "TIDL_ConvolutionLayer"),
        ("a2", "TIDL_EltWiseLayer"),
        ("gap", "TIDL_PoolingLayer"),
        ("flat", "TIDL_FlattenLayer"),
        ("logits", "TIDL_InnerProductLayer"),
    ]
    assert net.num_layers == 8
    assert all(layer.bit_depth == 1 for layer in net.layers)
    assert (net.quant_type, net.calib_type) == (tp.QuantType.ASYMMETRIC, tp.CalibType.PERCHANNEL)


def test_outputs_carry_the_record_grid(built):
    _, record, net = built
    layers = {layer.layer_name: layer for layer in net.layers}
    for name, entry in record["activations"].items():
        out = layers[name].outputs[0]
        assert out.element_type == tp.ELEMENT_TYPES[entry["dtype"]]
        assert out.zero_point == (entry["zero_point"],)
        # TIDL's multiplier is the reciprocal; the ONNX float32 scale comes back exactly
        assert tp.onnx_scale(out.scale[0]).tobytes() == np.float32(entry["scale"]).tobytes()
        # float32 bounds rounded outward: the stored range covers the calibrated one by < 1 ulp
        assert out.min <= entry["min"] and out.max >= entry["max"]
        # (float(): numpy would round the Python float to float32 before comparing)
        assert (
            out.min == 0 or float(np.nextafter(np.float32(out.min), np.float32(0))) > entry["min"]
        )
        assert float(np.nextafter(np.float32(out.max), np.float32(0))) < entry["max"]


def test_weights_and_bias(built):
    model, record, net = built
    layers = {layer.layer_name: layer for layer in net.layers}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv2 = layers["r2"]
    (w,) = conv2.weights
    scale = np.float32(record["weights"]["w2"]["scale"])
    assert w.size == 6 and len(w.scale) == 6 and w.zero_point == (0,) * 6
    assert [tp.onnx_scale(s) for s in w.scale] == list(scale)
    amax = float(np.max(scale.astype(np.float64) * 127))
    # ±max(scale * qmax), widened to the next float32 out
    assert w.min == -w.max and w.max >= amax
    assert float(np.nextafter(np.float32(w.max), np.float32(0))) < amax
    (b,) = conv2.bias
    assert b.value == tuple(float(v) for v in inits["bias2"])  # the float bias, exactly
    assert b.size == 6 and (b.min, b.max) == (min(b.value), max(b.value))
    assert b.element_type == tp.ELEMENT_TYPES["int32"]
    (offset,) = layers["a2"].weights  # element-wise constant, per tensor
    assert offset.size == 1 and len(offset.scale) == 1
    assert not layers["p1"].weights and not layers["input"].bias


def test_constant_with_a_zero_point():
    model, record = _record()
    # a pre-quantized model may state an asymmetric grid for an element-wise operand
    record["weights"]["offset"] = {"dtype": "uint8", "axis": None, "scale": 0.25, "zero_point": 100}
    layers = {layer.layer_name: layer for layer in tp.from_record(record, model).layers}
    (offset,) = layers["a2"].weights
    assert (offset.min, offset.max) == (-25.0, 38.75)  # (0 - 100) * 0.25, (255 - 100) * 0.25
    assert offset.zero_point == (100,) and offset.element_type == tp.ELEMENT_TYPES["uint8"]


def test_activation_ranges(built):
    _, record, net = built
    ranges = tp.activation_ranges(net)
    assert set(ranges) == set(record["activations"]) | {"p1", "flat"}
    assert ranges["p1"] == ranges["r1"] and ranges["flat"] == ranges["gap"]  # inherited grids
    for name, entry in record["activations"].items():
        low, high = ranges[name]
        assert low == pytest.approx(entry["min"], rel=1e-6, abs=1e-30)
        assert high == pytest.approx(entry["max"], rel=1e-6)


def test_symmetric_per_tensor_16bit():
    model, record = _record(bits=16, symmetric=True, per_channel=False)
    net = tp.from_record(record, model)
    assert (net.quant_type, net.calib_type) == (tp.QuantType.SYMMETRIC, tp.CalibType.PERTENSOR)
    layers = {layer.layer_name: layer for layer in net.layers}
    assert all(layer.bit_depth == 2 for layer in net.layers)
    assert layers["input"].outputs[0].element_type == tp.ELEMENT_TYPES["int16"]
    assert layers["r1"].outputs[0].element_type == tp.ELEMENT_TYPES["uint16"]
    assert layers["r1"].weights[0].size == 1
    assert tp.loads(tp.dumps(net), "n") == net


def test_prelu_constant_is_its_slope():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    slope = numpy_helper.from_array(np.array([[[0.1]], [[0.2]]], np.float32), "slope")
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y], [slope])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ranges = {
        n: TensorRange(-1.0, 1.0, activation_qparams(-1.0, 1.0, 8, True, False)) for n in "xy"
    }
    _, record = write_qdq(model, ranges, WeightOptions(8, False, False, 32))
    layer = tp.from_record(record, model).layers[1]
    assert (layer.layer_name, layer.layer_type) == ("y", "TIDL_PReLULayer")
    assert len(layer.slope) == 1 and not layer.weights


def test_unknown_op_falls_back():
    assert tp.layer_type("GridSampleFancy") == tp.UNKNOWN_LAYER == "TIDL_UnsupportedLayer"
    assert tp.layer_type("Conv") == "TIDL_ConvolutionLayer"


def test_from_record_wants_the_float_model():
    model, record = _record()
    qdq, _ = write_qdq(
        model,
        _ranges(model, 8, False),
        WeightOptions(8, True, False, 32),
    )
    with pytest.raises(ModelError, match="float model"):
        tp.from_record(record, qdq)


# -- files written by hand (or by TIDL) -------------------------------------------------------

HAND_WRITTEN = """\
num_layers: 2
quant_type: SYMMETRIC
calib_type: PERTENSOR
layers {
  layer_name: "images"
  layer_type: "TIDL_DataLayer"
  bit_depth: 1
  outputs { min: 0 max: 255 size: 1 element_type: 0 scale: 1 zero_point: 0 }
}
layers {
  layer_name: "stem_out"
  layer_type: "TIDL_ConvolutionLayer"
  bit_depth: 1
  outputs { min: 0 max: 6.5 size: 1 element_type: 0 scale: 39.2 zero_point: 0 }
  weights { min: -0.25 max: 0.25 size: 1 element_type: 1 scale: 512 zero_point: 0 }
  bias { min: -0.5 max: 0.75 size: 2 element_type: 0 scale: 100 zero_point: 0
         value: -0.5 value: 0.75 }
}
"""


def test_hand_written_file():
    net = tp.loads(HAND_WRITTEN, "h.prototxt")
    assert tp.activation_ranges(net) == {"images": (0.0, 255.0), "stem_out": (0.0, 6.5)}
    assert net.layers[1].bias[0].value == (-0.5, 0.75)
    assert net.quant_type is tp.QuantType.SYMMETRIC


def _broken(old: str, new: str) -> str:
    assert old in HAND_WRITTEN
    return HAND_WRITTEN.replace(old, new, 1)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            _broken("max: 6.5", "max: nan"),
            "layers[1] (stem_out).outputs[0].max: nan is not a finite",
        ),
        (_broken("min: 0 max: 255", "min: -inf max: 255"), "outputs[0].min: -inf is not a finite"),
        (
            _broken("max: 6.5", "max: 3.4028235e+38"),
            "outputs[0].max: 3.4028234663852886e+38 is ±FLT_MAX",
        ),
        (_broken("min: -0.25 ", ""), "layers[1] (stem_out).weights[0].min: missing"),
        (
            _broken("min: -0.25 max: 0.25", "min: 0.25 max: -0.25"),
            "weights[0].min: 0.25 is above max -0.25",
        ),
        (_broken("value: 0.75", ""), "bias[0].value: 1 values for size 2"),
        (_broken("num_layers: 2", "num_layers: 3"), "num_layers: 3 but the file has 2 layers"),
        (_broken("num_layers: 2\n", ""), "num_layers: missing"),
        (_broken('"stem_out"', '"images"'), "layers[1].layer_name: 'images' appears twice"),
        (
            _broken("zero_point: 0 }\n  weights", "zero_point: 0 zero_point: 0 }\n  weights"),
            "outputs[0].zero_point: 2 values for 1 scales",
        ),
    ],
)
def test_invalid_files_are_one_line_errors(text, expected):
    with pytest.raises(RecipeError) as err:
        tp.loads(text, "q.prototxt")
    message = str(err.value)
    assert message.startswith("q.prototxt: ") and expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "old, new, line, expected",
    [
        ("quant_type: SYMMETRIC", "ype: SYMMETRIC", 2, 'has no field named "ype"'),
        ("quant_type: SYMMETRIC", "quant_type: SIMETRIC", 2, "SIMETRIC"),
        (
            "element_type: 1 scale: 512 zero_point: 0",
            "element_type: 1 zero_point: -1",
            15,
            "out of range",
        ),
        ("min: 0 max: 6.5", "min: 0 max: FLT_MAX", 14, "FLT_MAX"),
    ],
)
def test_syntax_errors_name_line_and_column(old, new, line, expected):
    with pytest.raises(RecipeError) as err:
        tp.loads(_broken(old, new), "q.prototxt")
    assert err.value.where.line == line and err.value.where.column > 0
    assert str(err.value).startswith(f"q.prototxt:{line}:") and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_dumps_refuses_what_tidl_rejects():
    bad = tp.NetQuantParams(
        (tp.LayerQuantParams("t", "TIDL_ReLULayer", 1, (tp.TensorQuantParams(0.0, np.inf),)),)
    )
    with pytest.raises(ValueError, match=r"layers\[0\] \(t\)\.outputs\[0\]\.max: inf"):
        tp.dumps(bad)
