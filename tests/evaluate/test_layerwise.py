"""Per-layer error: the layer-wise model against models cut out of the QDQ model by onnx's own
extractor, the streaming sums against numpy, and layer_errors.json from a real build."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.utils
import pytest
from builders import RECIPE, make_project, small_cnn, write_npz
from cli_runner import run_cli

from quantbuild.calib.collect import collect_statistics
from quantbuild.calib.policy import minmax_ranges
from quantbuild.data.dataset import open_dataset
from quantbuild.evaluate import layerwise
from quantbuild.evaluate.metrics import ErrorSums
from quantbuild.graph.onnx_utils import graph_inputs
from quantbuild.graph.prepare import prepare_model
from quantbuild.mixed.latency import static_shapes
from quantbuild.quant.params import Grid
from quantbuild.quant.qdq import WeightOptions, write_qdq
from quantbuild.runtime import session, with_outputs
from quantbuild.stages import evaluate


@pytest.fixture(scope="module", params=[8, 16])
def built(tmp_path_factory, request):
    """(float model, QDQ model, quant record, frames) for the small CNN, per-channel; 16-bit
    Q/DQ at opset 13 live in the com.microsoft domain."""
    npz = write_npz(tmp_path_factory.mktemp("calib") / "calib.npz", 8, seed=1)
    prepared = prepare_model(small_cnn())[0]
    dataset = open_dataset({"tensors": str(npz)}, {}, "calibration.data", "recipe.yaml")
    bits = request.param
    ranges = minmax_ranges(collect_statistics(prepared, dataset), Grid(bits, True, False))
    qdq, record = write_qdq(prepared, ranges, WeightOptions(bits, True, False, 32))
    rng = np.random.default_rng(7)
    frames = [rng.normal(0, 1.5, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    return prepared, qdq, record, frames


def _run(model: onnx.ModelProto, names: list[str], feed: dict) -> dict[str, np.ndarray]:
    return dict(zip(names, session(with_outputs(model, names)).run(names, feed)))


def test_layers_are_the_quantized_activations_in_graph_order(built):
    prepared, qdq, record, _ = built
    layers = layerwise.quantized_layers(qdq, prepared)
    assert [layer.tensor for layer in layers] == list(record["activations"])
    by_tensor = {layer.tensor: layer for layer in layers}
    assert by_tensor["input"].quantized == "input_dequantized"
    assert by_tensor["input"].op == "input"
    # conv1 with the BN folded into it and its fused Relu; the pool reads a quantized tensor.
    assert by_tensor["r1"].op == "Conv+Relu"
    assert by_tensor["r2"].op == "MaxPool+Conv+Relu"
    assert by_tensor["r2"].node == "relu2"
    assert all(layer.layerwise is None for layer in layers)  # no copies asked for


def test_the_layerwise_model_is_valid_and_keeps_the_float_outputs(built):
    prepared, qdq, _, frames = built
    lw = layerwise.build(prepared, qdq)
    onnx.checker.check_model(lw.model)
    feed = {"input": frames[0]}
    expected = _run(prepared, ["logits"], feed)["logits"]
    np.testing.assert_array_equal(_run(lw.model, ["logits"], feed)["logits"], expected)


def test_each_layer_copy_is_that_layer_of_the_qdq_model_fed_with_float_values(built):
    """Oracle: onnx.utils.extract_model cuts the layer out of the QDQ model at its inputs'
    DequantizeLinear outputs (input grids belong to the layers that produce them); feed them
    the float model's values and the layer copy must agree bit for bit."""
    prepared, qdq, _, frames = built
    lw = layerwise.build(prepared, qdq)
    quantize_of = {
        n.output[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"
    }  # Q output -> Q
    float_input_of = {
        n.output[0]: quantize_of[n.input[0]].input[0]
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantize_of
    }  # activation DQ output -> the float tensor its Q reads
    float_names = [layer.tensor for layer in lw.layers]
    copies = [layer.layerwise for layer in lw.layers]
    for frame in frames:
        feed = {"input": frame}
        values = _run(lw.model, float_names + copies, feed)
        for layer in lw.layers:
            if layer.op == "input":
                continue
            cut_inputs = _layer_inputs(qdq, layer.quantized, float_input_of)
            typed = onnx.ModelProto()
            typed.CopyFrom(qdq)  # the Extractor needs a type for every cut input
            known = {v.name for v in typed.graph.value_info}
            typed.graph.value_info.extend(
                onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                for n in cut_inputs
                if n not in known
            )
            cut = onnx.utils.Extractor(typed).extract_model(cut_inputs, [layer.quantized])
            # A cut input carries the float tensor's name, except a graph input's Q/DQ output.
            inputs = {i.name for i in qdq.graph.input}
            cut_feed = {
                name: values[float_input_of[name] if float_input_of[name] in inputs else name]
                for name in cut_inputs
            }
            expected = _run(cut, [layer.quantized], cut_feed)[layer.quantized]
            np.testing.assert_array_equal(values[layer.layerwise], expected, err_msg=layer.tensor)
    # And not trivially: a deeper layer quantized alone differs from float and from the
    # accumulated result.
    accumulated = _run(qdq, ["r2"], {"input": frames[0]})["r2"]
    alone = _run(lw.model, ["r2", lw.layers[2].layerwise], {"input": frames[0]})
    assert lw.layers[2].tensor == "r2"
    assert not np.array_equal(alone[lw.layers[2].layerwise], alone["r2"])
    assert not np.array_equal(alone[lw.layers[2].layerwise], accumulated)


def _layer_inputs(qdq: onnx.ModelProto, output: str, float_input_of: dict) -> list[str]:
    """The activation DequantizeLinear outputs the layer that produces `output` reads: walk
    up from its output QuantizeLinear."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    start = producer[producer[output].input[0]].input[0]  # DQ <- Q <- the layer's float output
    found, seen, stack = set(), set(), [start]
    while stack:
        name = stack.pop()
        if name in float_input_of:
            found.add(name)
        elif name in producer and name not in seen:
            seen.add(name)
            stack.extend(producer[name].input)
    return sorted(found)


def test_the_input_grid_counts_for_the_input_not_for_the_first_conv(built):
    """conv1 reads the quantized graph input: accumulated includes the input grid, alone
    does not (that error is the `input` row's)."""
    prepared, qdq, _, frames = built
    lw = layerwise.build(prepared, qdq)
    by_tensor = {layer.tensor: layer for layer in lw.layers}
    feed = {"input": frames[1]}
    names = [by_tensor["r1"].layerwise, by_tensor["input"].layerwise]
    alone, alone_input = (_run(lw.model, names, feed)[n] for n in names)
    assert not np.array_equal(alone, _run(qdq, ["r1"], feed)["r1"])
    quantize = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    assert quantize.input[0] == "input"
    quantized_input = next(
        n.output[0] for n in qdq.graph.node if n.input and n.input[0] == quantize.output[0]
    )
    np.testing.assert_array_equal(alone_input, _run(qdq, [quantized_input], feed)[quantized_input])


def test_error_sums_stream_over_frames_like_one_concatenated_sum():
    rng = np.random.default_rng(0)
    frames = [rng.normal(0, 1, (2, 5)).astype(np.float32) for _ in range(4)]
    noisy = [x + rng.normal(0, 0.1, x.shape).astype(np.float32) for x in frames]
    sums = ErrorSums(2)
    for x, q in zip(frames, noisy):
        sums.update(x, q, None)
    x = np.concatenate([f.ravel() for f in frames]).astype(np.float64)
    q = np.concatenate([f.ravel() for f in noisy]).astype(np.float64)
    assert sums.signal == pytest.approx(float(np.sum(x * x)), rel=1e-12)
    assert sums.noise[0] == pytest.approx(float(np.sum((x - q) ** 2)), rel=1e-12)
    expected = 10 * np.log10(np.sum(x * x) / np.sum((x - q) ** 2))
    assert sums.sqnr_db()[0] == pytest.approx(expected, rel=1e-12)
    assert sums.sqnr_db()[1] is None  # never updated: no error measured


def test_build_writes_layer_errors_worst_first(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    root = make_project(tmp_path / "proj", {"base": RECIPE.format(extra="")})
    done = run_cli("build", "-C", str(root))
    assert done.code == 0, done.stdout + done.stderr
    report = json.loads((root / "build" / "base" / "layer_errors.json").read_text())
    record = json.loads((root / "build" / "base" / "quant_params.json").read_text())
    rows = report["layers"]
    assert report["frames"] == 6
    assert {r["tensor"] for r in rows} == set(record["activations"])
    alone = [r["layerwise_sqnr_db"] for r in rows]
    assert all(isinstance(v, float) for v in alone)
    assert alone == sorted(alone)
    by_tensor = {r["tensor"]: r for r in rows}
    # The graph input's grid is the same both ways; the first conv alone has float inputs.
    assert by_tensor["input"]["layerwise_sqnr_db"] == pytest.approx(
        by_tensor["input"]["accumulated_sqnr_db"], abs=1e-9
    )
    assert by_tensor["r1"]["layerwise_sqnr_db"] > by_tensor["r1"]["accumulated_sqnr_db"]
    # Errors add up: the output is worse accumulated than quantized alone.
    assert by_tensor["logits"]["accumulated_sqnr_db"] < by_tensor["logits"]["layerwise_sqnr_db"]
    worst = rows[0]
    assert f"SQNR {worst['layerwise_sqnr_db']:.2f} dB alone" in done.stdout


def test_layer_table_puts_undefined_sqnr_where_it_belongs():
    def sums(signal: float, alone: float, accumulated: float) -> ErrorSums:
        s = ErrorSums(2)
        s.signal, s.noise = signal, [alone, accumulated]
        return s

    names = ["good", "perfect", "silent_but_wrong", "bad", "bad_too"]
    layers = [layerwise.Layer(n, n, n + "~lw", n, "Conv") for n in names]
    errors = [
        sums(100.0, 1.0, 2.0),  # 20 dB alone
        sums(100.0, 0.0, 0.0),  # no error at all: last
        sums(0.0, 1.0, 1.0),  # error on a tensor that is always zero: first
        sums(100.0, 10.0, 20.0),  # 10 dB
        sums(100.0, 10.0, 50.0),  # 10 dB alone, worse accumulated
    ]
    table = evaluate.layer_table(layers, errors)
    assert [r["tensor"] for r in table] == ["silent_but_wrong", "bad_too", "bad", "good", "perfect"]
    assert table[1]["layerwise_sqnr_db"] == pytest.approx(10.0)
    assert table[1]["accumulated_sqnr_db"] == pytest.approx(10 * np.log10(2))
    assert table[-1]["layerwise_sqnr_db"] is None and table[-1]["index"] == 1


@pytest.fixture
def analysed(built, tmp_path):
    """(prepared, qdq, layer-wise model, evaluation dataset, model inputs)."""
    prepared, qdq, _, _ = built
    npz = write_npz(tmp_path / "val.npz", 5, seed=3)
    dataset = open_dataset({"tensors": str(npz)}, {}, "evaluation.data", "recipe.yaml")
    return prepared, qdq, layerwise.build(prepared, qdq), dataset, graph_inputs(prepared)


def test_layer_errors_in_small_chunks_equal_one_pass(analysed, monkeypatch):
    """Chunking bounds memory; it must not change a single sum."""
    prepared, qdq, lw, dataset, inputs = analysed
    whole = evaluate._layer_errors(lw, qdq, dataset, inputs)
    monkeypatch.setattr(evaluate, "LAYER_BYTES", 1)  # one layer per chunk
    shapes = static_shapes(prepared, {"input": (1, 3, 8, 8)})
    assert len(evaluate._chunks(lw.layers, shapes)) == len(lw.layers)
    chunked = evaluate._layer_errors(lw, qdq, dataset, inputs)
    assert [(e.signal, e.noise) for e in chunked] == [(e.signal, e.noise) for e in whole]
    assert all(e.signal > 0 for e in whole)


def test_error_sums_inside_the_model_equal_the_exposed_tensors(analysed):
    """The error model reduces in the graph what the fallback reduces in numpy: the same sums
    up to float64 summation order, and both models' outputs bit for bit."""
    prepared, qdq, lw, dataset, inputs = analysed
    exposed = evaluate._layer_errors(lw, qdq, dataset, inputs)
    inside = evaluate.layer_errors(lw, qdq, dataset, inputs)
    assert len(inside) == len(exposed) == len(lw.layers)
    for a, b in zip(inside, exposed):
        assert a.signal == pytest.approx(b.signal, rel=1e-12)
        assert a.noise == pytest.approx(b.noise, rel=1e-12, abs=1e-300)
    model = layerwise.error_model(lw, qdq)
    onnx.checker.check_model(model.model)  # the interleaved nodes are still topologically sorted
    feed = dataset.load(dataset.frames[0], inputs)
    values = dict(zip(model.names, session(model.model).run(model.names, feed)))
    outputs = [o.name for o in prepared.graph.output]
    for name, want in zip(outputs, session(prepared).run(outputs, feed)):
        np.testing.assert_array_equal(values[name], want)
    for name, want in zip(model.quantized_outputs, session(qdq).run(outputs, feed)):
        np.testing.assert_array_equal(values[name], want)


def test_chunks_keep_graph_order_within_the_byte_budget(built, monkeypatch):
    prepared, qdq, _, _ = built
    lw = layerwise.build(prepared, qdq)
    shapes = static_shapes(prepared, {"input": (1, 3, 8, 8)})
    sizes = [
        4 * int(np.prod(shapes[layer.tensor])) * (3 if layer.layerwise else 2)
        for layer in lw.layers
    ]
    monkeypatch.setattr(evaluate, "LAYER_BYTES", max(sizes) * 2)
    chunks = evaluate._chunks(lw.layers, shapes)
    assert [i for chunk in chunks for i in chunk] == list(range(len(lw.layers)))
    assert 1 < len(chunks) < len(lw.layers)
    assert all(sum(sizes[i] for i in chunk) <= max(sizes) * 2 for chunk in chunks)


def test_without_an_error_model_the_exposed_tensors_are_reduced(analysed, monkeypatch):
    """A QDQ model with subgraphs has no error model: the chunked fallback gives the sums."""
    prepared, qdq, lw, dataset, inputs = analysed

    def refuse(*args):
        raise ValueError("the QDQ model has subgraphs")

    monkeypatch.setattr(layerwise, "error_model", refuse)
    fallback = evaluate.layer_errors(lw, qdq, dataset, inputs)
    exposed = evaluate._layer_errors(lw, qdq, dataset, inputs)
    assert [(e.signal, e.noise) for e in fallback] == [(e.signal, e.noise) for e in exposed]
