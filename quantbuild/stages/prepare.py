"""prepare: the canonical float model and its layer table."""

from __future__ import annotations

import json
from pathlib import Path

from quantbuild.graph.layers import layer_table
from quantbuild.graph.onnx_utils import graph_inputs, load_model
from quantbuild.graph.prepare import prepare_model
from quantbuild.stages.context import Context

NAME = "prepare"
VERSION = 2
READS = ("/model",)
INPUTS = ()
EXPORTS = {"layers.json": "layers.json"}


def run(ctx: Context, out: Path) -> dict:
    model = load_model(ctx.recipe.model, ctx.recipe.where(("model",)))
    prepared, summary = prepare_model(model)
    (out / "model.onnx").write_bytes(prepared.SerializeToString())
    layers = layer_table(prepared)
    (out / "layers.json").write_text(json.dumps(layers, indent=1) + "\n", encoding="utf-8")
    inputs = [{"name": s.name, "shape": list(s.shape)} for s in graph_inputs(prepared)]
    rewrites = ", ".join(
        f"{k} {v}" for k, v in summary.items() if k not in ("nodes", "opset", "batchnorm_folded")
    )
    ctx.log(
        f"{summary['nodes']} nodes, opset {summary['opset']}, {summary['batchnorm_folded']} BatchNorm folded"
        + (f"; {rewrites}" if rewrites else "")
    )
    return {**summary, "inputs": inputs}
