"""evaluate: float vs quantized on the evaluation set: top-1, output SQNR/cosine, layer SQNR.

Per quantized tensor, two SQNRs against float: layer-wise (that layer alone quantized, with
float inputs) and accumulated (everything up to it quantized)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx

from quantbuild.errors import DataError
from quantbuild.evaluate import layerwise
from quantbuild.evaluate.metrics import ErrorSums, Fidelity, Top1
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.progress import track
from quantbuild.runtime import session, with_outputs
from quantbuild.stages.context import Context
from quantbuild.stages.settings import float_model_path

NAME = "evaluate"
# 2: layers.json; 3: on the first LAYER_FRAMES frames; 4: layer-wise without input grids
VERSION = 4
READS = ("/evaluation",)
INPUTS = ("prepare", "equalize", "quantize")
EXPORTS = {"metrics.json": "metrics.json", "layers.json": "layer_errors.json"}
WORST_LOGGED = 3
LAYER_FRAMES = 32  # evaluation frames for the per-layer SQNR (the first ones)


def run(ctx: Context, out: Path) -> dict:
    metrics = ctx.recipe.data["evaluation"]["metrics"]
    float_model = onnx.load(str(float_model_path(ctx)))
    quant_model = onnx.load(str(ctx.inputs["quantize"].path("model.qdq.onnx")))
    # One pass, two sessions: the layer-wise model computes the float reference and every
    # layer quantized alone; the QDQ model computes everything quantized up to each tensor.
    lw = layerwise.build(float_model, quant_model)
    layers = lw.layers
    outputs = [o.name for o in float_model.graph.output]
    reference_names = list(dict.fromkeys(outputs + [layer.tensor for layer in layers]))
    copies = [layer.layerwise for layer in layers if layer.layerwise]
    quantized_names = list(dict.fromkeys(outputs + [layer.quantized for layer in layers]))
    # Per-layer errors settle within a few dozen frames; every frame still scores the outputs.
    analysed = session(with_outputs(lw.model, reference_names + copies))
    analysed_quantized = session(with_outputs(quant_model, quantized_names))
    reference, quantized = session(float_model), session(quant_model)
    inputs = graph_inputs(float_model)
    dataset = ctx.dataset("evaluation")
    top1 = (
        {"float": Top1(), "quantized": Top1()} if "top1" in metrics and dataset.has_labels else None
    )
    fidelity = {name: Fidelity() for name in outputs}
    errors = [ErrorSums(2) for _ in layers]  # per layer: [layer-wise, accumulated]
    frames = track(dataset.iterate(inputs), "evaluation", len(dataset.frames))
    for index, (frame, feed) in enumerate(frames):
        per_layer = index < LAYER_FRAMES
        ref_names = reference_names + copies if per_layer else outputs
        got_names = quantized_names if per_layer else outputs
        try:
            ref_session = analysed if per_layer else reference
            got_session = analysed_quantized if per_layer else quantized
            ref = dict(zip(ref_names, ref_session.run(ref_names, feed)))
            got = dict(zip(got_names, got_session.run(got_names, feed)))
        except Exception as err:
            raise DataError(
                f"{dataset.field}: the model failed on {dataset.describe(frame)}: "
                f"{str(err).splitlines()[0]}",
                dataset.where,
            ) from None
        for name in outputs:
            fidelity[name].update(ref[name], got[name])
        for layer, sums in zip(layers, errors if per_layer else []):
            alone = ref[layer.layerwise] if layer.layerwise else None
            sums.update(ref[layer.tensor], alone, got[layer.quantized])
        if top1:
            top1["float"].update(ref[outputs[0]], frame.label)
            top1["quantized"].update(got[outputs[0]], frame.label)
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
    table = layer_table(layers, errors)
    (out / "layers.json").write_text(
        json.dumps({"frames": min(result["frames"], LAYER_FRAMES), "layers": table}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.get("top1", {}).items())
    ctx.log(f"{result['frames']} frames" + (f"; top-1 {summary}" if summary else ""))
    for row in table[:WORST_LOGGED]:
        ctx.log(
            f"SQNR {_db(row['layerwise_sqnr_db'])} alone, {_db(row['accumulated_sqnr_db'])} "
            f"accumulated: {row['tensor']} ({row['op']} {row['node']})"
        )
    return result


def layer_table(layers: list[layerwise.Layer], errors: list[ErrorSums]) -> list[dict]:
    """One row per quantized tensor, worst layer-wise SQNR first; ties keep graph order.

    An undefined SQNR is null in JSON: sorted last without error, first without signal."""
    rows, keys = [], []
    for index, (layer, sums) in enumerate(zip(layers, errors)):
        alone, accumulated = sums.sqnr_db()
        rows.append(
            {
                "tensor": layer.tensor,
                "node": layer.node,
                "op": layer.op,
                "index": index,  # graph order
                "layerwise_sqnr_db": alone if layer.layerwise else None,
                "accumulated_sqnr_db": accumulated,
            }
        )
        versions = zip((alone if layer.layerwise else None, accumulated), sums.noise)
        keys.append(tuple(_rank(sqnr, sums.signal, noise) for sqnr, noise in versions))
    return [rows[i] for i in sorted(range(len(rows)), key=lambda i: keys[i])]


def _rank(sqnr: float | None, signal: float, noise: float) -> float:
    if sqnr is not None:
        return sqnr
    return -math.inf if noise > 0.0 and signal == 0.0 else math.inf


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} dB"
