"""Imported ranges: activation grids taken from a file or a pre-quantized model, not statistics.

Three file formats are read (`quantization.ranges.import`):
- quantbuild's ranges YAML (`ranges.yaml` of any build): min/max and the exact grid;
- TIDL's TIDLNetQuantParams prototxt: min/max per layer output (TIDL's read mode);
- onnxruntime's TensorQuantOverrides JSON: an exact grid, or rmin/rmax.
An imported grid is kept bit for bit when it fits the recipe's target (bits, symmetry,
power-of-2); otherwise its range is re-quantized for the target, as TIDL re-targets a
pre-quantized model. Names are checked against the model's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbuild.errors import RecipeError, Where
from quantbuild.interop.ranges_file import loads, read_text
from quantbuild.quant.params import Grid, QParams, TensorRange
from quantbuild.suggest import closest


@dataclass(frozen=True)
class ImportedRange:
    """A tensor's range from elsewhere, with its exact grid when the source states one."""

    min: float
    max: float
    qparams: QParams | None = None


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "quantbuild"
    if suffix in (".prototxt", ".pbtxt", ".txt"):
        return "tidl"
    if suffix == ".json":
        return "onnxruntime"
    raise RecipeError(
        f"quantization.ranges.import: cannot tell the format of {path.name}; use .yaml "
        "(quantbuild ranges), .prototxt (TIDL quant params) or .json (onnxruntime overrides)",
    )


def read_imported(path: Path) -> dict[str, ImportedRange | None]:
    """Every tensor range a ranges file states, whatever its format (None: a per-channel
    weight grid, which has no activation range)."""
    text = read_text(path)
    kind = _format(path)
    if kind == "quantbuild":
        ranges, _ = loads(text, str(path))
        return {n: ImportedRange(r.min, r.max, r.qparams) for n, r in ranges.items()}
    if kind == "tidl":
        from quantbuild.interop import tidl_proto

        net = tidl_proto.loads(text, str(path))
        return {
            n: ImportedRange(lo, hi) for n, (lo, hi) in tidl_proto.activation_ranges(net).items()
        }
    from quantbuild.interop import ort_overrides

    out: dict[str, ImportedRange | None] = {}
    for name, o in ort_overrides.loads(text, str(path)).items():
        if o.qparams is not None:
            qp = o.qparams
            if qp.axis is not None:  # a per-channel weight grid: weights come from the model
                out[name] = None
                continue
            low, high = qp.dequantize(np.array([qp.qmin, qp.qmax], dtype=np.int64))
            out[name] = ImportedRange(float(low), float(high), qp)
        elif o.range is not None:
            out[name] = ImportedRange(float(o.range[0]), float(o.range[1]))
    return out


def activations_only(
    imported: dict[str, ImportedRange | None],
    tensors: list[str],
    weights: set[str],
    where: Where | str | None,
) -> dict[str, ImportedRange]:
    """The imported activation ranges, every name checked against the model's tensors.

    Entries naming weights (onnxruntime override files list them too) are dropped: weight
    grids are computed from the model's weights."""
    known = set(tensors) | weights
    for name in imported:
        if name not in known:
            guess = closest(name, tensors)
            hint = f"; did you mean {guess!r}?" if guess else "; check the file against the model"
            raise RecipeError(
                f"quantization.ranges.import: tensor {name!r} is not in the model{hint}", where
            )
    return {n: r for n, r in imported.items() if r is not None and n not in weights}


def fits(qp: QParams, bits: int, symmetric: bool, power_of_2: bool) -> bool:
    """Whether a grid can run as is on a target with these settings."""
    if qp.axis is not None or not qp.dtype.endswith(str(bits)) or qp.dtype == "int32":
        return False
    if symmetric and np.any(np.asarray(qp.zero_point) != 0):
        return False
    if power_of_2:
        exponent = np.log2(np.asarray(qp.scale, dtype=np.float64))
        if np.any(exponent != np.round(exponent)):
            return False
    return True


def to_ranges(imported: dict[str, ImportedRange], grid: Grid) -> tuple[dict[str, TensorRange], int]:
    """Ranges for the target: exact grids where they fit, re-quantized ranges elsewhere.

    Returns the ranges and how many grids were re-quantized."""
    out: dict[str, TensorRange] = {}
    requantized = 0
    for name, r in imported.items():
        if r.qparams is not None and fits(r.qparams, grid.bits, grid.symmetric, grid.power_of_2):
            out[name] = TensorRange(r.min, r.max, r.qparams)
            continue
        requantized += r.qparams is not None
        out[name] = TensorRange(r.min, r.max, grid.qparams(r.min, r.max))
    return out, requantized
