"""equalize: the prepared float model with cross-layer equalization applied (same function,
per-channel ranges evened out for per-tensor grids), and SmoothQuant's migration from
LayerNorm outputs into the linear layers reading them when the recipe asks for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild.stages.context import Context
from quantbuild.stages.prepare import MODEL as PREPARED_MODEL
from quantbuild.stages.settings import Quantization
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact
from quantbuild.store.keys import digest

# onnx and the algorithm modules are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx

# The model that was quantized: what TIDL compiles with the exported quant_params.prototxt.
MODEL = Artifact("model.onnx", export="model.float.onnx")
FACTORS = Artifact("equalization.json")
STAMP = "quantbuild.equalization"  # metadata key: digest of the channel factors applied


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.calib.collect import channel_ranges
    from quantbuild.graph.equalize import equalize, find_pairs
    from quantbuild.graph.smooth import find_norm_pairs, smooth

    q = Quantization.of(ctx.recipe.data)
    settings = q.equalization
    assert settings is not None  # the stage applies only then
    frames, alpha = settings["frames"], settings.get("smoothquant")
    model = onnx.load(str(ctx.inputs["prepare"].path(PREPARED_MODEL)))
    tensors = {p.tensor: 1 for p in find_pairs(model)}
    norms = {p.tensor: -1 for p in find_norm_pairs(model)} if alpha is not None else {}
    measured = channel_ranges(model, ctx.dataset("calibration"), tensors | norms, frames)
    per_tensor = not q.per_channel
    pairs = {t: r for t, r in measured.items() if t in tensors}
    equalized, factors = equalize(model, pairs, affine_weights=per_tensor)
    smoothed: dict[str, np.ndarray] = {}
    if norms and alpha is not None:
        # A tensor with no channel axis on these frames (rank < 2) is simply not measured.
        norm_ranges = {t: measured[t] for t in norms if t in measured}
        equalized, smoothed = smooth(equalized, norm_ranges, alpha)
    record = {name: [float(x) for x in f] for name, f in (factors | smoothed).items()}
    # Stamped only when something changed: an unchanged model fits any ranges of the original.
    stamp = digest(record) if record else None
    if stamp:
        del equalized.metadata_props[:]
        meta = {p.key: p.value for p in model.metadata_props}
        meta[STAMP] = stamp
        onnx.helper.set_model_props(equalized, dict(sorted(meta.items())))
    (out / MODEL.file).write_bytes(equalized.SerializeToString())
    summary = {"digest": stamp, "frames": frames}
    if alpha is not None:
        summary["smoothquant"] = alpha
    (out / FACTORS.file).write_text(
        json.dumps({**summary, "factors": record}, indent=1) + "\n", encoding="utf-8"
    )
    spread = [float(np.max(f) / np.min(f)) for f in factors.values() if len(f)]
    used = min(frames, len(ctx.dataset("calibration").frames))
    ctx.log(
        f"{len(factors)} tensors equalized on {used} frames; largest channel factor ratio "
        f"{max(spread, default=1.0):.3g}"
        + (
            f"; SmoothQuant (alpha {alpha:g}) on {len(smoothed)} LayerNorm outputs "
            f"({len(norms)} read only by linear layers)"
            if alpha is not None
            else ""
        )
    )
    return {"tensors": len(factors), "smoothed": len(smoothed), "digest": stamp}


def float_model_path(ctx: Context) -> Path:
    """The float model the build quantizes: the equalized one when the recipe equalizes."""
    if "equalize" in ctx.inputs:
        return ctx.inputs["equalize"].path(MODEL)
    return ctx.inputs["prepare"].path(PREPARED_MODEL)


def stamp_of(model: onnx.ModelProto) -> str | None:
    """The equalization digest a model carries (None: not equalized by quantbuild)."""
    return next((p.value for p in model.metadata_props if p.key == STAMP), None)


def applies(recipe: dict[str, Any]) -> bool:
    """Whether a recipe builds this stage: it asks for equalization."""
    return Quantization.of(recipe).equalization is not None


STAGE = Stage(
    name="equalize",
    version=3,
    reads=(
        "/quantization/equalization",
        "/quantization/weights/per_channel",  # per-tensor grids also balance affine multipliers
        "/calibration/data",
        "/calibration/preprocess",
    ),
    inputs=("prepare",),
    artifacts=(
        MODEL,
        FACTORS,
    ),
    run=run,
    applies=applies,
    doc=__doc__.splitlines()[0],
)
