"""Variants of a QDQ model run by their differences only: the same outputs as whole runs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from builders import heavy_cnn, small_cnn

from quantbuild.mixed import variants
from quantbuild.mixed.variants import Background
from quantbuild.quant.params import Grid, TensorRange
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.runtime import float_tensors, session, with_outputs

GRID8, GRID16 = Grid(8, True, True), Grid(16, True, True)
OPTIONS = WeightOptions(bits=8, per_channel=False, power_of_2=True, bias_bits=16)


def _ranges(model: onnx.ModelProto, feeds: list[dict]) -> dict[str, tuple[float, float]]:
    names = float_tensors(model)
    runner = session(with_outputs(model, names))
    values = [runner.run(names, feed) for feed in feeds]
    return {
        n: (min(float(v[i].min()) for v in values), max(float(v[i].max()) for v in values))
        for i, n in enumerate(names)
    }


def _qdq(model, observed, wide_tensors=(), wide_layers=()) -> onnx.ModelProto:
    ranges = {
        name: TensorRange(low, high, (GRID16 if name in wide_tensors else GRID8).qparams(low, high))
        for name, (low, high) in observed.items()
    }
    return write_qdq(model, ranges, replace(OPTIONS, wide_layers=frozenset(wide_layers)))[0]


def _whole(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    runner = session(model)
    names = [o.name for o in model.graph.output]
    return [runner.run(names, feed) for feed in feeds]


@pytest.mark.parametrize("build", [small_cnn, heavy_cnn])
def test_variants_measured_by_their_differences_equal_whole_runs(build, monkeypatch):
    model = build(batchnorm=False) if build is small_cnn else build(size=16, width=8)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.normal(size=shape).astype(np.float32)} for _ in range(3)]
    observed = _ranges(model, feeds)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    tensors = list(observed)
    variant_models = [_qdq(model, observed)]  # identical to the background
    for node in convs:  # weights only, then the layer's output too, at 16 bits
        variant_models.append(_qdq(model, observed, wide_layers=[node.name]))
        variant_models.append(_qdq(model, observed, [node.output[0]], [node.name]))
    variant_models.append(_qdq(model, observed, [tensors[0]]))  # the graph input's grid
    background = Background(_qdq(model, observed), feeds)
    monkeypatch.setattr(variants, "CHUNK", 3)  # several chunks, the last one partial
    measured = list(background.measure(variant_models))
    assert len(measured) == len(variant_models)
    for variant, outputs in zip(variant_models, measured):
        whole = _whole(variant, feeds)
        for frame, expected in zip(outputs, whole):
            for got, want in zip(frame, expected):
                assert np.array_equal(got, want)
    # the variants differ: a test that could not tell a wrong cut from a right one is none
    assert not all(np.array_equal(a[0][0], b[0][0]) for a, b in zip(measured[1:], measured[:-1]))


def test_a_suffix_starts_at_the_first_changed_node():
    model = small_cnn(batchnorm=False)
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)}]
    observed = _ranges(model, feeds)
    background = Background(_qdq(model, observed), feeds)
    suffix = background.suffix(_qdq(model, observed, wide_layers=["fc"]))
    assert suffix is not None
    run = {n.op_type for n in suffix.model.graph.node if n.domain in ("", "ai.onnx")}
    assert "Conv" not in run and "Gemm" in run  # the convolutions are taken from the background
    assert suffix.kept == []
