"""SmoothQuant-style scale migration from a LayerNorm's output into the linear layers reading it.

Transformer activations carry a few channels far larger than the rest, and one per-tensor grid
must cover them all; weights are on per-channel (or at least finer) grids and absorb spread
cheaply. Where a LayerNorm's output x is read only by linear layers (MatMul by a constant
weight W), dividing its channel c by s_c (γ_c and β_c divided by s_c: the LayerNorm computes
the scaled tensor itself) and multiplying row c of every W by s_c gives the same outputs
(Xiao et al., "SmoothQuant", ICML 2023): s_c = a_c^α / w_c^(1-α), with a_c the channel's
measured max |x| and w_c the largest |W[c, :]| over the readers. α = 0 leaves activations as
they are (weights only flattened), α = 1 moves all spread into the weights.

Only pre-LN blocks qualify (ViT, DeiT, GPT-style): in a post-LN block (BERT) the LayerNorm's
output is also the residual stream, which an Add reads, so nothing there is scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from quantbuild.graph.fold import Graph, other_operand
from quantbuild.graph.patterns import fused_layers

MAX_SCALE = 1e4  # dead channels (range ~0) would otherwise ask for unbounded factors
TINY = 1e-12


@dataclass(frozen=True)
class NormPair:
    """A LayerNorm output read only by linear layers: the constants that carry its channels."""

    tensor: str
    gamma: str
    beta: str | None
    weights: tuple[str, ...]  # the readers' [C, D] weights, row c multiplies channel c


def _const(g: Graph, name: str) -> np.ndarray:
    """A constant already known to be one (`owned` checks it)."""
    value = g.const(name)
    assert value is not None
    return value


def find_norm_pairs(model: onnx.ModelProto) -> list[NormPair]:
    """LayerNorms (decomposed with γ, or opset-17 nodes) whose output feeds only MatMuls by
    constant 2-D weights that no other node shares, in graph order (nodes must be named)."""
    g = Graph(model)

    def owned(name: str, node: onnx.NodeProto) -> bool:
        users = g.consumers.get(name, [])
        return g.const(name) is not None and len(users) == 1 and users[0] is node

    nodes = {n.name: n for n in model.graph.node}
    norms: list[tuple[str, str, str | None, onnx.NodeProto, onnx.NodeProto | None]] = []
    for f in fused_layers(model):
        if f.kind != "LayerNorm":
            continue
        last = [nodes[n] for n in f.nodes[-2:]]
        mul, add = (last[1], None) if last[1].op_type == "Mul" else (last[0], last[1])
        if mul.op_type != "Mul" or (add is not None and add.op_type != "Add"):
            continue  # no γ: nothing in the layer can carry the factor
        gamma = next((i for i in mul.input if g.const(i) is not None), "")
        beta = other_operand(add, mul.output[0]) if add is not None else None
        norms.append((f.output, gamma, beta, mul, add))
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1:
            beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
            norms.append((node.output[0], node.input[1], beta, node, node))
    pairs = []
    for tensor, gamma, beta, mul, add in norms:
        if (
            not gamma
            or not owned(gamma, mul)
            or (beta is not None and (add is None or not owned(beta, add)))
        ):
            continue
        readers = g.consumers.get(tensor, [])
        if tensor in g.outputs or not readers:
            continue
        if not all(
            r.op_type == "MatMul"
            and list(r.input).count(tensor) == 1
            and r.input[0] == tensor
            and owned(r.input[1], r)
            and _const(g, r.input[1]).ndim == 2
            for r in readers
        ):
            continue
        channels = _const(g, readers[0].input[1]).shape[0]
        constants = [gamma] + ([beta] if beta else [])
        if any(_const(g, c).size not in (1, channels) for c in constants):
            continue
        pairs.append(NormPair(tensor, gamma, beta, tuple(r.input[1] for r in readers)))
    return pairs


def smooth_scales(activation: np.ndarray, weight: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel factors s (the tensor's channels are divided by s): a^α / w^(1-α),
    normalised to geometric mean 1; channels dead on either side keep s = 1."""
    a = np.asarray(activation, np.float64)
    w = np.asarray(weight, np.float64)
    live = (a > TINY) & (w > TINY)
    s = np.ones_like(a)
    s[live] = a[live] ** alpha / w[live] ** (1.0 - alpha)
    if live.any():
        s[live] /= np.exp(np.mean(np.log(s[live])))
    return np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE)


def smooth(
    model: onnx.ModelProto, channel_ranges: dict[str, np.ndarray], alpha: float
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of `model` with every LayerNorm pair in `channel_ranges` (tensor -> per-channel
    max |x| over the last axis, measured on the float model) smoothed; and each tensor's
    factors."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out)
    factors = {}
    for pair in find_norm_pairs(out):
        activation = channel_ranges.get(pair.tensor)
        weights = [_const(g, w) for w in pair.weights]
        if activation is None or any(w.shape[0] != np.size(activation) for w in weights):
            continue
        peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = smooth_scales(activation, peak, alpha)
        for name in (pair.gamma, pair.beta):
            if name is not None:
                value = _const(g, name)
                # γ or β of shape [C] or [1, 1, C] keeps its shape; a scalar becomes [C].
                shape = value.shape if value.size == s.size else s.shape
                scaled = (value.astype(np.float64).reshape(-1) / s).reshape(shape)
                g.set_const(name, scaled.astype(value.dtype))
        for name, w in zip(pair.weights, weights):
            g.set_const(name, (w.astype(np.float64) * s[:, None]).astype(w.dtype))
        factors[pair.tensor] = s
    return out, factors
