"""Weight rounding with error feedback (GPTQ), numpy only.

Nearest rounding treats every weight alone. GPTQ (Frantar et al., 2022) rounds the weights of
each output row one input at a time and moves each rounding error onto the weights not yet
rounded, through the inverse of H = E[x xᵀ] over the layer's inputs, so that the layer's output
error E‖(W - Q) x‖² stays small. The grid (scales, bits) is given and kept: only the choice of
integers changes, so the exported ranges and quant-proto stay valid.

Weights are seen as rows over K inputs, in G independent groups (a convolution's groups; a
depthwise convolution has one row per group): `rows` (G, R, K), `hessian` (G, K, K).
"""

from __future__ import annotations

import numpy as np

DAMPING = 0.01  # of the mean diagonal, added to H: keeps the inverse stable for rare inputs


def output_size(
    x_shape: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> tuple[int, int]:
    """(height, width) of a 2-D convolution's output for an input of `x_shape` (N, C, H, W)."""
    height, width = x_shape[2:]
    out_h = (height + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    return out_h, out_w


def conv_patches(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    groups: int,
    positions: np.ndarray,
) -> np.ndarray:
    """The input patches a 2-D convolution multiplies at output `positions` (flat indices into
    its output plane), as (groups, K, n) with K = channels/group × kh × kw in weight order."""
    channels = x.shape[1]
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    padded = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_w = output_size(x.shape, kernel, strides, pads, dilations)[1]
    rows, cols = positions // out_w, positions % out_w
    taps = [padded[:, rows * sh + i * dh, cols * sw + j * dw] for i in range(kh) for j in range(kw)]
    patches = np.stack(taps, axis=1)  # (C, kh*kw, n)
    return patches.reshape(groups, (channels // groups) * kh * kw, -1)


def second_moment(patches: np.ndarray) -> np.ndarray:
    """E[x xᵀ] of (G, K, n) patches: (G, K, K), in float64."""
    p = patches.astype(np.float64)
    return np.einsum("gkn,gln->gkl", p, p) / max(p.shape[2], 1)


def gptq_round(
    rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmin: int, qmax: int
) -> np.ndarray:
    """Integers for `rows` (G, R, K) on the symmetric grid `scale` (broadcast to (G, R)),
    chosen with GPTQ's error feedback under `hessian` (G, K, K)."""
    groups, _, k = rows.shape
    w = rows.astype(np.float64).copy()
    step = np.broadcast_to(np.asarray(scale, dtype=np.float64), rows.shape[:2])
    h = hessian.astype(np.float64).copy()
    diagonal = np.einsum("gii->gi", h)
    # An input that is always zero carries no error: any value of its weight is as good.
    dead = diagonal <= 0
    h[:, np.arange(k), np.arange(k)] = np.where(dead, 1.0, diagonal)
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    damp = DAMPING * np.maximum(np.einsum("gii->gi", h).mean(axis=1), 1e-12)
    h += damp[:, None, None] * np.eye(k)
    # Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): row j of U spreads column j's error.
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    q = np.zeros_like(w)
    for j in range(k):
        column = np.clip(np.rint(w[:, :, j] / step), qmin, qmax)
        q[:, :, j] = column
        error = (w[:, :, j] - column * step) / upper[:, j, j][:, None]
        w[:, :, j + 1 :] -= error[:, :, None] * upper[:, j, j + 1 :][:, None, :]
    return q.astype(np.int64)


def output_error(rows: np.ndarray, hessian: np.ndarray, integers: np.ndarray, scale) -> float:
    """E‖(W - s·Q) x‖² summed over rows: the layer's output error under `hessian`."""
    step = np.broadcast_to(np.asarray(scale, dtype=np.float64), rows.shape[:2])[..., None]
    d = rows.astype(np.float64) - integers.astype(np.float64) * step
    return float(np.einsum("grk,gkl,grl->", d, hessian, d))
