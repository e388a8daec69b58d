"""onnxruntime TensorQuantOverrides JSON: exact round trips of a real record, acceptance by
onnxruntime's own quantize_static (which then uses our grids), and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from quantbuild.errors import RecipeError
from quantbuild.graph.prepare import prepare_model
from quantbuild.interop import ort_overrides as oo
from quantbuild.interop.ranges_file import TensorRange
from quantbuild.quant.params import DTYPES, activation_qparams
from quantbuild.quant.qdq import WeightOptions, write_qdq


@pytest.fixture(scope="module")
def built():
    """The prepared small_cnn and the quant_params record write_qdq makes for it."""
    model = prepare_model(small_cnn())[0]
    names = ["input"] + [o for n in model.graph.node for o in n.output]
    rng = np.random.default_rng(3)
    ranges = {}
    for name in names:
        low, high = -float(rng.uniform(0.1, 3.0)), float(rng.uniform(0.1, 5.0))
        if name.startswith("r"):
            low = 0.0
        ranges[name] = TensorRange(low, high, activation_qparams(low, high, 8, False, False))
    _, record = write_qdq(model, ranges, WeightOptions(8, True, False, 32))
    return model, record


def _same_grid(qp, entry) -> None:
    scale = np.asarray(entry["scale"], dtype=np.float32)
    assert qp.dtype == entry["dtype"] and qp.axis == entry["axis"]
    assert np.asarray(qp.scale).dtype == np.float32
    assert np.asarray(qp.scale).tobytes() == scale.tobytes()
    assert np.asarray(qp.zero_point).dtype == DTYPES[entry["dtype"]]
    assert np.asarray(qp.zero_point).tolist() == entry["zero_point"]


def test_round_trip_is_exact(built):
    _, record = built
    text = oo.dumps(record)
    assert oo.dumps(record) == text  # deterministic
    overrides = oo.loads(text, "overrides.json")
    assert set(overrides) == set(record["activations"]) | set(record["weights"])
    for section in ("activations", "weights"):
        for name, entry in record[section].items():
            assert overrides[name].range is None
            _same_grid(overrides[name].qparams, entry)


def test_json_shape(built):
    _, record = built
    text = oo.dumps(record)
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"  # sorted keys
    assert data["input"] == [
        {
            "quant_type": "QUInt8",
            "scale": float(np.float32(record["activations"]["input"]["scale"])),
            "zero_point": record["activations"]["input"]["zero_point"],
        }
    ]
    w2 = data["w2"]  # per-channel: one dict per output channel, each with the axis
    assert len(w2) == 6 and all(e["axis"] == 0 and e["quant_type"] == "QInt8" for e in w2)
    assert "axis" not in data["offset"][0]  # per-tensor constant
    assert not set(data) & set(record["biases"])  # onnxruntime derives biases itself
    # floats are written in their shortest round-trip form
    assert f'"scale": {data["input"][0]["scale"]!r}' in text


class _Frames(CalibrationDataReader):
    def __init__(self, count: int = 3):
        rng = np.random.default_rng(0)
        frames = rng.normal(size=(count, 1, 3, 8, 8)).astype(np.float32)
        self.frames = iter([{"input": f} for f in frames])

    def get_next(self):
        return next(self.frames, None)


def test_onnxruntime_quantizes_with_our_grids(built, tmp_path):
    model, record = built
    overrides = oo.loads(oo.dumps(record), "overrides.json")
    # one range override too: onnxruntime must derive its grid from rmin/rmax
    range_text = json.dumps({"gap": [{"quant_type": "QUInt8", "rmin": -1.5, "rmax": 3.0}]})
    overrides.update(oo.loads(range_text, "range.json"))
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, str(src))
    quantize_static(
        str(src),
        str(dst),
        _Frames(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"TensorQuantOverrides": oo.to_ort(overrides)},
    )
    qdq = onnx.load(str(dst))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    # onnxruntime names a tensor's grid <tensor>_scale / <tensor>_zero_point
    grids = {
        n.input[1].removesuffix("_scale"): (inits[n.input[1]], inits[n.input[2]])
        for n in qdq.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits
    }
    for section in ("activations", "weights"):
        for name, entry in record[section].items():
            if name == "gap":
                continue
            scale, zero_point = grids[name]
            assert scale.dtype == np.float32, name
            assert scale.tobytes() == np.asarray(entry["scale"], np.float32).tobytes(), name
            assert zero_point.dtype == DTYPES[entry["dtype"]], name
            assert zero_point.tolist() == entry["zero_point"], name
    scale, zero_point = grids["gap"]
    assert scale == np.float32(4.5 / 255) and zero_point == 85  # round(1.5 / scale)


def test_hand_written_overrides():
    text = json.dumps(
        {
            "a": [{"quant_type": "QUInt16"}],  # type only: mixed precision
            "b": [{"rmin": -1, "rmax": 2.5, "symmetric": True}],
            "w": [
                {"quant_type": "QInt8", "axis": 1, "scale": 0.5, "zero_point": 0},
                {"scale": 0.25, "zero_point": 1},  # later channels take channel 0's type
            ],
            "skipped": [],
        }
    )
    overrides = oo.loads(text, "o.json")
    assert set(overrides) == {"a", "b", "w"}
    assert overrides["a"] == oo.Override(dtype="uint16")
    assert overrides["b"] == oo.Override(range=(-1.0, 2.5), symmetric=True)
    w = overrides["w"].qparams
    assert (w.dtype, w.axis, w.scale.tolist(), w.zero_point.tolist()) == (
        "int8",
        1,
        [0.5, 0.25],
        [0, 1],
    )
    ort = oo.to_ort(overrides)
    assert ort["a"] == [{"quant_type": QuantType.QUInt16}]
    assert ort["b"][0]["rmax"] == np.float32(2.5) and ort["b"][0]["symmetric"] is True
    assert [e["axis"] for e in ort["w"]] == [1, 1]
    assert ort["w"][1]["zero_point"].dtype == np.int8


def _entry(**keys) -> str:
    return json.dumps({"t": [{"quant_type": "QUInt8", "scale": 0.5, "zero_point": 3, **keys}]})


@pytest.mark.parametrize(
    "text, expected",
    [
        (_entry(scal=0.5), "t[0].scal: unknown key (did you mean 'scale'?)"),
        (
            json.dumps({"t": [{"quant_type": "QUInt8", "scale": 0.5}]}),
            "t[0].scale: needs 'zero_point' too",
        ),
        (json.dumps({"t": [{"rmax": 1.0}]}), "t[0].rmax: needs 'rmin' too"),
        (
            _entry(zero_point=256),
            "t[0].zero_point: must be an integer in [0, 255] for QUInt8, not 256",
        ),
        (_entry(zero_point=True), "t[0].zero_point: must be an integer"),
        (
            _entry(quant_type="QInt4"),
            "t[0].quant_type: 'QInt4' is not one of QUInt8, QInt8, QUInt16, QInt16",
        ),
        (_entry(quant_type="uint8"), "t[0].quant_type: 'uint8' is not one of"),
        (_entry(quant_type=["QInt8"]), "t[0].quant_type: ['QInt8'] is not one of"),
        (_entry(scale=-1.0), "t[0].scale: must be a positive finite number, not -1.0"),
        (_entry(rmin=0.0, rmax=1.0), "t[0].rmax: cannot be combined with scale and zero_point"),
        (json.dumps({"t": [{"scale": 0.5, "zero_point": 3}]}), "t[0].scale: needs quant_type"),
        (json.dumps({"t": [{"rmin": 2.0, "rmax": 1.0}]}), "t[0].rmin: 2.0 is above rmax 1.0"),
        (json.dumps({"t": [{"rmin": "0", "rmax": 1.0}]}), "t[0].rmin: must be a finite number"),
        (_entry(symmetric="yes"), "t[0].symmetric"),
        (
            _entry(convert={"quant_type": "QUInt16"}),
            "t[0].convert: onnxruntime option not supported",
        ),
        (
            json.dumps({"t": [{"reduce_range": True}]}),
            "t[0].reduce_range: onnxruntime option not supported",
        ),
        (json.dumps({"t": {"scale": 0.5}}), "t: expected a list of override objects"),
        (json.dumps({"t": ["QUInt8"]}), "t[0]: expected an object"),
        (json.dumps([1]), "expected an object mapping tensor names"),
        (
            json.dumps({"w": [{"quant_type": "QInt8", "scale": 1.0, "zero_point": 0}] * 2}),
            "w[0].axis: missing",
        ),
        (
            json.dumps(
                {
                    "w": [
                        {"quant_type": "QInt8", "axis": 0, "scale": 1.0, "zero_point": 0},
                        {"rmin": 0, "rmax": 1},
                    ]
                }
            ),
            "w[1].scale: missing",
        ),
        (
            json.dumps(
                {
                    "w": [
                        {"quant_type": "QInt8", "axis": 0, "scale": 1.0, "zero_point": 0},
                        {"quant_type": "QUInt8", "scale": 1.0, "zero_point": 0},
                    ]
                }
            ),
            "w[1].quant_type: 'QUInt8' differs from channel 0's 'QInt8'",
        ),
    ],
)
def test_invalid_overrides_are_one_line_errors(text, expected):
    with pytest.raises(RecipeError) as err:
        oo.loads(text, "o.json")
    message = str(err.value)
    assert message.startswith("o.json: ") and expected in message, message
    assert "\n" not in message


def test_invalid_json_names_line_and_column():
    with pytest.raises(RecipeError) as err:
        oo.loads('{\n  "t": [\n    {"scale": 0.5,}\n  ]\n}', "o.json")
    assert str(err.value).startswith("o.json:3:19: invalid JSON: Expecting property name")
