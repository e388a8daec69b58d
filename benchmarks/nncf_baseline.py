"""NNCF baseline: nncf.quantize (post-training, ONNX backend, int8 QDQ) of one model.

One configuration per process (run it under measure.py for wall time and peak RSS):

    python benchmarks/nncf_baseline.py --model detection --onnx float.onnx --calib DIR \\
        --preset performance [--per-channel] [--shape 1,3,480,480] [--opset 13] --out model.qdq.onnx

The calibration frames are the same files quantbuild and onnxruntime calibrate on, turned
into tensors by the same reference preprocessing the evaluator uses (a tensors model's .npz
frames as they are, every input), batch 1, and NNCF uses all of them (subset_size = number of
frames). Everything else is NNCF's default: target
device ANY, fast bias correction, min/max range estimators. --preset performance (NNCF's
default) is symmetric int8 weights and activations; mixed makes activations asymmetric.
Weights are per-channel with --per-channel (NNCF's default), otherwise per-tensor
(AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(
per_channel=False))). NNCF quantizes models below opset 13 per-tensor whatever it is asked
(it only logs a warning), so such models can be converted first (--opset 13).

Besides the model, <out>.json records the settings, the granularity actually written (weight
DequantizeLinear nodes with a per-channel scale) and the layers left in float
(common.float_layers). NNCF's telemetry is switched off (NNCF_CI) so that no event is sent
from inside the timed process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from common import (
    LAYER_OPS,
    MODELS,
    float_inputs,
    float_layers,
    list_frames,
    list_images,
    load_feeds,
    load_pixels,
    normalize,
    write_json,
)

os.environ.setdefault("NNCF_CI", "1")  # read when nncf is imported (in main)


def fix_input_shape(model: onnx.ModelProto, shape: list[int]) -> None:
    """Replace the first input's symbolic dimensions with fixed sizes."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = size


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model after onnxruntime's basic graph optimizations, which fuse BatchNormalization
    into the convolution before it (what quant_pre_process does for onnxruntime's quantizer,
    and what the device does): NNCF's ONNX backend leaves BatchNorm unfolded, in float."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def weight_granularity(model: onnx.ModelProto) -> dict[str, int]:
    """Layers whose weight input comes from a DequantizeLinear, by the size of its scale
    (an initializer or a Constant node: the detection model keeps its weights in Constants)."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in model.graph.node for out in node.output}
    counts = {"per_channel": 0, "per_tensor": 0}
    for node in model.graph.node:
        source = producer.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in LAYER_OPS or source is None or source.op_type != "DequantizeLinear":
            continue
        scale = constants.get(source.input[1])
        size = numpy_helper.to_array(scale).size if scale is not None else 1
        counts["per_channel" if size > 1 else "per_tensor"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument(
        "--calib", type=Path, required=True, help="folder of calibration images (.npz frames)"
    )
    parser.add_argument("--preset", choices=["performance", "mixed"], default="performance")
    parser.add_argument("--per-channel", action="store_true", help="per-channel weights")
    parser.add_argument("--shape", help="fix the input shape first, e.g. 1,3,480,480")
    parser.add_argument("--opset", type=int, help="convert the model to this opset first if older")
    parser.add_argument(
        "--fold-batchnorm",
        action="store_true",
        help="fuse BatchNormalization into convolutions first (onnxruntime basic optimizations)",
    )
    parser.add_argument(
        "--transformer",
        action="store_true",
        help="model_type=nncf.ModelType.TRANSFORMER (NNCF's transformer scheme, SmoothQuant on)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    tensors = MODELS[args.model].tensors
    files = list_frames(args.calib) if tensors else list_images(args.calib)
    if tensors:  # each {input name: [1, tokens] int64}
        frames = load_feeds(files)
    else:  # each [1, 3, H, W] float32
        frames = [normalize(args.model, p) for p in load_pixels(args.model, files)]
    loaded = time.perf_counter()
    model = onnx.load(str(args.onnx))
    source_opset = opset(model)
    if args.shape:
        fix_input_shape(model, [int(v) for v in args.shape.split(",")])
    if args.opset and source_opset < args.opset:
        model = onnx.version_converter.convert_version(model, args.opset)
    if args.fold_batchnorm:
        model = fold_batchnorm(model)
    input_name = model.graph.input[0].name
    prepared_at = time.perf_counter()
    advanced = None
    if not args.per_channel:
        advanced = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False)
        )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(frames, dict if tensors else lambda frame: {input_name: np.asarray(frame)}),
        preset=nncf.QuantizationPreset(args.preset),
        subset_size=len(frames),
        advanced_parameters=advanced,
        model_type=nncf.ModelType.TRANSFORMER if args.transformer else None,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(args.out))
    done = time.perf_counter()
    left = float_layers(quantized)
    write_json(
        args.out.with_suffix(".json"),
        {
            "frames": len(files),
            "nncf": nncf.__version__,
            "preset": args.preset,
            "per_channel": args.per_channel,
            "fold_batchnorm": args.fold_batchnorm,
            "model_type": "transformer" if args.transformer else None,
            "fixed_shape": args.shape,
            "opset": {"source": source_opset, "quantized": opset(quantized)},
            "quantized_weights": weight_granularity(quantized),
            "batchnorm_left": sum(n.op_type == "BatchNormalization" for n in quantized.graph.node),
            "float_layers": left,
            "float_inputs": float_inputs(quantized),
            "seconds": {
                "import_nncf_and_load_frames": round(loaded - started, 3),
                "prepare": round(prepared_at - loaded, 3),
                "calibrate_and_quantize": round(done - prepared_at, 3),
            },
        },
    )
    print(f"{args.out}: {len(left)} layers left in float {left}", flush=True)


if __name__ == "__main__":
    main()
