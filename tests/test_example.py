"""The bundled digits example builds and quantizes well for both device presets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli, run_doit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


def test_digits_example_builds_for_tda4vm_and_am68a(tmp_path):
    project = tmp_path / "digits"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("build", ".quantbuild"))
    built = run_cli("build", "-C", str(project))
    assert built.code == 0, built.stdout + built.stderr
    assert {"stats:am68a"} <= built.ran and "stats:tda4vm" in built.up_to_date  # shared statistics
    report = (project / "build" / "report.md").read_text()
    for recipe in ("am68a", "tda4vm"):
        metrics = json.loads((project / "build" / recipe / "metrics.json").read_text())
        assert metrics["frames"] == 360
        assert metrics["top1"]["float"] > 0.98
        assert metrics["top1"]["quantized"] >= metrics["top1"]["float"] - 0.01, recipe
        assert metrics["outputs"]["logits"]["cosine"] > 0.99
        assert f"| {recipe} | {recipe} | 8 |" in report
    assert run_doit(project).ran == set()  # plain doit agrees everything is built


GOLDEN = Path(__file__).resolve().parent / "golden" / "digits.json"


def stage_digests(store: Path) -> dict[str, dict]:
    """Per stage: its version and the content digests of every entry the store holds."""
    found: dict[str, dict] = {}
    for manifest in sorted(store.glob("*/*/*/manifest.json")):
        record = json.loads(manifest.read_text())
        stage = found.setdefault(record["stage"], {"version": 0, "digests": []})
        stage["version"] = record["record"]["version"]
        stage["digests"] = sorted({*stage["digests"], record["digest"]})
    return found


def test_example_artifacts_match_golden_digests_unless_a_stage_version_was_bumped(tmp_path):
    """A stage whose artifacts change must bump its version (else stores serve stale entries).

    Refresh after a deliberate change: QUANTBUILD_UPDATE_GOLDEN=1 pytest tests/test_example.py."""
    import numpy
    import onnxruntime

    project = tmp_path / "digits"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("build", ".quantbuild"))
    built = run_cli("build", "-C", str(project))
    assert built.code == 0, built.stdout + built.stderr
    now = {
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "stages": stage_digests(project / ".quantbuild" / "store"),
    }
    if os.environ.get("QUANTBUILD_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    if (golden["onnxruntime"], golden["numpy"]) != (now["onnxruntime"], now["numpy"]):
        pytest.skip(
            f"golden digests are for onnxruntime {golden['onnxruntime']}, numpy "
            f"{golden['numpy']}; float results may differ in other versions"
        )
    assert set(now["stages"]) == set(golden["stages"])
    for stage, was in golden["stages"].items():
        if now["stages"][stage]["version"] != was["version"]:
            continue  # bumped: refresh the golden file
        assert now["stages"][stage]["digests"] == was["digests"], (
            f"{stage}: artifacts changed but its version did not; bump the stage's version "
            "(and refresh tests/golden/digits.json) or undo the change"
        )
