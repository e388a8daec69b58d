"""TIDL's quant-proto ranges file: `TIDLNetQuantParams` in protobuf text format.

This is what TIDL reads from (and, when the file is absent, writes to)
`advanced_options:quant_params_proto_path`. In read mode TIDL takes only each tensor's
min/max and derives its own scales, skipping calibration.

Confirmed against TexasInstruments/edgeai-tidl-tools `docs/tidl_quantParams.md` and
`docs/quantization_proto.md` (the .proto they quote), and TI's import code that reads and
writes the file (`TIDL_exportQuantParamsToProtoTxt`, `TIDL_canBypassCalibration`):

- package `tidl_quant_params`, proto2. `TIDLNetQuantParams {int32 num_layers = 1;
  TidlQuantType quant_type = 2 [default SYMMETRIC]; TidlCalibType calib_type = 3
  [default PERTENSOR]; repeated TidlLayerQuantParams layers = 4}`; enums
  `TidlQuantType {SYMMETRIC = 1; ASYMMETRIC = 2}`, `TidlCalibType {PERTENSOR = 1;
  PERCHANNEL = 2}`.
- `TidlLayerQuantParams {string layer_name = 1; string layer_type = 2; uint32 bit_depth = 3
  [default 8]; repeated TidlTensorQuantParams outputs = 4, weights = 5, bias = 6, slope = 7}`.
  `layer_type` is a *string*, TIDL's `TIDL_LayerString[]` name (e.g. "TIDL_ConvolutionLayer"),
  not an int: TIDL finds a layer by `layer_name + "_" + layer_type`, so both must match.
  `layer_name` is the layer's first output tensor name. `bit_depth` is written by TIDL as the
  element size in *bytes* (1 for 8-bit, 2 for 16-bit) despite its name and default.
- `TidlTensorQuantParams {float min = 1 [default -FLT_MAX]; float max = 2 [default FLT_MAX];
  uint32 size = 3; uint32 element_type = 4; repeated double scale = 5; repeated uint32
  zero_point = 6; repeated double value = 7}`. `element_type` is TIDL's element type
  (0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32). `scale` is TIDL's
  multiplier, q = x * scale: the reciprocal of an ONNX scale.
- Read mode needs, for every layer: finite min/max that are not ±FLT_MAX (TIDL's "not
  calibrated" marker), `num_layers` equal to the number of layers, and on a bias tensor as
  many `value`s as its `size`. TI documents read mode for symmetric quantization only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np
import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from onnx import numpy_helper

from quantbuild.errors import ModelError, RecipeError, Where
from quantbuild.graph import index as graph_index
from quantbuild.graph.ops import FUSED_ACTIVATIONS, FUSING_PRODUCERS, VALUE_PRESERVING
from quantbuild.quant.params import DTYPES

FLT_MAX = float(np.finfo(np.float32).max)


class QuantType(IntEnum):
    SYMMETRIC = 1
    ASYMMETRIC = 2


class CalibType(IntEnum):
    PERTENSOR = 1
    PERCHANNEL = 2


# TIDL element types (eTIDL_ElementType), keyed by quantbuild dtype names.
ELEMENT_TYPES = {
    "uint8": 0,
    "int8": 1,
    "uint16": 2,
    "int16": 3,
    "uint32": 4,
    "int32": 5,
    "float32": 6,
}

# ONNX op type -> TIDL layer type, from edgeai-tidl-tools docs/operators.md ("Onnx Operator |
# TIDL Layer"), spelled as TIDL_LayerString[] in TI's import code (which writes "TIDL_CLipLayer").
DATA_LAYER = "TIDL_DataLayer"  # a graph input
UNKNOWN_LAYER = "TIDL_UnsupportedLayer"  # any other op: TIDL runs it outside the accelerator
LAYER_TYPES = {
    "Conv": "TIDL_ConvolutionLayer",
    "ConvTranspose": "TIDL_Deconv2DLayer",
    "Gemm": "TIDL_InnerProductLayer",
    "MatMul": "TIDL_InnerProductLayer",
    "AveragePool": "TIDL_PoolingLayer",
    "GlobalAveragePool": "TIDL_PoolingLayer",
    "MaxPool": "TIDL_PoolingLayer",
    "Relu": "TIDL_ReLULayer",
    "PRelu": "TIDL_PReLULayer",
    "LeakyRelu": "TIDL_LeakyReluLayer",
    "Clip": "TIDL_CLipLayer",
    "Add": "TIDL_EltWiseLayer",
    "Sum": "TIDL_EltWiseLayer",
    "Sub": "TIDL_EltWiseLayer",
    "Mul": "TIDL_EltWiseLayer",
    "Div": "TIDL_EltWiseLayer",
    "Max": "TIDL_EltWiseLayer",
    "Min": "TIDL_EltWiseLayer",
    "Softmax": "TIDL_SoftMaxLayer",
    "BatchNormalization": "TIDL_BatchNormLayer",
    "Concat": "TIDL_ConcatLayer",
    "Slice": "TIDL_SliceLayer",
    "Split": "TIDL_SliceLayer",
    "Flatten": "TIDL_FlattenLayer",
    "Dropout": "TIDL_DropOutLayer",
    "ArgMax": "TIDL_ArgMaxLayer",
    "Resize": "TIDL_ResizeLayer",
    "Upsample": "TIDL_ResizeLayer",
    "DepthToSpace": "TIDL_DepthToSpaceLayer",
    "Sigmoid": "TIDL_SigmoidLayer",
    "Pad": "TIDL_PadLayer",
    "ReduceMax": "TIDL_ReduceLayer",
    "ReduceMin": "TIDL_ReduceLayer",
    "ReduceMean": "TIDL_ReduceMeanLayer",
    "Squeeze": "TIDL_SqueezeLayer",
    "Tanh": "TIDL_TanhLayer",
    "HardSigmoid": "TIDL_HardSigmoidLayer",
    "Elu": "TIDL_ELULayer",
    "Reshape": "TIDL_ReshapeLayer",
    "Gather": "TIDL_GatherLayer",
    "Transpose": "TIDL_TransposeLayer",
    "LayerNormalization": "TIDL_LayerNormLayer",
    "Identity": "TIDL_IdentityLayer",
    "Sqrt": "TIDL_SqrtLayer",
    "Pow": "TIDL_PowLayer",
    "Cast": "TIDL_CastLayer",
}


def layer_type(op_type: str) -> str:
    """TIDL layer type of an ONNX op; `UNKNOWN_LAYER` for ops TIDL does not map."""
    return LAYER_TYPES.get(op_type, UNKNOWN_LAYER)


# -- the messages ---------------------------------------------------------------------------


def _f32(value: float) -> float:
    return float(np.float32(value))


@dataclass(frozen=True)
class TensorQuantParams:
    """`TidlTensorQuantParams`. min/max are float32 like the proto fields (rounded to nearest);
    `scale` is TIDL's multiplier (q = x * scale), the reciprocal of an ONNX scale."""

    min: float
    max: float
    size: int = 1
    element_type: int = ELEMENT_TYPES["int8"]
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    value: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Normalize so that equality after a text round trip is exact.
        object.__setattr__(self, "min", _f32(self.min))
        object.__setattr__(self, "max", _f32(self.max))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in self.zero_point))
        object.__setattr__(self, "value", tuple(float(v) for v in self.value))


@dataclass(frozen=True)
class LayerQuantParams:
    """`TidlLayerQuantParams`; `bit_depth` is in bytes, as TIDL writes it (1 = 8-bit)."""

    layer_name: str
    layer_type: str
    bit_depth: int = 1
    outputs: tuple[TensorQuantParams, ...] = ()
    weights: tuple[TensorQuantParams, ...] = ()
    bias: tuple[TensorQuantParams, ...] = ()
    slope: tuple[TensorQuantParams, ...] = ()

    def __post_init__(self) -> None:
        for name in _TENSOR_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class NetQuantParams:
    """`TIDLNetQuantParams`; `num_layers` is always the number of layers."""

    layers: tuple[LayerQuantParams, ...]
    quant_type: QuantType = QuantType.SYMMETRIC
    calib_type: CalibType = CalibType.PERTENSOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "quant_type", QuantType(self.quant_type))
        object.__setattr__(self, "calib_type", CalibType(self.calib_type))

    @property
    def num_layers(self) -> int:
        return len(self.layers)


_TENSOR_FIELDS = ("outputs", "weights", "bias", "slope")


# -- the protobuf descriptor, built once (no .proto compilation step) -----------------------


def _message_classes() -> tuple[type, type, type]:
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="tidl_quant_params.proto", package="tidl_quant_params", syntax="proto2"
    )
    for enum_name, enum in (("TidlQuantType", QuantType), ("TidlCalibType", CalibType)):
        e = proto.enum_type.add(name=enum_name)
        for member in enum:
            e.value.add(name=member.name, number=member.value)

    def add(message, name, number, kind, repeated=False, type_name="", default=""):
        field = message.field.add(
            name=name,
            number=number,
            type=kind,
            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
        )
        if type_name:
            field.type_name = f".tidl_quant_params.{type_name}"
        if default:
            field.default_value = default
        if repeated and kind != F.TYPE_MESSAGE:
            field.options.packed = True

    tensor = proto.message_type.add(name="TidlTensorQuantParams")
    add(tensor, "min", 1, F.TYPE_FLOAT, default="-3.4028234664e+38")
    add(tensor, "max", 2, F.TYPE_FLOAT, default="3.4028234664e+38")
    add(tensor, "size", 3, F.TYPE_UINT32)
    add(tensor, "element_type", 4, F.TYPE_UINT32)
    add(tensor, "scale", 5, F.TYPE_DOUBLE, repeated=True)
    add(tensor, "zero_point", 6, F.TYPE_UINT32, repeated=True)
    add(tensor, "value", 7, F.TYPE_DOUBLE, repeated=True)
    layer = proto.message_type.add(name="TidlLayerQuantParams")
    add(layer, "layer_name", 1, F.TYPE_STRING)
    add(layer, "layer_type", 2, F.TYPE_STRING)
    add(layer, "bit_depth", 3, F.TYPE_UINT32, default="8")
    for number, name in enumerate(_TENSOR_FIELDS, start=4):
        add(layer, name, number, F.TYPE_MESSAGE, repeated=True, type_name="TidlTensorQuantParams")
    net = proto.message_type.add(name="TIDLNetQuantParams")
    add(net, "num_layers", 1, F.TYPE_INT32)
    add(net, "quant_type", 2, F.TYPE_ENUM, type_name="TidlQuantType", default="SYMMETRIC")
    add(net, "calib_type", 3, F.TYPE_ENUM, type_name="TidlCalibType", default="PERTENSOR")
    add(net, "layers", 4, F.TYPE_MESSAGE, repeated=True, type_name="TidlLayerQuantParams")

    # A private pool: never clashes with another copy of the proto in the default pool.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tidl_quant_params.{n}"))
        for n in ("TIDLNetQuantParams", "TidlLayerQuantParams", "TidlTensorQuantParams")
    )


NetMessage, LayerMessage, TensorMessage = _message_classes()


# -- validation -------------------------------------------------------------------------------


def _tensor_problem(t: TensorQuantParams, is_bias: bool) -> str | None:
    """What TIDL's read mode would reject in one tensor, as 'field: why'; None if fine."""
    for key in ("min", "max"):
        value = getattr(t, key)
        if not math.isfinite(value):
            return f"{key}: {value} is not a finite number"
        if abs(value) >= FLT_MAX:
            return f"{key}: {value} is ±FLT_MAX, which TIDL reads as 'not calibrated'"
    if t.min > t.max:
        return f"min: {t.min} is above max {t.max}"
    if t.zero_point and len(t.zero_point) != len(t.scale):
        return f"zero_point: {len(t.zero_point)} values for {len(t.scale)} scales"
    if is_bias and (t.size == 0 or len(t.value) != t.size):
        return f"value: {len(t.value)} values for size {t.size} (a bias needs one per element)"
    return None


def _net_problem(net: NetQuantParams) -> str | None:
    seen: set[str] = set()
    for i, layer in enumerate(net.layers):
        where = f"layers[{i}]"
        if not layer.layer_name:
            return f"{where}.layer_name: missing"
        if layer.layer_name in seen:
            return f"{where}.layer_name: {layer.layer_name!r} appears twice"
        seen.add(layer.layer_name)
        for key in _TENSOR_FIELDS:
            for j, tensor in enumerate(getattr(layer, key)):
                problem = _tensor_problem(tensor, key == "bias")
                if problem:
                    return f"{where} ({layer.layer_name}).{key}[{j}].{problem}"
    return None


# -- text format ------------------------------------------------------------------------------


def dumps(net: NetQuantParams) -> str:
    """The protobuf text TIDL reads; refuses (ValueError) a net TIDL's read mode would reject."""
    problem = _net_problem(net)
    if problem:
        raise ValueError(problem)
    message = NetMessage(
        num_layers=net.num_layers, quant_type=int(net.quant_type), calib_type=int(net.calib_type)
    )
    for layer in net.layers:
        lm = message.layers.add(
            layer_name=layer.layer_name, layer_type=layer.layer_type, bit_depth=layer.bit_depth
        )
        for key in _TENSOR_FIELDS:
            for t in getattr(layer, key):
                getattr(lm, key).add(**{f.name: getattr(t, f.name) for f in fields(t)})
    return text_format.MessageToString(message)


def _tensor(message, where: str, source: str) -> TensorQuantParams:
    for key in ("min", "max"):
        if not message.HasField(key):
            raise RecipeError(f"{where}.{key}: missing (TIDL needs a calibrated range)", source)
    return TensorQuantParams(
        **{f.name: getattr(message, f.name) for f in fields(TensorQuantParams)}
    )


def loads(text: str, source: str) -> NetQuantParams:
    """Parse a TIDL quant-proto file; errors name the file, the layer and the field."""
    message = NetMessage()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        # The message starts with "line:column : "; the location goes in `where` instead.
        detail = str(err).split(" : ", 1)[-1]
        line, column = err.GetLine() or 0, err.GetColumn() or 0
        raise RecipeError(
            f"invalid TIDL quant params: {detail}", Where(source, line, column)
        ) from None
    if not message.HasField("num_layers"):
        raise RecipeError("num_layers: missing (TIDL looks layers up by it)", source)
    if message.num_layers != len(message.layers):
        raise RecipeError(
            f"num_layers: {message.num_layers} but the file has {len(message.layers)} layers",
            source,
        )
    layers = []
    for i, lm in enumerate(message.layers):
        where = f"layers[{i}] ({lm.layer_name})"
        tensors = {
            key: tuple(
                _tensor(t, f"{where}.{key}[{j}]", source) for j, t in enumerate(getattr(lm, key))
            )
            for key in _TENSOR_FIELDS
        }
        layers.append(LayerQuantParams(lm.layer_name, lm.layer_type, lm.bit_depth, **tensors))
    net = NetQuantParams(tuple(layers), message.quant_type, message.calib_type)
    problem = _net_problem(net)
    if problem:
        raise RecipeError(problem, source)
    return net


def activation_ranges(net: NetQuantParams) -> dict[str, tuple[float, float]]:
    """Tensor name -> (min, max) of every layer output: all that TIDL's read mode uses."""
    return {
        layer.layer_name: (layer.outputs[0].min, layer.outputs[0].max)
        for layer in net.layers
        if layer.outputs
    }


# -- from quantbuild's quant_params record ----------------------------------------------------


def _outward(low: float, high: float) -> tuple[float, float]:
    """[low, high] widened to float32 bounds, so the stored range still covers it."""
    lo, hi = np.float32(low), np.float32(high)
    if float(lo) > low:
        lo = np.nextafter(lo, np.float32(-np.inf))
    if float(hi) < high:
        hi = np.nextafter(hi, np.float32(np.inf))
    return float(lo), float(hi)


def _bytes(dtype: str) -> int:
    return np.dtype(DTYPES[dtype]).itemsize


def _output_tensor(entry: dict) -> TensorQuantParams:
    low, high = _outward(entry["min"], entry["max"])
    return TensorQuantParams(
        low,
        high,
        size=1,
        element_type=ELEMENT_TYPES[entry["dtype"]],
        scale=(1.0 / float(np.float32(entry["scale"])),),
        zero_point=(int(entry["zero_point"]),),
    )


def _weight_tensor(entry: dict) -> TensorQuantParams:
    scale = np.asarray(entry["scale"], dtype=np.float32).reshape(-1).astype(np.float64)
    zero_point = np.asarray(entry["zero_point"]).reshape(-1).astype(np.int64)
    info = np.iinfo(DTYPES[entry["dtype"]])
    if info.min < 0 and not np.any(zero_point):
        # symmetric: ±max|w| as TIDL's weight range, max(scale * qmax)
        high = float(np.max(scale * info.max))
        low = -high
    else:
        # an element-wise operand may carry a zero point (pre-quantized models)
        low = float(np.min((info.min - zero_point) * scale))
        high = float(np.max((info.max - zero_point) * scale))
    low, high = _outward(low, high)
    return TensorQuantParams(
        low,
        high,
        size=scale.size,
        element_type=ELEMENT_TYPES[entry["dtype"]],
        scale=tuple(1.0 / s for s in scale.tolist()),
        zero_point=tuple(zero_point.tolist()),
    )


def _bias_tensor(entry: dict, values: np.ndarray) -> TensorQuantParams:
    values = values.astype(np.float64).reshape(-1)
    low, high = _outward(float(values.min()), float(values.max()))
    scale = np.asarray(entry["scale"], dtype=np.float32).reshape(-1)
    return TensorQuantParams(
        low,
        high,
        size=values.size,
        element_type=ELEMENT_TYPES["int16" if entry.get("bits") == 16 else "int32"],
        scale=tuple(1.0 / float(s) for s in scale),
        zero_point=(0,) * scale.size,
        value=tuple(values.tolist()),
    )


def from_record(record: dict, model: onnx.ModelProto) -> NetQuantParams:
    """TIDL quant params for the float model that `record` (quant_params.json) was written from.

    One layer per quantized tensor, named by it as TIDL names layers: a `TIDL_DataLayer` per
    quantized graph input, then in graph order one per node output that has a grid. A producer
    fused with its activation (Conv+Relu, see qdq.py) is one layer, named by the activation's
    output and typed by the producer, as TIDL fuses them. Value-preserving ops (MaxPool,
    Reshape, ...) get a layer with the range of the grid they inherit, since TIDL needs every
    layer's range to skip calibration. Weights are all the node's inputs the record quantized
    (per-channel scales as repeated `scale`, min/max = ±max(scale·qmax), or the grid's ends
    if it has a zero point); a PRelu's constant is its `slope`; a bias carries its
    float values from the model. quant_type is ASYMMETRIC iff some activation has a nonzero
    zero point (an unsigned [0, max] grid counts as symmetric, as TIDL treats it);
    calib_type is PERCHANNEL iff some weight has an axis.
    """
    graph = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        raise ModelError(
            "from_record needs the float model the record was written from, not the QDQ model"
        )
    acts, weights, biases = record["activations"], record["weights"], record["biases"]
    inits = {t.name: t for t in graph.initializer}
    outputs = graph_index.output_names(graph)
    consumers = graph_index.consumers(graph)

    layers: list[LayerQuantParams] = []
    grid: dict[str, dict] = {}  # tensor -> the activation entry whose grid it is on
    for value in graph.input:
        if value.name in acts:
            entry = grid[value.name] = acts[value.name]
            layers.append(
                LayerQuantParams(
                    value.name, DATA_LAYER, _bytes(entry["dtype"]), (_output_tensor(entry),)
                )
            )

    fused_into: dict[str, onnx.NodeProto] = {}  # activation output -> the producer it absorbs
    for node in graph.node:
        if not node.output:
            continue
        out = node.output[0]
        users = consumers[out]
        if (
            node.op_type in FUSING_PRODUCERS
            and out not in acts
            and out not in outputs
            and len(users) == 1
            and users[0].op_type in FUSED_ACTIVATIONS
            and users[0].output[0] in acts
        ):
            fused_into[users[0].output[0]] = node
            continue
        source = fused_into.pop(out, node)
        if out in acts:
            entry = grid[out] = acts[out]
        elif node.op_type in VALUE_PRESERVING and node.input and node.input[0] in grid:
            entry = grid[out] = grid[node.input[0]]
        else:
            entry = None
        w_names = [n for n in source.input if n in weights]
        w = tuple(_weight_tensor(weights[n]) for n in w_names)
        if entry is None and not w:
            continue  # not quantized: TIDL has no range for it either
        b = []
        for name in (n for n in source.input if n in biases):
            if name not in inits:
                raise ModelError(f"bias {name!r} of the record is not an initializer of the model")
            b.append(_bias_tensor(biases[name], numpy_helper.to_array(inits[name])))
        # TIDL keeps a PRelu's constant operand as its slope, not as weights.
        slope, w = (w, ()) if source.op_type == "PRelu" else ((), w)
        bits = _bytes((entry or weights[w_names[0]])["dtype"])
        layers.append(
            LayerQuantParams(
                out,
                layer_type(source.op_type),
                bits,
                outputs=(_output_tensor(entry),) if entry else (),
                weights=w,
                bias=tuple(b),
                slope=slope,
            )
        )

    asymmetric = any(np.any(np.asarray(e["zero_point"]) != 0) for e in acts.values())
    per_channel = any(e.get("axis") is not None for e in weights.values())
    return NetQuantParams(
        tuple(layers),
        QuantType.ASYMMETRIC if asymmetric else QuantType.SYMMETRIC,
        CalibType.PERCHANNEL if per_channel else CalibType.PERTENSOR,
    )


def onnx_scale(tidl_scale: float) -> np.float32:
    """The ONNX (float32) scale of a TIDL multiplier; exact for scales from_record wrote."""
    return np.float32(1.0 / tidl_scale)
