"""Scales and zero points (numpy only): symmetric/asymmetric, float or power-of-2, 8/16 bits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES: dict[str, type[np.integer]] = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
}


@dataclass(frozen=True)
class QParams:
    """Affine quantization q = clip(round(x / scale) + zero_point) of one tensor.

    `scale` and `zero_point` are scalars, or 1-D along `axis` for per-channel weights.
    """

    scale: np.ndarray | np.floating  # float32
    zero_point: np.ndarray  # integer, dtype of the quantized tensor
    dtype: str
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return int(np.iinfo(DTYPES[self.dtype]).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(DTYPES[self.dtype]).max)

    def _shaped(self, value: np.ndarray | np.number, ndim: int) -> np.ndarray | np.number:
        if self.axis is None or value.ndim == 0:
            return value
        shape = [1] * ndim
        shape[self.axis] = -1
        return value.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integers as ONNX QuantizeLinear computes them (round half to even, saturate)."""
        scale = self._shaped(self.scale.astype(np.float32), x.ndim)
        zp = self._shaped(self.zero_point.astype(np.int64), x.ndim)
        # Clip in float first: huge values (or inf) must saturate, not wrap in the integer cast.
        q = np.rint(x.astype(np.float32) / scale).astype(np.float64) + zp
        return np.clip(q, self.qmin, self.qmax).astype(DTYPES[self.dtype])

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale = self._shaped(self.scale.astype(np.float32), q.ndim)
        zp = self._shaped(self.zero_point.astype(np.int64), q.ndim)
        return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)


@dataclass(frozen=True)
class TensorRange:
    """Calibrated range and quantization parameters of one activation tensor."""

    min: float
    max: float
    qparams: QParams

    @property
    def bits(self) -> int:
        return int(self.qparams.dtype.lstrip("uint"))


@dataclass(frozen=True)
class Grid:
    """How activations are quantized: bit width, symmetric or not, power-of-2 scales or not."""

    bits: int
    symmetric: bool
    power_of_2: bool

    def qparams(self, low: float, high: float) -> QParams:
        """Per-tensor parameters on this grid for the range [low, high]."""
        return activation_qparams(low, high, self.bits, self.symmetric, self.power_of_2)


_TINY = np.finfo(np.float32).tiny  # smallest normal float32, a power of two


def _round_scale(scale: np.ndarray | np.floating, power_of_2: bool) -> np.ndarray:
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero tensor: any positive scale is exact
    if power_of_2:
        scale = np.exp2(np.ceil(np.log2(scale)))
    # Ranges too small for float32 still need a positive scale.
    return np.maximum(scale, _TINY).astype(np.float32)


def activation_qparams(
    low: float, high: float, bits: int, symmetric: bool, power_of_2: bool
) -> QParams:
    """Per-tensor parameters for an activation range [low, high].

    Never-negative tensors (ReLU outputs) are unsigned with zero point 0 in both modes.
    Symmetric: signed, zero point 0. Asymmetric: unsigned with a zero point, the range widened
    to include 0 so that zero is exact.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    unsigned = f"uint{bits}"
    if low >= 0.0:
        qmax = 2**bits - 1
        scale = _round_scale(np.float64(high / qmax), power_of_2)
        return QParams(scale, np.array(0, dtype=DTYPES[unsigned]), unsigned)
    if symmetric:
        signed = f"int{bits}"
        qmax = 2 ** (bits - 1) - 1
        scale = _round_scale(np.float64(max(-low, high) / qmax), power_of_2)
        return QParams(scale, np.array(0, dtype=DTYPES[signed]), signed)
    qmax = 2**bits - 1
    scale = _round_scale(np.float64((high - low) / qmax), power_of_2)
    zero_point = int(np.clip(np.rint(-low / np.float64(scale)), 0, qmax))
    return QParams(scale, np.array(zero_point, dtype=DTYPES[unsigned]), unsigned)


def weight_qparams(
    weight: np.ndarray, bits: int, per_channel: bool, power_of_2: bool, axis: int = 0
) -> QParams:
    """Symmetric signed parameters for a weight tensor, per tensor or per `axis` channel."""
    signed = f"int{bits}"
    qmax = 2 ** (bits - 1) - 1
    magnitude = np.abs(weight.astype(np.float64))
    if per_channel:
        other = tuple(i for i in range(weight.ndim) if i != axis)
        amax = magnitude.max(axis=other) if other else magnitude
        scale = _round_scale(amax / qmax, power_of_2)
        return QParams(scale, np.zeros(scale.shape, dtype=DTYPES[signed]), signed, axis)
    scale = _round_scale(np.float64(magnitude.max() / qmax), power_of_2)
    return QParams(scale, np.array(0, dtype=DTYPES[signed]), signed)


def bias_int32(
    bias: np.ndarray,
    input_scale: np.ndarray | np.floating,
    weight_scale: np.ndarray | np.floating,
    bits: int,
    shift: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Bias as integers at scale input_scale * weight_scale, limited to `bits` (16 or 32).

    Values beyond the limit saturate, unless `shift`: then the scale of each channel that would
    overflow is multiplied by the smallest power of two that makes it fit (a bias shift, as
    wide 16-bit accumulators apply), keeping the weights' precision.
    """
    scale = (input_scale.astype(np.float32) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    limit = 2 ** (bits - 1) - 1
    if shift:
        ratio = np.abs(bias.astype(np.float64)) / (scale.astype(np.float64) * limit)
        exponent = np.where(ratio > 1.0, np.ceil(np.log2(np.maximum(ratio, 1.0))), 0.0)
        scale = (scale * np.exp2(exponent)).astype(np.float32)
    q = np.clip(np.rint(bias.astype(np.float64) / scale.astype(np.float64)), -limit - 1, limit)
    return q.astype(np.int32), scale


def fit_weights_to_bias(
    weight_qp: QParams,
    bias: np.ndarray,
    input_scale: np.ndarray | np.floating,
    bias_bits: int,
    power_of_2: bool,
) -> tuple[QParams, int]:
    """Raise weight scales where the bias would overflow `bias_bits` at input_scale * weight_scale.

    The bias integer is b / (s_x * s_w); rather than saturating it, the weight scale of the
    offending channel (or tensor) grows until it fits, as onnxruntime's quantizer and TI's
    bias constraint for TDA4VM do. Returns the new parameters and how many scales were raised.
    """
    limit = 2 ** (bias_bits - 1) - 1
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * limit)
    if weight_qp.axis is None:
        needed = np.float64(needed.max(initial=0.0))
    scale = weight_qp.scale.astype(np.float64)
    raise_mask = needed > scale
    if not np.any(raise_mask):
        return weight_qp, 0
    raised = _round_scale(np.where(raise_mask, needed * (1 + 1e-6), scale), power_of_2)
    raised = np.maximum(raised, weight_qp.scale)  # float32 rounding never lowers a scale
    return QParams(
        raised.astype(np.float32), weight_qp.zero_point, weight_qp.dtype, weight_qp.axis
    ), int(np.sum(raise_mask))
