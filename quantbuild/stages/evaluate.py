"""evaluate: float vs quantized on the evaluation set: top-1 (with labels), SQNR, cosine."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from quantbuild.evaluate.metrics import Fidelity, Top1
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.runtime import session
from quantbuild.stages.context import Context

NAME = "evaluate"
VERSION = 1
READS = ("/evaluation",)
INPUTS = ("prepare", "quantize")
EXPORTS = {"metrics.json": "metrics.json"}


def run(ctx: Context, out: Path) -> dict:
    metrics = ctx.recipe.data["evaluation"]["metrics"]
    float_model = onnx.load(str(ctx.inputs["prepare"].path("model.onnx")))
    quant_model = onnx.load(str(ctx.inputs["quantize"].path("model.qdq.onnx")))
    reference, quantized = session(float_model), session(quant_model)
    inputs = graph_inputs(float_model)
    outputs = [o.name for o in float_model.graph.output]
    dataset = ctx.dataset("evaluation")
    top1 = (
        {"float": Top1(), "quantized": Top1()} if "top1" in metrics and dataset.has_labels else None
    )
    fidelity = {name: Fidelity() for name in outputs}
    for frame, feed in dataset.iterate(inputs):
        ref = reference.run(outputs, feed)
        got = quantized.run(outputs, feed)
        for name, x, q in zip(outputs, ref, got):
            fidelity[name].update(x, q)
        if top1:
            top1["float"].update(ref[0], frame.label)
            top1["quantized"].update(got[0], frame.label)
    result: dict = {"frames": len(dataset.frames), "outputs": {}}
    if top1:
        result["top1"] = {k: v.value() for k, v in top1.items()}
    for name, f in fidelity.items():
        entry = {}
        if "sqnr" in metrics:
            entry["sqnr_db"] = f.sqnr_db()
        if "cosine" in metrics:
            entry["cosine"] = f.cosine()
        result["outputs"][name] = entry
    (out / "metrics.json").write_text(
        json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.get("top1", {}).items())
    ctx.log(f"{result['frames']} frames" + (f"; top-1 {summary}" if summary else ""))
    return result
