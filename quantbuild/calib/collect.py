"""Streaming activation statistics over calibration frames: min, max and histograms.

Memory is bounded by the number of tensors, never by the number of frames.
"""

from __future__ import annotations

import numpy as np
import onnx

from quantbuild.calib.histogram import BINS, accumulate
from quantbuild.data.dataset import Dataset
from quantbuild.errors import DataError
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.quant.qdq import activation_tensors
from quantbuild.runtime import float_tensors, session, with_outputs


def collect_statistics(
    model: onnx.ModelProto, dataset: Dataset, histograms: bool = True
) -> dict[str, np.ndarray]:
    """Run the float model over every frame; per tensor: min, max, element count, histogram.

    `histograms=False` collects min/max only (benchmarks measure what histograms cost)."""
    # Only tensors that will get a grid: fused and value-preserving outputs never need ranges.
    names = activation_tensors(model, set(float_tensors(model)))
    runner = session(with_outputs(model, names))
    inputs = graph_inputs(model)
    count = len(names)
    low = np.full(count, np.inf, dtype=np.float64)
    high = np.full(count, -np.inf, dtype=np.float64)
    elements = np.zeros(count, dtype=np.int64)
    hist = np.zeros((count, BINS if histograms else 0), dtype=np.int64)
    frames = 0
    for frame, feed in dataset.iterate(inputs):
        try:
            values = runner.run(names, feed)
        except Exception as err:
            raise DataError(
                f"{dataset.field}: the model failed on {dataset.describe(frame)}: {str(err).splitlines()[0]}",
                dataset.where,
            ) from None
        for i, value in enumerate(values):
            if value.size == 0:
                continue
            finite = np.isfinite(value)
            if not finite.all():
                raise DataError(
                    f"{dataset.field}: tensor {names[i]!r} is not finite on {dataset.describe(frame)}; "
                    "check the preprocessing (mean/scale) and the model",
                    dataset.where,
                )
            low[i] = min(low[i], float(value.min()))
            high[i] = max(high[i], float(value.max()))
            elements[i] += value.size
            if histograms:
                accumulate(hist[i], value)
        frames += 1
    seen = elements > 0
    low[~seen] = 0.0
    high[~seen] = 0.0
    outputs = {o.name for o in model.graph.output}
    return {
        "names": np.array(names),
        "is_output": np.array([n in outputs for n in names]),
        "min": low,
        "max": high,
        "elements": elements,
        "hist": hist,
        "frames": np.array(frames, dtype=np.int64),
    }
