"""rounding: GPTQ weight integers (`weight_rounding: gptq`), cached apart from quantize.

It sees the model quantize writes before mixed precision and bias calibration, so changing
those (or evaluation) never re-runs it; quantize applies the integers to every weight whose
grid is still the one they were chosen on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantbuild.interop.ranges_file import read
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.ranges import RANGES
from quantbuild.stages.settings import Quantization
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact
from quantbuild.store.files import npz_bytes

# onnx and the algorithm modules are imported where used: a no-op build loads only the stage specs

ROUNDING = Artifact("rounding.npz")


def applies(recipe: dict[str, Any]) -> bool:
    """Whether a recipe builds this stage."""
    q = Quantization.of(recipe)
    return q.weight_rounding == "gptq" and not q.prequantized


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.calib.rounding_runner import gptq_rounding
    from quantbuild.quant.qdq import write_qdq

    model = onnx.load(str(float_model_path(ctx)))
    ranges, _ = read(ctx.inputs["ranges"].path(RANGES))
    qdq, record = write_qdq(model, ranges, Quantization.of(ctx.recipe.data).weights)
    rounding = gptq_rounding(
        model, qdq, record, ctx.dataset("calibration"), ctx.log, fan_out=ctx.fan_out
    )
    (out / ROUNDING.file).write_bytes(npz_bytes(rounding.arrays()))
    return {"weights_rounded": len(rounding.integers)}


STAGE = Stage(
    name="rounding",
    version=1,
    reads=(
        "/quantization/bits",
        "/quantization/scale",
        "/quantization/weights",
        "/quantization/bias_bits",  # biases that must fit raise weight scales
        "/quantization/weight_clipping",
        "/quantization/weight_rounding",
        "/calibration/data",
        "/calibration/preprocess",
    ),
    inputs=("prepare", "equalize", "ranges"),
    artifacts=(ROUNDING,),
    run=run,
    applies=applies,
    doc=__doc__.splitlines()[0],
)
