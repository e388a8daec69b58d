"""The bundled digits example builds and quantizes well for both device presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
