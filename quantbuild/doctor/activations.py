"""Check 3: activation tails, min/max against the clipped range, from cached statistics.

Pure analysis (onnx + numpy); thresholds and remedies are described in docs/doctor.md."""

from __future__ import annotations

import math

import numpy as np
import onnx

from quantbuild.calib.policy import Distribution, clip_range
from quantbuild.doctor.findings import CheckResult, Finding, safe_ratio, times
from quantbuild.graph import index as graph_index

# Activations: a min/max range 8x wider than the percentile range costs 3 of the 8 bits for
# the values that matter (the same log2 argument as for weights).
TAIL_LIMIT = 8.0


def activation_tail_check(
    model: onnx.ModelProto,
    stats: dict[str, np.ndarray],
    percentile: float,
    clipping: str,
) -> CheckResult:
    """Tensors whose observed min/max range is far wider than the percentile range.

    `stats` is the stats stage's artifact (names, min, max, hist, elements, is_output);
    the percentile range is computed exactly as the `percentile` range policy does."""
    producer = graph_index.producers(model.graph)
    tail = 100.0 - percentile
    result = CheckResult(
        "activation-tails",
        f"Activations with extreme tails (min/max range > {TAIL_LIMIT:g} x the "
        f"{tail:.2g} %-per-tail range)",
        0,
    )
    names = stats["names"].tolist()
    outputs = stats.get("is_output", np.zeros(len(names), dtype=bool))
    hist = stats.get("hist")
    if hist is None or hist.ndim != 2 or hist.shape[0] != len(names) or hist.shape[1] == 0:
        result.note = "the statistics have no histograms"
        return result
    for i, name in enumerate(names):
        if int(stats["elements"][i]) == 0 or hist[i].sum() == 0:
            continue
        result.checked += 1
        low, high = float(stats["min"][i]), float(stats["max"][i])
        dist = Distribution(hist[i], low, high)
        c_low, c_high = clip_range(dist, "percentile", 8, False, False, percentile)
        # Grids always contain 0, so compare the widths of the ranges that include it.
        full = max(high, 0.0) - min(low, 0.0)
        kept = max(c_high, 0.0) - min(c_low, 0.0)
        ratio = safe_ratio(full, kept)
        if full == 0:
            continue
        result.measure(ratio, f"min/max over percentile range {times(ratio)} for {name!r}")
        if ratio <= TAIL_LIMIT:
            continue
        node = producer.get(name)
        layer = node.name if node is not None else name
        op = node.op_type if node is not None else "input"
        bits = f"{math.log2(ratio):.1f}" if math.isfinite(ratio) else "all"
        evidence = (
            f"tensor {name!r}: observed [{low:.4g}, {high:.4g}], {tail:.2g} %-per-tail range "
            f"[{c_low:.4g}, {c_high:.4g}]: the min/max grid is {times(ratio)} x wider "
            f"({bits} of 8 bits lost without clipping)"
        )
        if outputs[i]:
            remedy = (
                "model outputs are never clipped (they carry the result): "
                f"quantization.mixed_precision.output_16bit: [{layer}]"
            )
        elif clipping == "minmax":
            remedy = (
                "turn activation clipping on: accuracy_level: 1 (TIDL's default) or "
                "quantization.activation_clipping: percentile"
            )
        else:
            remedy = (
                f"clipping is on in this recipe ({clipping}); if accuracy still drops, bound the "
                f"activation in training (BN before it, ReLU6) or output_16bit: [{layer}]"
            )
        result.findings.append(
            Finding(
                layer,
                op,
                evidence,
                remedy,
                ratio,
                {
                    "tensor": name,
                    "min": low,
                    "max": high,
                    "clip_min": c_low,
                    "clip_max": c_high,
                    "ratio": ratio,
                    "is_output": bool(outputs[i]),
                },
            )
        )
    return result.sort()
