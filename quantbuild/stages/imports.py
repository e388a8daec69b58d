"""Ranges a recipe takes from elsewhere: its ranges.import file and its pre-quantized model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quantbuild.errors import RecipeError, Where
from quantbuild.interop.imported import ImportedRange, activations_only, read_imported
from quantbuild.interop.ranges_file import read
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import stamp_of
from quantbuild.stages.prepare import PREQUANTIZED_RANGES
from quantbuild.stages.settings import Quantization

# onnx and onnxruntime are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx


def imported_ranges(ctx: Context, model: onnx.ModelProto) -> dict[str, ImportedRange]:
    """Pre-quantized grids, overridden by the import file's: tensor name -> imported range."""
    from quantbuild.runtime import float_tensors

    out: dict[str, ImportedRange] = {}
    if Quantization.of(ctx.recipe.data).prequantized:
        ranges, _ = read(ctx.inputs["prepare"].path(PREQUANTIZED_RANGES))
        out.update({n: ImportedRange(r.min, r.max, r.qparams) for n, r in ranges.items()})
    source = ctx.recipe.get(("quantization", "ranges", "import"))
    if source:
        weights = {t.name for t in model.graph.initializer}
        where = ctx.recipe.where(("quantization", "ranges", "import"))
        _check_equalization(Path(source), model, where)
        out.update(
            activations_only(read_imported(Path(source)), float_tensors(model), weights, where)
        )
    return out


def _check_equalization(source: Path, model: onnx.ModelProto, where: Where) -> None:
    """Ranges fit only the float model they were taken on: equalization rescales channels."""
    if source.suffix.lower() not in (".yaml", ".yml"):
        return  # TIDL and onnxruntime files cannot say which model they describe
    _, info = read(source)
    theirs = (info.get("equalization") or {}).get("digest")
    ours = stamp_of(model)
    if theirs == ours:
        return
    field = "quantization.ranges.import"
    if ours is None:
        raise RecipeError(
            f"{field}: {source.name} was calibrated on an equalized float model; set "
            "quantization.equalization as in the recipe that wrote it (same calibration data), "
            "or set model: to that recipe's build/<recipe>/model.float.onnx",
            where,
        )
    if theirs is None:
        raise RecipeError(
            f"{field}: {source.name} holds ranges of the model without equalization; set "
            "quantization.equalization: false",
            where,
        )
    raise RecipeError(
        f"{field}: {source.name} was calibrated on a differently equalized model (other "
        "calibration data or equalization.frames); use the settings of the recipe that wrote it",
        where,
    )
