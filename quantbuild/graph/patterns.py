"""Multi-node patterns that TIDL runs as one layer: LayerNorm, GELU, and a linear layer's bias.

Exporters write a LayerNorm below opset 17 as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div,
Mul, Add, and GELU as Div, Erf, Add, Mul, Mul (or the tanh approximation); TIDL imports each
as one layer (TIDL_LayerNormLayer; GELU as an activation layer) whose intermediate values never
leave the layer. A MatMul by a constant followed by an Add of a constant vector is one inner
product layer with a bias. The graph is left as exported: a pattern only names the tensors
inside it, which get no grid, and the constants it owns, which are the layer's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from quantbuild.graph.fold import Graph, other_operand


@dataclass(frozen=True)
class Fused:
    """One pattern: `kind`, the tensor it reads, the tensor it writes, its nodes by name."""

    kind: str
    input: str
    output: str
    nodes: tuple[str, ...]
    internal: tuple[str, ...]  # tensors computed inside the layer (no grid of their own)


@dataclass(frozen=True)
class LinearBias:
    """MatMul(x, constant W) followed by Add(constant b): b is the layer's bias."""

    matmul: str
    add: str
    bias: str  # the bias initializer's name
    output: str  # the Add's output


def _close(value: float | None, target: float, tolerance: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= tolerance * abs(target)


def _axes(node: onnx.NodeProto) -> tuple[int, ...] | None:
    for attr in node.attribute:
        if attr.name == "axes":
            return tuple(helper.get_attribute_value(attr))
    return None


def _layernorm(g: Graph, mean: onnx.NodeProto) -> Fused | None:
    """x - mean(x) over the last axes, divided by sqrt(var + eps), then * gamma + beta."""
    x = mean.input[0]
    sub = g.only_consumer(mean.output[0], "Sub")
    if sub is None or list(sub.input) != [x, mean.output[0]] or _axes(mean) is None:
        return None
    centred = sub.output[0]
    users = g.consumers.get(centred, [])
    if len(users) != 2 or centred in g.outputs:
        return None
    square = next((u for u in users if u.op_type in ("Pow", "Mul")), None)
    divide = next((u for u in users if u is not square), None)
    if square is None or divide is None:
        return None
    if square.op_type == "Pow" and not _close(g.scalar(square.input[1]), 2.0):
        return None
    if square.op_type == "Mul" and list(square.input) != [centred, centred]:
        return None
    nodes = [mean, sub, square]
    variance = g.only_consumer(square.output[0], "ReduceMean")
    if variance is None or _axes(variance) != _axes(mean):
        return None
    add_eps = g.only_consumer(variance.output[0], "Add")
    if add_eps is None:
        return None
    eps = g.scalar(other_operand(add_eps, variance.output[0]) or "")
    sqrt = g.only_consumer(add_eps.output[0], "Sqrt")
    if eps is None or eps < 0 or sqrt is None:
        return None
    nodes += [variance, add_eps, sqrt]
    if divide.op_type == "Div" and list(divide.input) == [centred, sqrt.output[0]]:
        pass
    elif divide.op_type == "Mul":
        reciprocal = g.only_consumer(sqrt.output[0], "Reciprocal")
        if reciprocal is None or other_operand(divide, centred) != reciprocal.output[0]:
            return None
        nodes.append(reciprocal)
    else:
        return None
    nodes.append(divide)
    out = divide.output[0]
    for op in ("Mul", "Add"):  # optional gamma, then beta
        node = g.only_consumer(out, op)
        operand = other_operand(node, out)
        if node is None or operand is None or g.const(operand) is None:
            break
        nodes.append(node)
        out = node.output[0]
    return _fused(g, "LayerNorm", x, out, nodes)


def _gelu(g: Graph, core: onnx.NodeProto) -> Fused | None:
    """0.5 * x * (1 + erf(x / sqrt 2)), or with tanh(sqrt(2 / pi) * (x + 0.044715 x^3))."""
    pre = g.producer.get(core.input[0])
    if pre is None:
        return None
    nodes: list[onnx.NodeProto] = [pre]
    if core.op_type == "Erf":
        x = pre.input[0]
        if pre.op_type == "Div" and _close(g.scalar(pre.input[1]), np.sqrt(2.0)):
            pass
        elif pre.op_type == "Mul":
            x = next((i for i in pre.input if g.const(i) is None), "")
            if not _close(g.scalar(other_operand(pre, x) or ""), np.sqrt(0.5)):
                return None
        else:
            return None
    else:  # Tanh
        inner = next((i for i in pre.input if g.const(i) is None), "")
        if pre.op_type != "Mul" or not _close(g.scalar(other_operand(pre, inner) or ""), 0.7978846):
            return None
        add = g.producer.get(inner)
        if add is None or add.op_type != "Add":
            return None
        for x, cubic in (add.input, add.input[::-1]):
            scale = g.producer.get(cubic)
            if scale is None or scale.op_type != "Mul":
                continue
            power_out = next((i for i in scale.input if g.const(i) is None), "")
            power = g.producer.get(power_out)
            if (
                _close(g.scalar(other_operand(scale, power_out) or ""), 0.044715)
                and power is not None
                and power.op_type == "Pow"
                and power.input[0] == x
                and _close(g.scalar(power.input[1]), 3.0)
            ):
                nodes += [power, scale, add]
                break
        else:
            return None
    nodes.append(core)
    one = g.only_consumer(core.output[0], "Add")
    if one is None or not _close(g.scalar(other_operand(one, core.output[0]) or ""), 1.0):
        return None
    nodes.append(one)
    out, seen_x, seen_half = one.output[0], False, False
    for _ in range(3):  # the product with x and with 0.5, in any order and grouping
        mul = g.only_consumer(out, "Mul")
        operand = other_operand(mul, out)
        if mul is None or operand is None:
            return None
        half = g.producer.get(operand)
        if operand == x and not seen_x:
            seen_x = True
        elif _close(g.scalar(operand), 0.5) and not seen_half:
            seen_half = True
        elif (
            half is not None
            and half.op_type == "Mul"
            and x in half.input
            and _close(g.scalar(other_operand(half, x) or ""), 0.5)
            and g.only_consumer(operand, "Mul") is mul
            and not (seen_x or seen_half)
        ):
            seen_x = seen_half = True
            nodes.append(half)
        else:
            return None
        nodes.append(mul)
        out = mul.output[0]
        if seen_x and seen_half:
            return _fused(g, "GELU", x, out, nodes)
    return None


def _fused(g: Graph, kind: str, x: str, out: str, nodes: list[onnx.NodeProto]) -> Fused | None:
    """The pattern, if nothing outside it reads a tensor computed inside it."""
    names = {n.name for n in nodes}
    internal = [o for n in nodes for o in n.output if o != out]
    for tensor in internal:
        if tensor in g.outputs or any(u.name not in names for u in g.consumers[tensor]):
            return None
    return Fused(kind, x, out, tuple(n.name for n in nodes), tuple(internal))


def fused_layers(model: onnx.ModelProto) -> list[Fused]:
    """Every LayerNorm and GELU pattern of the graph, in graph order (nodes must be named)."""
    g = Graph(model)
    found: list[Fused] = []
    taken: set[str] = set()
    for node in model.graph.node:
        if node.name in taken:
            continue
        match = None
        if node.op_type == "ReduceMean":
            match = _layernorm(g, node)
        elif node.op_type in ("Erf", "Tanh"):
            match = _gelu(g, node)
        if match is not None and not taken.intersection(match.nodes):
            found.append(match)
            taken.update(match.nodes)
    return found


def linear_biases(model: onnx.ModelProto) -> dict[str, LinearBias]:
    """MatMul nodes by name whose only consumer adds a constant 1-D vector over the weight's
    output columns: the bias of that (inner product) layer."""
    g = Graph(model)
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        weight = g.const(node.input[1])
        add = g.only_consumer(node.output[0], "Add")
        bias = other_operand(add, node.output[0])
        value = g.const(bias) if bias is not None else None
        if weight is None or weight.ndim != 2 or value is None or add is None or bias is None:
            continue
        if value.dtype != np.float32 or value.shape != (weight.shape[1],):
            continue  # a vector over the output columns (per-channel bias grids are 1-D)
        found[node.name] = LinearBias(node.name, add.name, bias, add.output[0])
    return found
