"""Reusing ranges: import a ranges file (fully or in part) and build from a pre-quantized model."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
from builders import RECIPE, small_cnn, write_model, write_npz
from cli_runner import run_cli, run_doit
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from quantbuild.interop.ranges_file import read


def _build_base(project):
    first = run_doit(project)
    assert first.code == 0, first.stdout + first.stderr
    shared = project / "shared"
    shared.mkdir()
    shutil.copyfile(project / "build" / "base" / "ranges.yaml", shared / "ranges.yaml")
    return shared / "ranges.yaml"


def test_imported_ranges_rebuild_identical_model_without_statistics(project):
    _build_base(project)
    (project / "reuse.yaml").write_text(
        RECIPE.format(extra="quantization: {ranges: {import: shared/ranges.yaml}}\n")
    )
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert "stats:reuse" in built.ran and "stats:base" not in built.ran
    assert "no forward pass" in built.stdout
    base, reuse = project / "build" / "base", project / "build" / "reuse"
    assert (reuse / "model.qdq.onnx").read_bytes() == (base / "model.qdq.onnx").read_bytes()


def test_partial_import_changes_only_the_named_tensors(project):
    source = _build_base(project)
    ranges, _ = read(source)
    name = list(ranges)[1]
    text = source.read_text()
    kept = "\n".join(
        line
        for line in text.split("\n")
        if not line.startswith("tensors:") and not line.startswith("  ")
    )
    entry = ranges[name]
    partial = project / "shared" / "partial.yaml"
    partial.write_text(
        kept + "\ntensors:\n"
        f"  {name}: {{min: {entry.min * 2}, max: {entry.max * 2}, bits: 8, "
        f"dtype: {entry.qparams.dtype}, scale: {float(entry.qparams.scale) * 2!r}, "
        f"zero_point: {int(entry.qparams.zero_point)}}}\n"
    )
    (project / "partial.yaml").write_text(
        RECIPE.format(extra="quantization: {ranges: {import: shared/partial.yaml}}\n")
    )
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    mine, _ = read(project / "build" / "partial" / "ranges.yaml")
    assert list(mine) == list(ranges)
    for tensor, r in ranges.items():
        if tensor == name:
            assert float(mine[tensor].qparams.scale) == float(r.qparams.scale) * 2
        else:
            assert mine[tensor] == r, tensor


def test_unknown_imported_tensor_is_a_recipe_error_with_a_suggestion(project):
    source = _build_base(project)
    ranges, _ = read(source)
    name = list(ranges)[1]
    source.write_text(source.read_text().replace(f"  {name}:", f"  {name}x:"))
    (project / "reuse.yaml").write_text(
        RECIPE.format(extra="quantization: {ranges: {import: shared/ranges.yaml}}\n")
    )
    built = run_cli("build", "-C", str(project), "reuse")
    assert built.code == 2
    output = built.stdout + built.stderr
    assert f"tensor '{name}x' is not in the model; did you mean '{name}'?" in output
    assert "reuse.yaml:" in output and "Traceback" not in output


def test_missing_import_file_names_the_field(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization: {ranges: {import: nowhere.yaml}}\n")
    )
    built = run_cli("build", "-C", str(project))
    assert built.code == 2
    output = built.stdout + built.stderr
    assert "base.yaml:" in output and "quantization.ranges.import: file not found" in output


class _Frames(CalibrationDataReader):
    def __init__(self, frames: np.ndarray):
        self.frames = iter(frames)

    def get_next(self):
        frame = next(self.frames, None)
        return None if frame is None else {"input": frame[None]}


def _ort_qdq(path, calib, per_channel: bool):
    write_model(path.with_name("float.onnx"), small_cnn(batchnorm=False))
    quantize_static(
        str(path.with_name("float.onnx")),
        str(path),
        _Frames(calib),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )


def _outputs(model_path, frames):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return np.stack([s.run(None, {"input": f[None]})[0] for f in frames])


PREQUANTIZED = """\
version: 1
model: ort.qdq.onnx
calibration:
  data: {{tensors: calib.npz}}
evaluation:
  data: {{tensors: val.npz, labels: labels}}
quantization:
  prequantized: true
  activations: asymmetric
  scale: float
  weights: {{per_channel: {per_channel}}}
  bias_bits: 32
{extra}"""


def _prequantized_project(project, per_channel: bool, extra: str = "") -> None:
    (project / "base.yaml").unlink()
    calib = np.load(project / "calib.npz")["input"]
    _ort_qdq(project / "ort.qdq.onnx", calib, per_channel)
    (project / "pq.yaml").write_text(
        PREQUANTIZED.format(per_channel=str(per_channel).lower(), extra=extra)
    )


def test_prequantized_onnxruntime_model_evaluates_exactly_as_onnxruntime_runs_it(project):
    for per_channel in (False, True):
        shutil.rmtree(project / "build", ignore_errors=True)
        if not (project / "base.yaml").exists():
            (project / "base.yaml").write_text(RECIPE.format(extra=""))
        _prequantized_project(project, per_channel)
        built = run_doit(project)
        assert built.code == 0, built.stdout + built.stderr
        assert "no forward pass" in built.stdout
        val = np.load(project / "val.npz")["input"]
        ours = _outputs(project / "build" / "pq" / "model.qdq.onnx", val)
        theirs = _outputs(project / "ort.qdq.onnx", val)
        np.testing.assert_array_equal(ours, theirs)


def test_prequantized_model_retargets_to_power_of_2(project):
    _prequantized_project(project, False, extra="")
    text = (project / "pq.yaml").read_text().replace("scale: float", "scale: power_of_2")
    (project / "pq.yaml").write_text(text.replace("asymmetric", "symmetric"))
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    ranges, _ = read(project / "build" / "pq" / "ranges.yaml")
    for r in ranges.values():
        exponent = np.log2(float(r.qparams.scale))
        assert exponent == round(exponent)
        assert int(r.qparams.zero_point) == 0
    qdq = onnx.load(str(project / "build" / "pq" / "model.qdq.onnx"))
    assert not any(n.op_type == "Relu" for n in qdq.graph.node)  # onnxruntime removed them


def test_qdq_model_without_prequantized_flag_is_a_clear_error(project):
    _prequantized_project(project, False)
    (project / "pq.yaml").write_text(
        (project / "pq.yaml").read_text().replace("prequantized: true", "prequantized: false")
    )
    built = run_cli("build", "-C", str(project))
    assert built.code == 3
    output = built.stdout + built.stderr
    assert "set quantization.prequantized: true" in output and "Traceback" not in output


def test_float_model_with_prequantized_flag_is_a_clear_error(project, tmp_path):
    write_npz(project / "calib.npz", 8, seed=1)
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {prequantized: true}\n"))
    built = run_cli("build", "-C", str(project))
    assert built.code == 3
    assert "no QuantizeLinear/DequantizeLinear nodes" in built.stdout + built.stderr


def test_onnxruntime_and_tidl_exports_import_back(project):
    _build_base(project)
    base = project / "build" / "base"
    # The exports describe the model that was quantized: the equalized float model.
    for name in ("tensor_quant_overrides.json", "quant_params.prototxt", "model.float.onnx"):
        shutil.copyfile(base / name, project / "shared" / name)
    for recipe, source in (
        ("ort", "tensor_quant_overrides.json"),
        ("tidl", "quant_params.prototxt"),
    ):
        (project / f"{recipe}.yaml").write_text(
            RECIPE.format(extra=f"quantization: {{ranges: {{import: shared/{source}}}}}\n").replace(
                "model: model.onnx", "model: shared/model.float.onnx"
            )
        )
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert built.stdout.count("no forward pass") == 2
    # onnxruntime overrides carry the exact grids: the same model, byte for byte.
    qdq = (base / "model.qdq.onnx").read_bytes()
    assert (project / "build" / "ort" / "model.qdq.onnx").read_bytes() == qdq
    # TIDL's read mode takes min/max (float32) and derives the grids again.
    expected, _ = read(base / "ranges.yaml")
    got, _ = read(project / "build" / "tidl" / "ranges.yaml")
    assert set(expected) <= set(got)
    for name, r in expected.items():
        assert got[name].qparams.dtype == r.qparams.dtype
        np.testing.assert_allclose(float(got[name].qparams.scale), float(r.qparams.scale), 1e-6)
        assert int(got[name].qparams.zero_point) == int(r.qparams.zero_point)


def test_tidl_export_carries_the_biases_the_quantized_model_uses(project):
    from onnx import numpy_helper

    from quantbuild.interop import tidl_proto

    assert run_doit(project).code == 0
    base = project / "build" / "base"
    net = tidl_proto.loads((base / "quant_params.prototxt").read_text(), "proto")
    exported = sorted(v for layer in net.layers for b in layer.bias for v in b.value)
    qdq = onnx.load(str(base / "model.qdq.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    used = []
    for node in qdq.graph.node:
        stored = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and stored is not None and stored.dtype == np.int32:
            scale = inits[node.input[1]].astype(np.float32)
            used += (stored.astype(np.float32) * scale).tolist()
    assert exported and len(exported) == len(used)
    np.testing.assert_allclose(exported, sorted(used), rtol=1e-6)  # calibrated, not the float ones
