"""`quantbuild diagnose`: three real builds of one recipe, and the verdict they lead to."""

from __future__ import annotations

import json

import pytest
from builders import RECIPE, make_project
from cli_runner import run_cli

from quantbuild.pipeline.diagnose import Diagnosis, Result, steps


def _result(name: str, top1: float, ratio: float, sqnr: float = 20.0) -> Result:
    step = next(s for s in steps(1.2) if s.name == name)
    metrics = {"top1": {"float": 0.90, "quantized": top1}, "outputs": {"y": {"sqnr_db": sqnr}}}
    return Result(step, f"r.{name}", metrics, {"latency": {"ratio": ratio}})


def _diagnosis(wide: float, narrow: float, mixed: float) -> Diagnosis:
    results = {
        "16bit": _result("16bit", wide, 2.0),
        "8bit": _result("8bit", narrow, 1.0),
        "mixed": _result("mixed", mixed, 1.19),
    }
    results["mixed"].sensitivity = {"gains": {"conv3": 0.5, "conv1": 0.2, "fc": -0.1}}
    return Diagnosis("r", 1.2, results)


def test_quantization_is_the_cause_when_16_bit_is_accurate_and_8_bit_is_not():
    verdict = _diagnosis(wide=0.90, narrow=0.80, mixed=0.86).verdict()
    assert verdict[0] == (
        "16-bit is accurate and 8-bit is not: quantization is the cause; these layers matter "
        "most: conv3, conv1."
    )  # only layers whose promotion helps, best first
    assert verdict[1].startswith(
        "Mixed precision at factor 1.2 (T_MP/T_8 1.19) recovers 60% of the 8-to-16-bit gap; "
        "not accurate yet"
    )


def test_mixed_precision_within_a_point_of_float_is_accurate():
    verdict = _diagnosis(wide=0.90, narrow=0.80, mixed=0.895).verdict()
    assert verdict[1].endswith("recovers 95% of the 8-to-16-bit gap: accurate.")


def test_other_verdicts():
    assert _diagnosis(0.90, 0.895, 0.90).verdict() == ["8-bit is accurate: nothing to fix."]
    assert (
        _diagnosis(0.70, 0.60, 0.65)
        .verdict()[0]
        .startswith("16-bit is not accurate either: quantization is not the only cause.")
    )


def test_without_labels_output_sqnr_decides():
    low = _result("8bit", 0.0, 1.0, sqnr=20.0)
    high = _result("16bit", 0.0, 2.0, sqnr=45.0)
    for r in (low, high):
        del r.metrics["top1"]
    assert high.accurate() and not low.accurate()


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    return make_project(tmp_path / "proj")


def test_diagnose_builds_each_step_once_and_reuses_them(project):
    first = run_cli("diagnose", "base", "--json", "-C", str(project))
    assert first.code == 0, first.stdout + first.stderr
    data = json.loads(first.stdout)
    assert list(data["steps"]) == ["16bit", "8bit", "mixed"]
    assert data["steps"]["16bit"]["latency_ratio"] > data["steps"]["mixed"]["latency_ratio"]
    assert data["steps"]["8bit"]["latency_ratio"] == 1.0
    assert data["steps"]["mixed"]["latency_ratio"] <= 1.2
    assert data["verdict"]
    for step in ("16bit", "8bit", "mixed"):
        assert (project / "build" / f"base.{step}" / "metrics.json").is_file()
    assert (project / "build" / "base.mixed" / "sensitivity.json").is_file()
    # One statistics pass for all three (same model and calibration data), logged on stderr.
    assert first.stderr.count("frames/s") == 1

    again = run_cli("diagnose", "base", "-C", str(project))
    assert again.code == 0
    assert "frames/s" not in again.stderr and "store hit" in again.stderr
    assert "| 16-bit | base.16bit | 2." in again.stdout
    assert "| float | – | – |" in again.stdout


def test_diagnose_needs_evaluation_data(project):
    (project / "base.yaml").write_text(RECIPE.format(extra="").split("evaluation:")[0])
    failed = run_cli("diagnose", "base", "-C", str(project))
    assert failed.code == 2
    assert "diagnose compares quantized and float outputs; add an evaluation section" in (
        failed.stderr
    )
