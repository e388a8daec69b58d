"""GPTQ weight rounding, the onnxruntime side: layer inputs from the QDQ model, new integers.

The second moments H = E[x xᵀ] are taken from the inputs the layers see in the quantized model
(its own activation grids and upstream rounding), on the first ROUNDING_FRAMES calibration
frames, at up to POSITIONS sampled output positions per frame. On PP-LCNet orientation (TDA4VM,
held-out set, no bias calibration) H from the float model's inputs measured worse than nearest
rounding (top-1 0.938 vs 0.943), H from the quantized model better (0.960).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantbuild.calib.rounding import (
    conv_patches,
    gptq_round,
    output_error,
    output_size,
    second_moment,
)
from quantbuild.cores import FanOut
from quantbuild.data.dataset import Dataset
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.progress import track
from quantbuild.runtime import session, with_outputs

ROUNDING_FRAMES = 32
POSITIONS = 1024  # sampled output positions (rows, for Gemm/MatMul) per layer and frame
# H over fewer samples than a few times its size is a poor estimate, and GPTQ fits it rather
# than the data (a classifier's Gemm sees one input row per frame): such layers keep nearest.
SAMPLES_PER_INPUT = 4
SEED = 0


@dataclass
class RoundedLayer:
    """A layer whose weight integers are chosen by GPTQ."""

    node: onnx.NodeProto
    weight: str  # the float weight's name; its integers are `{weight}_quantized`
    rows: np.ndarray  # the float weight as (G, R, K)
    scale: np.ndarray  # the grid: a scalar or (G, R)
    qmin: int
    qmax: int
    geometry: tuple = ()  # Conv: kernel, strides, pads, dilations
    hessian: np.ndarray | None = None  # (G, K, K), once accumulated
    mean: np.ndarray | None = None  # (G, K): mean input, for the bias correction
    samples: int = 0

    def sample(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(G, K, n) inputs of this layer at sampled positions of one frame."""
        if self.node.op_type == "Conv":
            kernel, strides, pads, dilations = self.geometry
            total = int(np.prod(output_size(x.shape, kernel, strides, pads, dilations)))
            positions = np.sort(rng.choice(total, min(POSITIONS, total), replace=False))
            return conv_patches(x, kernel, strides, pads, dilations, self.rows.shape[0], positions)
        flat = x.reshape(-1, x.shape[-1])
        if self.node.op_type == "Gemm" and _attributes(self.node).get("transA", 0):
            flat = x.T
        chosen = np.sort(rng.choice(len(flat), min(POSITIONS, len(flat)), replace=False))
        return flat[chosen].T[None]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_geometry(node: onnx.NodeProto, weight: np.ndarray) -> tuple | None:
    """(kernel, strides, pads, dilations) of a 2-D convolution with explicit padding, else None."""
    a = _attributes(node)
    if weight.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
    return (
        kernel,
        tuple(a.get("strides", (1, 1))),
        tuple(a.get("pads", (0, 0, 0, 0))),
        tuple(a.get("dilations", (1, 1))),
    )


def _as_rows(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    """The weight as (G, R, K) rows over the layer's inputs, or None for other layouts."""
    if node.op_type == "Conv":
        if _conv_geometry(node, weight) is None:
            return None  # 2-D convolutions with explicit padding only
        groups = int(_attributes(node).get("group", 1))
        return weight.reshape(groups, weight.shape[0] // groups, -1)
    if node.op_type == "Gemm" and weight.ndim == 2:
        return (weight if _attributes(node).get("transB", 0) else weight.T)[None]
    if node.op_type == "MatMul" and weight.ndim == 2:
        return weight.T[None]
    return None


def _layers(float_model: onnx.ModelProto, qdq: onnx.ModelProto, record: dict) -> list:
    floats = {t.name: t for t in float_model.graph.initializer}
    quantized = {t.name for t in qdq.graph.initializer}
    layers = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name, info = node.input[1], record["weights"].get(node.input[1])
        if info is None or name not in floats or f"{name}_quantized" not in quantized:
            continue
        if info["zero_point"] not in (0, [0] * np.size(info["zero_point"])):
            continue  # symmetric grids only
        weight = numpy_helper.to_array(floats[name])
        rows = _as_rows(node, weight)
        scale = np.asarray(info["scale"], dtype=np.float64)
        if rows is None or scale.size not in (1, rows.shape[0] * rows.shape[1]):
            continue
        scale = scale.reshape(rows.shape[:2]) if scale.size > 1 else scale
        bounds = np.iinfo(np.dtype(info["dtype"]))
        geometry = _conv_geometry(node, weight) if node.op_type == "Conv" else ()
        assert geometry is not None  # rows is not None: _as_rows checked it
        layer = RoundedLayer(node, name, rows, scale, int(bounds.min), int(bounds.max), geometry)
        layers.append(layer)
    return layers


def _accumulate(qdq: onnx.ModelProto, layers: list[RoundedLayer], dataset: Dataset, frames):
    """Every layer's H over `frames`, from its inputs in the quantized model."""
    inputs = graph_inputs(qdq)
    names = list(dict.fromkeys(layer.node.input[0] for layer in layers))
    runner = session(with_outputs(qdq, names))
    rng = np.random.default_rng(SEED)
    for frame in track(frames, "weight rounding", len(frames)):
        values = dict(zip(names, runner.run(names, dataset.load(frame, inputs))))
        for layer in layers:
            patches = layer.sample(values[layer.node.input[0]], rng)
            moment, mean = second_moment(patches), patches.mean(axis=2, dtype=np.float64)
            layer.hessian = moment if layer.hessian is None else layer.hessian + moment
            layer.mean = mean if layer.mean is None else layer.mean + mean
            layer.samples += patches.shape[2]
    for layer in layers:
        assert layer.hessian is not None and layer.mean is not None  # frames is not empty
        layer.hessian = layer.hessian / len(frames)
        layer.mean = layer.mean / len(frames)


def _bias_shift(layer: RoundedLayer, integers: np.ndarray) -> np.ndarray:
    """The layer's mean output error E[(W - s·Q) x] (from the same inputs as H), per output
    channel: GPTQ lowers the error's energy, not its mean, and means add up through the network."""
    assert layer.mean is not None  # accumulated
    step = np.broadcast_to(np.asarray(layer.scale, dtype=np.float64), layer.rows.shape[:2])
    error = layer.rows.astype(np.float64) - integers * step[..., None]
    return np.einsum("grk,gk->gr", error, layer.mean).reshape(-1)


@dataclass
class Rounding:
    """GPTQ's choices for the layers where they lower the output error: each weight's integers
    with the grid they were chosen on, and the shift its layer's bias takes (float, per output
    channel), both by weight name."""

    integers: dict[str, np.ndarray] = field(default_factory=dict)
    scales: dict[str, np.ndarray] = field(default_factory=dict)
    bias_shifts: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for an .npz (tensor names can hold any character, so they are listed)."""
        names = list(self.integers)
        out = {"weights": np.asarray(names, dtype=np.str_)}
        for i, name in enumerate(names):
            out[f"integers_{i}"] = self.integers[name]
            out[f"scale_{i}"] = np.asarray(self.scales[name], dtype=np.float64)
            out[f"shift_{i}"] = self.bias_shifts[name]
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Rounding:
        rounding = cls()
        for i, name in enumerate(arrays["weights"].tolist()):
            rounding.integers[name] = arrays[f"integers_{i}"]
            rounding.scales[name] = arrays[f"scale_{i}"]
            rounding.bias_shifts[name] = arrays[f"shift_{i}"]
        return rounding


def gptq_rounding(
    float_model: onnx.ModelProto,
    qdq: onnx.ModelProto,
    record: dict,
    dataset: Dataset,
    log: Callable[[str], None] = print,
    fan_out: FanOut | None = None,
) -> Rounding:
    """GPTQ integers for the Conv/Gemm/MatMul weights of `qdq` on their own grids, kept for the
    layers where they lower the layer's output error under H (layers whose H rests on too few
    samples keep nearest), with the bias shift that cancels the mean of the change. With
    `fan_out`, the layers' solves (independent once H is known) run on its workers."""
    layers = _layers(float_model, qdq, record)
    frames = dataset.frames[:ROUNDING_FRAMES]
    rounding = Rounding()
    if not layers or not frames:
        return rounding
    _accumulate(qdq, layers, dataset, frames)
    layers = [x for x in layers if x.samples >= SAMPLES_PER_INPUT * x.rows.shape[2]]
    tensors = {t.name: t for t in qdq.graph.initializer}
    before = after = 0.0
    for layer, integers in zip(layers, _solve(layers, fan_out)):
        nearest = numpy_helper.to_array(tensors[f"{layer.weight}_quantized"])
        old = output_error(
            layer.rows, layer.hessian, nearest.reshape(layer.rows.shape), layer.scale
        )
        new = output_error(layer.rows, layer.hessian, integers, layer.scale)
        before += old
        after += min(new, old)
        if new < old:
            rounding.integers[layer.weight] = integers.reshape(nearest.shape).astype(nearest.dtype)
            rounding.scales[layer.weight] = np.asarray(record["weights"][layer.weight]["scale"])
            rounding.bias_shifts[layer.weight] = _bias_shift(layer, integers)
    log(
        f"weight rounding (gptq): {len(rounding.integers)}/{len(layers)} layers re-rounded on "
        f"{len(frames)} frames; summed layer output error {before:.3g} -> {after:.3g}"
        + (f"; solved on {min(fan_out.workers, len(layers))} workers" if fan_out else "")
    )
    return rounding


def _solve(layers: list[RoundedLayer], fan_out: FanOut | None) -> list[np.ndarray]:
    """Each layer's GPTQ integers, here or spread over a fan-out's workers (every n-th layer
    to a worker: the large ones, late in the network, spread evenly)."""
    problems = [(x.rows, x.hessian, x.scale, x.qmin, x.qmax) for x in layers]
    workers = min(fan_out.workers, len(problems)) if fan_out else 1
    if fan_out is None or workers < 2:
        return solve_layers(problems)
    pieces = fan_out.map(solve_layers, [(problems[i::workers],) for i in range(workers)])
    solved: list[np.ndarray] = [np.empty(0)] * len(problems)
    for i, piece in enumerate(pieces):
        solved[i::workers] = piece
    return solved


def solve_layers(problems: list[tuple[Any, ...]]) -> list[np.ndarray]:
    """gptq_round of each (rows, H, scale, qmin, qmax): a piece of the rounding stage, run
    where a fan-out sends it."""
    return [gptq_round(*problem) for problem in problems]


def apply_rounding(
    qdq: onnx.ModelProto, record: dict, rounding: Rounding
) -> tuple[onnx.ModelProto, int]:
    """(a copy of `qdq` with the rounded integers, how many weights took them). A weight takes
    them only on the grid they were chosen on (mixed precision may have widened it since)."""
    result = onnx.ModelProto()
    result.CopyFrom(qdq)
    tensors = {t.name: t for t in result.graph.initializer}
    bias_of = {n.input[1]: n.input[2] for n in result.graph.node if len(n.input) > 2}
    applied = 0
    for weight, integers in rounding.integers.items():
        info, tensor = record["weights"].get(weight), tensors.get(f"{weight}_quantized")
        if info is None or tensor is None:
            continue
        current = numpy_helper.to_array(tensor)
        scale = np.asarray(info["scale"], dtype=np.float64)
        same_grid = current.dtype == integers.dtype and current.shape == integers.shape
        if not (same_grid and np.array_equal(scale, rounding.scales[weight])):
            continue
        tensor.CopyFrom(numpy_helper.from_array(integers, tensor.name))
        applied += 1
        bias = bias_of.get(weight, "")
        if bias in record["biases"]:
            shift = rounding.bias_shifts[weight]
            _shift_bias(tensors[f"{bias}_quantized"], record["biases"][bias], shift)
    return result, applied


def _shift_bias(tensor: onnx.TensorProto, info: dict, shift: np.ndarray) -> None:
    """Move a quantized bias by `shift` (float), on its own grid."""
    scale = np.asarray(info["scale"], dtype=np.float64)
    limit = 2 ** (info["bits"] - 1) - 1
    value = numpy_helper.to_array(tensor).astype(np.float64) * scale + shift
    integers = np.clip(np.rint(value / scale), -limit - 1, limit).astype(np.int32)
    tensor.CopyFrom(numpy_helper.from_array(integers, tensor.name))
