"""Bad input: one line naming file:line:column (where it applies), a distinct exit code,
no traceback, and nothing already built is lost."""

from __future__ import annotations

import numpy as np
import pytest
from builders import RECIPE, write_images, write_npz
from cli_runner import run_cli, run_doit

RECIPE_EXIT, MODEL_EXIT, DATA_EXIT = 2, 3, 4


def _errors(run) -> list[str]:
    """The error lines, all on stderr (stdout is the build's progress)."""
    text = run.stdout + run.stderr
    assert "Traceback" not in text, text
    assert not [line for line in run.stdout.splitlines() if line.startswith(("ERROR", "error"))]
    return [line for line in run.stderr.splitlines() if "error" in line.lower()]


def _build_fails(project, code: int, *needles: str) -> str:
    run = run_cli("build", "-C", str(project))
    assert run.code == code, run.stdout + run.stderr
    lines = _errors(run)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_malformed_yaml(project):
    (project / "base.yaml").write_text("version: 1\nmodel: model.onnx\nquantization: {bits: 8\n")
    _build_fails(project, RECIPE_EXIT, "base.yaml:4:1", "invalid YAML")


def test_unknown_key_suggests_the_right_one(project):
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization:\n  bitz: 8\n"))
    _build_fails(
        project,
        RECIPE_EXIT,
        "base.yaml:8:3",
        "quantization.bitz: unknown key; did you mean 'bits'?",
    )


def test_wrong_type(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization:\n  weights: {per_channel: 3}\n")
    )
    _build_fails(
        project,
        RECIPE_EXIT,
        "base.yaml:8:26",
        "quantization.weights.per_channel: 3 is not of type 'boolean'",
    )


def test_value_not_allowed(project):
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 12}\n"))
    _build_fails(project, RECIPE_EXIT, "base.yaml:7:22", "12 is not one of [8, 16]")


def test_missing_model_file(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="").replace("model.onnx", "missing.onnx")
    )
    _build_fails(project, MODEL_EXIT, "base.yaml:2:8", "model: file not found")


def test_corrupt_onnx(project):
    (project / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 10)
    line = _build_fails(
        project, MODEL_EXIT, "base.yaml:2:8", "model.onnx: not a readable ONNX model"
    )
    assert line.startswith("ERROR prepare:base")


def test_dataset_shape_mismatch(project):
    write_npz(project / "calib.npz", 4, shape=(1, 3, 9, 9))
    _build_fails(
        project,
        DATA_EXIT,
        "base.yaml:4:9",
        "has shape [1, 3, 9, 9] but model input 'input' expects [1, 3, 8, 8]",
    )


def test_empty_dataset(project):
    (project / "empty").mkdir()
    (project / "base.yaml").write_text(
        RECIPE.format(extra="").replace("{tensors: calib.npz}", "{images: empty}")
    )
    _build_fails(project, DATA_EXIT, "base.yaml:4:9", "calibration.data.images: no images", "empty")


def test_image_dataset_that_does_not_fit_the_model(project):
    write_images(project / "imgs", size=10)
    text = RECIPE.format(extra="").replace("{tensors: calib.npz}", "{images: imgs}")
    (project / "base.yaml").write_text(text)
    _build_fails(project, DATA_EXIT, "expects [1, 3, 8, 8]; fix preprocess")


def test_bad_override(project):
    run = run_cli("build", "-C", str(project), "-S", "quantization.bits=9")
    assert run.code == RECIPE_EXIT
    assert _errors(run) == [
        "error: -S quantization.bits=9: quantization.bits: 9 is not one of [8, 16]"
    ]


def test_plain_doit_reports_bad_recipes_before_building(project):
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 12}\n"))
    run = run_doit(project)
    assert run.code == 3  # doit: error before any task ran
    assert "base.yaml:7:22: quantization.bits: 12 is not one of [8, 16]" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (project / "build").exists()


def test_a_failed_rebuild_keeps_earlier_results(project):
    assert run_cli("build", "-C", str(project)).code == 0
    built = (project / "build" / "base" / "model.qdq.onnx").read_bytes()
    write_npz(project / "calib.npz", 4, shape=(1, 3, 9, 9))
    assert run_cli("build", "-C", str(project)).code == DATA_EXIT
    assert (project / "build" / "base" / "model.qdq.onnx").read_bytes() == built
    write_npz(project / "calib.npz", 8, seed=1)  # the original data again
    again = run_doit(project)
    assert again.code == 0
    assert again.ran == set()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_activations(project, bad):
    data = np.ones((2, 3, 8, 8), dtype=np.float32)
    data[0, 0, 0, 0] = float(bad)
    np.savez(project / "calib.npz", input=data)
    _build_fails(project, DATA_EXIT, "is not finite")
