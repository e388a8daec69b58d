"""Range policies computed from bfloat16-bucket histograms."""

from __future__ import annotations

import numpy as np
import pytest

from quantbuild.calib.histogram import BINS, accumulate
from quantbuild.calib.policy import Distribution, activation_ranges, clip_range
from quantbuild.quant.params import Grid


def _dist(x: np.ndarray) -> Distribution:
    hist = np.zeros(BINS, dtype=np.int64)
    accumulate(hist, x)
    return Distribution(hist, float(x.min()), float(x.max()))


def _stats(*tensors: np.ndarray, outputs=(), probabilities=()) -> dict:
    hist = np.zeros((len(tensors), BINS), dtype=np.int64)
    for row, x in zip(hist, tensors):
        accumulate(row, x)
    return {
        "names": np.array([f"t{i}" for i in range(len(tensors))]),
        "min": np.array([x.min() for x in tensors], dtype=np.float64),
        "max": np.array([x.max() for x in tensors], dtype=np.float64),
        "hist": hist,
        "is_output": np.array([i in outputs for i in range(len(tensors))]),
        "is_probability": np.array([i in probabilities for i in range(len(tensors))]),
    }


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> np.ndarray:
    x = np.random.default_rng(0).normal(0, 1, 1_000_000).astype(np.float32)
    x[:10] = 40.0
    return x


@pytest.mark.parametrize("q", [0.001, 0.1, 0.5, 0.9, 0.9999])
def test_quantile_is_within_a_bucket_of_numpy(gaussian_with_outliers, q):
    got = _dist(gaussian_with_outliers).quantile(q)
    want = float(np.quantile(gaussian_with_outliers, q))
    assert abs(got - want) <= abs(want) * 2**-7 + 1e-3


def test_minmax_is_the_observed_range(gaussian_with_outliers):
    low, high = clip_range(_dist(gaussian_with_outliers), "minmax", 8, True, False, 99.99)
    assert (low, high) == (float(gaussian_with_outliers.min()), 40.0)


def test_percentile_drops_the_tails(gaussian_with_outliers):
    low, high = clip_range(_dist(gaussian_with_outliers), "percentile", 8, True, False, 99.99)
    assert high == pytest.approx(np.quantile(gaussian_with_outliers, 0.9999), rel=0.01)
    assert low == pytest.approx(np.quantile(gaussian_with_outliers, 0.0001), rel=0.01)


def test_percentile_keeps_relu_outputs_unsigned():
    x = np.maximum(np.random.default_rng(1).normal(0, 1, 100_000), 0).astype(np.float32)
    low, high = clip_range(_dist(x), "percentile", 8, True, False, 99.9)
    assert low == 0.0
    assert 2.5 < high < 3.5


def _error(x: np.ndarray, low: float, high: float) -> float:
    from quantbuild.quant.params import activation_qparams

    qp = activation_qparams(low, high, 8, True, False)
    return float(np.square(qp.dequantize(qp.quantize(x)) - x).sum())


def test_mse_range_has_less_error_than_the_full_range_for_heavy_tails():
    rng = np.random.default_rng(2)
    x = rng.laplace(0, 1, 200_000).astype(np.float32)
    low, high = clip_range(_dist(x), "mse", 8, True, False, 99.99)
    assert high < float(x.max()) * 0.9
    assert _error(x, low, high) < _error(x, float(x.min()), float(x.max()))


def test_mse_keeps_a_uniform_distribution_whole():
    x = np.random.default_rng(3).uniform(-1, 1, 100_000).astype(np.float32)
    low, high = clip_range(_dist(x), "mse", 8, True, False, 99.99)
    assert high > 0.95


def test_entropy_clips_outliers_but_not_the_bulk(gaussian_with_outliers):
    low, high = clip_range(_dist(gaussian_with_outliers), "entropy", 8, True, False, 99.99)
    assert 2.5 < high < 10.0
    assert low == -high or low == float(gaussian_with_outliers.min())


def test_entropy_is_not_dragged_to_zero_by_relu_zeros():
    x = np.maximum(np.random.default_rng(4).normal(-1.5, 1, 200_000), 0).astype(
        np.float32
    )  # ~93 % zeros
    low, high = clip_range(_dist(x), "entropy", 8, True, False, 99.99)
    assert high > 0.5 * float(np.quantile(x[x > 0], 0.99))


def test_model_outputs_are_never_clipped(gaussian_with_outliers):
    stats = _stats(gaussian_with_outliers, gaussian_with_outliers, outputs=(1,))
    ranges = activation_ranges(stats, "percentile", Grid(8, True, False), 99.9)
    assert ranges["t0"].max < 5.0
    assert ranges["t1"].max == 40.0


def test_power_of_2_grids_cover_the_clipped_range(gaussian_with_outliers):
    ranges = activation_ranges(
        _stats(gaussian_with_outliers), "percentile", Grid(8, True, True), 99.99
    )
    r = ranges["t0"]
    scale = float(r.qparams.scale)
    assert np.log2(scale) == round(np.log2(scale))
    assert scale * 127 >= max(-r.min, r.max)


@pytest.mark.parametrize("power_of_2", [False, True])
@pytest.mark.parametrize("bits", [8, 16])
def test_softmax_outputs_get_the_whole_unit_interval(power_of_2, bits):
    # Attention probabilities: mostly tiny, a rare peak near 1 that percentile would clip.
    x = np.random.default_rng(2).dirichlet(np.full(64, 0.05), 2000).astype(np.float32).ravel()
    ranges = activation_ranges(
        _stats(x, x, probabilities=(1,)), "percentile", Grid(bits, True, power_of_2)
    )
    assert ranges["t0"].max < 0.9  # clipped as any other tensor
    r = ranges["t1"]
    assert r.min == 0.0 and r.qparams.dtype == f"uint{bits}"
    step = float(r.qparams.scale)
    if power_of_2:  # 2^-bits: the top code is 1 - 2^-bits, one step short of 1
        assert step == 2.0**-bits
    else:
        assert step * (2**bits - 1) == pytest.approx(1.0)
