"""Check 2: per-channel weight spread and outliers against per-tensor 8-bit grids and TIDL's clip rule.

Pure analysis (onnx + numpy); thresholds and remedies are described in docs/doctor.md."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from quantbuild.doctor.findings import CheckResult, Finding, safe_ratio, times
from quantbuild.graph.ops import WEIGHTED
from quantbuild.quant.qdq import weight_axis

# Per-tensor symmetric 8-bit weights have 127 steps per sign, sized for the largest channel.
# A channel whose max|w| is r times smaller uses 127 / r of them: it loses log2(r) bits.
# At r > 8 the median channel is down to < 16 steps (3 of 7 magnitude bits gone).
SPREAD_LIMIT = 8.0


# TIDL's weight clipping rule (docs/tidl.md): max|w| > 15 and max|w| > 16 * median|w|.
TIDL_CLIP_PEAK = 15.0


TIDL_CLIP_FACTOR = 16.0


# Where the rule does not fire: max|w| > 64 * median|w| leaves the median weight < 2 steps
# (127 / 64) of a per-tensor 8-bit grid, i.e. the bulk of the layer is quantized to ~1 bit.
BULK_LIMIT = 64.0


def weight_checks(
    model: onnx.ModelProto, per_channel: bool | None = None, clipping: str | None = None
) -> list[CheckResult]:
    """Per-channel range spread and outliers of every Conv/ConvTranspose/Gemm/MatMul weight.

    Run on the prepared model (BatchNorm folded): those are the weights that get quantized.
    `per_channel` and `clipping` are the recipe's settings when known (None: model only)."""
    inits = {t.name: t for t in model.graph.initializer}
    spread = CheckResult(
        "weight-spread",
        f"Per-channel weight ranges far apart (max/median channel max|w| > {SPREAD_LIMIT:g})",
        0,
    )
    outliers = CheckResult(
        "weight-outliers",
        "Weights far beyond their bulk (TIDL clipping rule, or max|w| > "
        f"{BULK_LIMIT:g} x median|w|)",
        0,
    )
    for node in model.graph.node:
        if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
            continue
        raw = numpy_helper.to_array(inits[node.input[1]])
        if raw.dtype.kind != "f" or raw.size == 0:
            continue
        weight = np.abs(raw.astype(np.float64))
        spread.checked += 1
        outliers.checked += 1
        shape = "x".join(str(d) for d in raw.shape)
        axis = weight_axis(node, raw)
        if axis is not None:
            channel_peak = np.moveaxis(weight, axis, 0).reshape(raw.shape[axis], -1).max(axis=1)
            live = channel_peak[channel_peak > 0]  # all-zero channels cost nothing
            if live.size >= 2:
                ratio = float(live.max() / np.median(live))
                spread.measure(ratio, f"max/median channel max|w| {ratio:.1f} at {node.name}")
                if ratio > SPREAD_LIMIT:
                    spread.findings.append(
                        _spread_finding(node, shape, live, channel_peak.size, per_channel)
                    )
        ratio = safe_ratio(float(weight.max()), float(np.median(weight)))
        outliers.measure(
            ratio, f"max|w| {weight.max():.3g} = {times(ratio)} x median|w| at {node.name}"
        )
        finding = _outlier_finding(node, shape, raw, weight, axis, per_channel, clipping)
        if finding:
            outliers.findings.append(finding)
    if per_channel:
        spread.note = (
            "This recipe quantizes weights per output channel, so the spread costs nothing "
            "here; it matters on per-tensor targets (TDA4VM) and hints at missing weight decay."
        )
    return [spread.sort(), outliers.sort()]


def _spread_finding(
    node: onnx.NodeProto, shape: str, live: np.ndarray, channels: int, per_channel: bool | None
) -> Finding:
    """`live`: max|w| of the channels that are not all zero."""
    median = float(np.median(live))
    ratio = float(live.max()) / median
    dead = channels - int(live.size)
    evidence = (
        f"{node.op_type} {shape}: per-channel max|w| {live.min():.3g} to {live.max():.3g}, "
        f"median {median:.3g}; max/median {ratio:.1f} leaves the median channel "
        f"{127 / ratio:.0f} of 127 steps ({math.log2(ratio):.1f} bits lost) on a per-tensor "
        "8-bit grid" + (f" ({dead} all-zero channels ignored)" if dead else "")
    )
    if per_channel:
        remedy = (
            "none needed with per-channel weights; on TDA4VM: params_16bit or weight decay 1e-4"
        )
    else:
        remedy = (
            "per-channel weights (weights.per_channel: true on AM62A/AM67A/AM68A/AM69A), or "
            f"quantization.mixed_precision.params_16bit: [{node.name}]; retrain with weight "
            "decay 1e-4"
        )
    return Finding(
        node.name,
        node.op_type,
        evidence,
        remedy,
        ratio,
        {
            "channels": channels,
            "channel_max": float(live.max()),
            "channel_min": float(live.min()),
            "channel_median": median,
            "ratio": ratio,
            "bits_lost": math.log2(ratio),
            "zero_channels": dead,
        },
    )


def _outlier_finding(
    node: onnx.NodeProto,
    shape: str,
    raw: np.ndarray,
    weight: np.ndarray,
    axis: int | None,
    per_channel: bool | None,
    clipping: str | None,
) -> Finding | None:
    peak, median = float(weight.max()), float(np.median(weight))
    ratio = safe_ratio(peak, median)
    fires = peak > TIDL_CLIP_PEAK and peak > TIDL_CLIP_FACTOR * median
    if not fires and ratio <= BULK_LIMIT:
        return None
    values = {"max": peak, "median": median, "ratio": ratio, "tidl_clip_fires": fires}
    head = f"{node.op_type} {shape}: max|w| {peak:.3g} = {times(ratio)} x median|w| {median:.3g}"
    if fires:
        limit = TIDL_CLIP_FACTOR * median
        clipped = int((weight > limit).sum())
        values.update({"clip_to": limit, "clipped": clipped, "size": int(weight.size)})
        evidence = (
            f"{head}; TIDL's weight clipping rule (max|w| > {TIDL_CLIP_PEAK:g} and > "
            f"{TIDL_CLIP_FACTOR:g} x median|w|) fires: per tensor it clamps to +-{limit:.3g}, "
            f"changing {clipped} of {weight.size} weights ({100 * clipped / weight.size:.2g} %)"
        )
        if axis is not None:
            rows = np.moveaxis(weight, axis, 0).reshape(raw.shape[axis], -1)
            ch_peak, ch_median = rows.max(axis=1), np.median(rows, axis=1)
            per = int(((ch_peak > TIDL_CLIP_PEAK) & (ch_peak > TIDL_CLIP_FACTOR * ch_median)).sum())
            values["channels_firing"] = per
            evidence += f"; per output channel it fires on {per} of {rows.shape[0]}"
        setting = f"; this recipe: {clipping}" if clipping else ""
        remedy = (
            "retrain with weight decay 1e-4; TIDL clips at accuracy_level 1, quantbuild only "
            f"with weight_clipping: tidl{setting}; to keep the outliers instead: "
            f"weight_clipping: none and quantization.mixed_precision.params_16bit: [{node.name}]"
        )
    else:
        evidence = (
            f"{head}: on a per-tensor 8-bit grid the median weight is {127 / ratio:.2g} steps"
        )
        remedy = (
            "retrain with weight decay 1e-4; "
            + ("" if per_channel else "per-channel weights or ")
            + f"quantization.mixed_precision.params_16bit: [{node.name}]"
        )
    return Finding(node.name, node.op_type, evidence, remedy, ratio, values)
