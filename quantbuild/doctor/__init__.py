"""`quantbuild doctor`: why a float model may lose accuracy when quantized, from the model itself.

`check_model` checks a model file; `check_recipe` also reads the recipe's calibration
statistics (built, or reused from the store) for the activation check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantbuild.doctor.activations import activation_tail_check
from quantbuild.doctor.batchnorm import batchnorm_checks
from quantbuild.doctor.findings import CheckResult, Finding
from quantbuild.doctor.float_ops import float_check
from quantbuild.doctor.weights import weight_checks
from quantbuild.errors import ModelError
from quantbuild.graph.onnx_utils import load_model
from quantbuild.graph.prepare import prepare_model
from quantbuild.quant.qdq_strip import is_qdq
from quantbuild.recipe import Recipe

__all__ = ["CheckResult", "Finding", "Report", "check_model", "check_recipe"]


@dataclass
class Report:
    """Every check's result for one model (and recipe)."""

    model: str
    recipe: str | None
    facts: dict[str, Any]  # what the model is: node and layer counts, what preparation changed
    checks: list[CheckResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not run


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(
            f"{path}: no such model file; pass a float ONNX model (.onnx) or a recipe of the "
            "project (-C DIR)"
        )
    model = load_model(path)
    if is_qdq(model):
        raise ModelError(
            f"{path.name}: the model is already quantized (QuantizeLinear/DequantizeLinear "
            "nodes); run doctor on the float model it came from"
        )
    return model


def _static_checks(
    model: onnx.ModelProto, path: Path, per_channel: bool | None, clipping: str | None
) -> tuple[Report, onnx.ModelProto, onnx.ModelProto]:
    """Checks 1 and 2; returns the report so far, the original and the prepared model."""
    # Same node names as the prepared model, but BatchNorm not folded yet: the BN view.
    original, _ = prepare_model(model, rewrite=False)
    prepared, summary = prepare_model(model)
    convs = sum(n.op_type in ("Conv", "ConvTranspose") for n in original.graph.node)
    facts = {
        "nodes": len(model.graph.node),
        "convolutions": convs,
        "batchnorm_nodes": sum(n.op_type == "BatchNormalization" for n in original.graph.node),
        "prepared": summary,
    }
    report = Report(str(path), None, facts)
    report.checks += batchnorm_checks(original)
    report.checks += weight_checks(prepared, per_channel, clipping)
    return report, original, prepared


def check_model(path: Path) -> Report:
    """All checks that need only the model; the activation check is skipped."""
    report, original, prepared = _static_checks(_load(path), path, None, None)
    report.checks.append(float_check(prepared, original))
    report.skipped["activation-tails"] = (
        "needs calibration statistics: run `quantbuild doctor -C PROJECT RECIPE`"
    )
    return report


def check_recipe(recipe: Recipe, statistics: Callable[[], Path]) -> Report:
    """All checks, the activation check on the recipe's calibration statistics.

    `statistics()` returns the recipe's stats.npz, built (or taken from the store) by the
    caller: doctor knows nothing of the pipeline."""
    from quantbuild.store.files import load_npz

    q = recipe.data["quantization"]
    if q.get("prequantized"):
        raise ModelError(
            f"{recipe.name}: quantization.prequantized is set; doctor checks float models: run "
            "it on the float model the pre-quantized one came from"
        )
    model = _load(recipe.model)
    per_channel = bool(q.get("weights", {}).get("per_channel"))
    report, original, prepared = _static_checks(
        model, recipe.model, per_channel, q.get("weight_clipping")
    )
    report.recipe = recipe.name
    if q.get("equalization"):
        spread = next(c for c in report.checks if c.check == "weight-spread")
        spread.note = (spread.note + " " if spread.note else "") + (
            "This recipe applies cross-layer equalization, which evens out per-channel ranges "
            "before quantization; the numbers here are the model's own (BN-folded) weights."
        )
    stats = load_npz(statistics())
    report.facts["calibration_frames"] = int(np.asarray(stats["frames"]))
    report.checks.append(
        activation_tail_check(prepared, stats, float(q["percentile"]), q["activation_clipping"])
    )
    report.checks.append(float_check(prepared, original))
    return report
