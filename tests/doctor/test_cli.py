"""`quantbuild doctor`: text and JSON output, exit codes, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
from builders import RECIPE, small_cnn, write_model
from cli_runner import run_cli
from onnx import numpy_helper

from quantbuild.cli import main

MODEL_EXIT, RECIPE_EXIT = 3, 2


def _doctor(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _spread_model() -> onnx.ModelProto:
    """small_cnn without BN, conv2's last output channel 12x larger than the others."""
    model = small_cnn(batchnorm=False)
    for tensor in model.graph.initializer:
        if tensor.name == "w2":
            w = numpy_helper.to_array(tensor).copy()
            w /= np.abs(w).reshape(len(w), -1).max(axis=1)[:, None, None, None]
            w[-1] *= 12.0
            tensor.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w2"))
    return model


def test_model_text_output_lists_findings_per_check(tmp_path, capsys):
    path = write_model(tmp_path / "m.onnx", _spread_model())
    code, out, _ = _doctor(capsys, str(path))
    assert code == 0  # findings are a diagnosis
    lines = out.splitlines()
    assert "[conv-bn] Convolutions without BatchNormalization" in out
    assert any(line.startswith("  conv1: Conv 3x3, 3->4 channels") for line in lines)
    assert any(line.startswith("  conv2: Conv 6x4x3x3: per-channel max|w|") for line in lines)
    assert "max/median 12.0" in out
    assert "[activation-tails] skipped" in out
    assert "[float] Tensors left in float" in out and "none (" in out


def test_model_json_output(tmp_path, capsys):
    path = write_model(tmp_path / "m.onnx", _spread_model())
    code, out, _ = _doctor(capsys, str(path), "--json")
    assert code == 0
    report = json.loads(out)
    checks = {c["check"]: c for c in report["checks"]}
    assert [f["layer"] for f in checks["conv-bn"]["findings"]] == ["conv1", "conv2"]
    [spread] = checks["weight-spread"]["findings"]
    assert spread["layer"] == "conv2" and abs(spread["values"]["ratio"] - 12.0) < 1e-4
    assert checks["float"]["findings"] == []
    assert "activation-tails" in report["skipped"]
    assert report["facts"]["convolutions"] == 2


def test_text_caps_findings_unless_all(tmp_path, capsys):
    from quantbuild.doctor.render import SHOWN

    path = write_model(tmp_path / "deep.onnx", _deep_model(SHOWN + 3))
    _, capped, _ = _doctor(capsys, str(path))
    assert "... 3 more (--all lists them)" in capped
    _, full, _ = _doctor(capsys, str(path), "--all")
    assert "more (--all" not in full
    assert sum(line.startswith("  conv") for line in full.splitlines()) == SHOWN + 3


def _deep_model(convs: int) -> onnx.ModelProto:
    """`convs` 1x1 convs without BN, then a Gemm (so none is a prediction layer)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(convs):
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        inits.append(
            numpy_helper.from_array(rng.normal(0, 1, (3, 3, 1, 1)).astype(np.float32), f"w{i}")
        )
        x = f"c{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wfc"], ["out"], name="fc", transB=1),
    ]
    inits.append(numpy_helper.from_array(np.ones((2, 3), np.float32), "wfc"))
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_recipe_runs_the_activation_check_on_cached_statistics(project, capsys):
    code, out, err = _doctor(capsys, "-C", str(project), "base")
    assert code == 0, err
    assert "recipe base, 8 calibration frames" in out
    assert "[activation-tails] Activations with extreme tails" in out
    assert "skipped" not in out
    assert "stats: " in err  # built now
    code, again, err = _doctor(capsys, "-C", str(project), "base", "--json")
    assert code == 0
    assert "stats: store hit" in err  # the second run reuses the statistics
    report = json.loads(again)
    tails = next(c for c in report["checks"] if c["check"] == "activation-tails")
    assert tails["checked"] > 0


def test_recipe_tails_found_with_minmax(project, capsys):
    # One outlier in 8 x 3 x 80 x 80 input values (< 0.01 %): min/max keeps it, doctor reports it.
    write_model(project / "model.onnx", small_cnn(size=80))
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (8, 3, 80, 80)).astype(np.float32)
    frames[3, 0, 2, 2] = 60.0
    np.savez(project / "calib.npz", input=frames)
    np.savez(project / "val.npz", input=frames[:2], labels=np.array([0, 1]))
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {accuracy_level: 0}\n"))
    code, out, _ = _doctor(capsys, "-C", str(project), "base", "--json")
    assert code == 0
    tails = next(c for c in json.loads(out)["checks"] if c["check"] == "activation-tails")
    first = tails["findings"][0]
    assert (first["layer"], first["values"]["tensor"]) == ("input", "input")
    assert first["values"]["max"] == 60.0
    assert abs(first["values"]["clip_max"] - 1.0) < 0.01
    assert "accuracy_level: 1" in first["remedy"]


def test_missing_model_is_one_line_with_the_fix(tmp_path):
    run = run_cli("doctor", str(tmp_path / "nope.onnx"))
    assert run.code == MODEL_EXIT
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert "nope.onnx: no such model file" in line and "pass a float ONNX model" in line


def test_invalid_model_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model at all")
    run = run_cli("doctor", str(bad))
    assert run.code == MODEL_EXIT
    [line] = run.stderr.splitlines()
    assert "broken.onnx: not a readable ONNX model" in line and "re-export it" in line


def test_unknown_recipe_is_a_recipe_error(project, capsys):
    code, out, err = _doctor(capsys, "-C", str(project), "nosuch")
    assert code == RECIPE_EXIT and out == ""
    assert "no recipe named 'nosuch'" in err
