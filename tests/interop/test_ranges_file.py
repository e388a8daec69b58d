"""The ranges file: exact round trip of scales, and clear errors for malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from quantbuild.errors import RecipeError
from quantbuild.interop.ranges_file import FORMAT, TensorRange, dumps, loads, read
from quantbuild.quant.params import QParams, activation_qparams


def _ranges(count: int = 300, seed: int = 0) -> dict[str, TensorRange]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        low = -float(rng.lognormal(0, 8)) if i % 4 else 0.0
        high = float(rng.lognormal(0, 8))
        bits = 16 if i % 5 == 0 else 8
        qp = activation_qparams(low, high, bits, symmetric=bool(i % 2), power_of_2=i % 3 == 0)
        out[f"/layer{i}/Conv_output_0"] = TensorRange(low, high, qp)
    # awkward values: denormal and huge scales, one-ulp neighbours
    for name, scale in {
        "denormal": np.float32(1e-42),
        "huge": np.float32(3e38),
        "ulp": np.nextafter(np.float32(0.1), np.float32(1)),
        "third": np.float32(1 / 3),
    }.items():
        out[name] = TensorRange(-1.0, 1.0, QParams(scale, np.array(0, np.int8), "int8"))
    out["zp"] = TensorRange(
        -1.0, 3.0, QParams(np.float32(0.5), np.array(65535, np.uint16), "uint16")
    )
    return out


def test_round_trip_is_bit_identical():
    ranges = _ranges()
    info = {"policy": "minmax", "bits": 8, "frames": 12}
    text = dumps(ranges, info)
    assert text.startswith("# quantbuild quant-proto ranges")
    back, back_info = loads(text, "ranges.yaml")
    assert back_info == info
    assert list(back) == list(ranges)  # order kept
    for name, r in ranges.items():
        b = back[name]
        scale = np.asarray(b.qparams.scale)
        assert scale.dtype == np.float32, name
        assert scale.tobytes() == np.asarray(r.qparams.scale, np.float32).tobytes(), name
        assert b.qparams.dtype == r.qparams.dtype, name
        assert b.qparams.zero_point.dtype == r.qparams.zero_point.dtype, name
        assert int(b.qparams.zero_point) == int(r.qparams.zero_point), name
        assert b.min == r.min and b.max == r.max, name
        assert b.bits == r.bits
    # a second round trip writes the same text
    assert dumps(back, info) == text


def test_file_is_readable_yaml(tmp_path):
    qp = activation_qparams(-1.0, 2.0, 8, symmetric=False, power_of_2=False)
    path = tmp_path / "ranges.yaml"
    path.write_text(dumps({"x": TensorRange(-1.0, 2.0, qp)}, {"bits": 8}), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert f"format: {FORMAT}" in text
    assert "dtype: uint8" in text and "zero_point: 85" in text and "bits: 8" in text
    ranges, info = read(path)
    assert info == {"bits": 8}
    assert ranges["x"].qparams.scale == np.float32(3.0 / 255)
    assert ranges["x"].bits == 8


def _file(entry: str) -> str:
    return f"format: {FORMAT}\ntensors:\n  conv1_out: {entry}\n"


GOOD = "{min: -1.0, max: 1.0, dtype: int8, scale: 0.0078125, zero_point: 0}"


def test_good_entry_loads():
    ranges, _ = loads(_file(GOOD), "r.yaml")
    assert ranges["conv1_out"].qparams.scale == np.float32(0.0078125)


_MALFORMED = {
    "no-scale": "{min: -1.0, max: 1.0, dtype: int8, zero_point: 0}",
    "no-dtype": "{min: -1.0, max: 1.0, scale: 0.5, zero_point: 0}",
    "unknown-dtype": "{min: -1.0, max: 1.0, dtype: int4, scale: 0.5, zero_point: 0}",
    "scale-text": "{min: -1.0, max: 1.0, dtype: int8, scale: abc, zero_point: 0}",
    "zero-point-text": "{min: -1.0, max: 1.0, dtype: int8, scale: 0.5, zero_point: x}",
    "no-min": "{max: 1.0, dtype: int8, scale: 0.5, zero_point: 0}",
    "number": "5",
    "null": "null",
    "zero-point-above-dtype": "{min: -1.0, max: 1.0, dtype: uint8, scale: 0.5, zero_point: 300}",
    "zero-point-below-dtype": "{min: -1.0, max: 1.0, dtype: uint8, scale: 0.5, zero_point: -1}",
    "scale-zero": "{min: -1.0, max: 1.0, dtype: int8, scale: 0.0, zero_point: 0}",
    "scale-negative": "{min: -1.0, max: 1.0, dtype: int8, scale: -0.5, zero_point: 0}",
    "scale-nan": "{min: -1.0, max: 1.0, dtype: int8, scale: .nan, zero_point: 0}",
    "scale-list": "{min: -1.0, max: 1.0, dtype: int8, scale: [0.5, 0.25], zero_point: 0}",
}


@pytest.mark.parametrize("entry", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_malformed_entry_names_the_tensor(entry):
    with pytest.raises(RecipeError) as info:
        loads(_file(entry), "model/ranges.yaml")
    text = str(info.value)
    assert "tensors.conv1_out" in text
    assert text.startswith("model/ranges.yaml: ")
    assert "\n" not in text


@pytest.mark.parametrize(
    "text",
    [
        "tensors: {}\n",  # no format
        "format: quantbuild-ranges/0\ntensors: {}\n",
        "- a\n- b\n",
        "",
        f"format: {FORMAT}\ntensors: [a, b]\n",  # tensors is not a mapping
        f"format: {FORMAT}\ntensors:\n  a: {{min: 0, max: 1\n",  # YAML syntax error
    ],
    ids=["no-format", "wrong-format", "list", "empty", "tensors-list", "yaml-syntax"],
)
def test_malformed_file_is_a_recipe_error(text):
    with pytest.raises(RecipeError) as info:
        loads(text, "ranges.yaml")
    assert str(info.value).startswith("ranges.yaml:")  # YAML syntax errors add line:column
