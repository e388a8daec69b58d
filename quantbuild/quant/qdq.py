"""Write a QDQ ONNX model: QuantizeLinear/DequantizeLinear pairs that simulate the target exactly.

Placement follows how TIDL executes a network:
- every activation tensor gets its own grid, except the output of an operator fused into its
  producer (Conv/Gemm/Add followed by Relu or Clip: only the activation's output is quantized),
  the output of a value-preserving operator (MaxPool, Reshape, ...) whose input is already on
  a grid, the tensors inside a multi-node layer (LayerNorm, GELU: graph/patterns.py) and a
  MatMul's output that only gets its bias added, and float tensors computed from token ids,
  masks or positions alone (an attention mask cast to float and scaled: `index_derived`);
- Conv/ConvTranspose/Gemm/MatMul weights are symmetric integers (per tensor or per output
  channel); biases (a MatMul's: the constant its Add adds) are integers at
  input_scale * weight_scale (16 or 32 bits);
- constant operands of element-wise operators are symmetric per-tensor integers, except the
  parameters of a LayerNorm layer (its scale and shift), computed at the layer's precision.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantbuild.graph import index as graph_index
from quantbuild.graph.fold import Graph
from quantbuild.graph.onnx_utils import opset_version
from quantbuild.graph.ops import (
    ELEMENTWISE_CONSTANTS,
    FUSED_ACTIVATIONS,
    FUSING_PRODUCERS,
    VALUE_PRESERVING,
)
from quantbuild.graph.patterns import fused_layers, linear_biases
from quantbuild.quant.params import (
    QParams,
    TensorRange,
    bias_int32,
    fit_weights_to_bias,
    weight_qparams,
)
from quantbuild.quant.weight_clip import clip_weights

_ONNX_DTYPE = {
    "int8": onnx.TensorProto.INT8,
    "uint8": onnx.TensorProto.UINT8,
    "int16": onnx.TensorProto.INT16,
    "uint16": onnx.TensorProto.UINT16,
}


@dataclass(frozen=True)
class WeightOptions:
    bits: int
    per_channel: bool
    power_of_2: bool
    bias_bits: int
    clipping: str = "none"  # weight clipping method: none, tidl, mse
    # Grids stated by a pre-quantized model, used as they are where they fit the target.
    given: dict[str, QParams] = field(default_factory=dict)
    # Mixed precision: nodes whose weights (or element-wise constants) are 16-bit.
    wide_layers: frozenset[str] = frozenset()
    # Clipped weights by (name, bits, axis) and layers' integers by (layer, bits, input grid),
    # when one model is written many times (the mixed precision probe): they depend only on
    # these, and computing them is most of a write's time.
    clip_memo: dict | None = field(default=None, compare=False, repr=False)

    def for_layer(self, node: onnx.NodeProto) -> WeightOptions:
        """These options, in 16 bits when mixed precision widens this node's parameters."""
        return replace(self, bits=16) if node.name in self.wide_layers else self

    def clipped(self, name: str, weight: np.ndarray, axis: int | None) -> np.ndarray:
        """`weight` (the initializer `name`) clipped by the clipping method for these bits."""
        key = (name, self.bits, axis, self.clipping, self.power_of_2)
        if self.clip_memo is not None and key in self.clip_memo:
            return self.clip_memo[key]
        clipped = clip_weights(weight, self.clipping, self.bits, axis, self.power_of_2)
        if self.clip_memo is not None:
            self.clip_memo[key] = clipped
        return clipped

    def stated(self, name: str, axis: int | None, symmetric: bool = True) -> QParams | None:
        """The given grid of a constant if it fits these options (bits, axis, power-of-2).

        Weights must be symmetric; an element-wise operand (`symmetric=False`) may have a
        zero point, as onnxruntime quantizes them like activations."""
        qp = self.given.get(name)
        if qp is None or qp.dtype.lstrip("u") != f"int{self.bits}":
            return None
        if symmetric and (qp.dtype.startswith("u") or np.any(qp.zero_point != 0)):
            return None
        if qp.axis != (axis if self.per_channel else None):
            return None
        if self.power_of_2:
            exponent = np.log2(qp.scale.astype(np.float64))
            if np.any(exponent != np.round(exponent)):
                return None
        return qp


# Graph inputs of these types are indices, masks or positions (token ids, attention masks), not
# pixel data (uint8/int8 inputs are images or already-quantized features).
_INDEX_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL}


def index_derived(model: onnx.ModelProto) -> set[str]:
    """Float tensors computed from index or mask tensors alone (an attention mask cast to float,
    inverted and scaled): per-frame constants of the input's structure, not features.

    A tensor is index-derived when its node reads at least one index-derived or integer tensor,
    nothing else but constants, and no float constant of more than one element (an embedding
    table or a weight makes the output a feature). `model` is prepared (constants are
    initializers)."""
    g = Graph(model)

    def elem(name: str) -> int | None:
        kind = g.types.get(name)
        return kind.tensor_type.elem_type if kind is not None else None

    derived = {i.name for i in model.graph.input if elem(i.name) in _INDEX_TYPES}
    found: set[str] = set()
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        variable = [i for i in inputs if i not in g.inits]
        table = any(
            g.inits[i].data_type not in _INDEX_TYPES and int(np.prod(g.inits[i].dims)) > 1
            for i in inputs
            if i in g.inits
        )
        if table or not any(i in derived for i in variable):
            continue
        if all(i in derived or elem(i) in _INDEX_TYPES for i in variable):
            derived.update(node.output)
            found.update(o for o in node.output if elem(o) not in _INDEX_TYPES)
    return found


def activation_tensors(model: onnx.ModelProto, candidates: set[str]) -> list[str]:
    """The tensors among `candidates` that get their own grid, in graph order (see module doc)."""
    graph = model.graph
    inits = graph_index.initializer_names(graph)
    producer = graph_index.producers(graph)
    consumers = graph_index.consumers(graph)
    outputs = graph_index.output_names(graph)
    # Inside a multi-node layer, and a MatMul's output before its bias: no grid of their own.
    inside = {t for layer in fused_layers(model) for t in layer.internal}
    by_name = {n.name: n for n in graph.node}
    inside.update(by_name[m].output[0] for m in linear_biases(model))
    inside.update(index_derived(model))
    chosen: list[str] = []
    on_grid: set[str] = set()  # quantized tensors and value-preserving views of them
    for name in [i.name for i in graph.input] + [o for n in graph.node for o in n.output]:
        if name not in candidates or name in inits or (name in inside and name not in outputs):
            continue
        if not consumers[name] and name not in outputs:
            continue
        node = producer.get(name)
        if node is not None and name not in outputs:
            users = consumers[name]
            fused = (
                node.op_type in FUSING_PRODUCERS
                and len(users) == 1
                and users[0].op_type in FUSED_ACTIVATIONS
            )
            if fused:
                continue
            if node.op_type in VALUE_PRESERVING and node.input and node.input[0] in on_grid:
                on_grid.add(name)
                continue
        chosen.append(name)
        on_grid.add(name)
    return chosen


def weight_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """The output-channel axis of a weight, or None where per-channel does not apply."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 1
    return None


class QDQWriter:
    """Turns a prepared float model plus activation ranges into a QDQ model."""

    def __init__(
        self, model: onnx.ModelProto, ranges: dict[str, TensorRange], weights: WeightOptions
    ):
        self.source = model
        self.ranges = ranges
        self.options = weights
        self.opset = opset_version(model)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.removed_inits: set[str] = set()
        self.act_params: dict[str, QParams] = {}
        self.record: dict[str, dict] = {"activations": {}, "weights": {}, "biases": {}}
        self.uses_contrib = False

    # -- decisions -------------------------------------------------------------------------

    # -- node helpers ----------------------------------------------------------------------
    def _domain(self, dtype: str) -> str:
        if dtype.endswith("16") and self.opset < 21:
            self.uses_contrib = True
            return "com.microsoft"
        return ""

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def _qparam_inputs(self, base: str, qp: QParams) -> tuple[str, str]:
        scale = self._constant(f"{base}_scale", np.asarray(qp.scale, dtype=np.float32))
        zero = self._constant(f"{base}_zero_point", np.asarray(qp.zero_point))
        return scale, zero

    def _axis(self, qp: QParams) -> list:
        return [helper.make_attribute("axis", qp.axis)] if qp.axis is not None else []

    def _qdq(self, source: str, target: str, qp: QParams) -> None:
        """Append QuantizeLinear(source) -> DequantizeLinear -> target."""
        scale, zero = self._qparam_inputs(target, qp)
        domain = self._domain(qp.dtype)
        quant = helper.make_node(
            "QuantizeLinear",
            [source, scale, zero],
            [f"{target}_quantized"],
            name=f"{target}_QuantizeLinear",
            domain=domain,
        )
        dequant = helper.make_node(
            "DequantizeLinear",
            [f"{target}_quantized", scale, zero],
            [target],
            name=f"{target}_DequantizeLinear",
            domain=domain,
        )
        for node in (quant, dequant):
            node.attribute.extend(self._axis(qp))
        self.nodes.extend([quant, dequant])

    def _dequantized_constant(self, name: str, q: np.ndarray, qp: QParams) -> None:
        """Replace float initializer `name` by integers and a DequantizeLinear producing `name`."""
        self.removed_inits.add(name)
        stored = self._constant(f"{name}_quantized", q)
        scale, zero = self._qparam_inputs(name, qp)
        node = helper.make_node(
            "DequantizeLinear",
            [stored, scale, zero],
            [name],
            name=f"{name}_DequantizeLinear",
            domain=self._domain(qp.dtype) if qp.dtype != "int32" else "",
        )
        node.attribute.extend(self._axis(qp))
        self.nodes.append(node)

    # -- parameters --------------------------------------------------------------------------
    def _input_params(self, tensor: str, producer: dict) -> QParams | None:
        """Grid of a tensor, looking through value-preserving operators."""
        while tensor not in self.act_params:
            node = producer.get(tensor)
            if node is None or node.op_type not in VALUE_PRESERVING:
                return None
            tensor = node.input[0]
        return self.act_params[tensor]

    def _layer(
        self, node: onnx.NodeProto, opts: WeightOptions, b_name: str, x_params: QParams | None
    ) -> tuple[QParams, np.ndarray, tuple[np.ndarray, np.ndarray, int, int] | None]:
        """A weighted layer's weight grid and integers, and with a bias (`b_name`) its
        integers, scale, bits and how many weight scales it raised. Memoised with the clipped
        weights: they depend only on the layer, the bits and the input's grid."""
        memo, key = opts.clip_memo, None
        if memo is not None:
            grid = (
                None if x_params is None else (x_params.dtype, np.asarray(x_params.scale).tobytes())
            )
            key = ("layer", node.name, opts.bits, b_name, grid)
            if key in memo:
                return memo[key]
        w_name = node.input[1]
        weight = numpy_helper.to_array(self.inits[w_name])
        axis = weight_axis(node, weight) if opts.per_channel else None
        stated = opts.stated(w_name, axis)
        if stated is None:
            weight = opts.clipped(w_name, weight, axis)
            qp = weight_qparams(weight, opts.bits, axis is not None, opts.power_of_2, axis or 0)
        else:
            qp = stated
        biased = None
        if b_name:
            assert x_params is not None  # a bias is only taken with input params
            bias = numpy_helper.to_array(self.inits[b_name])
            # 16-bit weights or a 16-bit input (mixed precision) accumulate wider: 32-bit
            # biases, shifted where needed. At 16-bit input scales a 16-bit bias would
            # force the weight scale up by ~256x and wipe out an 8-bit layer's weights.
            wide = opts.bits == 16 or x_params.dtype.endswith("16")
            # 8-bit layers: a bias must fit bias_bits at s_x * s_w, so the weight scale
            # grows where it would not; wide layers keep their weights.
            bias_bits = 32 if wide else opts.bias_bits
            raised = 0
            if not wide and stated is None:
                qp, raised = fit_weights_to_bias(
                    qp, bias, x_params.scale, bias_bits, opts.power_of_2
                )
            w_scale = qp.scale if qp.axis is not None else np.full(bias.shape, qp.scale)
            q, scale = bias_int32(bias, x_params.scale, w_scale, bias_bits, shift=wide)
            biased = (q, scale, bias_bits, raised)
        result = (qp, qp.quantize(weight), biased)
        if memo is not None:
            memo[key] = result
        return result

    def _quantize_parameters(self, uses: dict[str, int]) -> None:
        graph = self.source.graph
        producer = graph_index.producers(graph)
        layer_params = {n for layer in fused_layers(self.source) for n in layer.nodes}
        linear = linear_biases(self.source)
        matmul_bias = {m: lb.bias for m, lb in linear.items()}
        for node in graph.node:
            opts = self.options.for_layer(node)
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
                w_name = node.input[1]
                if w_name not in self.inits or w_name in self.removed_inits or uses[w_name] != 1:
                    continue
                if self.inits[w_name].data_type != onnx.TensorProto.FLOAT:
                    continue
                b_name = node.input[2] if len(node.input) > 2 else matmul_bias.get(node.name, "")
                x_params = self._input_params(node.input[0], producer)
                with_bias = (
                    b_name in self.inits
                    and uses[b_name] == 1
                    and x_params is not None
                    and (node.op_type != "MatMul" or node.name in matmul_bias)
                )
                qp, q_weight, biased = self._layer(
                    node, opts, b_name if with_bias else "", x_params
                )
                self._dequantized_constant(w_name, q_weight, qp)
                self.record["weights"][w_name] = _describe(qp)
                if biased is not None:
                    q, scale, bias_bits, raised = biased
                    bqp = QParams(scale, np.zeros(scale.shape, np.int32), "int32", 0)
                    self._dequantized_constant(b_name, q, bqp)
                    self.record["biases"][b_name] = {
                        "dtype": "int32",
                        "bits": bias_bits,
                        "scale": scale.tolist(),
                        "weight_scales_raised": raised,
                        "layer": node.name,
                        "output": node.output[0],
                    }
                    if node.name in linear:  # the bias is added by the Add after the MatMul
                        entry = self.record["biases"][b_name]
                        entry.update(output=linear[node.name].output, channel_axis=-1)
            elif node.op_type in ELEMENTWISE_CONSTANTS and node.name not in layer_params:
                for name in node.input:
                    if name not in self.inits or name in self.removed_inits or uses[name] != 1:
                        continue
                    value = numpy_helper.to_array(self.inits[name])
                    if value.dtype != np.float32:
                        continue
                    qp = opts.stated(name, None, symmetric=False) or weight_qparams(
                        value, opts.bits, False, opts.power_of_2
                    )
                    self._dequantized_constant(name, qp.quantize(value), qp)
                    self.record["weights"][name] = _describe(qp)

    # -- assembly ----------------------------------------------------------------------------
    def write(self) -> onnx.ModelProto:
        """Build and return the QDQ model."""
        graph = self.source.graph
        chosen = activation_tensors(self.source, set(self.ranges))
        chosen_names = set(chosen)
        for name in chosen:
            r = self.ranges[name]
            self.act_params[name] = r.qparams
            self.record["activations"][name] = {"min": r.min, "max": r.max, **_describe(r.qparams)}
        uses: dict[str, int] = defaultdict(int)
        for n in graph.node:
            for i in n.input:
                uses[i] += 1
        self._quantize_parameters(uses)
        parameter_nodes, self.nodes = self.nodes, []

        graph_input_names = {i.name for i in graph.input}
        renamed: dict[str, str] = {}
        for name in chosen:
            if name in graph_input_names:
                renamed[name] = f"{name}_dequantized"
                self._qdq(name, renamed[name], self.act_params[name])
        for node in graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for i, name in enumerate(new.input):
                if name in renamed:
                    new.input[i] = renamed[name]
            float_outputs = []
            for i, name in enumerate(new.output):
                if name in chosen_names:
                    new.output[i] = f"{name}_float"
                    float_outputs.append(name)
            self.nodes.append(new)
            for name in float_outputs:
                self._qdq(f"{name}_float", name, self.act_params[name])

        model = onnx.ModelProto()
        model.CopyFrom(self.source)
        g = model.graph
        del g.node[:]
        g.node.extend(parameter_nodes + self.nodes)
        kept = [t for t in g.initializer if t.name not in self.removed_inits]
        del g.initializer[:]
        g.initializer.extend(kept + self.new_inits)
        types = {v.name: v for v in list(g.value_info) + list(g.output)}
        for name in chosen:
            if name in types and name not in graph_input_names:
                info = onnx.ValueInfoProto()
                info.CopyFrom(types[name])
                info.name = f"{name}_float"
                g.value_info.append(info)
        if self.uses_contrib and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return model


def _describe(qp: QParams) -> dict:
    scale = np.asarray(qp.scale)
    zero = np.asarray(qp.zero_point)
    return {
        "dtype": qp.dtype,
        "axis": qp.axis,
        "scale": scale.tolist(),
        "zero_point": zero.tolist(),
    }


def write_qdq(
    model: onnx.ModelProto, ranges: dict[str, TensorRange], weights: WeightOptions
) -> tuple[onnx.ModelProto, dict]:
    """The QDQ model and a record of every quantization parameter it uses."""
    writer = QDQWriter(model, ranges, weights)
    qdq = writer.write()
    return qdq, writer.record
