"""Fixed-edge activation histograms: one bucket per bfloat16 value.

A float32's top 16 bits are its bfloat16 bucket, so the bucket of a value never depends on the
data seen before it: histograms are exact, order-independent and mergeable by addition, and
their relative resolution is 2**-7 (0.8 %) at every magnitude.
"""

from __future__ import annotations

import numpy as np

BINS = 1 << 16


def bucket_indices(x: np.ndarray) -> np.ndarray:
    """The bfloat16 bucket of every element (float32 bits >> 16)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).ravel()


def accumulate(hist: np.ndarray, x: np.ndarray) -> None:
    """Add the elements of `x` to `hist` (int64, length BINS) in place."""
    hist += np.bincount(bucket_indices(x), minlength=BINS)


def bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the smallest and largest float32 of every bucket (NaN for NaN buckets)."""
    bits = np.arange(BINS, dtype=np.uint32) << 16
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        start = bits.view(np.float32).astype(np.float64)
        stop = (bits + np.uint32(0xFFFF)).view(np.float32).astype(np.float64)
    return np.minimum(start, stop), np.maximum(start, stop)
