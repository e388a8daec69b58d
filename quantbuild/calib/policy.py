"""Range policies: from cached statistics to per-tensor activation ranges (no forward passes)."""

from __future__ import annotations

import numpy as np

from quantbuild.quant.params import activation_qparams
from quantbuild.quant.ranges_io import TensorRange


def minmax_ranges(
    stats: dict[str, np.ndarray], bits: int, symmetric: bool, power_of_2: bool
) -> dict[str, TensorRange]:
    """Every tensor's observed [min, max] and the quantization grid that covers it."""
    out = {}
    for name, low, high in zip(stats["names"].tolist(), stats["min"], stats["max"]):
        qp = activation_qparams(low, high, bits, symmetric, power_of_2)
        out[name] = TensorRange(float(low), float(high), qp)
    return out
