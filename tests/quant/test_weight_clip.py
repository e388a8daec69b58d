"""Weight clipping: TIDL's rule and the MSE-optimal clip."""

from __future__ import annotations

import numpy as np
import pytest

from quantbuild.quant.params import weight_qparams
from quantbuild.quant.weight_clip import clip_weights, mse_clip, tidl_clip


def _error(original: np.ndarray, clipped: np.ndarray, axis) -> float:
    qp = weight_qparams(clipped, 8, axis is not None, False, axis or 0)
    return float(np.square(qp.dequantize(qp.quantize(clipped)) - original).sum())


def test_tidl_rule_clamps_to_16_times_the_median():
    w = np.full(1000, 0.5, dtype=np.float32)
    w[0] = 100.0
    clipped = tidl_clip(w)
    assert float(clipped.max()) == 8.0  # 16 * median 0.5
    assert float(clipped[1]) == 0.5


def test_tidl_rule_leaves_ordinary_weights_alone():
    w = np.random.default_rng(0).normal(0, 1, 1000).astype(np.float32)
    w[0] = 14.0  # below the max|w| > 15 condition
    assert np.array_equal(tidl_clip(w), w)


def test_mse_clip_lowers_the_error_of_heavy_tailed_channels():
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.05, (16, 64, 3, 3)).astype(np.float32)
    w[3, :, 0, 0] = rng.laplace(0, 2.0, 64)  # one channel with a heavy tail
    clipped = mse_clip(w, 8, 0, False)
    assert _error(w, clipped, 0) <= _error(w, w, 0)
    assert clipped.shape == w.shape and clipped.dtype == w.dtype


def test_mse_clip_never_increases_the_error():
    w = np.random.default_rng(2).normal(0, 1, (8, 32)).astype(np.float32)
    for axis in (None, 0):
        assert _error(w, mse_clip(w, 8, axis, False), axis) <= _error(w, w, axis) + 1e-9


def test_none_returns_the_weights_unchanged():
    w = np.random.default_rng(3).normal(0, 1, (4, 4)).astype(np.float32)
    assert clip_weights(w, "none", 8, 0, False) is w


def test_tidl_rule_is_applied_per_channel_for_per_channel_weights():
    w = np.full((4, 9), 0.3, dtype=np.float32)
    w[3] = np.linspace(-23.5, 23.5, 9)  # a legitimately large channel (folded BatchNorm)
    per_tensor = clip_weights(w, "tidl", 8, None, False)
    per_channel = clip_weights(w, "tidl", 8, 0, False)
    assert float(np.abs(per_tensor[3]).max()) == pytest.approx(16 * 0.3)  # clamped with the tensor
    assert np.array_equal(per_channel, w)  # each channel judged alone: nothing to clip
