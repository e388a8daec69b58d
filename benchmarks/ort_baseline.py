"""onnxruntime baseline: quantize_static (QDQ, uint8 activations, int8 weights) of one model.

One configuration per process (run it under measure.py for wall time and peak RSS):

    python benchmarks/ort_baseline.py --model detection --onnx float.onnx \\
        --calib DIR --method MinMax [--per-channel] [--shape 1,3,480,480] --out model.qdq.onnx

The calibration frames are the same files quantbuild calibrates on, turned into tensors by
the same reference preprocessing the evaluator uses. Preparation, as onnxruntime recommends:
optionally fix the input shape, then `quant_pre_process` (symbolic shape inference, ONNX
optimizer, shape inference); for per-channel weights the model must be at opset 13 or
later (DequantizeLinear's axis), so older models can be converted first (--opset 13).
Then calibration and quantization. All of it is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from common import MODELS, list_images, load_pixels, normalize, write_json


class FrameReader(CalibrationDataReader):
    """Feeds preprocessed calibration frames one at a time (batch 1)."""

    def __init__(self, model: str, input_name: str, pixels: np.ndarray):
        self.model, self.input_name, self.pixels = model, input_name, pixels
        self.start, self.end = 0, len(pixels)
        self.index = 0

    def __len__(self) -> int:
        return len(self.pixels)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.index = start_index, end_index, start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        frame = normalize(self.model, self.pixels[self.index])
        self.index += 1
        return {self.input_name: frame}


def fix_input_shape(model: onnx.ModelProto, shape: list[int]) -> None:
    """Replace the first input's symbolic dimensions with fixed sizes."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = size


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True, help="folder of calibration images")
    parser.add_argument("--method", required=True, choices=["MinMax", "Entropy", "Percentile"])
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--shape", help="fix the input shape first, e.g. 1,3,480,480")
    parser.add_argument("--opset", type=int, help="convert the model to this opset first if older")
    parser.add_argument("--no-pre-process", action="store_true", help="skip quant_pre_process")
    parser.add_argument("--extra", default="{}", help="quantize_static extra_options (JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    files = list_images(args.calib)
    pixels = load_pixels(args.model, files)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ort-baseline.") as tmp:
        model = onnx.load(str(args.onnx))
        if args.shape:
            fix_input_shape(model, [int(v) for v in args.shape.split(",")])
        if args.opset and opset(model) < args.opset:
            model = onnx.version_converter.convert_version(model, args.opset)
        source = Path(tmp) / "float.onnx"
        onnx.save(model, str(source))
        if not args.no_pre_process:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            source = prepared
        input_name = model.graph.input[0].name
        prepared_at = time.perf_counter()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(source),
            str(args.out),
            FrameReader(args.model, input_name, pixels),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=args.per_channel,
            calibrate_method=getattr(CalibrationMethod, args.method),
            extra_options=json.loads(args.extra),
        )
    done = time.perf_counter()
    write_json(
        args.out.with_suffix(".json"),
        {
            "frames": len(files),
            "method": args.method,
            "per_channel": args.per_channel,
            "fixed_shape": args.shape,
            "opset": opset(onnx.load(str(args.out), load_external_data=False)),
            "pre_process": not args.no_pre_process,
            "extra_options": json.loads(args.extra),
            "seconds": {
                "load_frames": round(loaded - started, 3),
                "prepare": round(prepared_at - loaded, 3),
                "calibrate_and_quantize": round(done - prepared_at, 3),
            },
        },
    )


if __name__ == "__main__":
    main()
