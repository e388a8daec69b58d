"""Advanced bias calibration, the update rule (numpy only).

TI's reference: run the float and the quantized model on calibration frames, take per-channel
output means (over N, H, W; a MatMul's channels are its last axis) of every layer with a bias, and move each bias toward the float
mean: b <- b + alpha * (mean_float - mean_quantized), alpha = 0.05 * 0.5**epoch, one frame per
iteration, an epoch being one pass over the frames. The bias the quantized model sees is
always on its integer grid; the correction accumulates in float between steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


@dataclass
class BiasedLayer:
    """A layer whose bias is calibrated."""

    bias: str  # bias tensor name (the DequantizeLinear output in the QDQ model)
    output: str  # the layer's output in the QDQ model, before any output quantization
    reference: str  # the same tensor in the float model
    scale: np.ndarray  # per-channel bias scale
    limit: int  # largest bias integer
    value: np.ndarray  # current float bias
    axis: int = 1  # the channel axis of the output (-1 for a MatMul over tokens)

    def integers(self) -> np.ndarray:
        return np.clip(np.rint(self.value / self.scale), -self.limit - 1, self.limit).astype(
            np.int32
        )

    def on_grid(self) -> np.ndarray:
        """The bias as the quantized model sees it."""
        return (self.integers().astype(np.float32) * self.scale).astype(np.float32)


def channel_means(tensor: np.ndarray, axis: int = 1) -> np.ndarray:
    """Mean of every channel (`axis`) over all other axes."""
    if tensor.ndim == 1:
        return tensor.astype(np.float64)
    axis %= tensor.ndim
    axes = tuple(i for i in range(tensor.ndim) if i != axis)
    return tensor.astype(np.float64).mean(axis=axes)


def step_size(iteration: int, frames: int) -> float:
    """alpha for an iteration: 0.05, halved after every pass over the frames."""
    return ALPHA * 0.5 ** (iteration // frames)


def update(
    layer: BiasedLayer, float_mean: np.ndarray, quant_mean: np.ndarray, alpha: float
) -> None:
    """One correction step of one layer's bias."""
    layer.value = (layer.value + alpha * (float_mean - quant_mean)).astype(np.float32)
