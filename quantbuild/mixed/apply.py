"""Apply a mixed-precision assignment: 16-bit grids for 16-bit feature maps, wide layers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from quantbuild.graph.ops import ELEMENTWISE_CONSTANTS
from quantbuild.mixed.precision import Assignment
from quantbuild.quant.params import Grid, TensorRange


def widen_ranges(
    ranges: dict[str, TensorRange],
    stats: dict[str, np.ndarray],
    assignment: Assignment,
    grid: Grid,
) -> dict[str, TensorRange]:
    """`ranges` with every 16-bit feature map on a 16-bit `grid` over its observed min/max.

    16-bit grids have resolution to spare, so no clipping: the statistics' exact min/max when
    the tensor was measured, else the (imported) 8-bit range."""
    observed = {n: i for i, n in enumerate(stats["names"].tolist())}
    out = dict(ranges)
    wide = replace(grid, bits=16)
    for name in assignment.tensors_16bit & ranges.keys():
        if name in observed:
            i = observed[name]
            low, high = float(stats["min"][i]), float(stats["max"][i])
        else:
            low, high = ranges[name].min, ranges[name].max
        out[name] = TensorRange(low, high, wide.qparams(low, high))
    return out


def wide_layers(assignment: Assignment) -> frozenset[str]:
    """Nodes whose parameters are 16-bit: weighted layers with 16-bit weights, and
    element-wise layers with 16-bit outputs (their constant operands follow them)."""
    return frozenset(
        name
        for name, info in assignment.layers.items()
        if info.get("weight_bits") == 16
        or (info["op"] in ELEMENTWISE_CONSTANTS and info.get("output_bits") == 16)
    )
