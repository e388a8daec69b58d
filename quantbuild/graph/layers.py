"""Layer table: name, op, output shape, MACs and parameter count of every node.

Shapes and MACs are per frame: a symbolic leading (batch) dimension counts as 1, as the device
runs one frame at a time; any other symbolic dimension (a sequence length) leaves them unknown.
"""

from __future__ import annotations

import math

import onnx

from quantbuild.graph.onnx_utils import initializers, tensor_types


def frame_shape(type_proto: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """A tensor's shape for one frame (symbolic batch = 1), or None when not fully known."""
    if type_proto is None or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = type_proto.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if shape and shape[0] is None and len(shape) > 1:
        shape[0] = 1
    return None if any(d is None for d in shape) else tuple(shape)


def layer_macs(node: onnx.NodeProto, types: dict, inits: dict) -> int | None:
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


def layer_table(model: onnx.ModelProto) -> list[dict]:
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
