"""onnxruntime's `TensorQuantOverrides` as JSON: quantbuild's grids for `quantize_static`.

Keys, as onnxruntime 1.18+ defines and validates them (`quantize.py` StaticQuantConfig
docstring, `tensor_quant_overrides.py` TensorQuantOverridesHelper): tensor name -> list of
dicts, one for a per-tensor override, one per channel for a per-channel initializer (the
first carrying "axis"). Per dict: "quant_type" (QuantType name), "scale" and "zero_point"
(both or neither), "symmetric", "reduce_range" (initializers only), "rmin"/"rmax" (both or
neither; neither with "scale"), "axis", "convert" (activations: a second type for some
consumers).

onnxruntime wants `QuantType` members and numpy scales/zero points, not JSON strings and
floats (its quantizer calls `.tensor_type` and `.squeeze()` on them), so a file is read with
`loads` and handed over with `to_ort`, never with a bare `json.loads`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from quantbuild.errors import RecipeError, Where
from quantbuild.quant.params import DTYPES, QParams
from quantbuild.suggest import closest

QUANT_TYPES = {"QUInt8": "uint8", "QInt8": "int8", "QUInt16": "uint16", "QInt16": "int16"}
_QUANT_TYPE_NAMES = {dtype: name for name, dtype in QUANT_TYPES.items()}
_KEYS = {"quant_type", "scale", "zero_point", "symmetric", "rmin", "rmax", "axis"}
# Valid onnxruntime keys that quantbuild's grids cannot express.
_UNSUPPORTED = {
    "reduce_range": "7-bit weights are not a TIDL grid",
    "convert": "quantbuild gives every tensor one grid",
}


@dataclass(frozen=True)
class Override:
    """One tensor's override: an exact grid, or a range (and optionally a type) to derive it from.

    Exactly one of `qparams` and `range` is set, unless the entry only sets a type
    (`dtype` and/or `symmetric`), as onnxruntime allows for mixed precision.
    """

    qparams: QParams | None = None
    range: tuple[float, float] | None = None  # (rmin, rmax)
    dtype: str | None = None  # for a range or type-only override; qparams carries its own
    symmetric: bool | None = None


# -- writing ----------------------------------------------------------------------------------


def _entry(dtype: str, scale: float, zero_point: int, axis: int | None = None) -> dict:
    entry = {
        "quant_type": _QUANT_TYPE_NAMES[dtype],
        # A float32 scale as the float64 of the same value: repr is its shortest exact form.
        "scale": float(np.float32(scale)),
        "zero_point": int(zero_point),
    }
    if axis is not None:
        entry["axis"] = int(axis)
    return entry


def _entries(record_entry: dict) -> list[dict]:
    dtype, axis = record_entry["dtype"], record_entry.get("axis")
    if axis is None:
        return [_entry(dtype, record_entry["scale"], record_entry["zero_point"])]
    return [
        _entry(dtype, s, z, axis)
        for s, z in zip(record_entry["scale"], record_entry["zero_point"], strict=True)
    ]


def dumps(record: dict) -> str:
    """TensorQuantOverrides JSON for every activation and weight grid of a quant_params record.

    Biases are left out: onnxruntime derives them at input_scale * weight_scale, as
    quantbuild does. Deterministic: sorted keys, shortest round-trip floats.
    """
    overrides = {}
    for section in ("activations", "weights"):
        for name, entry in record[section].items():
            overrides[name] = _entries(entry)
    return json.dumps(overrides, sort_keys=True, indent=2, allow_nan=False) + "\n"


# -- reading ----------------------------------------------------------------------------------


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_entry(
    tensor: str, index: int, entry: object, source: str, dtype: str | None = None
) -> dict:
    """Checked fields of one dict, plus "dtype" from its quant_type (else `dtype`, if given)."""

    def bad(key: str | None, why: str) -> RecipeError:
        field = f"[{index}].{key}" if key else f"[{index}]"
        return RecipeError(f"{tensor}{field}: {why}", source)

    if not isinstance(entry, dict):
        raise bad(None, "expected an object of override keys")
    for key in entry:
        if key in _UNSUPPORTED:
            raise bad(key, f"onnxruntime option not supported by quantbuild ({_UNSUPPORTED[key]})")
        if key not in _KEYS:
            hint = closest(key, sorted(_KEYS))
            raise bad(
                key,
                f"unknown key{f' (did you mean {hint!r}?)' if hint else ''}; "
                f"expected {', '.join(sorted(_KEYS))}",
            )
    out = dict(entry)
    if dtype is not None:
        out["dtype"] = dtype  # later channels take channel 0's type
    if "quant_type" in entry:
        if not isinstance(entry["quant_type"], str) or entry["quant_type"] not in QUANT_TYPES:
            raise bad(
                "quant_type",
                f"{entry['quant_type']!r} is not one of {', '.join(QUANT_TYPES)}",
            )
        out["dtype"] = QUANT_TYPES[entry["quant_type"]]
    for first, second in (("scale", "zero_point"), ("rmin", "rmax")):
        if (first in entry) != (second in entry):
            have, missing = (first, second) if first in entry else (second, first)
            raise bad(have, f"needs {missing!r} too (give both or neither)")
    if "scale" in entry:
        clash = sorted({"rmin", "rmax", "symmetric"} & set(entry))
        if clash:
            raise bad(clash[0], "cannot be combined with scale and zero_point")
        if "dtype" not in out:
            raise bad(
                "scale", "needs quant_type (quantbuild does not assume onnxruntime's default)"
            )
        scale = entry["scale"]
        if not _number(scale) or not (0 < scale < math.inf):
            raise bad("scale", f"must be a positive finite number, not {scale!r}")
        info = np.iinfo(DTYPES[out["dtype"]])
        zp = entry["zero_point"]
        if not isinstance(zp, int) or isinstance(zp, bool) or not info.min <= zp <= info.max:
            raise bad(
                "zero_point",
                f"must be an integer in [{info.min}, {info.max}] for {entry['quant_type']}, not {zp!r}",
            )
    if "rmin" in entry:
        for key in ("rmin", "rmax"):
            if not _number(entry[key]) or not math.isfinite(entry[key]):
                raise bad(key, f"must be a finite number, not {entry[key]!r}")
        if entry["rmin"] > entry["rmax"]:
            raise bad("rmin", f"{entry['rmin']} is above rmax {entry['rmax']}")
    if "symmetric" in entry and not isinstance(entry["symmetric"], bool):
        raise bad("symmetric", f"must be true or false, not {entry['symmetric']!r}")
    if "axis" in entry and (not isinstance(entry["axis"], int) or isinstance(entry["axis"], bool)):
        raise bad("axis", f"must be an integer, not {entry['axis']!r}")
    return out


def _override(tensor: str, entries: list, source: str) -> Override | None:
    if not entries or entries[0] == {}:
        return None  # onnxruntime skips an empty override too
    first = _parse_entry(tensor, 0, entries[0], source)
    parsed = [first] + [
        _parse_entry(tensor, i, e, source, first.get("dtype"))
        for i, e in enumerate(entries[1:], start=1)
    ]
    per_channel = len(parsed) > 1 or "axis" in first
    if not per_channel:
        if "scale" in first:
            dtype = first["dtype"]
            qp = QParams(
                np.float32(first["scale"]), np.array(first["zero_point"], DTYPES[dtype]), dtype
            )
            return Override(qparams=qp)
        rng = (float(first["rmin"]), float(first["rmax"])) if "rmin" in first else None
        return Override(range=rng, dtype=first.get("dtype"), symmetric=first.get("symmetric"))

    if "axis" not in first:
        raise RecipeError(f"{tensor}[0].axis: missing (needed for per-channel overrides)", source)
    for i, entry in enumerate(parsed):
        if "scale" not in entry:
            raise RecipeError(
                f"{tensor}[{i}].scale: missing (per-channel overrides need scale and zero_point"
                " in every channel)",
                source,
            )
        for key in ("quant_type", "axis"):
            if key in entry and entry[key] != first[key]:
                raise RecipeError(
                    f"{tensor}[{i}].{key}: {entry[key]!r} differs from channel 0's {first[key]!r}",
                    source,
                )
    dtype = first["dtype"]
    scale = np.array([e["scale"] for e in parsed], dtype=np.float32)
    zero_point = np.array([e["zero_point"] for e in parsed], dtype=DTYPES[dtype])
    return Override(qparams=QParams(scale, zero_point, dtype, first["axis"]))


def loads(text: str, source: str) -> dict[str, Override]:
    """Parse TensorQuantOverrides JSON; errors name the file, the tensor and the key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecipeError(
            f"invalid JSON: {err.msg}", Where(source, err.lineno, err.colno)
        ) from None
    if not isinstance(data, dict):
        raise RecipeError("expected an object mapping tensor names to lists of overrides", source)
    overrides = {}
    for tensor, entries in data.items():
        if not isinstance(entries, list):
            raise RecipeError(f"{tensor}: expected a list of override objects", source)
        override = _override(tensor, entries, source)
        if override is not None:
            overrides[tensor] = override
    return overrides


# -- handing over to onnxruntime --------------------------------------------------------------


def to_ort(overrides: dict[str, Override]) -> dict[str, list[dict]]:
    """The `extra_options["TensorQuantOverrides"]` value onnxruntime's quantizer accepts."""
    from onnxruntime.quantization import QuantType  # heavy import, only when handing over

    def quant_type(dtype: str):
        return QuantType[_QUANT_TYPE_NAMES[dtype]]

    out: dict[str, list[dict]] = {}
    for tensor, o in overrides.items():
        qp = o.qparams
        if qp is not None and qp.axis is not None:
            out[tensor] = [
                {
                    "quant_type": quant_type(qp.dtype),
                    "axis": qp.axis,
                    "scale": np.array(s, dtype=np.float32),
                    "zero_point": np.array(z, dtype=DTYPES[qp.dtype]),
                }
                for s, z in zip(np.asarray(qp.scale), qp.zero_point, strict=True)
            ]
            continue
        entry: dict = {}
        if qp is not None:
            entry["quant_type"] = quant_type(qp.dtype)
            entry["scale"] = np.array(qp.scale, dtype=np.float32)
            entry["zero_point"] = np.array(qp.zero_point, dtype=DTYPES[qp.dtype])
        else:
            if o.dtype is not None:
                entry["quant_type"] = quant_type(o.dtype)
            if o.range is not None:
                entry["rmin"] = np.array(o.range[0], dtype=np.float32)
                entry["rmax"] = np.array(o.range[1], dtype=np.float32)
            if o.symmetric is not None:
                entry["symmetric"] = o.symmetric
        out[tensor] = [entry]
    return out
