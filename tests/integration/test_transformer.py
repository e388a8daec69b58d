"""A transformer block (LayerNorm, attention, GELU, LayerScale) built end to end with both
device presets: valid ONNX, TIDL's layers, probabilities on [0, 1], any sequence length."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from builders import attention_block, make_project, write_model, write_npz
from cli_runner import run_cli, run_doit

from quantbuild.interop.ranges_file import read
from quantbuild.runtime import session

RECIPE = """\
version: 1
extends: [devices/{device}]
model: model.onnx
calibration:
  data: {{tensors: calib.npz}}
evaluation:
  data: {{tensors: val.npz}}
  metrics: [sqnr, cosine]
"""
SMOOTH = "quantization: {equalization: {smoothquant: 0.5}}\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_project(
        tmp_path_factory.mktemp("transformer") / "proj",
        {d: RECIPE.format(device=d) for d in ("tda4vm", "am68a")}
        | {"smooth": RECIPE.format(device="am68a") + SMOOTH},
    )
    write_model(root / "model.onnx", attention_block())
    write_npz(root / "calib.npz", 16, shape=(1, 12, 16), seed=1, name="x")
    write_npz(root / "val.npz", 6, shape=(1, 12, 16), seed=2, name="x")
    run = run_doit(root, env={"QUANTBUILD_CACHE": str(root / ".store")})
    assert run.code == 0, run.stdout + run.stderr
    return root


@pytest.mark.parametrize("device", ["tda4vm", "am68a"])
def test_attention_block_builds_into_a_valid_accurate_model(built, device):
    out = built / "build" / device
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outputs"]["y"]["cosine"] > 0.98
    # another batch size and sequence length than calibration saw
    x = np.random.default_rng(7).normal(0, 1, (2, 31, 16)).astype(np.float32)
    assert session(qdq).run(None, {"x": x})[0].shape == (2, 31, 16)


@pytest.mark.parametrize("device", ["tda4vm", "am68a"])
def test_ranges_cover_tidl_layers_only(built, device):
    ranges, _ = read(built / "build" / device / "ranges.yaml")
    assert {"ln1.out", "gelu", "probs", "scores"} <= set(ranges)
    assert not {"ln1.mean", "ln1.std", "g.erf", "fc1.mm"} & set(ranges)
    probs = ranges["probs"]
    assert probs.min == 0.0 and probs.qparams.dtype == "uint8"
    assert float(probs.qparams.scale) * 255 >= 255 / 256


def test_smoothquant_rescales_the_layernorms_into_their_linear_layers(built):
    out = built / "build" / "smooth"
    smoothed = onnx.load(str(out / "model.float.onnx"))
    original = onnx.load(str(built / "model.onnx"))
    x = np.random.default_rng(3).normal(0, 1, (1, 9, 16)).astype(np.float32)
    np.testing.assert_allclose(
        session(smoothed).run(["y"], {"x": x})[0],
        session(original).run(["y"], {"x": x})[0],
        rtol=1e-4,
        atol=1e-5,
    )
    ranges, info = read(out / "ranges.yaml")
    assert info["equalization"]["smoothquant"] == 0.5
    plain, _ = read(built / "build" / "am68a" / "ranges.yaml")
    # The outlier channel (gamma 8) moved into the weights: a narrower LayerNorm output grid.
    width = ranges["ln1.out"].max - ranges["ln1.out"].min
    assert width < plain["ln1.out"].max - plain["ln1.out"].min
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outputs"]["y"]["cosine"] > 0.98


def test_ranges_of_a_smoothed_build_import_with_the_same_smoothing(built):
    shared = built / "shared"
    shared.mkdir(exist_ok=True)
    shutil.copyfile(built / "build" / "smooth" / "ranges.yaml", shared / "ranges.yaml")
    recipe = built / "reuse.yaml"
    recipe.write_text(
        RECIPE.format(device="am68a") + "quantization: {ranges: {import: shared/ranges.yaml}}\n"
    )
    try:
        shown = run_cli("show", "reuse", "--resolved", "-C", str(built))
        section = shown.stdout.split("equalization:")[1].split("\n")[1:3]
        assert any("smoothquant: 0.5" in line for line in section), shown.stdout
    finally:
        recipe.unlink()
