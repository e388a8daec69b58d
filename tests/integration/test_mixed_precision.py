"""Manual mixed precision: TIDL's lists in a recipe, applied to the QDQ model."""

from __future__ import annotations

import json

from builders import RECIPE
from cli_runner import run_cli, run_doit

from quantbuild.interop.ranges_file import read

MP = "quantization: {{mixed_precision: {{output_16bit: [{names}]}}}}\n"


def _record(project) -> dict:
    return json.loads((project / "build" / "base" / "quant_params.json").read_text())


def test_listed_conv_gets_16bit_output_and_weights_and_only_quantize_reruns(project):
    assert run_doit(project).code == 0
    before = _record(project)
    assert before["weights"]["w2"]["dtype"] == "int8"
    (project / "base.yaml").write_text(RECIPE.format(extra=MP.format(names="conv2")))
    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout + rebuilt.stderr
    assert rebuilt.ran == {"quantize:base", "evaluate:base", "report"}
    after = _record(project)
    assert after["weights"]["w2"]["dtype"] == "int16"  # listed: 16-bit weights
    assert after["weights"]["w1"]["dtype"] == "int8"  # the producer stays 8-bit
    assert after["activations"]["r2"]["dtype"].endswith("16")  # conv2+relu2 output
    assert (
        after["activations"]["p1"]["dtype"].endswith("8") if "p1" in after["activations"] else True
    )
    assert after["biases"]["bias2"]["bits"] == 32
    ranges, _ = read(project / "build" / "base" / "ranges.yaml")
    assert ranges["r2"].qparams.dtype.endswith("8")  # ranges.yaml keeps the recipe-wide grids
    table = json.loads((project / "build" / "base" / "precision.json").read_text())["layers"]
    conv2 = next(row for row in table if row["layer"] == "conv2")
    assert conv2["output_bits"] == 16 and conv2["weight_bits"] == 16 and conv2["why"] == "listed"
    shown = run_cli("show", "-C", str(project), "base")
    assert "conv2" in shown.stdout and "16" in shown.stdout


def test_16bit_layer_improves_fidelity(project):
    assert run_doit(project).code == 0
    eight = json.loads((project / "build" / "base" / "metrics.json").read_text())
    (project / "base.yaml").write_text(RECIPE.format(extra=MP.format(names="conv1, conv2, fc")))
    assert run_doit(project).code == 0
    mixed = json.loads((project / "build" / "base" / "metrics.json").read_text())
    sqnr = lambda m: m["outputs"]["logits"]["sqnr_db"]  # noqa: E731
    assert sqnr(mixed) > sqnr(eight) + 1  # +2 dB here: calibration ranges bound the rest


def test_unknown_layer_name_suggests_the_closest(project):
    (project / "base.yaml").write_text(RECIPE.format(extra=MP.format(names="conv22")))
    built = run_cli("build", "-C", str(project))
    output = built.stdout + built.stderr
    assert built.code == 2, output
    assert "quantization.mixed_precision.output_16bit[0]" in output
    assert "did you mean 'conv2'" in output and "Traceback" not in output


def test_automatic_selection_under_a_factor_and_factor_change_reruns_only_the_selection(project):
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization: {mixed_precision: {factor: 1.5}}\n")
    )
    first = run_doit(project)
    assert first.code == 0, first.stdout + first.stderr
    assert "sensitivity:base" in first.ran
    precision = json.loads((project / "build" / "base" / "precision.json").read_text())
    promoted = [r for r in precision["layers"] if r["why"].startswith("promoted")]
    assert promoted and precision["latency"]["ratio"] <= 1.5
    # The factor sweep for the report: within each budget, and never worse than 8-bit.
    sensitivity = json.loads((project / "build" / "base" / "sensitivity.json").read_text())
    # Each gain is the mean of the two backgrounds' measurements, over the same candidates.
    alone, together = sensitivity["gains_8bit_background"], sensitivity["gains_16bit_background"]
    assert sensitivity["gains"].keys() == alone.keys() == together.keys()
    assert all(
        abs(gain - (alone[name] + together[name]) / 2) < 1e-12
        for name, gain in sensitivity["gains"].items()
    )
    assert sensitivity["error_16bit"] < sensitivity["error_8bit"]
    sweep = sensitivity["sweep"]
    assert [p["factor"] for p in sweep] == [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0]
    assert all(p["ratio"] <= p["factor"] + 1e-9 for p in sweep)
    # Each point is its budget's greedy selection unless a smaller budget's measured clearly
    # lower per-frame errors (the rule is tested in tests/mixed/test_select.py).
    assert sweep[-1]["error"] < sweep[0]["error"] and sweep[-1]["layers"] > 0
    assert (
        "Automatic mixed precision: fidelity against latency"
        in (project / "build" / "report.html").read_text()
    )
    (project / "base.yaml").write_text(
        RECIPE.format(extra="quantization: {mixed_precision: {factor: 1.1}}\n")
    )
    second = run_doit(project)
    assert second.code == 0, second.stdout + second.stderr
    assert second.ran == {"quantize:base", "evaluate:base", "report"}
    assert {"stats:base", "sensitivity:base"} <= second.up_to_date
    tighter = json.loads((project / "build" / "base" / "precision.json").read_text())
    assert tighter["latency"]["ratio"] <= 1.1
    assert sum(r["why"].startswith("promoted") for r in tighter["layers"]) < len(promoted)


def test_without_a_factor_there_is_no_sensitivity_stage(project):
    built = run_doit(project)
    assert built.code == 0
    assert not any(task.startswith("sensitivity") for task in built.ran | built.up_to_date)


def test_16bit_build_with_a_factor_measures_no_sensitivities(project):
    extra = "quantization: {bits: 16, mixed_precision: {factor: 1.5}}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    assert not any(task.startswith("sensitivity") for task in built.ran | built.up_to_date)


def test_max_drop_selects_the_cheapest_set_meeting_the_target(project):
    # cosine (no top1 metric asked): the 8-bit model's cosine is below 1 - 1e-6, so the
    # search must promote layers; an unreachable target keeps the best set and says so.
    extra = "quantization: {mixed_precision: {max_drop: 0.000001}}\n"
    recipe = RECIPE.format(extra=extra).replace("labels}\n", "labels}\n  metrics: [cosine]\n")
    (project / "base.yaml").write_text(recipe)
    first = run_doit(project)
    assert first.code == 0, first.stdout + first.stderr
    assert {"sensitivity:base", "selection:base", "quantize:base"} <= first.ran
    selection = json.loads((project / "build" / "base" / "selection.json").read_text())
    assert selection["metric"] == "cosine" and selection["float"] == 1.0
    points = selection["points"]
    assert points[0]["layers"] == 0 and len(points) > 1
    best = max(p["metric"] for p in points)
    chosen = next(p for p in points if p["ratio"] == selection["ratio"])
    if selection["met"]:
        assert chosen["metric"] >= selection["target"]
        assert all(
            p["metric"] < selection["target"] for p in points if p["ratio"] < chosen["ratio"]
        )
    else:
        assert chosen["metric"] == best
    precision = json.loads((project / "build" / "base" / "precision.json").read_text())
    promoted = [r for r in precision["layers"] if r["why"] == "promoted (max_drop 1e-06)"]
    assert len(selection["chosen"]) == 0 or promoted
    report = (project / "build" / "report.html").read_text()
    assert "Mixed precision to an accuracy target" in report
    # A looser target re-runs the search and what follows, never statistics or sensitivities.
    (project / "base.yaml").write_text(recipe.replace("max_drop: 0.000001", "max_drop: 0.5"))
    second = run_doit(project)
    assert second.code == 0, second.stdout + second.stderr
    assert "selection:base" in second.ran
    assert {"stats:base", "sensitivity:base"} <= second.up_to_date
    loose = json.loads((project / "build" / "base" / "selection.json").read_text())
    assert loose["met"] and loose["chosen"] == []  # 8-bit is within 0.5 of float
    assert "max_drop 0.5: 0 layers promoted" in second.stdout


def test_max_drop_without_evaluation_data_is_a_recipe_error(project):
    text = RECIPE.format(extra="quantization: {mixed_precision: {max_drop: 0.01}}\n")
    text = text.replace("evaluation:\n  data: {tensors: val.npz, labels: labels}\n", "")
    (project / "base.yaml").write_text(text)
    built = run_cli("build", "-C", str(project))
    output = built.stdout + built.stderr
    assert built.code == 2, output
    assert "quantization.mixed_precision.max_drop" in output and "evaluation" in output
    assert "Traceback" not in output


def test_a_measured_latency_table_drives_the_latency_model_and_is_keyed_by_content(project):
    table = project / "latency.csv"
    table.write_text("layer,t8,t16\nconv1,1.0,4.0\nconv2,2.0,8.0\nfc,0.5,1.0\n")
    extra = "quantization: {mixed_precision: {output_16bit: [conv2], latency_table: latency.csv}}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    built = run_doit(project)
    assert built.code == 0, built.stdout + built.stderr
    latency = json.loads((project / "build" / "base" / "precision.json").read_text())["latency"]
    assert latency["unit"] == "table"
    assert latency["t16"] >= 13.0  # the listed layers' measured 16-bit times at least
    table.write_text("layer,t8,t16\nconv1,1.0,4.0\nconv2,2.0,20.0\nfc,0.5,1.0\n")
    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout + rebuilt.stderr
    assert rebuilt.ran == {"quantize:base", "evaluate:base", "report"}
    wider = json.loads((project / "build" / "base" / "precision.json").read_text())["latency"]
    assert wider["t_mp"] > latency["t_mp"]


def test_a_latency_table_naming_an_unknown_layer_is_one_line(project):
    (project / "latency.csv").write_text("layer,t8,t16\nconv9,1.0,4.0\n")
    extra = "quantization: {mixed_precision: {output_16bit: [conv2], latency_table: latency.csv}}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    built = run_cli("build", "-C", str(project))
    output = built.stdout + built.stderr
    assert built.code == 2, output
    assert "latency.csv" in output and "conv9" in output and "Traceback" not in output
    (project / "latency.csv").unlink()
    missing = run_cli("build", "-C", str(project))
    assert missing.code == 2
    assert "quantization.mixed_precision.latency_table: file not found" in missing.stderr
