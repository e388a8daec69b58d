"""stats: streaming activation statistics over the calibration frames (the expensive stage)."""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from quantbuild.build.files import npz_bytes
from quantbuild.calib.collect import collect_statistics
from quantbuild.stages.context import Context

NAME = "stats"
VERSION = 3
READS = ("/calibration/data", "/calibration/preprocess")
INPUTS = ("prepare",)
EXPORTS: dict[str, str] = {}


def run(ctx: Context, out: Path) -> dict:
    model = onnx.load(str(ctx.inputs["prepare"].path("model.onnx")))
    dataset = ctx.dataset("calibration")
    start = time.perf_counter()
    stats = collect_statistics(model, dataset)
    seconds = time.perf_counter() - start
    (out / "stats.npz").write_bytes(npz_bytes(stats))
    frames = int(stats["frames"])
    ctx.log(
        f"{frames} frames, {len(stats['names'])} tensors, {seconds:.2f} s ({frames / max(seconds, 1e-9):.1f} frames/s)"
    )
    return {"frames": frames, "tensors": len(stats["names"])}
