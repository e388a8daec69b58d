"""Check 4: layers that would stay in float (float16/64 tensors, unquantized constants).

Pure analysis (onnx + numpy); thresholds and remedies are described in docs/doctor.md."""

from __future__ import annotations

import math
from collections import Counter

import onnx
from onnx import TensorProto

from quantbuild.doctor.findings import CheckResult, Finding
from quantbuild.graph import index as graph_index
from quantbuild.graph.ops import ELEMENTWISE_CONSTANTS, VALUE_PRESERVING, WEIGHTED
from quantbuild.graph.patterns import fused_layers
from quantbuild.quant.qdq import activation_tensors
from quantbuild.runtime import float_tensors

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


def float_check(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> CheckResult:
    """Nodes whose outputs or constant operands get no grid in quantbuild's QDQ model.

    Mirrors quant/qdq.py: float32 activations get a grid (activation_tensors); weights of
    Conv/ConvTranspose/Gemm/MatMul (input 1, used once), their biases (when the input is on
    a grid) and constants of element-wise operators are quantized (not the scale and shift of a
    LayerNorm layer, which stay the layer's own); nothing else is.
    `original` (the model before prepare's rewrites) names where a node came from."""
    graph = model.graph
    before = {n.name: n for n in original.graph.node} if original is not None else {}
    before_producer = graph_index.producers(original.graph) if original is not None else {}
    inits = {t.name: t for t in graph.initializer}
    users = graph_index.consumers(graph)
    outputs = graph_index.output_names(graph)
    types = {
        v.name: v.type for v in list(graph.input) + list(graph.value_info) + list(graph.output)
    }
    grid = set(activation_tensors(model, set(float_tensors(model))))
    layer_of = {n: f.kind for f in fused_layers(model) for n in f.nodes}
    producer = graph_index.producers(graph)
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

    by_op: Counter[str] = Counter()
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
