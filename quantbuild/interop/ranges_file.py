"""The quant-proto ranges file: per tensor, the calibrated range and its quantization grid.

A readable YAML file; floats are written in shortest round-trip form, so reading it back
gives bit-identical scales.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from quantbuild.errors import RecipeError
from quantbuild.quant.params import DTYPES, QParams, TensorRange
from quantbuild.textfile import read_utf8

FORMAT = "quantbuild-ranges/1"
HEADER = (
    "# quantbuild quant-proto ranges: for every quantized tensor, the calibrated [min, max]\n"
    "# and the grid it maps to: q = clip(round(x / scale) + zero_point) in dtype.\n"
)


def dumps(ranges: dict[str, TensorRange], info: dict) -> str:
    """Serialize ranges (tensor order kept) with an info block."""
    tensors = {}
    for name, r in ranges.items():
        tensors[name] = {
            "min": float(r.min),
            "max": float(r.max),
            "bits": r.bits,
            "dtype": r.qparams.dtype,
            "scale": float(r.qparams.scale),
            "zero_point": int(r.qparams.zero_point),
        }
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # ruamel: None default
    buffer = io.StringIO()
    yaml.dump({"format": FORMAT, **info, "tensors": tensors}, buffer)
    return HEADER + buffer.getvalue()


def _entry(name: str, entry: object, source: str) -> TensorRange:
    def bad(why: str) -> RecipeError:
        return RecipeError(f"tensors.{name}: {why}", source)

    if not isinstance(entry, dict):
        raise bad("expected a mapping with min, max, dtype, scale, zero_point")
    missing = [k for k in ("min", "max", "dtype", "scale", "zero_point") if k not in entry]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    dtype, scale, zero_point = entry["dtype"], entry["scale"], entry["zero_point"]
    if dtype not in DTYPES:
        raise bad(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (0 < scale < float("inf"))
    ):
        raise bad(f"scale must be a positive finite number, not {scale!r}")
    info = np.iinfo(DTYPES[dtype])
    if (
        isinstance(zero_point, bool)
        or not isinstance(zero_point, int)
        or not info.min <= zero_point <= info.max
    ):
        raise bad(
            f"zero_point must be an integer in [{info.min}, {info.max}] for {dtype}, not {zero_point!r}"
        )
    low, high = entry["min"], entry["max"]
    for key, value in (("min", low), ("max", high)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value
            or abs(value) == float("inf")
        ):
            raise bad(f"{key} must be a finite number, not {value!r}")
    if low > high:
        raise bad(f"min {low} is above max {high}")
    qp = QParams(np.float32(scale), np.array(zero_point, dtype=DTYPES[dtype]), dtype)
    return TensorRange(float(low), float(high), qp)


def loads(text: str, source: str) -> tuple[dict[str, TensorRange], dict]:
    """Parse a ranges file; errors name the file and the tensor."""
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"invalid YAML: {problem}", where) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecipeError(f"not a quantbuild ranges file (expected format: {FORMAT})", source)
    tensors = data.get("tensors") or {}
    if not isinstance(tensors, dict):
        raise RecipeError("tensors: expected a mapping of tensor name to range", source)
    ranges = {str(name): _entry(str(name), entry, source) for name, entry in tensors.items()}
    info = {k: v for k, v in data.items() if k not in ("format", "tensors")}
    return ranges, info


MAX_BYTES = 256 << 20  # a ranges file of a very large model is tens of MB


def read_text(path: Path) -> str:
    """A ranges file's text: a clear error for a binary, unreadable or absurdly large file."""
    try:
        return read_utf8(path, RecipeError, "ranges file", MAX_BYTES)
    except RecipeError as err:
        if not err.message.startswith("not a text"):
            raise
        raise RecipeError(
            f"{err.message}; import a quantbuild ranges.yaml, a TIDL quant_params.prototxt or "
            "an onnxruntime tensor_quant_overrides.json",
            err.where,
        ) from None


def read(path: Path) -> tuple[dict[str, TensorRange], dict]:
    return loads(read_text(path), str(path))
