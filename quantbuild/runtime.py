"""onnxruntime plumbing: sessions that expose intermediate tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from quantbuild import cores
from quantbuild.errors import DataError, ModelError

if TYPE_CHECKING:
    from quantbuild.data.dataset import Dataset, FrameRef

FLOAT = onnx.TensorProto.FLOAT


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs of type float32, in graph order."""
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    }
    inits = {t.name for t in model.graph.initializer}
    names = [
        i.name for i in model.graph.input if i.name not in inits and types.get(i.name) == FLOAT
    ]
    for node in model.graph.node:
        names.extend(o for o in node.output if o and types.get(o) == FLOAT)
    return list(dict.fromkeys(names))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are exactly `names` (intermediates exposed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {
        v.name: v
        for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
    }
    del copy.graph.output[:]
    for name in names:
        value = onnx.ValueInfoProto()
        value.CopyFrom(known[name]) if name in known else value.MergeFrom(
            onnx.helper.make_tensor_value_info(name, FLOAT, None)
        )
        copy.graph.output.append(value)
    return copy


def session(
    model: onnx.ModelProto, optimize: bool = False, in_order: bool = False, spinning: bool = True
) -> ort.InferenceSession:
    """A CPU session. Without `optimize`, no graph rewrites: every tensor is computed as written.
    With `in_order`, nodes run in the model's own (topological) order, which the caller chose
    to keep few tensors alive at once; results are the same. `spinning=False`: idle threads
    sleep at once (for sessions that take turns with others or run side by side; results are
    the same)."""
    options = ort.SessionOptions()
    if in_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    if cores.shared or not spinning:
        # Parallel builds: idle threads sleep, else the workers' spinning threads take each
        # other's cores (one build alone spins: 10-25 % faster on models with many mid-size ops).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load the model: {str(err).splitlines()[0]}") from None


def run_frame(
    runner: ort.InferenceSession,
    names: list[str],
    feed: dict,
    dataset: Dataset,
    frame: FrameRef,
    finite: bool = False,
) -> list[np.ndarray]:
    """The named tensors on one frame of `dataset`; a DataError naming the frame when the model
    fails, or (with `finite`) when a tensor is not finite."""
    try:
        values = runner.run(names, feed)
    except Exception as err:
        raise DataError(
            f"{dataset.field}: the model failed on {dataset.describe(frame)}: "
            f"{str(err).splitlines()[0]}",
            dataset.where,
        ) from None
    for name, value in zip(names, values) if finite else ():
        if value.size and not np.isfinite(value).all():
            raise not_finite(name, dataset, frame)
    return values


def not_finite(name: str, dataset: Dataset, frame: FrameRef) -> DataError:
    """The error for a tensor holding NaN or infinity on a frame."""
    return DataError(
        f"{dataset.field}: tensor {name!r} is not finite on {dataset.describe(frame)}; "
        "check the preprocessing (mean/scale) and the model",
        dataset.where,
    )
