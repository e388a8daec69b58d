"""quantize: the QDQ model and the record of every quantization parameter in it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quantbuild.calib.bias_runner import calibrate_biases
from quantbuild.quant import ort_overrides, tidl_proto
from quantbuild.quant.params import DTYPES, QParams
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.quant.ranges_io import read
from quantbuild.runtime import session
from quantbuild.stages.context import Context
from quantbuild.stages.prepare import PREQUANTIZED_WEIGHTS

NAME = "quantize"
VERSION = 11
READS = (
    "/quantization/prequantized",
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
EXPORTS = {
    "model.qdq.onnx": "model.qdq.onnx",
    "quant_params.json": "quant_params.json",
    # The same parameters for other tools: TIDL quant_params_proto_path, onnxruntime overrides.
    "quant_params.prototxt": "quant_params.prototxt",
    "tensor_quant_overrides.json": "tensor_quant_overrides.json",
}


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
        given=_prequantized_weights(ctx) if q["prequantized"] else {},
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
    proto = tidl_proto.dumps(tidl_proto.from_record(record, _with_final_biases(model, qdq, record)))
    (out / "quant_params.prototxt").write_text(proto, encoding="utf-8")
    overrides = ort_overrides.dumps(record)
    (out / "tensor_quant_overrides.json").write_text(overrides, encoding="utf-8")
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


def _prequantized_weights(ctx: Context) -> dict[str, QParams]:
    """The weight grids the pre-quantized model states (prepare wrote them)."""
    path = ctx.inputs["prepare"].path(PREQUANTIZED_WEIGHTS)
    out = {}
    for name, w in json.loads(path.read_text(encoding="utf-8")).items():
        zero_type = DTYPES.get(w["dtype"], np.int32)
        out[name] = QParams(
            np.asarray(w["scale"], dtype=np.float32),
            np.asarray(w["zero_point"], dtype=zero_type),
            w["dtype"],
            w["axis"],
        )
    return out


def _with_final_biases(model: onnx.ModelProto, qdq: onnx.ModelProto, record: dict):
    """The float model with the biases the QDQ model uses (bias calibration changed them)."""
    inits = {t.name: t for t in qdq.graph.initializer}
    final = onnx.ModelProto()
    final.CopyFrom(model)
    for tensor in final.graph.initializer:
        if tensor.name in record["biases"]:
            q = numpy_helper.to_array(inits[f"{tensor.name}_quantized"]).astype(np.float32)
            scale = np.asarray(record["biases"][tensor.name]["scale"], dtype=np.float32)
            tensor.CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), tensor.name))
    return final
