"""Advanced bias calibration on a real model run by onnxruntime."""

from __future__ import annotations

import numpy as np
from builders import small_cnn, write_npz

from quantbuild.calib.bias_correction import BiasedLayer, channel_means, step_size, update
from quantbuild.calib.bias_runner import CHECK_FRAMES, calibrate_biases, check_frames
from quantbuild.calib.collect import collect_statistics
from quantbuild.calib.policy import activation_ranges
from quantbuild.data.dataset import open_dataset
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.graph.prepare import prepare_model
from quantbuild.quant.params import Grid
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.runtime import session, with_outputs


def test_step_size_halves_every_pass_over_the_frames():
    assert [step_size(t, 4) for t in (0, 3, 4, 8)] == [0.05, 0.05, 0.025, 0.0125]


def test_update_moves_the_bias_toward_the_float_mean():
    layer = BiasedLayer(
        "b", "y", "y", np.full(2, 0.01, np.float32), 2**31 - 1, np.zeros(2, np.float32)
    )
    update(layer, np.array([1.0, -1.0]), np.array([0.0, 0.0]), 0.5)
    assert np.allclose(layer.value, [0.5, -0.5])
    assert np.allclose(layer.on_grid(), [0.5, -0.5])


def test_channel_means_average_all_but_the_channel_axis():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    assert np.allclose(channel_means(x), x.transpose(1, 0, 2, 3).reshape(3, -1).mean(axis=1))


def _mean_gap(float_model, qdq, record, dataset) -> float:
    names = [info["output"] for info in record["biases"].values()]
    produced = {o for n in qdq.graph.node for o in n.output}
    qnames = [f"{n}_float" if f"{n}_float" in produced else n for n in names]
    ref, got = session(with_outputs(float_model, names)), session(with_outputs(qdq, qnames))
    inputs = graph_inputs(float_model)
    gaps = []
    for _frame, feed in dataset.iterate(inputs):
        for a, b in zip(ref.run(names, feed), got.run(qnames, feed)):
            gaps.append(np.abs(channel_means(a) - channel_means(b)).mean())
    return float(np.mean(gaps))


def _calibration_setup(tmp_path):
    model, _ = prepare_model(small_cnn(seed=3))
    data = open_dataset(
        {"tensors": str(write_npz(tmp_path / "c.npz", 16, seed=5))},
        {},
        "calibration.data",
        "r.yaml",
    )
    ranges = activation_ranges(collect_statistics(model, data), "minmax", Grid(8, True, True))
    qdq, record = write_qdq(model, ranges, WeightOptions(8, False, True, 16))
    return model, data, qdq, record


def test_bias_calibration_reduces_the_per_channel_mean_error(tmp_path):
    model, data, qdq, record = _calibration_setup(tmp_path)
    before = _mean_gap(model, qdq, record, data)
    corrected = calibrate_biases(
        model, qdq, record, data, frames=16, iterations=64, log=lambda m: None
    )
    after = _mean_gap(model, corrected, record, data)
    assert after < 0.7 * before
    # Only bias integers changed; the graph and every other parameter are the same.
    changed = {
        t.name
        for t, u in zip(qdq.graph.initializer, corrected.graph.initializer)
        if t.SerializeToString() != u.SerializeToString()
    }
    assert changed and all(
        name.endswith("_quantized") and name[: -len("_quantized")] in record["biases"]
        for name in changed
    )
    assert [n.SerializeToString() for n in qdq.graph.node] == [
        n.SerializeToString() for n in corrected.graph.node
    ]


def test_calibration_is_judged_on_the_last_frames_and_says_how_many_were_fitted(tmp_path):
    model, data, qdq, record = _calibration_setup(tmp_path)
    logged = []
    calibrate_biases(model, qdq, record, data, frames=12, iterations=16, log=logged.append)
    assert "output error" in logged[0] and "on 16 frames (4 not fitted)" in logged[0]


def test_check_frames_are_the_last_ones(tmp_path):
    _, data, _, _ = _calibration_setup(tmp_path)
    check, where = check_frames(data, 50)
    assert check == data.frames[-CHECK_FRAMES:] and where == "16 frames (0 not fitted)"
    assert check_frames(data, 4)[1] == "16 frames (12 not fitted)"


def test_biases_that_move_the_output_away_from_float_are_not_kept(tmp_path, monkeypatch):
    model, data, qdq, record = _calibration_setup(tmp_path)

    def away(layer, float_mean, quant_mean, alpha):  # a correction with the wrong sign
        layer.value = (layer.value - 20 * alpha * (float_mean - quant_mean)).astype(np.float32)

    monkeypatch.setattr("quantbuild.calib.bias_runner.update", away)
    logged = []
    result = calibrate_biases(model, qdq, record, data, frames=8, iterations=16, log=logged.append)
    assert result is qdq
    assert "clearly worse, kept the uncalibrated biases" in logged[0]
