"""Per-layer error models: which tensors a QDQ model quantizes, and a "layer-wise" model.

A layer is the stretch of graph between quantization points: the nodes that compute one
quantized activation tensor from other quantized activations, e.g. Conv+Relu, or
MaxPool+Conv when the pool reads an already quantized tensor. In the QDQ model its output is
a DequantizeLinear output that carries the float model's tensor name.

The layer-wise model is the float graph plus, for every layer, a copy of its quantized nodes
(dequantized weights and biases, output Q/DQ) fed with the FLOAT tensors, without their input
grids: an input grid is the output grid of the layer that produces it and counts there. One
pass over it gives each layer's own error (what promoting that layer to 16 bits removes), next
to the float reference; the QDQ model gives the accumulated error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from quantbuild.errors import ModelError

# Suffixes of the names the copies use; ONNX names are free-form strings.
SHARED = "~qdq"  # quantized constants, one copy for all layers


def _copy_name(name: str, layer: int) -> str:
    return f"{name}~lw{layer}"


@dataclass(frozen=True)
class Layer:
    """One quantized activation tensor and where its values come from in each model."""

    tensor: str  # name in the float model
    quantized: str  # name in the QDQ model (the DequantizeLinear output)
    layerwise: str | None  # name in the layer-wise model; None where no copy could be made
    node: str  # producing node ("" for a graph input)
    op: str  # op types of the layer's nodes, e.g. "Conv+Relu" ("input" for a graph input)


@dataclass
class LayerwiseModel:
    model: onnx.ModelProto
    layers: list[Layer]  # in graph order
    float_nodes: int = 0  # model.graph.node: the float model's nodes first, then the copies


class _QdqGraph:
    """Lookups over a QDQ model: producers, activation and parameter DequantizeLinear nodes."""

    def __init__(self, qdq: onnx.ModelProto):
        graph = qdq.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input} - set(self.inits)
        nodes = list(graph.node)  # one set of node objects: `order` is keyed by their id
        self.producer = {o: n for n in nodes for o in n.output if o}
        self.order = {id(n): i for i, n in enumerate(nodes)}
        self.activations: dict[str, onnx.NodeProto] = {}  # DQ output -> its QuantizeLinear
        self.parameters: dict[str, onnx.NodeProto] = {}  # DQ output -> DQ of a constant
        for node in nodes:
            if node.op_type != "DequantizeLinear":
                continue
            source = self.producer.get(node.input[0])
            if source is not None and source.op_type == "QuantizeLinear":
                self.activations[node.output[0]] = source
            elif node.input[0] in self.inits:
                self.parameters[node.output[0]] = node

    def float_name(self, dequantized: str) -> str:
        """The float model's name of an activation: a graph input's Q/DQ output is renamed."""
        source = self.activations[dequantized].input[0]
        return source if source in self.inputs else dequantized


def quantized_layers(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> list[Layer]:
    """Every quantized activation of `qdq` that `float_model` also computes, in graph order
    (without layer-wise copies: see `build`)."""
    return build(float_model, qdq, copies=False).layers


def build(
    float_model: onnx.ModelProto, qdq: onnx.ModelProto, copies: bool = True
) -> LayerwiseModel:
    """The layer-wise model of `qdq` over `float_model` (see module doc).

    Its outputs are the float model's; callers expose what they need (runtime.with_outputs)."""
    q = _QdqGraph(qdq)
    float_tensors = {i.name for i in float_model.graph.input} | {
        o for n in float_model.graph.node for o in n.output
    }
    float_inits = {t.name: t for t in float_model.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    domains = {o.domain for o in model.opset_import}
    for opset in qdq.opset_import:  # 16-bit Q/DQ may live in com.microsoft
        if opset.domain not in domains:
            model.opset_import.append(opset)

    shared: dict[str, str] = {}  # QDQ constant or parameter output -> name in `model`

    def constant(name: str) -> str:
        """A QDQ initializer in `model` (float ones the QDQ model left alone are shared)."""
        if name in shared:
            return shared[name]
        if name in float_inits and float_inits[name] == q.inits[name]:
            shared[name] = name  # a float constant the QDQ model left alone
        else:
            shared[name] = name + SHARED
            tensor = onnx.TensorProto()
            tensor.CopyFrom(q.inits[name])
            tensor.name = shared[name]
            graph.initializer.append(tensor)
        return shared[name]

    def parameter(name: str) -> str:
        """A dequantized weight, bias or constant operand, computed once for all layers."""
        if name not in shared:
            source = q.parameters[name]
            shared[name] = name + SHARED
            names = {i: constant(i) for i in source.input if i} | {name: shared[name]}
            graph.node.append(_renamed(source, names, source.name + SHARED))
        return shared[name]

    layers = []
    for index, (dequantized, quantize) in enumerate(q.activations.items()):
        tensor = q.float_name(dequantized)
        if tensor not in float_tensors:
            continue  # not a tensor of the float model: nothing to compare with
        start = quantize.input[0]
        segment = [] if start in q.inputs else _segment(q, start)
        node = q.producer.get(start)
        layer = Layer(
            tensor,
            dequantized,
            None,
            node.name if node is not None else "",
            "+".join(n.op_type for n in segment) or "input",
        )
        if copies and not any(has_subgraph(n) for n in segment):
            output = _copy_layer(q, index, dequantized, segment, graph, constant, parameter)
            layer = Layer(layer.tensor, layer.quantized, output, layer.node, layer.op)
        layers.append(layer)
    return LayerwiseModel(model, layers, len(float_model.graph.node))


def _segment(q: _QdqGraph, start: str) -> list[onnx.NodeProto]:
    """The nodes that compute `start` from quantized activations, constants and graph inputs,
    in graph order."""
    found: dict[int, onnx.NodeProto] = {}
    stack = [start]
    while stack:
        name = stack.pop()
        if not name or name in q.activations or name in q.parameters or name in q.inits:
            continue
        node = q.producer.get(name)
        if node is None or id(node) in found:
            continue  # a graph input, or already collected
        found[id(node)] = node
        stack.extend(node.input)
    return sorted(found.values(), key=lambda n: q.order[id(n)])


def has_subgraph(node: onnx.NodeProto) -> bool:
    """Whether a node holds subgraphs (If, Loop, Scan): they may read outer-scope names, which
    a copy or a cut of the graph would have to carry too."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _renamed(node: onnx.NodeProto, names: dict[str, str], name: str) -> onnx.NodeProto:
    """A copy of `node` called `name`, its inputs and outputs renamed by `names` (others kept)."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = name
    for i, tensor in enumerate(new.input):
        new.input[i] = names.get(tensor, tensor)
    for i, tensor in enumerate(new.output):
        new.output[i] = names.get(tensor, tensor)
    return new


def _copy_layer(
    q: _QdqGraph,
    index: int,
    dequantized: str,
    segment: list[onnx.NodeProto],
    graph: onnx.GraphProto,
    constant: Callable[[str], str],
    parameter: Callable[[str], str],
) -> str:
    """Append layer `index`'s quantized nodes fed from float tensors; return its output name."""
    inputs: dict[str, str] = {}

    def requantized(activation: str) -> str:
        """Q/DQ of the float tensor, on the grid the QDQ model gives `activation`."""
        if activation not in inputs:
            inputs[activation] = _copy_name(activation, index)
            source = q.float_name(activation)
            _append_qdq(q, activation, source, inputs[activation], index, graph, constant)
        return inputs[activation]

    if not segment:
        return requantized(dequantized)  # a graph input: its own Q/DQ only
    for node in segment:
        names = {}
        for name in node.input:
            if name in q.activations:
                names[name] = q.float_name(name)  # float input: its grid is its producer's
            elif name in q.parameters:
                names[name] = parameter(name)
            elif name in q.inits:
                names[name] = constant(name)
            elif name in q.producer:
                names[name] = _copy_name(name, index)
            elif name and name not in q.inputs:
                raise ModelError(
                    f"QDQ model: node {node.name!r} reads {name!r}, which nothing produces"
                )
        names.update({name: _copy_name(name, index) for name in node.output if name})
        graph.node.append(_renamed(node, names, _copy_name(node.name, index)))
    # The layer's output grid, on the copy of its last float output.
    source = _copy_name(q.activations[dequantized].input[0], index)
    output = _copy_name(dequantized, index)
    _append_qdq(q, dequantized, source, output, index, graph, constant)
    return output


def _append_qdq(
    q: _QdqGraph,
    activation: str,
    source: str,
    target: str,
    index: int,
    graph: onnx.GraphProto,
    constant: Callable[[str], str],
) -> None:
    """Copy the QuantizeLinear/DequantizeLinear pair that produces `activation` in the QDQ
    model, reading `source` and writing `target`."""
    quantize = q.activations[activation]
    dequantize = q.producer[activation]
    middle = _copy_name(quantize.output[0], index)
    params = {i: constant(i) for i in [*quantize.input[1:], *dequantize.input[1:]] if i}
    names = {**params, quantize.input[0]: source, quantize.output[0]: middle}
    graph.node.append(_renamed(quantize, names, _copy_name(quantize.name, index)))
    names = {**params, dequantize.input[0]: middle, activation: target}
    graph.node.append(_renamed(dequantize, names, _copy_name(dequantize.name, index)))


QUANTIZED = "~q/"  # prefix of the QDQ model's names inside the error model


@dataclass(frozen=True)
class ErrorOutputs:
    """A layer's outputs in the error model: float64 scalars for one frame."""

    signal: str  # Σx² of the float tensor
    alone: str | None  # Σ(x − layer-wise)²; None where the layer has no layer-wise copy
    accumulated: str  # Σ(x − QDQ model's tensor)²


@dataclass(frozen=True)
class ErrorModel:
    """The float model, the QDQ model and every layer's error sums in one graph."""

    model: onnx.ModelProto
    layers: list[ErrorOutputs]  # one per LayerwiseModel layer
    float_outputs: list[str]  # the float model's outputs (their own names)
    quantized_outputs: list[str]  # the QDQ model's outputs, in the same order

    @property
    def names(self) -> list[str]:
        """Every output of `model`, in order."""
        return [o.name for o in self.model.graph.output]


def error_model(lw: LayerwiseModel, qdq: onnx.ModelProto) -> ErrorModel:
    """One model that computes every layer's error sums inside the graph: the layer-wise model
    and the QDQ model side by side on the same inputs, each layer's float, layer-wise and
    accumulated tensors reduced to Σx² and Σ(x − q)² (difference in float32, squares and sums
    in float64), next to both models' own outputs. Nothing larger than the model outputs
    leaves the session, so one pass per frame suffices at any tensor size.

    Raises ValueError when the QDQ model has subgraphs (their outer-scope names cannot be
    renamed safely): callers fall back to exposing the tensors."""
    if any(has_subgraph(n) for n in qdq.graph.node):
        raise ValueError("the QDQ model has subgraphs")
    model = onnx.ModelProto()
    model.CopyFrom(lw.model)
    graph = model.graph
    float_outputs = list(graph.output)
    del graph.output[:]
    versions = {o.domain: o for o in model.opset_import}
    for opset in qdq.opset_import:
        if opset.domain not in versions:
            model.opset_import.append(opset)
        elif opset.version > versions[opset.domain].version:
            versions[opset.domain].version = opset.version

    shared = {i.name for i in qdq.graph.input} - {t.name for t in qdq.graph.initializer}

    def quantized(name: str) -> str:
        return name if name in shared or not name else QUANTIZED + name

    for tensor in qdq.graph.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(tensor)
        copy.name = quantized(tensor.name)
    for source in qdq.graph.node:
        names = {n: quantized(n) for n in list(source.input) + list(source.output)}
        graph.node.append(_renamed(source, names, QUANTIZED + source.name))

    made: dict[tuple[str, ...], str] = {}

    def node(op: str, inputs: list[str], **attributes: Any) -> str:
        key = (op, *inputs)
        if key not in made:
            made[key] = f"~err{len(made)}"
            graph.node.append(
                onnx.helper.make_node(op, inputs, [made[key]], name=made[key], **attributes)
            )
        return made[key]

    def sum_squares(value: str) -> str:
        double = node("Cast", [value], to=onnx.TensorProto.DOUBLE)
        return node("ReduceSumSquare", [double], keepdims=0)

    layers = []
    for layer in lw.layers:
        got = quantized(layer.quantized)
        alone = node("Sub", [layer.layerwise, layer.tensor]) if layer.layerwise else None
        layers.append(
            ErrorOutputs(
                sum_squares(layer.tensor),
                sum_squares(alone) if alone else None,
                sum_squares(node("Sub", [got, layer.tensor])),
            )
        )
    _interleave(graph, lw.float_nodes, len(lw.model.graph.node), len(qdq.graph.node))
    graph.output.extend(float_outputs)
    for output in qdq.graph.output:
        renamed = graph.output.add()
        renamed.CopyFrom(output)
        renamed.name = quantized(output.name)
    sums = (n for o in layers for n in (o.signal, o.alone, o.accumulated) if n)
    for name in dict.fromkeys(sums):
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.DOUBLE, []))
    return ErrorModel(
        model,
        layers,
        [o.name for o in float_outputs],
        [quantized(o.name) for o in qdq.graph.output],
    )


def _interleave(graph: onnx.GraphProto, floats: int, layerwise: int, quantized: int) -> None:
    """Order the nodes so that the float and QDQ graphs advance together and every copy and
    error node comes right after its inputs: tensors die early, and the session's peak memory
    stays near one model's instead of holding every float tensor until the end.

    The nodes are [float graph | layer-wise copies | QDQ graph | error nodes] (indices
    `floats`, `layerwise` and `layerwise + quantized` split them), each part in topological
    order. Float and QDQ nodes take their relative position in their own graph; the others
    the latest position among their producers, then their own index (so producers stay
    first)."""
    nodes = list(graph.node)
    position: dict[str, float] = {}
    keys = []
    for index, node in enumerate(nodes):
        if index < floats:
            at = index / max(floats, 1)
        elif layerwise <= index < layerwise + quantized:
            at = (index - layerwise) / max(quantized, 1)
        else:
            at = max((position.get(name, 0.0) for name in node.input if name), default=0.0)
        for name in node.output:
            position[name] = at
        keys.append((at, index))
    order = sorted(range(len(nodes)), key=keys.__getitem__)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
