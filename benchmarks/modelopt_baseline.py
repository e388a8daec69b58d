"""ModelOpt baseline: NVIDIA Model Optimizer's ONNX int8 PTQ (modelopt.onnx.quantization) of one model.

One configuration per process, run with the ModelOpt venv's python (benchmarks/setup_modelopt.py;
ModelOpt pulls onnxruntime-gpu and torch, which must not enter the harness's environment), under
measure.py for wall time and peak RSS:

    benchmarks/work/venv-modelopt/bin/python benchmarks/modelopt_baseline.py --model detection \\
        --onnx float.onnx --calib DIR --method max|entropy [--shape 1,3,480,480] [--opset 13] \\
        --out model.qdq.onnx

The calibration frames are the same files quantbuild, onnxruntime and NNCF calibrate on, turned
into tensors by the same reference preprocessing the evaluator uses (common.py: numpy, Pillow,
onnx only), batch 1, all of them. The call is `modelopt.onnx.quantization.quantize(...,
quantize_mode="int8", calibration_method=max|entropy)` with ModelOpt's defaults for everything
that decides what is quantized (its TensorRT-oriented placement: which op types and nodes get
Q/DQ, symmetric int8 activations, per-channel Conv weights) and two settings that only fit it
to this machine and harness: `calibration_eps=["cpu"]` (no GPU; ModelOpt calibrates through
onnxruntime's CPU provider) and `high_precision_dtype="fp32"` (ModelOpt's default fp16 would
also cast the model's float part to half precision, which no other tool here does).

ModelOpt writes intermediate files beside its input model, so the input is always a prepared
copy in a temporary folder beside --out: the model with its input shape fixed (--shape) and
converted to --opset if asked. ModelOpt itself raises the opset to 19 for int8.

Besides the model, <out>.json records the settings, the versions of the ModelOpt venv, the
weight granularity written, the op types that got quantized inputs, and the layers left in
float (common.float_layers, the same function for every tool).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

from common import (
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
from nncf_baseline import fix_input_shape, opset, weight_granularity

# Settings that are not ModelOpt's defaults, and why: see the module docstring.
CALIBRATION_EPS = ["cpu"]
HIGH_PRECISION_DTYPE = "fp32"
VERSIONED = ["nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "onnx", "torch", "numpy"]


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def quantized_op_types(model: onnx.ModelProto) -> dict[str, int]:
    """Op types of the nodes that read at least one DequantizeLinear output (what got Q/DQ)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    counts = Counter(
        n.op_type
        for n in model.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(x in dequantized for x in n.input)
    )
    return dict(sorted(counts.items()))


def layer_op_types(model: onnx.ModelProto, names: list[str]) -> dict[str, int]:
    """Op types of the named layers (common.float_layers' naming: name, or op_type#index)."""
    kinds = {n.name or f"{n.op_type}#{i}": n.op_type for i, n in enumerate(model.graph.node)}
    return dict(sorted(Counter(kinds[name] for name in names).items()))


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move the tensors of Constant nodes (`value` attribute) to graph initializers; returns how
    many. onnxruntime's quantizer, which ModelOpt drives, treats a Conv weight that comes from
    a Constant node as an activation: per-tensor, its range calibrated (entropy would clip it),
    whatever per_channel says. PP-OCRv4 det (paddle2onnx) keeps all its weights in Constants."""
    nodes = [
        n
        for n in model.graph.node
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
    ]
    for node in nodes:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
    return len(nodes)


def stacked_feeds(files: list[Path]) -> dict[str, np.ndarray]:
    """A tensors model's .npz frames as ModelOpt's calibration_data: one array per input, the
    frames along the first axis (ModelOpt cuts it into batches of calibration_shapes' size).
    Frames of different lengths (sentences) cannot be stacked; padding them would calibrate
    ModelOpt on other frames than every other tool, so that is an error."""
    feeds = load_feeds(files)
    shapes = sorted({a.shape[1:] for feed in feeds for a in feed.values()})
    if len(shapes) > 1:
        raise SystemExit(
            f"ModelOpt calibrates on one array per input cut along its first axis; the "
            f"{len(feeds)} frames have {len(shapes)} different shapes {shapes[0]}..{shapes[-1]} "
            f"and are not padded (every tool calibrates on the same frames)"
        )
    return {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument(
        "--calib", type=Path, required=True, help="folder of calibration images (.npz frames)"
    )
    parser.add_argument("--method", choices=["max", "entropy"], default="max")
    parser.add_argument("--shape", help="fix the input shape first, e.g. 1,3,480,480")
    parser.add_argument("--opset", type=int, help="convert the model to this opset first if older")
    parser.add_argument(
        "--keep-constants",
        action="store_true",
        help="leave Constant-node tensors as they are (default: move them to initializers)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    from modelopt.onnx.quantization import quantize

    tensors = MODELS[args.model].tensors
    files = list_frames(args.calib) if tensors else list_images(args.calib)
    if tensors:
        calibration = stacked_feeds(files)
    else:
        pixels = load_pixels(args.model, files)
        # All frames as one array; ModelOpt splits it into steps of calibration_shapes' batch (1).
        batch = np.concatenate([normalize(args.model, p) for p in pixels], axis=0)
    loaded = time.perf_counter()
    model = onnx.load(str(args.onnx))
    source_opset = opset(model)
    if args.shape:
        fix_input_shape(model, [int(v) for v in args.shape.split(",")])
    if args.opset and source_opset < args.opset:
        model = onnx.version_converter.convert_version(model, args.opset)
    moved = 0 if args.keep_constants else constants_to_initializers(model)
    if not tensors:
        calibration = {model.graph.input[0].name: batch}
    shapes = ",".join(
        f"{name}:{'x'.join(str(d) for d in (1, *array.shape[1:]))}"
        for name, array in calibration.items()
    )
    source_layers = len(float_layers(model))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.stem}-") as folder:
        prepared = Path(folder) / "model.onnx"
        onnx.save(model, str(prepared))
        prepared_at = time.perf_counter()
        quantize(
            str(prepared),
            quantize_mode="int8",
            calibration_data=calibration,
            calibration_method=args.method,
            calibration_shapes=shapes,
            calibration_eps=CALIBRATION_EPS,
            high_precision_dtype=HIGH_PRECISION_DTYPE,
            output_path=str(args.out),
        )
    done = time.perf_counter()
    if not args.out.is_file():  # ModelOpt logs and returns when it quantizes nothing
        raise SystemExit(f"ModelOpt wrote no {args.out.name}")
    quantized = onnx.load(str(args.out))
    left = float_layers(quantized)
    write_json(
        args.out.with_suffix(".json"),
        {
            "frames": len(files),
            "versions": versions(),
            "method": args.method,
            "quantize": {
                "quantize_mode": "int8",
                "calibration_method": args.method,
                "calibration_eps": CALIBRATION_EPS,
                "high_precision_dtype": HIGH_PRECISION_DTYPE,
                "calibration_shapes": shapes,
            },
            "fixed_shape": args.shape,
            "constants_to_initializers": moved,
            "opset": {"source": source_opset, "quantized": opset(quantized)},
            "quantized_weights": weight_granularity(quantized),
            "quantized_op_types": quantized_op_types(quantized),
            "layers": source_layers,
            "float_layers": left,
            "float_layer_op_types": layer_op_types(quantized, left),
            "float_inputs": float_inputs(quantized),
            "seconds": {
                "import_modelopt_and_load_frames": round(loaded - started, 3),
                "prepare": round(prepared_at - loaded, 3),
                "calibrate_and_quantize": round(done - prepared_at, 3),
            },
        },
    )
    print(f"{args.out}: {len(left)} of {source_layers} layers left in float {left}", flush=True)


if __name__ == "__main__":
    main()
