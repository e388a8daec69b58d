"""Fixed-edge bfloat16 histograms: bucket = top 16 bits, order independent, mergeable."""

from __future__ import annotations

import numpy as np

from quantbuild.calib.histogram import (
    BINS,
    accumulate,
    bucket_bounds,
    bucket_indices,
)


def _values(seed: int = 0, n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(0, 1, n),
        rng.normal(0, 1e-3, n // 4),
        rng.normal(0, 1e4, n // 4),
        np.array([0.0, -0.0, 1.0, -1.0, 0.5, 3.0e38, -3.0e38, 1e-40, -1e-40]),
    ]
    return np.concatenate(parts).astype(np.float32)


def test_bucket_indices_equal_bfloat16_truncation():
    x = _values()
    idx = bucket_indices(x)
    assert idx.shape == (x.size,)
    assert idx.max() < BINS
    # bucket index, shifted back, is the value with its low 16 mantissa bits cleared
    truncated = (idx.astype(np.uint32) << 16).view(np.float32)
    expected = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    np.testing.assert_array_equal(truncated, expected)
    # truncation is toward zero and loses less than 2**-7 relative
    normal = np.abs(x) > 1e-30
    assert np.all(np.abs(truncated) <= np.abs(x))
    rel = np.abs(x[normal] - truncated[normal]) / np.abs(x[normal])
    assert rel.max() < 2.0**-7


def test_bucket_indices_hand_values():
    x = np.array([1.0, -1.0, 0.0, -0.0, 2.0, 1.0078125, 1.0078124], dtype=np.float32)
    assert bucket_indices(x).tolist() == [0x3F80, 0xBF80, 0x0000, 0x8000, 0x4000, 0x3F81, 0x3F80]


def test_bucket_indices_accepts_any_shape_and_float64():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    np.testing.assert_array_equal(bucket_indices(x), bucket_indices(x.astype(np.float32).ravel()))
    # a non-contiguous view is bucketed element by element in C order
    view = x.astype(np.float32)[:, ::2, ::-1]
    np.testing.assert_array_equal(bucket_indices(view), bucket_indices(np.ascontiguousarray(view)))


def test_accumulate_counts_exactly():
    x = _values(1)
    hist = np.zeros(BINS, dtype=np.int64)
    accumulate(hist, x)
    assert hist.sum() == x.size
    idx = bucket_indices(x)
    for bucket in np.unique(idx)[:50]:
        assert hist[bucket] == np.count_nonzero(idx == bucket)
    assert hist[0x3F80] == np.count_nonzero((x >= 1.0) & (x < 1.0078125))


def test_accumulate_order_independent_and_mergeable():
    x = _values(2)
    whole = np.zeros(BINS, dtype=np.int64)
    accumulate(whole, x)

    shuffled = np.zeros(BINS, dtype=np.int64)
    accumulate(shuffled, np.random.default_rng(9).permutation(x))
    np.testing.assert_array_equal(shuffled, whole)

    first = np.zeros(BINS, dtype=np.int64)
    second = np.zeros(BINS, dtype=np.int64)
    accumulate(first, x[:1234])
    accumulate(second, x[1234:])
    np.testing.assert_array_equal(first + second, whole)

    # accumulating into the same histogram twice doubles it
    twice = whole.copy()
    accumulate(twice, x)
    np.testing.assert_array_equal(twice, 2 * whole)


def test_every_value_lies_within_its_bucket_bounds():
    x = _values(3)
    # the extreme members of a few buckets, too
    edges = np.array([0x3F800000, 0x3F80FFFF, 0xBF800000, 0xBF80FFFF, 0x00000001], dtype=np.uint32)
    x = np.concatenate([x, edges.view(np.float32)])
    low, high = bucket_bounds()
    assert low.shape == high.shape == (BINS,)
    idx = bucket_indices(x)
    v = x.astype(np.float64)
    assert np.all(low[idx] <= v), v[~(low[idx] <= v)]
    assert np.all(v <= high[idx]), v[~(v <= high[idx])]


def test_bucket_bounds_hand_values():
    low, high = bucket_bounds()
    assert low[0x3F80] == 1.0
    assert high[0x3F80] == np.uint32(0x3F80FFFF).view(np.float32)
    assert high[0x3F80] < 1.0078125 == low[0x3F81]
    # negative buckets: bounds ordered by value
    assert high[0xBF80] == -1.0
    assert low[0xBF80] == -float(np.uint32(0x3F80FFFF).view(np.float32))
    # NaN buckets
    assert np.isnan(low[0x7FC0]) and np.isnan(high[0x7FC0])
    # finite buckets are non-empty intervals
    finite = np.isfinite(low) & np.isfinite(high)
    assert np.all(low[finite] <= high[finite])


def test_token_tensors_are_counted_whole_every_channel_included():
    # [1, 257 tokens, 384 channels] with one outlier channel (always the same one, as in a
    # ViT): every element is counted, so the outlier channel's values are all in the tail.
    tokens = np.random.default_rng(0).normal(0, 1, (1, 257, 384)).astype(np.float32)
    tokens[..., 323] = 12.0
    hist = np.zeros(BINS, dtype=np.int64)
    accumulate(hist, tokens)
    assert hist.sum() == tokens.size
    assert hist[bucket_indices(np.float32([12.0]))[0]] >= 257
