"""Cross-layer equalization in a real build: its own cached stage, exported float model, ranges
that say which model they fit, and a clear error when imported onto another."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from builders import make_project, separable, write_model, write_npz
from cli_runner import run_cli, run_doit

from quantbuild.interop.ranges_file import read
from quantbuild.runtime import session
from quantbuild.stages.equalize import stamp_of

RECIPE = """\
version: 1
extends: [devices/tda4vm]
model: model.onnx
calibration:
  data: {{tensors: calib.npz}}
evaluation:
  data: {{tensors: val.npz}}
  metrics: [sqnr]
{extra}"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    root = make_project(tmp_path / "proj", {"base": RECIPE.format(extra="")})
    write_model(root / "model.onnx", separable(size=16))
    write_npz(root / "calib.npz", 8, shape=(1, 3, 16, 16), name="x")
    write_npz(root / "val.npz", 6, shape=(1, 3, 16, 16), seed=5, name="x")
    return root


def _sqnr(root, recipe="base"):
    metrics = json.loads((root / "build" / recipe / "metrics.json").read_text())
    return metrics["outputs"]["y"]["sqnr_db"]


def test_equalized_build_exports_the_same_float_function_and_quantizes_better(project):
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert "equalize:base" in built.ran
    assert "3 tensors equalized on 8 frames" in built.stdout
    out = project / "build" / "base"
    equalized = onnx.load(str(out / "model.float.onnx"))
    digest = stamp_of(equalized)
    assert digest
    x = np.load(project / "val.npz")["x"][:1]
    original = session(onnx.load(str(project / "model.onnx"))).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(
        session(equalized).run(["y"], {"x": x})[0], original, rtol=1e-4, atol=1e-5
    )
    _, info = read(out / "ranges.yaml")
    assert info["equalization"] == {"digest": digest, "frames": 16}
    with_equalization = _sqnr(project)

    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {equalization: false}\n"))
    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout
    # The float model changed: statistics are taken again, the prepared model is reused.
    assert {"stats:base", "ranges:base", "quantize:base"} <= rebuilt.ran
    assert "prepare:base" in rebuilt.up_to_date and "equalize:base" not in rebuilt.ran
    _, info = read(out / "ranges.yaml")
    assert "equalization" not in info
    # Power-of-2 per-tensor weights: 0.05..8 depthwise channels need equalization.
    assert with_equalization > _sqnr(project) + 3


def test_changing_equalization_frames_reruns_from_equalize_on(project):
    assert run_doit(project).code == 0
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization: {equalization: {frames: 4}}\n")
    )
    rebuilt = run_doit(project)
    assert rebuilt.code == 0
    assert "equalize:base" in rebuilt.ran and "prepare:base" in rebuilt.up_to_date
    assert "3 tensors equalized on 4 frames" in rebuilt.stdout


def test_ranges_of_an_equalized_build_import_with_its_equalization_by_default(project):
    assert run_doit(project).code == 0
    shared = project / "shared"
    shared.mkdir()
    shutil.copyfile(project / "build" / "base" / "ranges.yaml", shared / "ranges.yaml")
    (project / "reuse.yaml").write_text(
        RECIPE.format(extra="quantization: {ranges: {import: shared/ranges.yaml}}\n")
    )
    shown = run_cli("show", "reuse", "--resolved", "-C", str(project))
    assert "frames: 16" in shown.stdout.split("equalization:")[1].split("\n")[1]
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert "no forward pass" in built.stdout
    base, reuse = project / "build" / "base", project / "build" / "reuse"
    assert (reuse / "model.qdq.onnx").read_bytes() == (base / "model.qdq.onnx").read_bytes()

    # The same ranges onto the model without equalization would be wrong: a clear error.
    (project / "reuse.yaml").write_text(
        RECIPE.format(
            extra="quantization: {ranges: {import: shared/ranges.yaml}, equalization: false}\n"
        )
    )
    failed = run_cli("build", "reuse", "-C", str(project))
    assert failed.code == 2, failed.stdout + failed.stderr
    assert (
        "reuse.yaml:9:33: quantization.ranges.import: ranges.yaml was calibrated on an "
        "equalized float model" in failed.stdout + failed.stderr
    )
    assert "set model: to that recipe's build/<recipe>/model.float.onnx" in failed.stdout + (
        failed.stderr
    )

    # ... unless the model is the exported equalized one.
    shutil.copyfile(project / "build" / "base" / "model.float.onnx", shared / "model.float.onnx")
    (project / "reuse.yaml").write_text(
        RECIPE.format(
            extra="quantization: {ranges: {import: shared/ranges.yaml}, equalization: false}\n"
        ).replace("model: model.onnx", "model: shared/model.float.onnx")
    )
    built = run_cli("build", "reuse", "-C", str(project))
    assert built.code == 0, built.stdout + built.stderr
    assert (reuse / "model.qdq.onnx").read_bytes() == (base / "model.qdq.onnx").read_bytes()


def test_equalizing_a_prequantized_model_is_a_recipe_error(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization: {prequantized: true, equalization: true}\n")
    )
    failed = run_cli("build", "-C", str(project))
    assert failed.code == 2
    assert "quantization.equalization: a pre-quantized model's scales fit its own weights" in (
        failed.stdout + failed.stderr
    )


def test_a_model_without_equalizable_pairs_is_not_stamped_and_its_ranges_import_anywhere(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    root = make_project(tmp_path / "plain")  # small_cnn: every conv is followed by Relu
    assert run_doit(root).code == 0
    assert stamp_of(onnx.load(str(root / "build" / "base" / "model.float.onnx"))) is None
    _, info = read(root / "build" / "base" / "ranges.yaml")
    assert "equalization" not in info
    (root / "shared").mkdir()
    shutil.copyfile(root / "build" / "base" / "ranges.yaml", root / "shared" / "ranges.yaml")
    (root / "reuse.yaml").write_text(
        (root / "base.yaml").read_text()
        + "quantization: {ranges: {import: shared/ranges.yaml}, equalization: false}\n"
    )
    built = run_doit(root)
    assert built.code == 0, built.stdout + built.stderr
