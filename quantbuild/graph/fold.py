"""Graph rewrites that give the quantizer TIDL's layers, not an exporter's primitives.

TIDL's importer merges scale and shift constants into convolutions, runs HardSwish as one
activation and turns a constant scale followed by a constant shift into one BatchNorm layer.
Exporters (Paddle2ONNX, PyTorch) emit them as separate element-wise nodes, and quantizing
every one of those intermediate tensors compounds the error. Each rewrite here is exact in
real arithmetic.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantbuild.graph import index as graph_index
from quantbuild.graph.onnx_utils import tensor_types


class Graph:
    """Producer/consumer maps and initializer access over a GraphProto being rewritten."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.refresh()

    def refresh(self) -> None:
        g = self.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = graph_index.producers(g)
        self.consumers = graph_index.consumers(g)
        self.outputs = graph_index.output_names(g)
        self.types = tensor_types(self.model)

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (None when `name` is not one)."""
        value = self.const(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    def set_const(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(value, name))

    def add_const(self, name: str, value: np.ndarray) -> str:
        base, n = name, 1
        while name in self.inits or name in self.producer:
            name, n = f"{base}_{n}", n + 1
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.graph.initializer[-1]
        return name

    def only_consumer(self, tensor: str, op: str | None = None) -> onnx.NodeProto | None:
        """The single reader of a tensor that is no graph output (and an `op` node, if given)."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs or op not in (None, users[0].op_type):
            return None
        return users[0]

    def remove(self, nodes: list[onnx.NodeProto]) -> None:
        """Delete nodes in place (by their unique names), then refresh the maps."""
        names = {n.name for n in nodes}
        for i in reversed([i for i, n in enumerate(self.graph.node) if n.name in names]):
            del self.graph.node[i]
        self.refresh()

    def prune_initializers(self) -> None:
        used = {i for n in self.graph.node for i in n.input} | self.outputs
        for t in [t for t in self.graph.initializer if t.name not in used]:
            self.graph.initializer.remove(t)

    def rank_and_channels(self, tensor: str) -> tuple[int, int | None]:
        """Rank of a tensor and its axis-1 size (None when unknown); other dims may be symbolic."""
        value_type = self.types.get(tensor)
        if value_type is None or not value_type.tensor_type.HasField("shape"):
            return 0, None
        dims = value_type.tensor_type.shape.dim
        channels = dims[1].dim_value if len(dims) >= 2 and dims[1].HasField("dim_value") else None
        return len(dims), channels


def other_operand(node: onnx.NodeProto | None, tensor: str) -> str | None:
    """The operand of a binary node that is not `tensor` (None if `tensor` is not one)."""
    if node is None or len(node.input) != 2 or tensor not in node.input:
        return None
    return str(node.input[1] if node.input[0] == tensor else node.input[0])


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts over axis 1 of a rank-`rank` tensor as a vector of `channels`."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=np.float32)
    squeezed = value.reshape(value.shape[-rank:] if value.ndim >= rank else value.shape)
    shape = (1,) * (rank - squeezed.ndim) + squeezed.shape
    if (
        len(shape) == rank
        and shape[1] == channels
        and all(d == 1 for i, d in enumerate(shape) if i != 1)
    ):
        return squeezed.reshape(-1).astype(np.float32)
    return None


def remove_identities(g: Graph) -> int:
    """Drop an Identity node, wiring its consumers to its input."""
    for node in g.graph.node:
        if node.op_type != "Identity" or node.output[0] in g.outputs:
            continue
        for user in g.consumers.get(node.output[0], []):
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = node.input[0]
        g.remove([node])
        return 1
    return 0


def fold_into_conv(g: Graph) -> int:
    """Conv/ConvTranspose followed by Mul/Div/Add/Sub with a per-channel constant -> one conv."""
    for conv in g.graph.node:
        if conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) < 2:
            continue
        weight = g.const(conv.input[1])
        if weight is None or len(g.consumers[conv.input[1]]) != 1 or weight.dtype != np.float32:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv.op_type == "ConvTranspose" and attrs.get("group", 1) != 1:
            continue
        axis = 0 if conv.op_type == "Conv" else 1
        channels = weight.shape[axis]
        user = g.only_consumer(conv.output[0])
        if user is None or user.op_type not in ("Mul", "Div", "Add", "Sub") or len(user.input) != 2:
            continue
        a, b = user.input
        other = b if a == conv.output[0] else a
        value = g.const(other)
        if value is None or (user.op_type in ("Div", "Sub") and other != b):
            continue
        vector = _per_channel(value, channels, weight.ndim)
        if vector is None:
            continue
        has_bias = len(conv.input) > 2 and conv.input[2]
        bias = g.const(conv.input[2]) if has_bias else np.zeros(channels, np.float32)
        if bias is None or (has_bias and len(g.consumers[conv.input[2]]) != 1):
            continue
        if user.op_type in ("Mul", "Div"):
            factor = vector if user.op_type == "Mul" else 1.0 / vector
            shape = [1] * weight.ndim
            shape[axis] = channels
            weight = weight * factor.reshape(shape)
            bias = bias * factor
        else:
            bias = bias + (vector if user.op_type == "Add" else -vector)
        g.set_const(conv.input[1], weight.astype(np.float32))
        if has_bias:
            g.set_const(conv.input[2], bias.astype(np.float32))
        else:
            name = g.add_const(f"{conv.name}.bias", bias.astype(np.float32))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = name
        conv.output[0] = user.output[0]
        g.remove([user])
        return 1
    return 0


def _last_axis(value: np.ndarray, columns: int) -> np.ndarray | None:
    """A constant that broadcasts over the last axis only, as a vector of `columns`."""
    if value.size == 1:
        return np.full(columns, value.reshape(()), dtype=np.float32)
    if value.shape[-1] == columns and value.size == columns:
        return value.reshape(-1).astype(np.float32)
    return None


def scale_into_matmul(g: Graph) -> int:
    """MatMul(x, constant W) [+ constant bias] followed by Mul/Div by a constant vector over the
    output columns (a transformer's LayerScale) -> the same MatMul with scaled W and bias."""
    for matmul in g.graph.node:
        if matmul.op_type != "MatMul" or len(g.consumers[matmul.input[1]]) != 1:
            continue
        weight = g.const(matmul.input[1])
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
            continue
        columns = weight.shape[1]
        chain, out, bias_name = [matmul], matmul.output[0], None
        add = g.only_consumer(out, "Add")
        other = other_operand(add, out)
        value = g.const(other) if other is not None else None
        if (
            value is not None
            and other is not None
            and add is not None
            and value.shape == (columns,)
            and len(g.consumers[other]) == 1
        ):
            chain, out, bias_name = [matmul, add], add.output[0], other
        user = g.only_consumer(out, "Mul") or g.only_consumer(out, "Div")
        other = other_operand(user, out)
        value = g.const(other) if other is not None else None
        if user is None or value is None or (user.op_type == "Div" and other != user.input[1]):
            continue
        vector = _last_axis(value, columns)
        rank, _ = g.rank_and_channels(out)
        if vector is None or value.ndim > max(rank, 1):
            continue  # a constant of higher rank would broadcast the output to a new shape
        factor = vector if user.op_type == "Mul" else 1.0 / vector
        g.set_const(matmul.input[1], (weight * factor[None, :]).astype(np.float32))
        if bias_name is not None:
            bias = g.const(bias_name)
            assert bias is not None  # a constant: checked when the Add was matched
            g.set_const(bias_name, (bias * factor).astype(np.float32))
        chain[-1].output[0] = user.output[0]
        g.remove([user])
        return 1
    return 0


def fuse_hardswish(g: Graph) -> int:
    """x * Clip(x + 3, 0, 6) / 6  ->  HardSwish(x)."""
    div: onnx.NodeProto  # protobuf containers are untyped: `x is not div` would narrow Any
    for div in g.graph.node:
        if div.op_type != "Div" or g.scalar(div.input[1]) != 6.0:
            continue
        mul = g.producer.get(div.input[0])
        if mul is None or mul.op_type != "Mul" or g.only_consumer(mul.output[0]) is not div:
            continue
        for x, gate in (mul.input, mul.input[::-1]):
            clip = g.producer.get(gate)
            if clip is None or clip.op_type != "Clip" or len(clip.input) != 3:
                continue
            add = g.producer.get(clip.input[0])
            if (
                add is None
                or add.op_type != "Add"
                or g.scalar(clip.input[1]) != 0.0
                or g.scalar(clip.input[2]) != 6.0
                or g.only_consumer(clip.output[0]) is not mul
                or g.only_consumer(add.output[0]) is not clip
            ):
                continue
            others = [i for i in add.input if i != x]
            if len(others) != 1 or g.scalar(others[0]) != 3.0:
                continue
            div.CopyFrom(helper.make_node("HardSwish", [x], [div.output[0]], name=div.name))
            g.remove([add, clip, mul])
            return 1
    return 0


def affine_to_batchnorm(g: Graph) -> int:
    """Mul(x, per-channel constant) -> Add(per-channel constant)  ->  one BatchNormalization."""
    for mul in g.graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        x, s = mul.input if g.const(mul.input[1]) is not None else mul.input[::-1]
        scale, add = g.const(s), g.only_consumer(mul.output[0])
        if scale is None or g.const(x) is not None or add is None or add.op_type != "Add":
            continue
        t = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        shift = g.const(t)
        rank, channels = g.rank_and_channels(x)
        if shift is None or channels is None or rank != 4:
            continue
        scale_c, shift_c = _per_channel(scale, channels, 4), _per_channel(shift, channels, 4)
        if scale_c is None or shift_c is None:
            continue
        names = [
            g.add_const(f"{mul.name}.{part}", value)
            for part, value in (
                ("scale", scale_c),
                ("bias", shift_c),
                ("mean", np.zeros(channels, np.float32)),
                ("var", np.ones(channels, np.float32)),
            )
        ]
        batchnorm = helper.make_node(
            "BatchNormalization", [x, *names], [add.output[0]], name=add.name, epsilon=0.0
        )
        add.CopyFrom(batchnorm)  # in place: the Add's position comes after x is produced
        g.remove([mul])
        return 1
    return 0


def matmul_add_to_gemm(g: Graph) -> int:
    """MatMul(2-D x, constant W) + constant b  ->  Gemm (a layer with a bias)."""
    for matmul in g.graph.node:
        if matmul.op_type != "MatMul":
            continue
        weight, (rank, _) = g.const(matmul.input[1]), g.rank_and_channels(matmul.input[0])
        add = g.only_consumer(matmul.output[0])
        if weight is None or weight.ndim != 2 or rank != 2 or add is None or add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
        bias = g.const(other)
        if bias is None or bias.size != weight.shape[1]:
            continue
        name = g.add_const(f"{matmul.name}.bias", bias.reshape(-1).astype(np.float32))
        gemm = helper.make_node(
            "Gemm", [matmul.input[0], matmul.input[1], name], [add.output[0]], name=add.name
        )
        add.CopyFrom(gemm)
        g.remove([matmul])
        return 1
    return 0


def batchnorm_as_depthwise(g: Graph) -> int:
    """A BatchNormalization no convolution absorbed -> a depthwise 1x1 Conv computing the same
    per-channel affine: a layer with weights and a bias, quantized as the device runs it rather
    than simulated in float."""
    for bn in g.graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        params = [g.const(name) for name in bn.input[1:5]]
        rank, channels = g.rank_and_channels(bn.input[0])
        if any(p is None for p in params) or rank != 4 or channels is None:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
        scale = gamma / np.sqrt(var + eps)
        weight = g.add_const(f"{bn.name}.weight", scale.reshape(-1, 1, 1, 1).astype(np.float32))
        bias = g.add_const(f"{bn.name}.bias", (beta - mean * scale).astype(np.float32))
        conv = helper.make_node(
            "Conv",
            [bn.input[0], weight, bias],
            [bn.output[0]],
            name=bn.name,
            group=channels,
            kernel_shape=[1, 1],
        )
        bn.CopyFrom(conv)
        g.refresh()
        return 1
    return 0


def simplify(model: onnx.ModelProto) -> dict[str, int]:
    """Apply every rewrite until none applies; returns how often each one did."""
    g = Graph(model)
    counts: dict[str, int] = defaultdict(int)
    rewrites = (
        remove_identities,
        fold_into_conv,
        scale_into_matmul,
        fuse_hardswish,
        affine_to_batchnorm,
        matmul_add_to_gemm,
    )
    changed = True
    while changed:  # one rewrite at a time: every match is found on the current graph
        changed = False
        for rewrite in rewrites:
            while rewrite(g):
                counts[rewrite.__name__] += 1
                changed = True
    # Last: a BatchNorm a rewrite above made or left is absorbed by a convolution when it can be.
    while batchnorm_as_depthwise(g):
        counts[batchnorm_as_depthwise.__name__] += 1
    g.prune_initializers()
    return dict(counts)
