"""Check 1: BatchNormalization after every convolution (TI's training guideline).

Pure analysis (onnx + numpy); thresholds and remedies are described in docs/doctor.md."""

from __future__ import annotations

import onnx

from quantbuild.doctor.findings import (
    CheckResult,
    Finding,
    attributes,
    kernel_size,
    prediction_tensors,
)
from quantbuild.graph import index as graph_index
from quantbuild.graph.ops import CONVS

# When at least this share of the convolutions has no BatchNormalization node, say once that
# BN was probably folded at export instead of repeating it on every line.
FOLDED_SHARE = 0.5


def batchnorm_checks(model: onnx.ModelProto) -> list[CheckResult]:
    """Depthwise convs and other convs with no BatchNormalization node right after them.

    Run on the model before BatchNorm folding. Exported models often have BN folded into the
    conv weights already, which the graph cannot tell from training without BN: findings say
    so, and when most convs lack BN a note says it once."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = graph_index.consumers(graph)
    prediction = prediction_tensors(graph, set(inits))
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
        group = int(attributes(node).get("group", 1))
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
            shape = f"depthwise {kernel_size(dims)}, {group} channels"
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
            shape = f"{node.op_type} {kernel_size(dims)}, {cin}->{cout} channels"
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
