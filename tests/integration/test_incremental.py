"""Incremental rebuilds, judged by doit's own reporting (`.  task` ran, `-- task` up to date)."""

from __future__ import annotations

import re

from builders import RECIPE, device_recipes, make_project, write_npz
from cli_runner import run_cli, run_doit

ALL = {f"{s}:base" for s in ("prepare", "equalize", "stats", "ranges", "quantize", "evaluate")} | {
    "report"
}


def test_first_build_runs_every_stage_and_noop_rebuild_runs_none(project):
    first = run_doit(project)
    assert first.code == 0, first.stdout + first.stderr
    assert first.ran == ALL
    again = run_doit(project)
    assert again.code == 0
    assert again.ran == set()
    assert again.up_to_date == ALL


def test_changing_bits_reruns_ranges_onward_but_not_prepare_or_stats(project):
    assert run_doit(project).code == 0
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 16}\n"))
    why = run_cli("status", "--why", "-C", str(project))
    assert "quantization.bits: 8 -> 16" in why.stdout
    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout
    assert rebuilt.ran == {"ranges:base", "quantize:base", "evaluate:base", "report"}
    assert {"prepare:base", "stats:base"} <= rebuilt.up_to_date
    assert "16" in (project / "build" / "base" / "ranges.yaml").read_text().split("bits:")[1][:4]


def test_changing_calibration_data_reruns_stats_and_everything_after(project):
    assert run_doit(project).code == 0
    write_npz(project / "calib.npz", 8, seed=99)
    why = run_cli("status", "--why", "-C", str(project))
    assert "calibration.data: content changed" in why.stdout
    rebuilt = run_doit(project)
    assert rebuilt.code == 0
    assert rebuilt.ran == ALL - {"prepare:base"}  # equalization measures on calibration data


def test_changing_only_evaluation_data_reruns_evaluate_and_report(project):
    assert run_doit(project).code == 0
    write_npz(project / "val.npz", 6, seed=42, labels=5)
    rebuilt = run_doit(project)
    assert rebuilt.ran == {"evaluate:base", "report"}


def test_recipes_sharing_model_and_calibration_compute_stats_once(tmp_path):
    recipes = device_recipes()
    root = make_project(tmp_path / "shared", recipes)
    first = run_doit(root)
    assert first.code == 0, first.stdout
    stats_ran = {t for t in first.ran if t.startswith("stats:")}
    assert stats_ran == {"stats:a_tda4vm"}
    assert "stats:b_am68a" in first.up_to_date
    assert (
        len(re.findall(r"^   8 frames, \d+ tensors", first.stdout, re.M)) == 1
    )  # one statistics pass
    # Both recipes still get their own ranges and models.
    assert {
        "ranges:a_tda4vm",
        "ranges:b_am68a",
        "quantize:a_tda4vm",
        "quantize:b_am68a",
    } <= first.ran
    assert (root / "build" / "a_tda4vm" / "model.qdq.onnx").read_bytes() != (
        root / "build" / "b_am68a" / "model.qdq.onnx"
    ).read_bytes()


def test_deleted_results_are_restored_from_the_store_without_recomputing(project):
    assert run_doit(project).code == 0
    (project / "build" / "base" / "model.qdq.onnx").unlink()
    rebuilt = run_doit(project)
    assert rebuilt.ran == {"quantize:base"}
    assert "store hit" in rebuilt.stdout
    assert (project / "build" / "base" / "model.qdq.onnx").is_file()


def test_overrides_on_the_command_line_key_like_recipe_edits(project):
    assert run_cli("build", "-C", str(project)).code == 0
    built = run_cli("build", "-C", str(project), "-S", "quantization.bits=16")
    assert built.code == 0, built.stdout + built.stderr
    assert built.ran == {"ranges:base", "quantize:base", "evaluate:base", "report"}


def test_overlapping_calibration_and_evaluation_frames_are_warned_about(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="").replace(
            "{tensors: val.npz, labels: labels}", "{tensors: calib.npz}"
        )
    )
    built = run_cli("build", "-C", str(project))
    assert built.code == 0
    assert "warning: 8 evaluation frame(s) are also calibration frames" in built.stdout


def test_weight_rounding_is_its_own_stage(project):
    assert run_doit(project).code == 0
    extra = "quantization: {weight_rounding: gptq}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    why = run_cli("status", "--why", "-C", str(project))
    assert re.search(r"rounding +out of date\n +never built", why.stdout), why.stdout
    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout + rebuilt.stderr
    # evaluate re-runs only if the rounding kept changed the quantized model.
    assert {"rounding:base", "quantize:base"} <= rebuilt.ran
    assert rebuilt.ran <= {"rounding:base", "quantize:base", "evaluate:base", "report"}
    assert {"prepare:base", "stats:base", "ranges:base"} <= rebuilt.up_to_date
    assert re.search(r"weight rounding: output error nearest \S+, gptq \S+ on", rebuilt.stdout)
    # bias calibration and bias checks happen after rounding: changing them keeps it cached
    extra = "quantization: {weight_rounding: gptq, bias_calibration: false}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    again = run_doit(project)
    assert again.code == 0, again.stdout + again.stderr
    assert "quantize:base" in again.ran and "rounding:base" in again.up_to_date
