"""Which feature maps and weights run in 16 bits, following TIDL's mixed-precision rules.

TIDL names layers in two lists: `output_feature_16bit_names_list` (16-bit outputs and weights)
and `params_16bit_names_list` (16-bit weights only). Only some layers can change precision,
i.e. take 8-bit inputs and give 16-bit outputs or the reverse; every other layer has one
precision for its inputs, outputs and weights, set by its producers and consumers.

Confirmed in TI's public sources (TexasInstruments/edgeai-tidl-tools):
- docs/tidl_fsg_quantization.md, "C.1 Manual Mixed Precision": the layers that can change
  precision are TIDL_ConvolutionLayer (not BatchToSpace/SpaceToBatch), TIDL_BatchNormLayer,
  TIDL_PoolingLayer except max pooling, and TIDL_EltWiseLayer; a Concat whose output is 16-bit
  "will change all its input to be in 16 bits as well".
- docs/operators.md (ONNX operator -> TIDL layer): Add/Sub/Mul/Div/Max/Min/Sum ->
  TIDL_EltWiseLayer; AveragePool/GlobalAveragePool/MaxPool -> TIDL_PoolingLayer;
  BatchNormalization -> TIDL_BatchNormLayer; Gemm/MatMul -> TIDL_InnerProductLayer; Sigmoid,
  Clip, Concat, Resize, Reshape, Transpose, Softmax, ... -> layers of their own (cannot change).
- docs/supported_ops_rts_versions.md: "ReLU, Scale, Bias, PReLU, Leaky ReLU, Hard Sigmoid,
  TanH, ELU & GELU will be merged & imported as batchnorm". After a Conv/Gemm/Add/BN they merge
  into it (one layer, one output precision); on their own they are TIDL_BatchNormLayer and so
  can change precision. Sigmoid is a TIDL_SigmoidLayer and cannot.
- TIDL's importer (tidl_updateMixedPrecisionState) repeats until nothing changes: a 16-bit
  layer that cannot change precision makes its producers that cannot change 16-bit, and any
  16-bit layer makes its consumers that cannot change 16-bit.
- docs/tidl_fsg_vtfr.md lists LayerNorm as a layer of its own; it is not among those that
  change precision, so it cannot. A MatMul by a constant with its bias Add is one inner product
  layer (our reading of the importer's bias merge). graph.patterns finds both below opset 17.
Not confirmed: ConvTranspose imports as TIDL_Deconv2DLayer, which the list above does not name;
the importer converts deconvolutions to convolutions (TIDL_convertDeconv2DtoConv), so it is
treated as a convolution here.

The rule as implemented, on tensors: a tensor listed (or output by a listed layer) is 16-bit;
a layer that cannot change precision ties its feature-map inputs and outputs to one precision,
so a 16-bit tensor spreads through such layers in both directions to a fixed point. Weights are
16-bit for listed layers, and for layers that cannot change precision whose features are 16-bit.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import onnx

from quantbuild.errors import RecipeError, Where
from quantbuild.graph.onnx_utils import tensor_types
from quantbuild.graph.ops import FUSED_ACTIVATIONS, FUSING_PRODUCERS, WEIGHTED
from quantbuild.graph.patterns import fused_layers, linear_biases
from quantbuild.suggest import closest

# ONNX operators whose TIDL layer can take and give different precisions (see module doc).
CHANGES_PRECISION = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "AveragePool",
        "GlobalAveragePool",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Sum",
        # imported as TIDL_BatchNormLayer when they stand alone
        "Relu",
        "PRelu",
        "LeakyRelu",
        "HardSigmoid",
        "Tanh",
        "Elu",
        "Gelu",
    }
)
# Operators whose inputs after the first are shapes, scales, indices or bounds, not features.
_FIRST_INPUT_ONLY = frozenset(
    {
        "Reshape",
        "Resize",
        "Upsample",
        "Slice",
        "Pad",
        "Expand",
        "Tile",
        "Gather",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "TopK",
        "Clip",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
    }
)
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


@dataclass(frozen=True)
class Assignment:
    """The precision of every feature map and weight of a model."""

    tensors_16bit: frozenset[str]  # feature maps (with or without a grid of their own)
    weights_16bit: frozenset[str]  # weight initializers
    # node name -> {"op", "output_bits", "weight_bits" (None: no weight), "why"}, graph order
    layers: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=dict[str, Any], hash=False
    )

    def bits(self, tensor: str) -> int:
        """Bit width of a feature map."""
        return 16 if tensor in self.tensors_16bit else 8

    def table(self) -> list[dict[str, Any]]:
        """One row per layer, in graph order, for display."""
        return [{"layer": name, **info} for name, info in self.layers.items()]


class Network:
    """An ONNX graph as TIDL layers: feature-map tensors, fused activations, weights, names."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        inits = {t.name for t in graph.initializer}
        types = tensor_types(model)

        def feature(tensor: str) -> bool:
            if not tensor or tensor in inits:
                return False
            kind = types.get(tensor)
            # Unknown types are taken as features: prepared models have them all inferred.
            return kind is None or kind.tensor_type.elem_type in _FLOAT_TYPES

        self.nodes = {n.name: n for n in graph.node}
        self.op = {n.name: n.op_type for n in graph.node}
        self.inputs = {
            n.name: [
                t
                for t in (n.input[:1] if n.op_type in _FIRST_INPUT_ONLY else n.input)
                if feature(t)
            ]
            for n in graph.node
        }
        self.outputs = {n.name: [t for t in n.output if feature(t)] for n in graph.node}
        self.model_inputs = [i.name for i in graph.input if feature(i.name)]
        self.producer = {t: n.name for n in graph.node for t in n.output if t}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for name, tensors in self.inputs.items():
            for t in dict.fromkeys(tensors):
                self.consumers[t].append(name)
        self.weight = {
            n.name: n.input[1]
            for n in graph.node
            if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits
        }
        self.graph = nx.MultiDiGraph()
        for n in graph.node:
            self.graph.add_node(n.name, op=n.op_type)
        for name, tensors in self.inputs.items():
            for t in tensors:
                if t in self.producer:
                    self.graph.add_edge(self.producer[t], name, key=t, tensor=t)
        # Activations TIDL merges into the layer producing their input (as quant.qdq does).
        outputs = {o.name for o in graph.output}
        all_consumers = defaultdict(list)
        for n in graph.node:
            for t in n.input:
                all_consumers[t].append(n.name)
        self.host: dict[str, str] = {}
        for n in graph.node:
            source = n.input[0] if n.input else ""
            producer = self.producer.get(source)
            if (
                n.op_type in FUSED_ACTIVATIONS
                and producer is not None
                and self.op[producer] in FUSING_PRODUCERS
                and all_consumers[source] == [n.name]
                and source not in outputs
            ):
                self.host[n.name] = producer
        self._patterns(model)

    def _patterns(self, model: onnx.ModelProto) -> None:
        """Multi-node layers (graph.patterns) as TIDL imports them: a MatMul's bias Add is part
        of its inner product layer; a LayerNorm or GELU is one layer, named by its last node, a
        TIDL_LayerNormLayer (cannot change precision) or an activation layer (can)."""
        for bias in linear_biases(model).values():
            self.host[bias.add] = bias.matmul
        for pattern in fused_layers(model):
            last = self.producer[pattern.output]
            for node in pattern.nodes:
                if node != last:
                    self.host[node] = last
            self.op[last] = "LayerNormalization" if pattern.kind == "LayerNorm" else "Gelu"
        # An activation fused into a bias Add belongs to the inner product layer.
        for node, host in self.host.items():
            while host in self.host:
                host = self.host[host]
            self.host[node] = host

    def ties(self, node: str) -> bool:
        """Whether a node's feature inputs and outputs must share one precision."""
        return node in self.host or self.op[node] not in CHANGES_PRECISION

    def resolve(self, name: str, entry: str, where: Where | str | None = None) -> str:
        """The node a list entry names (a node name or a tensor it outputs); fused
        activations name the layer they merge into."""
        node = name if name in self.nodes else self.producer.get(name)
        if node is not None:
            return self.host.get(node, node)
        if name in self.model_inputs:
            raise RecipeError(f"{entry}: {name!r} is a model input, not a layer", where)
        candidates = [*self.nodes, *self.producer, *self.model_inputs]
        hint = closest(name, candidates)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise RecipeError(f"{entry}: no layer or tensor named {name!r}{suggestion}", where)

    def between(
        self, start: str, end: str, entry: str, where: Where | str | None = None
    ) -> list[str]:
        """Every node on a path from `start` to `end`, both included."""
        if start != end and not nx.has_path(self.graph, start, end):
            raise RecipeError(f"{entry}: no path from {start!r} to {end!r}", where)
        inner = nx.descendants(self.graph, start) & nx.ancestors(self.graph, end)
        return [n for n in self.nodes if n in inner or n in (start, end)]

    def solve(self, outputs: Iterable[str], params: Iterable[str], reason: str) -> Assignment:
        """Propagate 16-bit outputs (nodes or model inputs) and 16-bit weights to a fixed point."""
        # Graph order, not list order, decides which listed layer a tensor is credited to.
        position = {name: i for i, name in enumerate([*self.model_inputs, *self.nodes])}
        outputs, params = sorted(set(outputs), key=position.__getitem__), set(params)
        origin: dict[str, str] = {}  # 16-bit tensor -> the listed name it spread from
        queue: deque[str] = deque()

        def mark(tensor: str, source: str) -> None:
            if tensor not in origin:
                origin[tensor] = source
                queue.append(tensor)

        for name in outputs:
            for tensor in self.outputs[name] if name in self.nodes else [name]:
                mark(tensor, name)
        while queue:
            tensor = queue.popleft()
            touching = [self.producer.get(tensor), *self.consumers[tensor]]
            for node in touching:
                if node is not None and self.ties(node):
                    for t in (*self.inputs[node], *self.outputs[node]):
                        mark(t, origin[tensor])

        listed = set(outputs) | params
        layers: dict[str, dict[str, Any]] = {}
        weights = set()
        for name in self.nodes:
            features = [t for t in (*self.outputs[name], *self.inputs[name]) if t in origin]
            wide_out = any(t in origin for t in self.outputs[name])
            tied_wide = self.ties(name) and bool(features)
            weight_bits = None
            if name in self.weight:
                wide = name in listed or tied_wide
                weight_bits = 16 if wide else 8
                if wide:
                    weights.add(self.weight[name])
            if name in listed:
                why = reason
            elif wide_out or tied_wide:
                why = f"propagated from {origin[features[0]]}"
            else:
                why = "default"
            layers[name] = {
                "op": self.op[name],
                "output_bits": 16 if wide_out else 8,
                "weight_bits": weight_bits,
                "why": why,
            }
        return Assignment(frozenset(origin), frozenset(weights), layers)


def assign(
    model: onnx.ModelProto | Network,
    output_16bit: Iterable[str] = (),
    params_16bit: Iterable[str] = (),
    ranges: Iterable[tuple[str, str]] = (),
    *,
    field: str = "quantization.mixed_precision",
    where: Where | str | None = None,
) -> Assignment:
    """Precisions from TIDL's manual lists, each entry a node or tensor name.

    `ranges` adds every node on a path from start to end (inclusive) to `output_16bit`.
    Errors name the entry under `field` (e.g. "quantization.mixed_precision.output_16bit[1]").
    A caller assigning many lists on one model passes its `Network`, built once.
    """
    net = model if isinstance(model, Network) else Network(model)
    outputs = [
        name if name in net.model_inputs else net.resolve(name, f"{field}.output_16bit[{i}]", where)
        for i, name in enumerate(output_16bit)
    ]
    for i, (start, end) in enumerate(ranges):
        entry = f"{field}.ranges[{i}]"
        first, last = net.resolve(start, entry, where), net.resolve(end, entry, where)
        outputs += [net.host.get(n, n) for n in net.between(first, last, entry, where)]
    params = [
        net.resolve(name, f"{field}.params_16bit[{i}]", where)
        for i, name in enumerate(params_16bit)
    ]
    return net.solve(outputs, params, "listed")


def promote(model: onnx.ModelProto, nodes: Iterable[str]) -> Assignment:
    """Precisions when automatic selection promotes `nodes` (as if in output_16bit)."""
    net = Network(model)
    return net.solve([net.resolve(n, "promoted layers") for n in nodes], [], "promoted")
