"""The quant-proto ranges file: per tensor, the calibrated range and its quantization grid.

A readable YAML file; floats are written in shortest round-trip form, so reading it back
gives bit-identical scales.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from quantbuild.errors import RecipeError
from quantbuild.quant.params import DTYPES, QParams

FORMAT = "quantbuild-ranges/1"
HEADER = (
    "# quantbuild quant-proto ranges: for every quantized tensor, the calibrated [min, max]\n"
    "# and the grid it maps to: q = clip(round(x / scale) + zero_point) in dtype.\n"
)


@dataclass(frozen=True)
class TensorRange:
    """Calibrated range and quantization parameters of one activation tensor."""

    min: float
    max: float
    qparams: QParams

    @property
    def bits(self) -> int:
        return int(self.qparams.dtype.lstrip("uint"))


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
    yaml.sort_base_mapping_type_on_output = False
    buffer = io.StringIO()
    yaml.dump({"format": FORMAT, **info, "tensors": tensors}, buffer)
    return HEADER + buffer.getvalue()


def loads(text: str, source: str) -> tuple[dict[str, TensorRange], dict]:
    """Parse a ranges file; errors name the file and the tensor."""
    data = YAML(typ="safe", pure=True).load(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecipeError(f"not a quantbuild ranges file (expected format: {FORMAT})", source)
    ranges = {}
    for name, entry in (data.get("tensors") or {}).items():
        try:
            dtype = entry["dtype"]
            qp = QParams(
                np.float32(entry["scale"]),
                np.array(entry["zero_point"], dtype=DTYPES[dtype]),
                dtype,
            )
            ranges[name] = TensorRange(float(entry["min"]), float(entry["max"]), qp)
        except (KeyError, TypeError, ValueError) as err:
            raise RecipeError(f"tensors.{name}: malformed entry ({err})", source) from None
    info = {k: v for k, v in data.items() if k not in ("format", "tensors")}
    return ranges, info


def read(path: Path) -> tuple[dict[str, TensorRange], dict]:
    return loads(path.read_text(encoding="utf-8"), str(path))
