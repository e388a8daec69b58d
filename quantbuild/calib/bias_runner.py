"""Advanced bias calibration, the onnxruntime side: sessions, feeds and the final model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantbuild.calib.bias_correction import BiasedLayer, channel_means, step_size, update
from quantbuild.data.dataset import Dataset
from quantbuild.evaluate.metrics import clearly_worse, frame_errors
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.progress import track
from quantbuild.runtime import session, with_outputs

# Frames on which calibrated and uncalibrated biases are compared: the last calibration frames,
# those not fitted first. 32 paired frames tell a real gain from noise where 14 unfitted ones
# could not (orientation, held-out set: a coin toss).
CHECK_FRAMES = 32


def _layers(qdq: onnx.ModelProto, record: dict) -> list[BiasedLayer]:
    inits = {t.name: t for t in qdq.graph.initializer}
    produced = {o for n in qdq.graph.node for o in n.output}
    layers = []
    for bias, info in record["biases"].items():
        reference = info["output"]
        output = f"{reference}_float" if f"{reference}_float" in produced else reference
        scale = np.asarray(info["scale"], dtype=np.float32)
        q = numpy_helper.to_array(inits[f"{bias}_quantized"]).astype(np.float32)
        limit = 2 ** (info["bits"] - 1) - 1
        value = (q * scale).astype(np.float32)
        axis = info.get("channel_axis", 1)
        layers.append(BiasedLayer(bias, output, reference, scale, limit, value, axis))
    return layers


def _with_bias_inputs(qdq: onnx.ModelProto, layers: list[BiasedLayer]) -> onnx.ModelProto:
    """The QDQ model with each calibrated bias fed as a float input instead of dequantized."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    names = {layer.bias for layer in layers}
    kept = [
        n
        for n in model.graph.node
        if not (n.op_type == "DequantizeLinear" and n.output[0] in names)
    ]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for layer in layers:
        model.graph.input.append(
            helper.make_tensor_value_info(
                layer.bias, onnx.TensorProto.FLOAT, list(layer.scale.shape)
            )
        )
    used = {i for n in model.graph.node for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def _float_pass(
    float_model: onnx.ModelProto,
    layers: list[BiasedLayer],
    dataset: Dataset,
    fitted: list,
    check: list,
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """One float pass over the fitted and the check frames: the layers' channel means on the
    fitted frames and the model's outputs on the check frames."""
    inputs = graph_inputs(float_model)
    outputs = [o.name for o in float_model.graph.output]
    tensors = [layer.reference for layer in layers]
    runner = session(with_outputs(float_model, list(dict.fromkeys(tensors + outputs))))
    float_means, reference = [], []
    for frame in dict.fromkeys(fitted + check):
        wanted = (tensors if frame in fitted else []) + (outputs if frame in check else [])
        values = dict(zip(wanted, runner.run(wanted, dataset.load(frame, inputs))))
        if frame in fitted:
            float_means.append([channel_means(values[x.reference], x.axis) for x in layers])
        if frame in check:
            reference.append([values[name] for name in outputs])
    return float_means, reference


def _fit(
    qdq: onnx.ModelProto,
    layers: list[BiasedLayer],
    float_means: list[list[np.ndarray]],
    feeds: Callable[[int], dict],
    iterations: int,
) -> tuple[float, float]:
    """TI's iterations, updating `layers` in place; the first and last mean channel gaps.
    `float_means[i]` are the float model's channel means on the frame `feeds(i)` loads."""
    tensors = [layer.output for layer in layers]
    runner = session(with_outputs(_with_bias_inputs(qdq, layers), tensors))
    first_gap = last_gap = 0.0
    for t in track(range(iterations), "bias calibration", iterations, unit="iterations"):
        index = t % len(float_means)
        # Frames are re-read rather than kept: memory stays flat in the number of frames.
        feed = {**feeds(index), **{layer.bias: layer.on_grid() for layer in layers}}
        quant_means = [
            channel_means(value, layer.axis)
            for value, layer in zip(runner.run(tensors, feed), layers)
        ]
        gap = float(
            np.mean([np.abs(f - q).mean() for f, q in zip(float_means[index], quant_means)])
        )
        first_gap = gap if t == 0 else first_gap
        last_gap = gap
        for layer, f, q in zip(layers, float_means[index], quant_means):
            update(layer, f, q, step_size(t, len(float_means)))
    return first_gap, last_gap


def calibrate_biases(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    record: dict,
    dataset: Dataset,
    frames: int,
    iterations: int,
    log: Callable[[str], None] = print,
) -> onnx.ModelProto:
    """Correct the biases of `qdq` toward the float model's per-channel output means (TI's
    advanced bias calibration). The corrected model is returned unless its output is clearly
    further from the float model's than `qdq`'s (metrics.clearly_worse) on the last
    CHECK_FRAMES calibration frames; else `qdq` itself."""
    layers = _layers(qdq, record)
    if not layers:
        return qdq
    # Only the frames the iterations visit are fitted.
    chosen = dataset.frames[: min(frames, iterations)]
    check, where = check_frames(dataset, len(chosen))
    float_means, reference = _float_pass(float_model, layers, dataset, chosen, check)
    inputs = graph_inputs(float_model)
    first_gap, last_gap = _fit(
        qdq, layers, float_means, lambda i: dataset.load(chosen[i], inputs), iterations
    )
    result = onnx.ModelProto()
    result.CopyFrom(qdq)
    by_name = {f"{layer.bias}_quantized": layer for layer in layers}
    for tensor in result.graph.initializer:
        if tensor.name in by_name:
            tensor.CopyFrom(numpy_helper.from_array(by_name[tensor.name].integers(), tensor.name))
    summary = (
        f"bias calibration: {len(layers)} layers, {len(chosen)} frames, {iterations} iterations; "
        f"mean |float - quantized| channel mean {first_gap:.3g} -> {last_gap:.3g}"
    )
    # Matching every layer's channel means does not always bring the output closer to the
    # float model's (it can move it away, e.g. around 16-bit layers in mixed precision): the
    # calibrated biases are dropped when they clearly do. Only clearly: what they gain is
    # mostly on a few hard frames (on held-out data, orientation top-1 0.943 -> 0.983), which a
    # small check set may not hold.
    before, after = output_errors(float_model, [qdq, result], dataset, check, reference)
    change = f"output error {before.mean():.3g} -> {after.mean():.3g} on {where}"
    if clearly_worse(after, before):
        log(f"{summary}; {change}: clearly worse, kept the uncalibrated biases")
        return qdq
    log(f"{summary}; {change}")
    return result


def check_frames(dataset: Dataset, used: int) -> tuple[list, str]:
    """The last CHECK_FRAMES calibration frames, and how to name them in a log line (how many
    of them are among the first `used`, which a calibration was fitted on)."""
    start = max(len(dataset.frames) - CHECK_FRAMES, 0)
    check = dataset.frames[start:]
    fitted = max(min(used, len(dataset.frames)) - start, 0)
    return check, f"{len(check)} frames ({len(check) - fitted} not fitted)"


def output_errors(
    float_model: onnx.ModelProto,
    candidates: list[onnx.ModelProto],
    dataset: Dataset,
    frames: list,
    reference: list[list[np.ndarray]] | None = None,
) -> list[np.ndarray]:
    """Each candidate's per-frame output error relative to the float model on `frames`
    (whose float outputs are `reference` when already computed)."""
    inputs = graph_inputs(float_model)
    names = [o.name for o in float_model.graph.output]
    feeds = [dataset.load(frame, inputs) for frame in frames]
    if reference is None:
        reference_runner = session(float_model)
        reference = [reference_runner.run(names, feed) for feed in feeds]
    errors = []
    for model in candidates:
        runner = session(model)
        errors.append(frame_errors([runner.run(names, feed) for feed in feeds], reference))
    return errors
