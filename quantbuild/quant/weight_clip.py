"""Weight clipping before quantization (numpy only).

- tidl: TI's rule — when max|w| > 15 and max|w| > 16 * median|w|, clamp to ±16 * median|w|,
  applied per quantization group: the whole tensor for per-tensor weights, each output channel
  for per-channel weights (a channel with its own scale gains nothing from a clip computed
  over other channels, and BatchNorm folding legitimately gives channels very different sizes).
- mse: per output channel (or per tensor), the clip threshold with the least squared error
  between the weights and their quantized values, searched over 1 % steps of max|w|.
"""

from __future__ import annotations

import numpy as np

from quantbuild.quant.params import weight_qparams


def tidl_clip(weight: np.ndarray) -> np.ndarray:
    """TIDL's weight clipping rule, per tensor."""
    magnitude = np.abs(weight)
    peak, median = float(magnitude.max(initial=0.0)), float(np.median(magnitude))
    if peak > 15.0 and peak > 16.0 * median:
        return np.clip(weight, -16.0 * median, 16.0 * median).astype(weight.dtype)
    return weight


def _channels_first(weight: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return weight.reshape(1, -1)
    return np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)


def mse_clip(weight: np.ndarray, bits: int, axis: int | None, power_of_2: bool) -> np.ndarray:
    """Clip each channel (axis) or the whole tensor (axis None) where that lowers the error."""
    rows = _channels_first(weight.astype(np.float32), axis)
    peak = np.abs(rows).max(axis=1)
    best_error = np.full(len(rows), np.inf)
    best = peak.copy()
    for fraction in np.linspace(0.3, 1.0, 71):
        threshold = (peak * fraction).astype(np.float32)
        clipped = np.clip(rows, -threshold[:, None], threshold[:, None])
        qp = weight_qparams(clipped, bits, True, power_of_2, axis=0)
        error = np.square(qp.dequantize(qp.quantize(clipped)) - rows).sum(axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = np.where(better, threshold, best)
    clipped = np.clip(rows, -best[:, None], best[:, None])
    if axis is None:
        return clipped.reshape(weight.shape).astype(weight.dtype)
    moved = np.moveaxis(weight, axis, 0).shape
    return np.moveaxis(clipped.reshape(moved), 0, axis).astype(weight.dtype)


def clip_weights(
    weight: np.ndarray, method: str, bits: int, axis: int | None, power_of_2: bool
) -> np.ndarray:
    """Apply a weight clipping method ('none', 'tidl', 'mse'); `axis` is the per-channel axis."""
    if method == "tidl" and axis is not None:
        moved = np.moveaxis(weight, axis, 0)
        clipped = np.stack([tidl_clip(channel) for channel in moved])
        return np.moveaxis(clipped, 0, axis).astype(weight.dtype)
    if method == "tidl":
        return tidl_clip(weight)
    if method == "mse":
        return mse_clip(weight, bits, axis, power_of_2)
    return weight
