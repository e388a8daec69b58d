"""onnxruntime baseline: quantize_static (QDQ, uint8 activations, int8 weights) of one model.

One configuration per process (run it under measure.py for wall time and peak RSS):

    python benchmarks/ort_baseline.py --model detection --onnx float.onnx \\
        --calib DIR --method MinMax [--per-channel] [--shape 1,3,480,480] --out model.qdq.onnx

The calibration frames are the same files quantbuild calibrates on, turned into tensors by
the same reference preprocessing the evaluator uses (a tensors model's .npz frames are fed as
they are, every input, one frame of its own length at a time). Preparation, as onnxruntime recommends:
optionally fix the input shape, then `quant_pre_process` (symbolic shape inference, ONNX
optimizer, shape inference; --auto-merge lets symbolic shape inference merge dimensions it
cannot prove equal, e.g. a BERT's sequence length and the Min(512, sequence) rows of its
position table); for per-channel weights the model must be at opset 13 or
later (DequantizeLinear's axis), so older models can be converted first (--opset 13).
Then calibration and quantization. All of it is timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
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

from common import MODELS, list_frames, list_images, load_feeds, load_pixels, normalize, write_json


class FrameReader(CalibrationDataReader):
    """Feeds calibration frames one at a time (batch 1), each made into the model feed by
    `feed` when it is read (reference pixels -> the normalized input)."""

    def __init__(self, frames: Sequence, feed: Callable[..., dict[str, np.ndarray]]):
        self.frames, self.feed = frames, feed
        self.start, self.end = 0, len(frames)
        self.index = 0

    def __len__(self) -> int:
        return len(self.frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.index = start_index, end_index, start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        self.index += 1
        return self.feed(self.frames[self.index - 1])


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
    parser.add_argument(
        "--calib", type=Path, required=True, help="folder of calibration images (.npz frames)"
    )
    parser.add_argument("--method", required=True, choices=["MinMax", "Entropy", "Percentile"])
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--shape", help="fix the input shape first, e.g. 1,3,480,480")
    parser.add_argument("--opset", type=int, help="convert the model to this opset first if older")
    parser.add_argument("--no-pre-process", action="store_true", help="skip quant_pre_process")
    parser.add_argument(
        "--auto-merge", action="store_true", help="quant_pre_process(auto_merge=True)"
    )
    parser.add_argument("--extra", default="{}", help="quantize_static extra_options (JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    tensors = MODELS[args.model].tensors
    files = list_frames(args.calib) if tensors else list_images(args.calib)
    frames = load_feeds(files) if tensors else load_pixels(args.model, files)
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
            quant_pre_process(str(source), str(prepared), auto_merge=args.auto_merge)
            source = prepared
        input_name = model.graph.input[0].name
        prepared_at = time.perf_counter()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(source),
            str(args.out),
            FrameReader(frames, dict)
            if tensors
            else FrameReader(frames, lambda pixels: {input_name: normalize(args.model, pixels)}),
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
            "auto_merge": args.auto_merge,
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
