"""Pre-quantized (QDQ) models: take their scales and zero points, and recover the float graph.

A QDQ model (from QAT, onnxruntime's quantize_static or quantbuild) states its quantization
with QuantizeLinear -> DequantizeLinear pairs on activations and DequantizeLinear on integer
initializers. Stripping them gives the float graph the model simulates: activations pass
through unchanged, integer weights become their dequantized float values under their
original names, so the parameters found here apply to the stripped graph by tensor name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from quantbuild.errors import ModelError
from quantbuild.graph import index as graph_index
from quantbuild.graph.ops import QDQ_OPS
from quantbuild.quant.params import DTYPES, QParams

_INTEGER = {np.dtype(t): name for name, t in {**DTYPES, "int32": np.int32}.items()}


@dataclass
class Prequantized:
    """Quantization parameters stated by a QDQ model, keyed by float tensor name."""

    activations: dict[str, QParams] = field(default_factory=dict)
    weights: dict[str, QParams] = field(default_factory=dict)  # incl. int32 biases

    def __bool__(self) -> bool:
        return bool(self.activations or self.weights)


def is_qdq(model: onnx.ModelProto) -> bool:
    """True when the model holds QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def _qparams(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], dtype: np.dtype | None
) -> QParams:
    scale = consts.get(node.input[1])
    if scale is None:
        raise ModelError(f"{node.op_type} {node.name!r}: its scale is not a constant")
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zero is None:  # ONNX default: uint8 zero point 0
        zero = np.zeros(scale.shape, dtype=dtype or np.uint8)
    # A scale of several values is per channel along `axis` (ONNX default 1); one value
    # (scalar or shape [1], as onnxruntime writes bias scales) is per tensor.
    axis = None
    if scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    else:
        scale, zero = scale.reshape(()), zero.reshape(())
    name = _INTEGER.get(zero.dtype)
    if name is None:
        raise ModelError(f"{node.op_type} {node.name!r}: unsupported zero point type {zero.dtype}")
    return QParams(scale.astype(np.float32), zero, name, axis)


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Prequantized]:
    """The float graph of a QDQ model and the parameters its Q/DQ nodes state."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = graph_index.producers(graph)
    found = Prequantized()
    rename: dict[str, str] = {}  # DQ output -> the float tensor it stands for
    new_weights: dict[str, np.ndarray] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in consts:  # an integer initializer: becomes a float one of the same name
            values = consts[source]
            qp = _qparams(node, consts, values.dtype)
            new_weights[node.output[0]] = qp.dequantize(values)
            found.weights[node.output[0]] = qp
            dropped.add(id(node))
            continue
        quant = producer.get(source)
        if quant is None or quant.op_type != "QuantizeLinear":
            raise ModelError(
                f"DequantizeLinear {node.name!r}: its input is neither an integer initializer "
                "nor a QuantizeLinear output; only QDQ-format models can be imported"
            )
        qp = _qparams(node, consts, None)
        tensor = _resolve(rename, quant.input[0])
        earlier = found.activations.get(tensor)
        if earlier is not None and not _same(earlier, qp):
            raise ModelError(
                f"tensor {tensor!r} is quantized twice with different parameters "
                f"({node.name!r}); quantbuild keeps one grid per tensor"
            )
        found.activations[tensor] = qp
        rename[node.output[0]] = tensor
        dropped.update({id(node), id(quant)})
    # A graph output produced by a DequantizeLinear keeps its name on the float graph.
    for output in model.graph.output:
        source = _resolve(rename, output.name)
        if source != output.name and source in found.activations:
            found.activations[output.name] = found.activations.pop(source)
    return _rebuild(model, dropped, rename, new_weights), found


def _resolve(rename: dict[str, str], name: str) -> str:
    while name in rename:
        name = rename[name]
    return name


def _same(a: QParams, b: QParams) -> bool:
    return (
        a.dtype == b.dtype
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )


def _rebuild(
    model: onnx.ModelProto,
    dropped: set[int],
    rename: dict[str, str],
    new_weights: dict[str, np.ndarray],
) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = []
    for node in model.graph.node:
        if id(node) in dropped:
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, name in enumerate(new.input):
            new.input[i] = _resolve(rename, name)
        kept.append(new)
    # A graph output produced by a DequantizeLinear: rename the float producer's output back.
    outputs = graph_index.output_names(graph)
    for name in outputs:
        source = _resolve(rename, name)
        if source != name:
            for node in kept:
                for i, o in enumerate(node.output):
                    if o == source:
                        node.output[i] = name
                for i, o in enumerate(node.input):
                    if o == source:
                        node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    inits += [numpy_helper.from_array(v, k) for k, v in new_weights.items()]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    return out
