"""ranges: activation ranges from cached statistics and imported ranges -> the ranges file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantbuild.calib.policy import activation_ranges
from quantbuild.interop.imported import to_ranges
from quantbuild.interop.ranges_file import dumps
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path, stamp_of
from quantbuild.stages.imports import imported_ranges
from quantbuild.stages.settings import Quantization
from quantbuild.stages.spec import Stage
from quantbuild.stages.stats import STATS
from quantbuild.store.entries import Artifact
from quantbuild.store.files import load_npz

# onnx is imported where used: a no-op build loads only the stage specs

RANGES = Artifact("ranges.yaml", export="ranges.yaml")


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.quant.qdq import activation_tensors

    q = Quantization.of(ctx.recipe.data)
    stats = load_npz(ctx.inputs["stats"].path(STATS))
    grid, policy = q.grid, q.activation_clipping
    ranges = activation_ranges(stats, policy, grid, q.percentile)
    model = onnx.load(str(float_model_path(ctx)))
    imported, requantized = to_ranges(imported_ranges(ctx, model), grid)
    ranges.update(imported)
    # One order whatever the source: the graph's (imported names that get no grid go last).
    order = {n: i for i, n in enumerate(activation_tensors(model, set(ranges)))}
    ranges = dict(sorted(ranges.items(), key=lambda item: order.get(item[0], len(order))))
    info: dict[str, Any] = {
        "policy": policy,
        "bits": q.bits,
        "activations": q.activations,
        "scale": "power_of_2" if grid.power_of_2 else "float",
        "frames": int(stats["frames"]),
    }
    if policy == "percentile":
        info["percentile"] = q.percentile
    if imported:
        info["imported"] = len(imported)
    stamp = stamp_of(model)
    if stamp:  # these ranges fit only the equalized model (build/<recipe>/model.float.onnx)
        info["equalization"] = {"digest": stamp}
        if q.equalization:  # an importing recipe re-equalizes the same way by default
            info["equalization"]["frames"] = q.equalization["frames"]
            if "smoothquant" in q.equalization:
                info["equalization"]["smoothquant"] = q.equalization["smoothquant"]
    (out / RANGES.file).write_text(dumps(ranges, info), encoding="utf-8")
    note = (
        f"; {len(imported)} imported ({requantized} re-quantized for the target)"
        if imported
        else ""
    )
    ctx.log(
        f"{len(ranges)} tensor ranges ({policy}, {q.bits}-bit, {q.activations}, "
        f"{info['scale']} scales){note}"
    )
    return {"tensors": len(ranges), "imported": len(imported), "requantized": requantized}


STAGE = Stage(
    name="ranges",
    version=6,
    reads=(
        "/quantization/bits",
        "/quantization/activations",
        "/quantization/scale",
        "/quantization/accuracy_level",
        "/quantization/activation_clipping",
        "/quantization/percentile",
        "/quantization/ranges/import",
        "/quantization/prequantized",
        "/quantization/equalization",  # recorded in the file, for recipes that import it
    ),
    inputs=("prepare", "equalize", "stats"),
    artifacts=(RANGES,),
    run=run,
    doc=__doc__.splitlines()[0],
)
