"""equalize: the prepared float model with cross-layer equalization applied (same function,
per-channel ranges evened out for per-tensor grids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from quantbuild.build.keys import digest
from quantbuild.calib.collect import channel_ranges
from quantbuild.graph.equalize import equalize, find_pairs
from quantbuild.stages.context import Context

NAME = "equalize"
VERSION = 3  # 2: no stamp when no tensor qualifies; 3: per-channel affine producers
READS = (
    "/quantization/equalization",
    "/quantization/weights/per_channel",  # per-tensor grids also balance affine multipliers
    "/calibration/data",
    "/calibration/preprocess",
)
INPUTS = ("prepare",)
# The model that was quantized: what TIDL compiles with the exported quant_params.prototxt.
EXPORTS = {"model.onnx": "model.float.onnx"}
STAMP = "quantbuild.equalization"  # metadata key: digest of the channel factors applied


def run(ctx: Context, out: Path) -> dict:
    frames = ctx.recipe.data["quantization"]["equalization"]["frames"]
    model = onnx.load(str(ctx.inputs["prepare"].path("model.onnx")))
    tensors = [p.tensor for p in find_pairs(model)]
    measured = channel_ranges(model, ctx.dataset("calibration"), tensors, frames)
    per_tensor = not ctx.recipe.data["quantization"]["weights"]["per_channel"]
    equalized, factors = equalize(model, measured, affine_weights=per_tensor)
    record = {name: [float(x) for x in f] for name, f in factors.items()}
    # Stamped only when something changed: an unchanged model fits any ranges of the original.
    stamp = digest(record) if record else None
    if stamp:
        del equalized.metadata_props[:]
        meta = {p.key: p.value for p in model.metadata_props}
        meta[STAMP] = stamp
        onnx.helper.set_model_props(equalized, dict(sorted(meta.items())))
    (out / "model.onnx").write_bytes(equalized.SerializeToString())
    (out / "equalization.json").write_text(
        json.dumps({"digest": stamp, "frames": frames, "factors": record}, indent=1) + "\n",
        encoding="utf-8",
    )
    spread = [float(np.max(f) / np.min(f)) for f in factors.values() if len(f)]
    ctx.log(
        f"{len(factors)} tensors equalized on {min(frames, len(ctx.dataset('calibration').frames))} "
        f"frames; largest channel factor ratio {max(spread, default=1.0):.3g}"
    )
    return {"tensors": len(factors), "digest": stamp}


def stamp_of(model: onnx.ModelProto) -> str | None:
    """The equalization digest a model carries (None: not equalized by quantbuild)."""
    return next((p.value for p in model.metadata_props if p.key == STAMP), None)
