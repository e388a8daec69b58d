"""prepare: the canonical float model and its layer table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild.errors import ModelError
from quantbuild.interop.ranges_file import dumps
from quantbuild.quant.params import QParams, TensorRange
from quantbuild.stages.context import Context
from quantbuild.stages.settings import Quantization
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact

# The onnx-based graph modules are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    from quantbuild.quant.qdq_strip import Prequantized

MODEL = Artifact("model.onnx")
LAYERS = Artifact("layers.json", export="layers.json")
PREQUANTIZED_RANGES = Artifact("prequantized.ranges.yaml")
PREQUANTIZED_WEIGHTS = Artifact("prequantized.weights.json")


def run(ctx: Context, out: Path) -> dict[str, Any]:
    from quantbuild.graph.layers import layer_table
    from quantbuild.graph.onnx_utils import graph_inputs, load_model
    from quantbuild.graph.prepare import prepare_model
    from quantbuild.quant.qdq_strip import is_qdq, strip_qdq

    where = ctx.recipe.where(("model",))
    model = load_model(ctx.recipe.model, where)
    prequantized = Quantization.of(ctx.recipe.data).prequantized
    if is_qdq(model) != prequantized:
        raise ModelError(
            f"{ctx.recipe.model.name}: the model is already quantized (QuantizeLinear/"
            "DequantizeLinear nodes); set quantization.prequantized: true to take its scales"
            if prequantized is False
            else f"{ctx.recipe.model.name}: quantization.prequantized is true but the model has "
            "no QuantizeLinear/DequantizeLinear nodes; remove the setting",
            where,
        )
    found = None
    if prequantized:
        model, found = strip_qdq(model)
    prepared, summary = prepare_model(model, rewrite=not prequantized)
    if found is not None:
        write_prequantized(found, out)
        summary["prequantized_activations"] = len(found.activations)
        summary["prequantized_weights"] = len(found.weights)
    (out / MODEL.file).write_bytes(prepared.SerializeToString())
    layers = layer_table(prepared)
    (out / LAYERS.file).write_text(json.dumps(layers, indent=1) + "\n", encoding="utf-8")
    inputs = [{"name": s.name, "shape": list(s.shape)} for s in graph_inputs(prepared)]
    rewrites = ", ".join(
        f"{k.replace('_', ' ')} {v}"
        for k, v in summary.items()
        if k not in ("nodes", "opset", "batchnorm_folded")
    )
    ctx.log(
        f"{summary['nodes']} nodes, opset {summary['opset']}, {summary['batchnorm_folded']} BatchNorm folded"
        + (f"; {rewrites}" if rewrites else "")
    )
    return {**summary, "inputs": inputs}


def write_prequantized(found: Prequantized, out: Path) -> None:
    """The pre-quantized model's grids: activations as a ranges file, weights as JSON."""
    ranges = {}
    for name, qp in found.activations.items():
        if qp.axis is not None:
            raise ModelError(f"activation {name!r}: per-channel activation grids are not supported")
        low, high = qp.dequantize(np.array([qp.qmin, qp.qmax], dtype=np.int64))
        scalar = QParams(np.float32(qp.scale), np.asarray(qp.zero_point).reshape(()), qp.dtype)
        ranges[name] = TensorRange(float(low), float(high), scalar)
    (out / PREQUANTIZED_RANGES.file).write_text(
        dumps(ranges, {"source": "pre-quantized model"}), encoding="utf-8"
    )
    weights = {
        name: {
            "dtype": qp.dtype,
            "axis": qp.axis,
            "scale": np.asarray(qp.scale).tolist(),
            "zero_point": np.asarray(qp.zero_point).tolist(),
        }
        for name, qp in found.weights.items()
    }
    (out / PREQUANTIZED_WEIGHTS.file).write_text(
        json.dumps(weights, indent=1) + "\n", encoding="utf-8"
    )


STAGE = Stage(
    name="prepare",
    version=5,
    reads=("/model", "/quantization/prequantized"),
    inputs=(),
    artifacts=(
        MODEL,
        LAYERS,
        PREQUANTIZED_RANGES,
        PREQUANTIZED_WEIGHTS,
    ),
    run=run,
    doc=__doc__.splitlines()[0],
)
