"""quantize: the QDQ model and the record of every quantization parameter in it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from quantbuild.calib.bias_runner import calibrate_biases
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.quant.ranges_io import read
from quantbuild.runtime import session
from quantbuild.stages.context import Context

NAME = "quantize"
VERSION = 9
READS = (
    "/quantization/bits",
    "/quantization/scale",
    "/quantization/weights",
    "/quantization/bias_bits",
    "/quantization/weight_clipping",
    "/quantization/bias_calibration",
    "/calibration/data",
    "/calibration/preprocess",
)
INPUTS = ("prepare", "ranges")
EXPORTS = {"model.qdq.onnx": "model.qdq.onnx", "quant_params.json": "quant_params.json"}


def run(ctx: Context, out: Path) -> dict:
    q = ctx.recipe.data["quantization"]
    model = onnx.load(str(ctx.inputs["prepare"].path("model.onnx")))
    ranges, _ = read(ctx.inputs["ranges"].path("ranges.yaml"))
    options = WeightOptions(
        bits=q["bits"],
        per_channel=q["weights"]["per_channel"],
        power_of_2=q["scale"] == "power_of_2",
        bias_bits=q["bias_bits"],
        clipping=q["weight_clipping"],
    )
    qdq, record = write_qdq(model, ranges, options)
    bias = q["bias_calibration"]
    if bias:
        qdq = calibrate_biases(
            model,
            qdq,
            record,
            ctx.dataset("calibration"),
            bias["frames"],
            bias["iterations"],
            ctx.log,
        )
    onnx.checker.check_model(qdq)
    session(qdq)  # fails here, not in evaluate, if onnxruntime cannot run it
    (out / "model.qdq.onnx").write_bytes(qdq.SerializeToString())
    (out / "quant_params.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    raised = sum(b["weight_scales_raised"] for b in record["biases"].values())
    ctx.log(
        f"{len(record['activations'])} activations, {len(record['weights'])} weights, "
        f"{len(record['biases'])} biases quantized ({raised} weight scales raised to fit biases)"
    )
    return {
        "activations": len(record["activations"]),
        "weights": len(record["weights"]),
        "biases": len(record["biases"]),
        "weight_scales_raised": raised,
    }
