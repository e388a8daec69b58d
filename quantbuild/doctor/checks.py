"""Static checks of a float model against TI's training and quantization guidelines.

Pure analysis (onnx + numpy): each check takes a model (and, for activations, cached
statistics) and returns a `CheckResult` whose findings are ordered worst first. The checks
and their thresholds are described in docs/doctor.md.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantbuild.calib.policy import Distribution, clip_range
from quantbuild.graph.ops import CONVS, ELEMENTWISE_CONSTANTS, VALUE_PRESERVING, WEIGHTED
from quantbuild.graph.patterns import fused_layers
from quantbuild.quant.qdq import activation_tensors, weight_axis
from quantbuild.runtime import float_tensors

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
# Activations: a min/max range 8x wider than the percentile range costs 3 of the 8 bits for
# the values that matter (the same log2 argument as for weights).
TAIL_LIMIT = 8.0
# When at least this share of the convolutions has no BatchNormalization node, say once that
# BN was probably folded at export instead of repeating it on every line.
FOLDED_SHARE = 0.5

_FLOAT_TYPES = {
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.BFLOAT16: "bfloat16",
}
# Constant inputs that configure an operator rather than carry data: never quantized, fine.
_CONTROL_INPUTS = {
    "Resize": {1, 2},
    "Upsample": {1},
    "Clip": {1, 2},
    "Pad": {2, 3},
}


@dataclass(frozen=True)
class Finding:
    """One problem of one layer: what is wrong (evidence, with numbers) and what to do."""

    layer: str  # node name (the name recipes use, e.g. in mixed_precision lists)
    op: str
    evidence: str
    remedy: str
    severity: float = 0.0  # larger is worse; orders the findings of a check
    values: dict = field(default_factory=dict)  # the numbers behind the evidence


@dataclass
class CheckResult:
    """The findings of one check, worst first, and a note that applies to all of them."""

    check: str
    title: str
    checked: int  # layers or tensors examined
    findings: list[Finding] = field(default_factory=list)
    note: str = ""
    largest: str = ""  # the largest measured value, finding or not (how far from the limit)
    _peak: float = field(default=-math.inf, repr=False)

    def measure(self, value: float, text: str) -> None:
        """Keep `text` as `largest` when `value` is the largest seen so far."""
        if value > self._peak:
            self._peak, self.largest = value, text

    def sort(self) -> CheckResult:
        self.findings.sort(key=lambda f: -f.severity)  # stable: graph order among equals
        return self


# -- graph helpers --------------------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _is_weighted(node: onnx.NodeProto, inits: set[str]) -> bool:
    """A layer with its own weights (a MatMul of two activations is not one)."""
    if node.op_type in CONVS:
        return True
    return node.op_type in ("Gemm", "MatMul") and any(i in inits for i in node.input[:2])


def _prediction_tensors(graph: onnx.GraphProto, inits: set[str]) -> set[str]:
    """Tensors from which a graph output is reached without passing another weighted layer.

    Walks backwards from the outputs through layers without weights; a conv whose output is
    in this set is a prediction layer (TI allows it to go without BatchNormalization)."""
    producer = {o: n for n in graph.node for o in n.output}
    free = {o.name for o in graph.output}
    stack = list(free)
    while stack:
        node = producer.get(stack.pop())
        if node is None or _is_weighted(node, inits):
            continue
        for name in node.input:
            if name and name not in free and name not in inits:
                free.add(name)
                stack.append(name)
    return free


def _kernel(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims[2:]) or "1"


# -- check 1: BatchNormalization after convolutions ----------------------------------------


def batchnorm_checks(model: onnx.ModelProto) -> list[CheckResult]:
    """Depthwise convs and other convs with no BatchNormalization node right after them.

    Run on the model before BatchNorm folding. Exported models often have BN folded into the
    conv weights already, which the graph cannot tell from training without BN: findings say
    so, and when most convs lack BN a note says it once."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    prediction = _prediction_tensors(graph, set(inits))
    convs = [n for n in graph.node if n.op_type in CONVS]
    depthwise = CheckResult(
        "depthwise-bn", "Depthwise convolutions without BatchNormalization after them", 0
    )
    plain = CheckResult(
        "conv-bn",
        "Convolutions without BatchNormalization after them (prediction layers excepted)",
        0,
    )
    excepted, bare = [], 0
    for node in convs:
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        dims = list(weight.dims) if weight is not None else []
        group = int(_attrs(node).get("group", 1))
        # Weight [M, C/group, k...]: one input channel per group means group == in_channels.
        is_dw = node.op_type == "Conv" and group > 1 and len(dims) > 2 and dims[1] == 1
        out = node.output[0]
        following = sorted({u.op_type for u in users[out]})
        if "BatchNormalization" in following:
            (depthwise if is_dw else plain).checked += 1
            continue
        if not is_dw and out in prediction:
            excepted.append(node.name)
            continue
        bare += 1
        feeds = ", ".join(following) if following else "the graph output"
        if is_dw:
            depthwise.checked += 1
            shape = f"depthwise {_kernel(dims)}, {group} channels"
            if dims[0] != group:
                shape += f" (x{dims[0] // group} multiplier)"
            depthwise.findings.append(
                Finding(
                    node.name,
                    node.op_type,
                    f"{shape}; its output feeds {feeds}, no BatchNormalization node "
                    "(if BN was folded at export this is fine)",
                    "train with BatchNormalization right after it (TI: no exception for depthwise)",
                    values={"group": group, "kernel": dims[2:], "feeds": following},
                )
            )
        else:
            plain.checked += 1
            cin = dims[1] * group if len(dims) > 1 else None
            cout = dims[0] if dims else None
            if node.op_type == "ConvTranspose" and len(dims) > 1:
                cin, cout = dims[0], dims[1] * group
            shape = f"{node.op_type} {_kernel(dims)}, {cin}->{cout} channels"
            if not dims:
                shape = f"{node.op_type} (weight not a constant)"
            elif group > 1:
                shape += f", group {group}"
            plain.findings.append(
                Finding(
                    node.name,
                    node.op_type,
                    f"{shape}; its output feeds {feeds}, no BatchNormalization node "
                    "(if BN was folded at export this is fine)",
                    "train with BatchNormalization right after it",
                    values={"group": group, "kernel": dims[2:], "feeds": following},
                )
            )
    counted = len(convs) - len(excepted)
    if counted and bare / counted >= FOLDED_SHARE and bare >= 2:
        of_depthwise = (
            f" ({len(depthwise.findings)} of {depthwise.checked} depthwise)"
            if depthwise.checked
            else ""
        )
        # Said once, on the first of the two checks that has findings.
        (depthwise if depthwise.findings else plain).note = (
            f"{bare} of {counted} convolutions{of_depthwise} have no BatchNormalization node "
            "after them. This is what a model looks like when the exporter folded BN into the "
            "conv weights (paddle2onnx and torch.onnx in eval mode do), and the graph cannot "
            "tell that apart from training without BN: check the training code. TI asks for BN "
            "after every conv, strictly after depthwise ones."
        )
    if excepted:
        listed = ", ".join(excepted[:5]) + (
            f" and {len(excepted) - 5} more" if len(excepted) > 5 else ""
        )
        plain.note = (plain.note + " " if plain.note else "") + (
            f"Prediction layers (output reaches a graph output without another weighted layer), "
            f"allowed without BN: {listed}."
        )
    return [depthwise, plain]


# -- check 2: weights ----------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def _x(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


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
        ratio = _ratio(float(weight.max()), float(np.median(weight)))
        outliers.measure(
            ratio, f"max|w| {weight.max():.3g} = {_x(ratio)} x median|w| at {node.name}"
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
    ratio = _ratio(peak, median)
    fires = peak > TIDL_CLIP_PEAK and peak > TIDL_CLIP_FACTOR * median
    if not fires and ratio <= BULK_LIMIT:
        return None
    values = {"max": peak, "median": median, "ratio": ratio, "tidl_clip_fires": fires}
    head = f"{node.op_type} {shape}: max|w| {peak:.3g} = {_x(ratio)} x median|w| {median:.3g}"
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


# -- check 3: activation tails -------------------------------------------------------------


def activation_tail_check(
    model: onnx.ModelProto,
    stats: dict[str, np.ndarray],
    percentile: float,
    clipping: str,
) -> CheckResult:
    """Tensors whose observed min/max range is far wider than the percentile range.

    `stats` is the stats stage's artifact (names, min, max, hist, elements, is_output);
    the percentile range is computed exactly as the `percentile` range policy does."""
    producer = {o: n for n in model.graph.node for o in n.output}
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
        ratio = _ratio(full, kept)
        if full == 0:
            continue
        result.measure(ratio, f"min/max over percentile range {_x(ratio)} for {name!r}")
        if ratio <= TAIL_LIMIT:
            continue
        node = producer.get(name)
        layer = node.name if node is not None else name
        op = node.op_type if node is not None else "input"
        bits = f"{math.log2(ratio):.1f}" if math.isfinite(ratio) else "all"
        evidence = (
            f"tensor {name!r}: observed [{low:.4g}, {high:.4g}], {tail:.2g} %-per-tail range "
            f"[{c_low:.4g}, {c_high:.4g}]: the min/max grid is {_x(ratio)} x wider "
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


# -- check 4: what stays in float ----------------------------------------------------------


def float_check(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> CheckResult:
    """Nodes whose outputs or constant operands get no grid in quantbuild's QDQ model.

    Mirrors quant/qdq.py: float32 activations get a grid (activation_tensors); weights of
    Conv/ConvTranspose/Gemm/MatMul (input 1, used once), their biases (when the input is on
    a grid) and constants of element-wise operators are quantized (not the scale and shift of a
    LayerNorm layer, which stay the layer's own); nothing else is.
    `original` (the model before prepare's rewrites) names where a node came from."""
    graph = model.graph
    before = {n.name: n for n in original.graph.node} if original is not None else {}
    before_producer = (
        {o: n for n in original.graph.node for o in n.output} if original is not None else {}
    )
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    types = {
        v.name: v.type for v in list(graph.input) + list(graph.value_info) + list(graph.output)
    }
    grid = set(activation_tensors(model, set(float_tensors(model))))
    layer_of = {n: f.kind for f in fused_layers(model) for n in f.nodes}
    producer = {o: n for n in graph.node for o in n.output}
    uses = Counter(i for n in graph.node for i in n.input)
    result = CheckResult(
        "float", "Tensors left in float (no quantization grid in quantbuild's QDQ model)", 0
    )

    def on_grid(tensor: str) -> bool:
        while tensor not in grid:
            node = producer.get(tensor)
            if node is None or node.op_type not in VALUE_PRESERVING:
                return False
            tensor = node.input[0]
        return True

    by_op: Counter = Counter()
    for node in graph.node:
        result.checked += 1
        problems: list[str] = []
        values: dict[str, list[str]] = {}
        for name in node.output:
            if not name or (not users[name] and name not in outputs):
                continue
            value_type = types.get(name)
            if value_type is None or not value_type.HasField("tensor_type"):
                problems.append(f"output {name!r} has no type after shape inference")
                values.setdefault("outputs", []).append(name)
            elif value_type.tensor_type.elem_type in _FLOAT_TYPES:
                dtype = _FLOAT_TYPES[value_type.tensor_type.elem_type]
                problems.append(f"output {name!r} is {dtype} (only float32 gets a grid)")
                values.setdefault("outputs", []).append(name)
        kept = []
        for index, name in enumerate(node.input):
            tensor = inits.get(name)
            if tensor is None or tensor.data_type not in (TensorProto.FLOAT, *_FLOAT_TYPES):
                continue
            if index in _CONTROL_INPUTS.get(node.op_type, ()):
                continue
            if node.op_type == "BatchNormalization" and index > 2:
                continue  # mean and var: reported with scale and B, the same story
            size = math.prod(tensor.dims)
            is_f32 = tensor.data_type == TensorProto.FLOAT
            if node.op_type in WEIGHTED and index == 1:
                if is_f32 and uses[name] == 1:
                    continue
            elif node.op_type in ("Conv", "ConvTranspose", "Gemm") and index == 2:
                if is_f32 and uses[name] == 1 and on_grid(node.input[0]):
                    continue
            elif node.op_type in ELEMENTWISE_CONSTANTS and node.name not in layer_of:
                if is_f32 and uses[name] == 1:
                    continue
            elif size <= 1 and node.op_type not in WEIGHTED:
                continue  # a scalar setting (a Pow exponent, ...): exact enough in float
            why = "shared" if uses[name] > 1 else "" if is_f32 else "not float32"
            if node.name in layer_of:
                why = f"a {layer_of[node.name]} parameter, at the layer's own precision"
            kept.append(
                f"{name!r} [{'x'.join(str(d) for d in tensor.dims) or 'scalar'}]"
                + (f" ({why})" if why else "")
            )
        if kept:
            problems.append("constant inputs " + ", ".join(kept) + " stay float")
            values["constants"] = kept
        if not problems:
            continue
        by_op[node.op_type] += 1
        what = node.op_type
        source = before.get(node.name)
        if source is not None and source.op_type != node.op_type:
            # prepare's rewrites (fold.py) keep the name of the last node they merge.
            parts = [before_producer[i] for i in source.input if i in before_producer]
            merged = [f"{n.op_type} {n.name}" for n in parts if n.op_type in ("Mul", "Div")]
            what += f" (prepare merged {' + '.join(merged + [f'{source.op_type} {node.name}'])})"
        feeder = producer.get(node.input[0]) if node.input else None
        if feeder is not None:
            what += f" after {feeder.op_type} {feeder.name}"
        result.findings.append(
            Finding(
                node.name,
                node.op_type,
                f"{what}: " + "; ".join(problems),
                _float_remedy(node.op_type, node.name, bool(values.get("outputs"))),
                float(len(problems)),
                values,
            )
        )
    if by_op:
        result.note = (
            "Left in float: "
            + ", ".join(f"{n} {op}" for op, n in by_op.most_common())
            + ". The QDQ model computes these in float, so its accuracy may be better than the "
            "target's where the target quantizes them."
        )
    return result.sort()


def _float_remedy(op: str, name: str, outputs: bool) -> str:
    if outputs:
        return "export the model in float32 with full shape information (onnx shape inference)"
    if op == "BatchNormalization":
        return (
            "a BatchNorm that no Conv absorbs is quantized as a depthwise 1x1 layer when its "
            "input is 4-D with a known channel count; this one is not, so the simulation keeps "
            "its scale/shift in float while the target computes it in fixed point: export the "
            f"model with static channel counts, or compare on the target (output_16bit: [{name}])"
        )
    if op == "LayerNormalization" or op == "InstanceNormalization":
        return "expect a gap between simulation and target here; check with per-layer SQNR"
    return "give each layer its own float32 weight (no sharing) so that it can be quantized"
