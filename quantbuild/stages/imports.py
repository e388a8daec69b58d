"""Ranges a recipe takes from elsewhere: its ranges.import file and its pre-quantized model."""

from __future__ import annotations

from pathlib import Path

import onnx

from quantbuild.quant.imported import ImportedRange, activations_only, read_imported
from quantbuild.quant.ranges_io import read
from quantbuild.runtime import float_tensors
from quantbuild.stages.context import Context
from quantbuild.stages.prepare import PREQUANTIZED_RANGES


def imported_ranges(ctx: Context, model: onnx.ModelProto) -> dict[str, ImportedRange]:
    """Pre-quantized grids, overridden by the import file's: tensor name -> imported range."""
    out: dict[str, ImportedRange] = {}
    if ctx.recipe.data["quantization"]["prequantized"]:
        ranges, _ = read(ctx.inputs["prepare"].path(PREQUANTIZED_RANGES))
        out.update({n: ImportedRange(r.min, r.max, r.qparams) for n, r in ranges.items()})
    source = ctx.recipe.get(("quantization", "ranges", "import"))
    if source:
        weights = {t.name for t in model.graph.initializer}
        where = ctx.recipe.where(("quantization", "ranges", "import"))
        out.update(
            activations_only(read_imported(Path(source)), float_tensors(model), weights, where)
        )
    return out
