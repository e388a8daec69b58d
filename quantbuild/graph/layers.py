"""Layer table: name, op, output shape, MACs and parameter count of every node.

Shapes and MACs are per frame: a symbolic leading (batch) dimension counts as 1, as the device
runs one frame at a time; any other symbolic dimension (a sequence length) leaves them unknown
in this table (mixed precision's latency model uses the shapes observed on calibration frames).
"""

from __future__ import annotations

import math
from typing import Any

import onnx

from quantbuild.graph.onnx_utils import frame_shape, initializers, tensor_types


def layer_macs(node: onnx.NodeProto, types: dict[str, Any], inits: dict[str, Any]) -> int | None:
    """Multiply-accumulates of one node (None while a shape it needs is unknown)."""
    out = frame_shape(types.get(node.output[0])) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in inits:
        w = list(inits[node.input[1]].dims)
        if node.op_type == "Conv":
            return math.prod(out) * math.prod(w[1:]) if out else None
        src = frame_shape(types.get(node.input[0]))
        return math.prod(src) * math.prod(w[1:]) if src else None
    if node.op_type in ("Gemm", "MatMul"):
        a = frame_shape(types.get(node.input[0])) or (
            tuple(inits[node.input[0]].dims) if node.input[0] in inits else None
        )
        if out is None or a is None or not a:
            return None
        k = (
            a[0]
            if node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
            else a[-1]
        )
        return math.prod(out) * k
    return 0


def layer_table(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """One row per node, in graph order."""
    types = tensor_types(model)
    inits = initializers(model)
    rows = []
    for node in model.graph.node:
        shape = frame_shape(types.get(node.output[0])) if node.output else None
        rows.append(
            {
                "name": node.name,
                "op": node.op_type,
                "inputs": list(node.input),
                "outputs": list(node.output),
                "output_shape": list(shape) if shape else None,
                "macs": layer_macs(node, types, inits),
                "params": sum(math.prod(inits[i].dims) for i in node.input if i in inits),
            }
        )
    return rows
