"""stats: streaming activation statistics over the calibration frames (the expensive stage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.imports import imported_ranges
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact
from quantbuild.store.files import npz_bytes

# onnx and onnxruntime are imported where used: a no-op build loads only the stage specs

STATS = Artifact("stats.npz")


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.calib.collect import collect_statistics

    model = onnx.load(str(float_model_path(ctx)))
    known = frozenset(imported_ranges(ctx, model))
    dataset = ctx.dataset("calibration")
    start = time.perf_counter()
    stats = collect_statistics(model, dataset, known=known, fan_out=ctx.fan_out)
    seconds = time.perf_counter() - start
    (out / STATS.file).write_bytes(npz_bytes(stats))
    frames = int(stats["frames"])
    if known and not len(stats["names"]):
        ctx.log(f"no forward pass: all {len(known)} ranges imported")
    else:
        ctx.log(
            f"{frames} frames, {len(stats['names'])} tensors"
            + (f" ({len(known)} imported)" if known else "")
            + f", {seconds:.2f} s ({frames / max(seconds, 1e-9):.1f} frames/s)"
            + (f" on {min(ctx.fan_out.workers, frames)} workers" if ctx.fan_out else "")
        )
    return {"frames": frames, "tensors": len(stats["names"]), "imported": len(known)}


STAGE = Stage(
    name="stats",
    version=9,
    reads=(
        "/calibration/data",
        "/calibration/preprocess",
        "/quantization/ranges/import",
        "/quantization/prequantized",
    ),
    inputs=("prepare", "equalize"),
    artifacts=(STATS,),
    run=run,
    doc=__doc__.splitlines()[0],
)
