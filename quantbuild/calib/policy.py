"""Range policies: from cached statistics to per-tensor activation ranges (no forward passes).

Every policy reads the fixed-edge (bfloat16-bucket) histograms of the stats stage:
- minmax: the observed range;
- percentile: TIDL's histogram clipping, dropping (100 - percentile) % of the values from each
  tail (TIDL: 0.01 %), the value interpolated linearly inside its bucket;
- mse: the clip range with the least expected quantization error (rounding noise of step²/12
  inside the range, squared distance outside it);
- entropy: TensorRT-style KL divergence between the clipped and the quantized distribution of
  |x| on 2048 linear bins.
The chosen range then maps to a grid exactly as minmax does (power-of-2 scales round up).
Model outputs keep their observed range under every policy: they carry the result. So do the
tensors assembled into an output without arithmetic (Concat, Reshape, ...: the box, objectness
and class maps of a detection head); `collect.output_forming` names them. A Softmax output is a
probability: its grid is unsigned over [0, 1] whatever was observed (a clipped attention peak
is the value that matters most), with power-of-2 scales 2^-bits (the top step, 1 - 2^-bits, is
the largest value; rounding the scale up to cover 1.0 exactly would halve the resolution).
"""

from __future__ import annotations

import numpy as np

from quantbuild.calib.histogram import bucket_bounds
from quantbuild.quant.params import Grid, QParams, TensorRange, activation_qparams

_LOW, _HIGH = bucket_bounds()


class Distribution:
    """A tensor's histogram as sorted, non-overlapping value intervals with counts."""

    def __init__(self, hist: np.ndarray, low: float, high: float):
        index = np.nonzero(hist)[0]
        lo, hi = _LOW[index], _HIGH[index]
        order = np.argsort(lo, kind="stable")
        self.lo = np.maximum(lo[order], low)
        self.hi = np.minimum(hi[order], high)
        self.count = hist[index][order].astype(np.float64)
        self.total = float(self.count.sum())
        self.min, self.max = float(low), float(high)

    def quantile(self, q: float) -> float:
        """Value below which a fraction q of the elements lie."""
        cumulative = np.cumsum(self.count)
        target = q * self.total
        k = int(np.searchsorted(cumulative, target))
        k = min(k, len(cumulative) - 1)
        before = cumulative[k - 1] if k else 0.0
        fraction = (target - before) / self.count[k]
        return float(self.lo[k] + fraction * (self.hi[k] - self.lo[k]))

    def centers(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    def magnitude_histogram(self, bins: int, limit: float) -> np.ndarray:
        """Counts of |x| on `bins` equal bins over [0, limit] (mass spread evenly in buckets)."""
        lo, hi = np.abs(self.lo), np.abs(self.hi)
        start, stop = np.minimum(lo, hi), np.maximum(lo, hi)
        edges = np.linspace(0.0, limit, bins + 1)
        width = np.maximum(stop - start, 1e-300)
        # Mass of every bucket below each edge, summed: a piecewise-linear CDF.
        below = np.clip((edges[:, None] - start[None, :]) / width[None, :], 0.0, 1.0)
        below = np.where(
            (stop - start)[None, :] > 0, below, (edges[:, None] >= start[None, :]).astype(float)
        )
        cdf = below @ self.count
        counts = np.diff(cdf)
        counts[-1] += self.total - cdf[-1]  # values at or beyond the limit
        return np.maximum(counts, 0.0)


def _grid(low: float, high: float, bits: int, symmetric: bool, power_of_2: bool) -> QParams:
    return activation_qparams(low, high, bits, symmetric, power_of_2)


def _expected_error(dist: Distribution, qp: QParams) -> float:
    """Expected squared error of quantizing the distribution on grid qp."""
    scale = float(qp.scale)
    zero = float(qp.zero_point)
    first, last = scale * (qp.qmin - zero), scale * (qp.qmax - zero)
    v = dist.centers()
    inside = (v >= first) & (v <= last)
    error = np.where(inside, scale * scale / 12.0, np.square(v - np.clip(v, first, last)))
    error = np.where(v == 0.0, 0.0, error)  # zero is always exact (ReLU outputs)
    return float(error @ dist.count)


def _mse_range(
    dist: Distribution, bits: int, symmetric: bool, power_of_2: bool
) -> tuple[float, float]:
    low, high = min(dist.min, 0.0), max(dist.max, 0.0)
    fractions = np.linspace(0.05, 1.0, 96)
    if symmetric or low >= 0.0:
        candidates = [(low * f, high * f) for f in fractions]
    else:
        candidates = [(low * a, high * b) for a in fractions[::3] for b in fractions[::3]]
    best = min(
        candidates,
        key=lambda c: (
            _expected_error(dist, _grid(c[0], c[1], bits, symmetric, power_of_2)),
            -c[1] + c[0],
        ),
    )
    return float(best[0]), float(best[1])


def _kl_threshold(dist: Distribution, bits: int, signed: bool) -> float:
    """TensorRT's entropy calibration on |x|: the threshold minimizing KL(P || Q)."""
    limit = max(abs(dist.min), abs(dist.max))
    if limit == 0.0:
        return 0.0
    bins = 2048
    hist = dist.magnitude_histogram(bins, limit)
    # Exact zeros (ReLU outputs) are represented exactly and would dominate the divergence:
    # weigh the first bin like its neighbour, as NVIDIA's entropy calibrator does.
    hist[0] = hist[1]
    levels = 2 ** (bits - 1) if signed else 2**bits
    if levels >= bins:
        return limit
    best, best_kl = bins, np.inf
    for stop in range(levels, bins + 1, 8):
        reference = hist[:stop].copy()
        reference[-1] += hist[stop:].sum()
        nonzero = reference > 0
        # Quantize the first `stop` bins into `levels` groups, spreading each group's mass
        # evenly over its non-empty bins.
        groups = np.minimum((np.arange(stop) * levels) // stop, levels - 1)
        group_mass = np.bincount(groups, weights=hist[:stop], minlength=levels)
        group_size = np.bincount(groups, weights=nonzero.astype(float), minlength=levels)
        expanded = np.where(nonzero, group_mass[groups] / np.maximum(group_size[groups], 1), 0.0)
        p = reference / reference.sum()
        q = expanded / max(expanded.sum(), 1e-300)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = stop, kl
    return limit * best / bins


def clip_range(
    dist: Distribution, policy: str, bits: int, symmetric: bool, power_of_2: bool, percentile: float
) -> tuple[float, float]:
    """The [low, high] a policy chooses for one tensor."""
    if dist.total == 0 or policy == "minmax":
        return dist.min, dist.max
    if policy == "percentile":
        tail = (100.0 - percentile) / 100.0
        low = dist.quantile(tail) if dist.min < 0 else dist.min
        return min(low, 0.0) if low < 0 else dist.min, dist.quantile(1.0 - tail)
    if policy == "mse":
        return _mse_range(dist, bits, symmetric, power_of_2)
    if policy == "entropy":
        threshold = _kl_threshold(dist, bits, signed=dist.min < 0)
        return max(dist.min, -threshold), min(dist.max, threshold)
    raise ValueError(f"unknown range policy {policy!r}")


def activation_ranges(
    stats: dict[str, np.ndarray], policy: str, grid: Grid, percentile: float = 99.99
) -> dict[str, TensorRange]:
    """Every tensor's clip range under `policy` and the quantization grid that covers it."""
    bits, symmetric, power_of_2 = grid.bits, grid.symmetric, grid.power_of_2
    out = {}
    unset = np.zeros(len(stats["names"]), dtype=bool)
    outputs = stats.get("is_output", unset)
    probabilities = stats.get("is_probability", unset)
    for i, name in enumerate(stats["names"].tolist()):
        low, high = float(stats["min"][i]), float(stats["max"][i])
        if probabilities[i]:
            low, high = 0.0, 1.0 - 2.0**-bits if power_of_2 else 1.0
        elif not outputs[i]:  # model outputs (and what they are assembled from): never clipped
            dist = Distribution(stats["hist"][i], low, high)
            low, high = clip_range(dist, policy, bits, symmetric, power_of_2, percentile)
        out[name] = TensorRange(
            low, high, activation_qparams(low, high, bits, symmetric, power_of_2)
        )
    return out


def minmax_ranges(stats: dict[str, np.ndarray], grid: Grid) -> dict[str, TensorRange]:
    """Every tensor's observed [min, max] and the quantization grid that covers it."""
    return activation_ranges(stats, "minmax", grid)
