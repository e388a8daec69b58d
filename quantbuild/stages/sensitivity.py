"""sensitivity: how much each layer's promotion to 16 bits improves the output (auto mixed precision).

For every layer with weights (Conv, ConvTranspose, Gemm, MatMul), the 8-bit model with that
layer alone promoted runs on a few calibration frames, twice: 16-bit outputs and weights
(TIDL output_16bit, with its propagation), and 16-bit weights only (params_16bit); its output error against float, next to the all-8-bit error, is
the layer's gain. A cached artifact of its own: changing the latency budget (factor) re-runs
only the selection in quantize.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from quantbuild.build.files import load_npz
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.mixed.apply import wide_layers, widen_ranges
from quantbuild.mixed.latency import estimate, static_shapes
from quantbuild.mixed.precision import WEIGHTED, assign
from quantbuild.mixed.select import select_layers
from quantbuild.progress import track
from quantbuild.quant.qdq import write_qdq
from quantbuild.quant.ranges_io import read
from quantbuild.runtime import session
from quantbuild.stages.context import Context
from quantbuild.stages.settings import feature_map_grid, float_model_path, weight_options

NAME = "sensitivity"
VERSION = 4  # 3: 32-bit biases for 8-bit layers fed 16-bit inputs; 4: factor sweep
READS = (
    "/quantization/bits",
    "/quantization/scale",
    "/quantization/activations",
    "/quantization/weights",
    "/quantization/bias_bits",
    "/quantization/weight_clipping",
    "/quantization/accuracy_level",
    "/calibration/data",
    "/calibration/preprocess",
)
INPUTS = ("prepare", "equalize", "stats", "ranges")
EXPORTS = {"sensitivity.json": "sensitivity.json"}
FRAMES = 8  # calibration frames per measurement
PARAMS = ":params"  # candidate suffix: the layer's weights only in 16 bits
SWEEP = (1.05, 1.1, 1.2, 1.3, 1.5, 2.0)  # factors measured for the report


def split_candidates(chosen: list[str]) -> tuple[list[str], list[str]]:
    """Selected candidates as (output_16bit layers, params_16bit layers)."""
    outputs = [c for c in chosen if not c.endswith(PARAMS)]
    params = [
        c.removesuffix(PARAMS)
        for c in chosen
        if c.endswith(PARAMS) and c.removesuffix(PARAMS) not in outputs
    ]
    return outputs, params


def _error(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    """Mean over frames and outputs of the squared error relative to the float output power."""
    errors = []
    for got, want in zip(outputs, reference):
        for g, w in zip(got, want):
            errors.append(float(np.mean((g - w) ** 2) / max(float(np.mean(w**2)), 1e-30)))
    return float(np.mean(errors))


def run(ctx: Context, out: Path) -> dict:
    q = ctx.recipe.data["quantization"]
    model = onnx.load(str(float_model_path(ctx)))
    ranges, _ = read(ctx.inputs["ranges"].path("ranges.yaml"))
    stats = load_npz(ctx.inputs["stats"].path("stats.npz"))
    options = weight_options(q)
    symmetric, power_of_2 = feature_map_grid(q)
    dataset = ctx.dataset("calibration")
    inputs = graph_inputs(model)
    feeds = [dataset.load(frame, inputs) for frame in dataset.frames[:FRAMES]]
    names = [o.name for o in model.graph.output]
    float_runner = session(model)
    reference = [float_runner.run(names, feed) for feed in feeds]

    def error_with(promoted: list[str]) -> float:
        assignment = assign(model, *split_candidates(promoted))
        wide = widen_ranges(ranges, stats, assignment, symmetric, power_of_2)
        qdq, _ = write_qdq(model, wide, replace(options, wide_layers=wide_layers(assignment)))
        runner = session(qdq)
        return _error([runner.run(names, feed) for feed in feeds], reference)

    base = error_with([])
    layers = [n.name for n in model.graph.node if n.op_type in WEIGHTED]
    # Each layer twice: 16-bit outputs and weights, or 16-bit weights only (TIDL
    # params_16bit), which costs far less where the weights are the problem.
    candidates = layers + [f"{name}{PARAMS}" for name in layers]
    measured = track(candidates, "sensitivity", len(candidates), unit="candidates")
    gains = {name: base - error_with([name]) for name in measured}
    shapes = static_shapes(model, {name: value.shape for name, value in feeds[0].items()})

    ratios: dict[tuple[str, ...], float] = {}

    def ratio_of(chosen: list[str]) -> float:
        # The sweep's selections share every single-layer cost and their common prefixes.
        key = tuple(chosen)
        if key not in ratios:
            ratios[key] = estimate(model, assign(model, *split_candidates(chosen)), shapes).ratio
        return ratios[key]

    # What automatic selection buys at each budget, for the report's fidelity/latency plot.
    sweep = [{"factor": 1.0, "ratio": 1.0, "error": base, "layers": 0}]
    for factor in SWEEP:
        chosen = select_layers(gains, ratio_of, factor)
        sweep.append(
            {
                "factor": factor,
                "ratio": ratio_of(chosen),
                "error": error_with(chosen),
                "layers": len(chosen),
            }
        )
    result = {"frames": len(feeds), "error_8bit": base, "gains": gains, "sweep": sweep}
    (out / "sensitivity.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    best = sorted(gains, key=gains.get, reverse=True)[:3]
    ctx.log(
        f"{len(layers)} layers (x2) measured on {len(feeds)} frames; 8-bit relative error "
        f"{base:.3g}; most sensitive: {', '.join(best)}"
    )
    return {"candidates": len(candidates), "error_8bit": base}
