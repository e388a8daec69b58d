"""Streaming activation statistics over calibration frames: min, max and histograms.

Memory is bounded by the number of tensors, never by the number of frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import onnx

from quantbuild.calib.histogram import BINS, accumulate
from quantbuild.cores import FanOut
from quantbuild.data.dataset import Dataset
from quantbuild.graph import index as graph_index
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.graph.ops import VALUE_PRESERVING
from quantbuild.progress import track
from quantbuild.quant.qdq import activation_tensors
from quantbuild.runtime import float_tensors, not_finite, run_frame, session, with_outputs


@dataclass
class Accumulators:
    """Per tensor over some frames: min, max, element count and histogram. Frames split into
    shards merge exactly (min, max and integer sums): the statistics of a sharded pass are
    bit-identical to one pass's."""

    low: np.ndarray
    high: np.ndarray
    elements: np.ndarray
    hist: np.ndarray
    frames: int

    def merge(self, other: Accumulators) -> Accumulators:
        return Accumulators(
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
            self.elements + other.elements,
            self.hist + other.hist,
            self.frames + other.frames,
        )


def collect_statistics(
    model: onnx.ModelProto,
    dataset: Dataset,
    histograms: bool = True,
    known: frozenset[str] = frozenset(),
    fan_out: FanOut | None = None,
) -> dict[str, np.ndarray]:
    """Run the float model over every frame; per tensor: min, max, element count, histogram.

    Tensors in `known` (ranges imported from elsewhere) are skipped; when nothing is left, no
    frame is run at all. `histograms=False` collects min/max only (benchmarks measure what
    histograms cost). With `fan_out`, the frames are split into one shard per worker."""
    # Only tensors that will get a grid: fused and value-preserving outputs never need ranges.
    grid = activation_tensors(model, set(float_tensors(model)))
    names = [n for n in grid if n not in known]
    if not names:
        return _result(model, names, np.zeros(0), np.zeros(0), np.zeros(0, np.int64), None, 0)
    shards = min(fan_out.workers, len(dataset.frames)) if fan_out else 1
    if fan_out is None or shards < 2:
        acc = _accumulate(model, dataset, names, histograms)
    else:
        data = model.SerializeToString()
        jobs = [(data, part, names, histograms) for part in dataset.shards(shards)]
        acc = functools.reduce(Accumulators.merge, fan_out.map(shard_statistics, jobs))
    return _result(model, names, acc.low, acc.high, acc.elements, acc.hist, acc.frames)


def shard_statistics(
    model: bytes, dataset: Dataset, names: list[str], histograms: bool
) -> Accumulators:
    """The accumulators of one shard of frames (run where a fan-out sends it)."""
    return _accumulate(onnx.load_from_string(model), dataset, names, histograms)


def _accumulate(
    model: onnx.ModelProto, dataset: Dataset, names: list[str], histograms: bool
) -> Accumulators:
    runner = session(with_outputs(model, names))
    inputs = graph_inputs(model)
    count = len(names)
    low = np.full(count, np.inf, dtype=np.float64)
    high = np.full(count, -np.inf, dtype=np.float64)
    elements = np.zeros(count, dtype=np.int64)
    hist = np.zeros((count, BINS if histograms else 0), dtype=np.int64)
    frames = 0
    for frame, feed in track(dataset.iterate(inputs), "statistics", len(dataset.frames)):
        for i, value in enumerate(run_frame(runner, names, feed, dataset, frame)):
            if value.size == 0:
                continue
            # min and max carry any NaN or infinity: no separate pass to find them
            smallest, largest = float(value.min()), float(value.max())
            if not (math.isfinite(smallest) and math.isfinite(largest)):
                raise not_finite(names[i], dataset, frame)
            low[i] = min(low[i], smallest)
            high[i] = max(high[i], largest)
            elements[i] += value.size
            if histograms:
                accumulate(hist[i], value)
        frames += 1
    return Accumulators(low, high, elements, hist, frames)


def channel_ranges(
    model: onnx.ModelProto, dataset: Dataset, tensors: dict[str, int], frames: int
) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor along its channel axis (`tensors`: name -> axis; 1
    for feature maps, -1 for a transformer's tokens) over the first `frames` calibration
    frames."""
    if not tensors:
        return {}
    names = list(tensors)
    runner = session(with_outputs(model, names))
    inputs = graph_inputs(model)
    peak: dict[str, np.ndarray] = {}
    chosen = dataset.frames[:frames]
    for frame in track(chosen, "equalization ranges", len(chosen)):
        feed = dataset.load(frame, inputs)
        for name, value in zip(names, run_frame(runner, names, feed, dataset, frame, finite=True)):
            if value.ndim < 2 or value.size == 0:
                continue
            axis = tensors[name] % value.ndim
            axes = tuple(i for i in range(value.ndim) if i != axis)
            channel = np.abs(value).max(axis=axes).astype(np.float64)
            peak[name] = channel if name not in peak else np.maximum(peak[name], channel)
    return peak


def output_forming(model: onnx.ModelProto) -> set[str]:
    """Model outputs and the tensors they are assembled from without arithmetic: through
    Concat and value-preserving operators (a detection head's box, objectness and class maps
    concatenated and reshaped into one output carry the result as much as the output does)."""
    producer = graph_index.producers(model.graph)
    found: set[str] = set()
    pending = [o.name for o in model.graph.output]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        node = producer.get(name)
        if node is not None and (node.op_type == "Concat" or node.op_type in VALUE_PRESERVING):
            pending.extend(node.input if node.op_type == "Concat" else node.input[:1])
    return found


def _result(
    model: onnx.ModelProto,
    names: list[str],
    low: np.ndarray,
    high: np.ndarray,
    elements: np.ndarray,
    hist: np.ndarray | None,
    frames: int,
) -> dict[str, np.ndarray]:
    seen = elements > 0
    low[~seen] = 0.0
    high[~seen] = 0.0
    if hist is None:
        hist = np.zeros((0, BINS), dtype=np.int64)
    outputs = output_forming(model)
    softmax = {n.output[0] for n in model.graph.node if n.op_type == "Softmax"}
    return {
        "names": np.array(names, dtype=str),
        "is_output": np.array([n in outputs for n in names]),
        "is_probability": np.array([n in softmax for n in names]),
        "min": low,
        "max": high,
        "elements": elements,
        "hist": hist,
        "frames": np.array(frames, dtype=np.int64),
    }
