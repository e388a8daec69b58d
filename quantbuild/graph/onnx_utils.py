"""Small helpers over ONNX protos shared by preparation, quantization and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantbuild.data.dataset import InputSpec
from quantbuild.errors import ModelError, Where


def load_model(path: Path, where: Where | str | None = None) -> onnx.ModelProto:
    """Load and check an ONNX model; a broken file is a one-line ModelError."""
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises several unrelated types
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"{path.name}: not a readable ONNX model ({detail}); re-export it", where
        ) from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        detail = str(err).strip().splitlines()[0]
        raise ModelError(f"{path.name}: invalid ONNX model ({detail})", where) from None
    if not model.graph.node:
        raise ModelError(f"{path.name}: the ONNX graph has no nodes", where)
    return model


def opset_version(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """Model inputs that are not initializers, with static dims (None where symbolic)."""
    inits = initializers(model)
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = tuple(dims_of(value.type) or ())
        elem_type = value.type.tensor_type.elem_type or TensorProto.FLOAT
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
        specs.append(InputSpec(value.name, dims, dtype))
    return specs


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Type of every named value known to the graph (inputs, outputs, value_info)."""
    out = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        out[value.name] = value.type
    return out


def dims_of(type_proto: onnx.TypeProto | None) -> list[int | None] | None:
    """A tensor type's dimensions (None where symbolic), or None when it has no shape."""
    if type_proto is None or not type_proto.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim
    ]


def _known(dims: list[int | None] | None) -> tuple[int, ...] | None:
    if dims is None or any(d is None for d in dims):
        return None
    return tuple(d for d in dims if d is not None)


def static_shape(type_proto: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The shape when every dimension is known, else None."""
    return _known(dims_of(type_proto))


def frame_shape(type_proto: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The shape of one frame: as static_shape, with a symbolic leading (batch) dimension
    counted as 1."""
    dims = dims_of(type_proto)
    if dims and len(dims) > 1 and dims[0] is None:
        dims[0] = 1
    return _known(dims)


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(tensor)
