"""Interrupted builds resume to correct artifacts; clean builds are bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from builders import heavy_cnn, make_project, write_model, write_npz
from cli_runner import run_cli, tree_bytes


def _heavy_project(root):
    make_project(root)
    write_model(root / "model.onnx", heavy_cnn())
    write_npz(root / "calib.npz", 600, shape=(1, 3, 64, 64), seed=1)  # a ~3 s statistics pass
    write_npz(root / "val.npz", 4, shape=(1, 3, 64, 64), seed=2, labels=5)
    return root


def test_sigterm_during_stats_then_rebuild_gives_the_same_artifacts(tmp_path):
    project = _heavy_project(tmp_path / "interrupted")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("QUANTBUILD_CACHE", None)
    build = subprocess.Popen(
        [sys.executable, "-m", "quantbuild", "build", "-C", str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    for line in build.stdout:
        seen.append(line)
        if line.startswith(".  stats:base"):
            break
    time.sleep(0.5)  # well inside the ~3 s statistics pass
    build.send_signal(signal.SIGTERM)
    build.wait(timeout=60)
    assert build.returncode == 128 + signal.SIGTERM, "".join(seen)
    stats_dir = project / ".quantbuild" / "store" / "stats"
    assert not [p for p in stats_dir.rglob("manifest.json")], "no statistics were published"
    assert not [p for p in stats_dir.iterdir() if p.name.startswith(".tmp-")], (
        "staging was cleaned up"
    )
    assert not (project / "build" / "base" / "ranges.yaml").exists()

    resumed = run_cli("build", "-C", str(project))
    assert resumed.code == 0, resumed.stdout
    assert "prepare:base" in resumed.up_to_date  # finished work was kept
    assert "stats:base" in resumed.ran

    reference = _heavy_project(tmp_path / "reference")
    assert run_cli("build", "-C", str(reference)).code == 0
    assert tree_bytes(project / "build") == tree_bytes(reference / "build")
    assert tree_bytes(project / ".quantbuild" / "store") == tree_bytes(
        reference / ".quantbuild" / "store"
    )


def test_two_clean_builds_are_bit_identical(tmp_path):
    first = make_project(tmp_path / "one")
    second = make_project(tmp_path / "elsewhere" / "two")  # other paths, same contents
    for root in (first, second):
        assert run_cli("build", "-C", str(root)).code == 0
    built = tree_bytes(first / "build")
    assert set(built) == {
        "base/layers.json",
        "base/model.float.onnx",
        "base/ranges.yaml",
        "base/model.qdq.onnx",
        "base/quant_params.prototxt",
        "base/precision.json",
        "base/tensor_quant_overrides.json",
        "base/quant_params.json",
        "base/metrics.json",
        "base/layer_errors.json",
        "report.md",
        "report.html",
    }
    assert built == tree_bytes(second / "build")
    assert tree_bytes(first / ".quantbuild" / "store") == tree_bytes(
        second / ".quantbuild" / "store"
    )
