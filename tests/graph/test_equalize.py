"""Cross-layer equalization: same function, evened-out channel ranges, only safe pairs."""

from __future__ import annotations

import numpy as np
import pytest
from builders import separable
from onnx import numpy_helper

from quantbuild.graph.equalize import equalize, find_pairs, pair_scales
from quantbuild.runtime import session, with_outputs


def _frames(n: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _channel_ranges(model, tensors):
    runner = session(with_outputs(model, tensors))
    peak = {}
    for x in _frames():
        for name, value in zip(tensors, runner.run(tensors, {"x": x})):
            channel = np.abs(value).max(axis=(0, 2, 3)).astype(np.float64)
            peak[name] = np.maximum(peak.get(name, 0), channel)
    return peak


def _spread(model, name):
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))
    per_channel = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return per_channel.max() / per_channel.min()


def test_pairs_are_conv_or_batchnorm_outputs_read_only_by_convolutions():
    pairs = find_pairs(separable())
    assert [(p.tensor, p.producer.name, [c.name for c in p.consumers]) for p in pairs] == [
        ("c0", "conv0", ["dw1"]),  # conv -> depthwise, no activation between
        ("a1", "affine", ["dw2"]),  # affine BatchNorm -> depthwise
        ("d2", "dw2", ["pw3"]),  # depthwise -> pointwise
    ]  # d1 feeds HardSwish, which does not commute with a per-channel scale


def test_a_shared_weight_is_never_rescaled():
    pairs = find_pairs(separable(shared_weight=True))
    # wd1 is read by dw1 and dw2: neither may be a consumer or a producer of a pair.
    assert [p.tensor for p in pairs] == []


def test_equalized_model_computes_the_same_function_with_even_depthwise_channels():
    model = separable()
    tensors = [p.tensor for p in find_pairs(model)]
    equalized, factors = equalize(model, _channel_ranges(model, tensors))
    assert set(factors) == set(tensors)
    before, after = session(model), session(equalized)
    for x in _frames(3, seed=7):
        np.testing.assert_allclose(
            after.run(["y"], {"x": x})[0], before.run(["y"], {"x": x})[0], rtol=1e-4, atol=1e-5
        )
    for name in ("wd1", "wd2"):
        assert _spread(model, name) > 50
        assert _spread(equalized, name) < _spread(model, name) / 4, name
    assert model.graph.initializer[2].raw_data != equalized.graph.initializer[2].raw_data
    # The input model is left untouched.
    assert _spread(model, "wd1") > 50


def test_equalization_is_deterministic():
    model = separable()
    ranges = _channel_ranges(model, [p.tensor for p in find_pairs(model)])
    first, _ = equalize(model, ranges)
    second, _ = equalize(model, ranges)
    assert first.SerializeToString() == second.SerializeToString()


def test_pair_scales_balance_both_sides_and_leave_dead_channels_alone():
    activation = np.array([1.0, 4.0, 0.0, 2.0])
    consumer = np.array([1.0, 0.25, 0.5, 1e-20])
    s = pair_scales(activation, None, consumer)
    r1 = activation / activation.max()
    assert s[2] == 1.0 and s[3] == 1.0  # dead on one side
    np.testing.assert_allclose((r1 / s)[:2], (consumer * s)[:2])


@pytest.mark.parametrize("missing", ["c0", "a1"])
def test_only_measured_tensors_are_equalized(missing):
    model = separable()
    tensors = [p.tensor for p in find_pairs(model) if p.tensor != missing]
    _, factors = equalize(model, _channel_ranges(model, tensors))
    assert missing not in factors and len(factors) == 2
