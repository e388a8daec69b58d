"""Streaming metrics: top-1, SQNR and cosine, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantbuild.evaluate.metrics import Fidelity, Top1, clearly_worse, frame_errors, relative_error


def test_top1_counts_argmax_matches():
    top1 = Top1()
    assert top1.value() is None
    top1.update(np.array([[0.1, 0.9, 0.0]], np.float32), 1)  # right
    top1.update(np.array([[0.7, 0.2, 0.1]], np.float32), 2)  # wrong
    top1.update(np.array([0.0, 0.1, 3.0], np.float32), 2)  # right, 1-D logits
    top1.update(np.array([[[[-5.0, -1.0, -2.0]]]], np.float32), 1)  # right, extra axes
    assert (top1.correct, top1.total) == (3, 4)
    assert top1.value() == 0.75


def test_top1_ties_take_the_first_index():
    top1 = Top1()
    top1.update(np.array([[2.0, 2.0, 1.0]]), 1)
    assert top1.value() == 0.0
    top1.update(np.array([[2.0, 2.0, 1.0]]), 0)
    assert top1.value() == 0.5


def test_sqnr_hand_computation():
    f = Fidelity()
    f.update(np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([1.1, 2.0, 2.9, 4.0], np.float32))
    # signal 1 + 4 + 9 + 16 = 30, noise 0.01 + 0.01 = 0.02
    assert f.sqnr_db() == pytest.approx(10 * math.log10(30 / 0.02), rel=1e-6)
    assert f.sqnr_db() == pytest.approx(31.7609, abs=1e-4)


def test_sqnr_accumulates_over_frames():
    f = Fidelity()
    f.update(np.array([[3.0, 4.0]]), np.array([[3.0, 4.0]]))  # signal 25, no noise
    f.update(np.array([[0.0, 5.0]]), np.array([[1.0, 5.0]]))  # signal 25, noise 1
    # accumulated, not averaged per frame: 10 log10(50 / 1)
    assert f.sqnr_db() == pytest.approx(10 * math.log10(50.0), rel=1e-9)


def test_sqnr_none_for_identical_outputs():
    f = Fidelity()
    x = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    f.update(x, x.copy())
    f.update(x * 2, x * 2)
    assert f.sqnr_db() is None
    assert f.cosine() == pytest.approx(1.0, abs=1e-12)


def test_sqnr_none_without_signal():
    f = Fidelity()
    f.update(np.zeros(4), np.array([0.0, 0.1, 0.0, 0.0]))
    assert f.sqnr_db() is None


def test_cosine_hand_computation():
    f = Fidelity()
    f.update(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    assert f.cosine() == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    g = Fidelity()
    g.update(np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0]))
    assert g.cosine() == pytest.approx(-1.0, rel=1e-12)
    h = Fidelity()
    h.update(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))  # scale does not matter
    assert h.cosine() == pytest.approx(1.0, rel=1e-12)
    assert h.sqnr_db() == pytest.approx(0.0, abs=1e-12)  # noise energy == signal energy


def test_cosine_over_frames_uses_all_elements():
    a = np.array([[1.0, 2.0], [3.0, -1.0]])
    b = np.array([[0.5, 2.5], [2.0, 0.0]])
    f = Fidelity()
    for x, q in zip(a, b):
        f.update(x, q)
    x, q = a.ravel(), b.ravel()
    assert f.cosine() == pytest.approx(x @ q / np.sqrt((x @ x) * (q @ q)), rel=1e-12)


def test_cosine_is_not_perfect_when_the_quantized_output_is_all_zero():
    # a dead quantized model (all zeros) against a real signal is no agreement at all
    f = Fidelity()
    f.update(np.array([1.0, -2.0, 3.0]), np.zeros(3))
    assert f.cosine() in (0.0, None), f.cosine()
    assert f.sqnr_db() == pytest.approx(0.0, abs=1e-12)  # noise == signal


def test_float32_inputs_are_accumulated_in_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(1e3, 1.0, 100_000).astype(np.float32)
    q = (x + rng.normal(0, 1e-3, x.size)).astype(np.float32)
    f = Fidelity()
    f.update(x, q)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    expected = 10 * math.log10(np.sum(x64 * x64) / np.sum((x64 - q64) ** 2))
    assert f.sqnr_db() == pytest.approx(expected, rel=1e-9)
    assert f.sqnr_db() > 100


def test_frame_errors_are_per_frame_relative_errors_and_their_mean_the_relative_error():
    reference = [[np.array([1.0, 1.0])], [np.array([2.0, 0.0])]]
    outputs = [[np.array([1.0, 0.0])], [np.array([2.0, 0.0])]]
    assert np.allclose(frame_errors(outputs, reference), [0.5, 0.0])
    assert relative_error(outputs, reference) == 0.25


def test_clearly_worse_needs_a_paired_increase_beyond_noise():
    before = np.array([0.1, 0.1, 0.1, 0.1])
    assert clearly_worse(before + 0.01, before)
    assert not clearly_worse(before - 0.01, before)
    assert not clearly_worse(before, before)
    # One frame much worse, the others better: a flip of one hard frame, not a trend.
    assert not clearly_worse(np.array([1.0, 0.05, 0.05, 0.05]), before)
    assert clearly_worse(np.array([1.0]), np.array([0.5]))
    assert not clearly_worse(np.array([]), np.array([]))
