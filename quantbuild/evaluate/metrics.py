"""Metrics (numpy only): top-1 accuracy, SQNR, cosine similarity, relative output error."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class Top1:
    """Fraction of frames whose argmax over the last axis equals the label."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, logits: np.ndarray, label: int | None) -> None:
        self.add(self.hit(logits, label))

    @staticmethod
    def hit(logits: np.ndarray, label: int | None) -> bool:
        """Whether one frame's first row of scores picks `label`."""
        return int(np.argmax(logits.reshape(-1, logits.shape[-1])[0])) == label

    def add(self, hit: bool) -> None:
        """Count one frame scored elsewhere (`hit`)."""
        self.correct += int(hit)
        self.total += 1

    def value(self) -> float | None:
        return self.correct / self.total if self.total else None


class Fidelity:
    """Agreement of a quantized output with the float output, accumulated over frames."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.dot = 0.0
        self.quant_energy = 0.0

    def update(self, reference: np.ndarray, quantized: np.ndarray) -> None:
        self.add(self.sums(reference, quantized))

    @staticmethod
    def sums(reference: np.ndarray, quantized: np.ndarray) -> tuple[float, float, float, float]:
        """One frame's (signal, noise, dot, quantized energy)."""
        x = reference.astype(np.float64).ravel()
        q = quantized.astype(np.float64).ravel()
        return float(x @ x), float((x - q) @ (x - q)), float(x @ q), float(q @ q)

    def add(self, sums: Any) -> None:
        """Add one frame's `sums` (computed elsewhere): frames added in the same order give
        the same bits however they were split."""
        signal, noise, dot, quant_energy = (float(v) for v in sums)
        self.signal += signal
        self.noise += noise
        self.dot += dot
        self.quant_energy += quant_energy

    def sqnr_db(self) -> float | None:
        """Signal-to-quantization-noise ratio in dB; None when undefined (no noise or no signal)."""
        if self.noise == 0.0 or self.signal == 0.0:
            return None
        return 10.0 * math.log10(self.signal / self.noise)

    def cosine(self) -> float:
        denominator = math.sqrt(self.signal * self.quant_energy)
        if denominator:
            return self.dot / denominator
        return 1.0 if self.signal == self.quant_energy == 0.0 else 0.0  # both zero: identical


def sqnr_db(signal: float, noise: float) -> float | None:
    """10·log10(signal / noise); None when undefined (no noise or no signal)."""
    if noise == 0.0 or signal == 0.0:
        return None
    return 10.0 * math.log10(signal / noise)


def _sum_squares(v: np.ndarray) -> float:
    """Σv² with float64 products and sums, without a float64 copy of `v` (einsum casts in
    small buffers): 5-10x faster than astype(float64) on large activations."""
    return float(np.einsum("i,i->", v, v, dtype=np.float64))


class ErrorSums:
    """Σx² of a float tensor and Σ(x−q)² of each of its quantized versions, over frames.

    Sums are float64 and memory does not grow with frames."""

    def __init__(self, versions: int) -> None:
        self.signal = 0.0
        self.noise = [0.0] * versions

    def update(self, reference: np.ndarray, *quantized: np.ndarray | None) -> None:
        """Add one frame; a None version is skipped (it has no value for this tensor)."""
        x = np.asarray(reference).ravel()
        self.signal += _sum_squares(x)
        for i, q in enumerate(quantized):
            if q is not None:
                # x − q in the inputs' precision: its rounding (2^-24 relative for float32)
                # is far below any quantization error.
                self.noise[i] += _sum_squares(np.subtract(np.asarray(q).ravel(), x))

    def add(self, signal: float, *noise: float | None) -> None:
        """Add one frame's sums computed elsewhere (inside the model); None: no value."""
        self.signal += float(signal)
        for i, value in enumerate(noise):
            if value is not None:
                self.noise[i] += float(value)

    def sqnr_db(self) -> list[float | None]:
        return [sqnr_db(self.signal, noise) for noise in self.noise]


def _output_errors(got: list[np.ndarray], want: list[np.ndarray]) -> list[float]:
    """One frame: each output's squared error relative to the reference's power."""
    return [
        float(np.mean((g - w) ** 2) / max(float(np.mean(w**2)), 1e-30)) for g, w in zip(got, want)
    ]


def frame_errors(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> np.ndarray:
    """Per frame, the mean over outputs of the squared error relative to the reference's power."""
    return np.array([np.mean(_output_errors(g, w)) for g, w in zip(outputs, reference)])


def relative_error(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    """Mean over frames and outputs of the squared error relative to the reference's power:
    the fidelity measure that sensitivity analysis and bias calibration minimize."""
    return float(np.mean([e for g, w in zip(outputs, reference) for e in _output_errors(g, w)]))


# One-sided 95 %: a change is "clearly worse" only when its paired per-frame increase in error
# exceeds 1.645 standard errors. Per-frame errors are heavy-tailed (a classifier's error is a
# few flipped frames), so a plain comparison of means on a few frames is close to a coin toss.
CLEARLY = 1.645


def clearly_worse(after: np.ndarray, before: np.ndarray, z: float = CLEARLY) -> bool:
    """Whether per-frame errors `after` are worse than `before` on the same frames beyond noise
    (a paired one-sided test on the per-frame differences)."""
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if diff.size == 0 or diff.mean() <= 0:
        return False
    if diff.size == 1:
        return True
    return bool(diff.mean() > z * diff.std(ddof=1) / np.sqrt(diff.size))
