"""Streaming metrics (numpy only): top-1 accuracy, SQNR and cosine similarity."""

from __future__ import annotations

import math

import numpy as np


class Top1:
    """Fraction of frames whose argmax over the last axis equals the label."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, logits: np.ndarray, label: int) -> None:
        self.correct += int(int(np.argmax(logits.reshape(-1, logits.shape[-1])[0])) == label)
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
        x = reference.astype(np.float64).ravel()
        q = quantized.astype(np.float64).ravel()
        self.signal += float(x @ x)
        self.noise += float((x - q) @ (x - q))
        self.dot += float(x @ q)
        self.quant_energy += float(q @ q)

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
