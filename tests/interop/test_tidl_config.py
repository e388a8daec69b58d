"""import-config / export-config: TIDL runtime options and edgeai-benchmark configs <-> recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import write_images, write_model
from cli_runner import run_cli
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from quantbuild.errors import RecipeError
from quantbuild.interop.tidl_config import (
    _has_field,
    export_config,
    export_options,
    import_config,
    read_config,
    render_recipe,
)
from quantbuild.recipe import load_recipe
from quantbuild.resources import recipe_schema

DEVICES = ["tda4vm", "am62a", "am67a", "am68a", "am69a"]
SCALE_TYPE = "advanced_options:quantization_scale_type"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """A folder with a model and calibration images; the current directory."""
    write_model(tmp_path / "model.onnx")
    write_images(tmp_path / "calib")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _resolve(folder: Path, text: str, name: str = "r.yaml") -> dict:
    (folder / name).write_text(text, encoding="utf-8")
    return load_recipe(folder / name).data


def _import(folder: Path, config: dict, source: str = "config.yaml", **kwargs):
    kwargs.setdefault("model", "model.onnx")
    kwargs.setdefault("data", "calib")
    return import_config(config, source=str(folder / source), out_dir=folder, **kwargs)


def _reimport(folder: Path, config: dict, **kwargs) -> dict:
    """Import a config, write the recipe beside the model, resolve it."""
    text = render_recipe(_import(folder, config, **kwargs))
    return _resolve(folder, text, "imported.yaml")


def _same_quantization(got: dict, want: dict) -> None:
    # quantbuild's accuracy_level 1 and 9 mean the same (9 only says "switches set by hand");
    # TIDL needs 9 to carry switches or channel-wise weights, so 1 may come back as 9.
    if want["accuracy_level"] == 1 and got["accuracy_level"] == 9:
        got = {**got, "accuracy_level": 1}
    assert got == want


# ---------------------------------------------------------------------------------------------
# recipe -> export -> import gives the same resolved quantization and preprocessing

RECIPES = {
    **{f"preset-{d}": f"extends: [devices/{d}]\n" for d in DEVICES},
    "no-device": "",
    "level-0-am68a": "extends: [devices/am68a]\nquantization: {accuracy_level: 0}\n",
    "level-0-tda4vm-16bit": "extends: [devices/tda4vm]\nquantization: {accuracy_level: 0, bits: 16}\n",
    "level-1-custom-switches": (
        "extends: [devices/am62a]\n"
        "quantization: {activation_clipping: minmax, bias_calibration: false}\n"
    ),
    "level-9-custom-switches": (
        "extends: [devices/am69a]\nquantization:\n  accuracy_level: 9\n  weight_clipping: none\n"
        "  bias_calibration: {frames: 10, iterations: 7}\n"
    ),
    "level-9-default-switches": "quantization: {accuracy_level: 9, bits: 16}\n",
    "16bit-am67a": "extends: [devices/am67a]\nquantization: {bits: 16}\n",
    "per-channel-float-symmetric": "quantization: {weights: {per_channel: true}}\n",
    "per-channel-on-tda4vm": "extends: [devices/tda4vm]\nquantization: {weights: {per_channel: true}}\n",
    "power-of-2": "quantization: {scale: power_of_2}\n",
    "float-on-tda4vm": "extends: [devices/tda4vm]\nquantization: {scale: float}\n",
    "symmetric-per-tensor-on-am68a": (
        "extends: [devices/am68a]\nquantization: {activations: symmetric, weights: {per_channel: false}}\n"
    ),
    "bias-iterations": "quantization: {bias_calibration: {iterations: 12}}\n",
}
PREPROCESS = (
    "  preprocess: {resize: 12, crop: [10, 8], color: bgr, interpolation: bicubic, "
    "layout: NHWC, mean: [1.5, 2, 3], scale: [0.5, 0.25, 0.125]}\n"
)


def _recipe_text(extra: str) -> str:
    return (
        "version: 1\nmodel: model.onnx\ncalibration:\n  data: {images: calib}\n"
        + PREPROCESS
        + extra
    )


@pytest.mark.parametrize("fmt", ["tidl", "edgeai"])
@pytest.mark.parametrize("case", sorted(RECIPES))
def test_recipe_round_trip(folder, case, fmt):
    original = _resolve(folder, _recipe_text(RECIPES[case]))
    text, _ = export_config(original, fmt, out_dir=folder, source="r.yaml")
    config = json.loads(text) if fmt == "tidl" else YAML(typ="safe").load(text)
    # TIDL options carry no device; an edgeai config names it (session.target_device).
    device = original["device"] if fmt == "tidl" else None
    back = _reimport(folder, config, device=device)
    _same_quantization(back["quantization"], original["quantization"])
    assert back["device"] == original["device"]
    if fmt == "edgeai":
        assert back["calibration"]["preprocess"] == original["calibration"]["preprocess"]
        assert back["model"] == original["model"]


def test_accuracy_level_9_only_where_tidl_needs_it(folder):
    kept = _resolve(folder, _recipe_text("extends: [devices/am68a]\n"))
    assert export_options(kept)[0]["accuracy_level"] == 1
    moved = _resolve(
        folder,
        _recipe_text("quantization: {weights: {per_channel: true}, equalization: false}\n"),
    )
    options, warnings = export_options(moved)
    assert options["accuracy_level"] == 9 and warnings == []
    assert options["advanced_options:channel_wise_quantization"] == 1
    assert options["advanced_options:activation_clipping"] == 1


# ---------------------------------------------------------------------------------------------
# TIDL options -> import -> export gives the same values for every option quantbuild supports

TIDL_DEFAULTS = {
    "tensor_bits": 8,
    "accuracy_level": 1,
    "advanced_options:calibration_frames": 20,
    "advanced_options:calibration_iterations": 50,
    "advanced_options:activation_clipping": 1,
    "advanced_options:weight_clipping": 1,
    "advanced_options:bias_calibration": 1,
    "advanced_options:channel_wise_quantization": 0,
}


def _effective(options: dict, device: str | None) -> dict:
    """The options TIDL acts on: defaults filled, options it does not read dropped."""
    scale_type = {None: 0, "tda4vm": 1}.get(device, 4)
    out = {**TIDL_DEFAULTS, SCALE_TYPE: scale_type, **options}
    level = out["accuracy_level"]
    if level != 9:
        for key in ("activation_clipping", "weight_clipping", "bias_calibration"):
            del out[f"advanced_options:{key}"]
    if level != 9 or out[SCALE_TYPE] == 4:
        del out["advanced_options:channel_wise_quantization"]
    bias_on = level == 1 or (level == 9 and out["advanced_options:bias_calibration"] == 1)
    if not bias_on:
        del out["advanced_options:calibration_iterations"]
    return out


TIDL_CASES = [
    *[({}, d) for d in [None, *DEVICES]],
    (
        {
            "tensor_bits": 16,
            "accuracy_level": 0,
            SCALE_TYPE: 1,
            "advanced_options:calibration_frames": 10,
        },
        None,
    ),
    (
        {
            "accuracy_level": 9,
            "advanced_options:activation_clipping": 1,
            "advanced_options:weight_clipping": 0,
            "advanced_options:bias_calibration": 1,
            "advanced_options:calibration_frames": 25,
            "advanced_options:calibration_iterations": 30,
            SCALE_TYPE: 0,
            "advanced_options:channel_wise_quantization": 1,
        },
        None,
    ),
    (
        {
            "accuracy_level": 9,
            "advanced_options:activation_clipping": 0,
            "advanced_options:weight_clipping": 0,
            "advanced_options:bias_calibration": 0,
            SCALE_TYPE: 4,
        },
        "am68a",
    ),
    (
        {"accuracy_level": 9, SCALE_TYPE: 1, "advanced_options:channel_wise_quantization": 1},
        "tda4vm",
    ),
    (
        {
            "accuracy_level": 1,
            SCALE_TYPE: 4,
            "advanced_options:calibration_frames": 12,
            "advanced_options:calibration_iterations": 12,
        },
        "am62a",
    ),
    ({SCALE_TYPE: 0, "tensor_bits": 16}, "am69a"),
    ({SCALE_TYPE: 1}, "am67a"),
    # Written the way edgeai-tidl-tools writes them: strings and every switch spelled out.
    (
        {
            "tensor_bits": "8",
            "accuracy_level": "0",
            SCALE_TYPE: "0",
            **{k: v for k, v in TIDL_DEFAULTS.items() if "clip" in k or "bias" in k},
        },
        None,
    ),
]


@pytest.mark.parametrize("options, device", TIDL_CASES, ids=lambda v: str(v)[:40])
def test_tidl_round_trip(folder, options, device):
    back = _reimport(folder, options, device=device)
    exported, _ = export_options(back)
    typed = {k: int(v) for k, v in options.items()}
    assert _effective(exported, device) == _effective(typed, device)


def test_level_9_with_default_switches_stays_accuracy_level(folder):
    recipe = _import(folder, {**TIDL_DEFAULTS, "accuracy_level": 9}).recipe
    assert recipe["quantization"] == {"accuracy_level": 9, "bias_calibration": {"frames": 20}}
    custom = _import(folder, {"accuracy_level": 9, "advanced_options:bias_calibration": 0})
    assert custom.recipe["quantization"] == {
        "accuracy_level": 9,
        "activation_clipping": "percentile",
        "weight_clipping": "mse",
        "bias_calibration": False,
    }


def test_only_what_differs_from_the_device_preset_is_written(folder):
    same = _import(
        folder, {SCALE_TYPE: 4, "advanced_options:calibration_frames": 50}, device="am68a"
    )
    assert same.recipe["extends"] == ["devices/am68a"]
    assert "quantization" not in same.recipe
    other = _import(folder, {SCALE_TYPE: 1}, device="am68a").recipe["quantization"]
    assert other == {
        "scale": "power_of_2",
        "activations": "symmetric",
        "weights": {"per_channel": False},
        "bias_calibration": {"frames": 20},
    }


def test_tda4vm_downgrades_scale_type_4(folder):
    imported = _import(
        folder, {SCALE_TYPE: 4, "advanced_options:calibration_frames": 50}, device="tda4vm"
    )
    assert "quantization" not in imported.recipe  # the tda4vm preset: power-of-2, per-tensor
    assert any("TDA4VM" in w and "type 4" in w for w in imported.warnings)


def test_switches_outside_level_9_are_reported_not_imported(folder):
    imported = _import(folder, {"accuracy_level": 1, "advanced_options:bias_calibration": 0})
    assert imported.recipe.get("quantization", {}).get("bias_calibration") != False  # noqa: E712
    assert any(
        "advanced_options:bias_calibration: not imported (TIDL reads it only at accuracy_level 9)"
        in w
        for w in imported.warnings
    )


# ---------------------------------------------------------------------------------------------
# edgeai-benchmark configs (shapes from edgeai-modelzoo)

EDGEAI = """\
task_type: detection
dataset_category: coco
calibration_dataset: coco
preprocess:
  resize: [512, 512]
  crop: [512, 512]
  data_layout: NCHW
  reverse_channels: true
  backend: cv2
  interpolation: null
  resize_with_pad: false
  pad_color: 0
session:
  session_name: onnxrt
  target_device: AM68A
  input_optimization: false
  input_data_layout: NCHW
  input_mean: [103.53, 116.28, 123.675]
  input_scale: [0.017429, 0.017507, 0.017125]
  runtime_options:
    tensor_bits: 8
    accuracy_level: 1
    advanced_options:calibration_frames: 12
    advanced_options:calibration_iterations: 12
    advanced_options:quantization_scale_type: 4
    advanced_options:output_feature_16bit_names_list: '1033, 711, 712'
    advanced_options:params_16bit_names_list: ''
    advanced_options:mixed_precision_factor: 1.2
    advanced_options:add_data_convert_ops: 3
    advanced_options:calibraton_iterations: 5
    object_detection:meta_arch_type: 3
    info: {prequantized_model_type: 0}
  model_path: models/ssd.onnx
  model_id: od-8050
postprocess: {detection_threshold: 0.3}
metric: {label_offset_pred: {0: 1, 1: 2}}
"""


@pytest.fixture
def edgeai(folder) -> Path:
    (folder / "zoo").mkdir()
    (folder / "zoo" / "param.yaml").write_text(EDGEAI, encoding="utf-8")
    return folder / "zoo" / "param.yaml"


def test_edgeai_config_imports(folder, edgeai):
    imported = import_config(
        read_config(edgeai), source="zoo/param.yaml", out_dir=folder, data="calib"
    )
    recipe = imported.recipe
    assert recipe["extends"] == ["devices/am68a"]  # from session.target_device
    assert recipe["model"] == "zoo/models/ssd.onnx"  # relative to the config, seen from out_dir
    assert recipe["calibration"] == {
        "data": {"images": "calib", "limit": 12},
        "preprocess": {
            "resize": [512, 512],
            "crop": [512, 512],
            "color": "bgr",
            "mean": [103.53, 116.28, 123.675],
            "scale": [0.017429, 0.017507, 0.017125],
        },
    }
    expected = {"bias_calibration": {"frames": 12, "iterations": 12}}
    if _has_field(("quantization", "mixed_precision", "output_16bit")):
        expected["mixed_precision"] = {"output_16bit": ["1033", "711", "712"]}
    if _has_field(("quantization", "mixed_precision", "factor")):
        expected.setdefault("mixed_precision", {})["factor"] = 1.2
    assert recipe["quantization"] == expected
    skipped = {s.key: s.reason for s in imported.skipped}
    assert (
        "did you mean 'advanced_options:calibration_iterations'"
        in skipped["advanced_options:calibraton_iterations"]
    )
    assert "preprocess.backend" in skipped
    assert "object_detection:meta_arch_type" in skipped
    assert "advanced_options:params_16bit_names_list" not in skipped  # empty: nothing to do
    for key, field in (
        ("advanced_options:output_feature_16bit_names_list", "output_16bit"),
        ("advanced_options:mixed_precision_factor", "factor"),
    ):
        assert (key in skipped) != _has_field(("quantization", "mixed_precision", field))
    assert {"task_type", "postprocess", "metric", "info"} <= set(imported.ignored)
    assert not list(Draft202012Validator(recipe_schema()).iter_errors(recipe))


def test_rendered_recipe_names_its_source_and_what_was_not_imported(folder, edgeai):
    imported = import_config(read_config(edgeai), source="zoo/param.yaml", out_dir=folder)
    text = render_recipe(imported)
    assert text.startswith("# Imported from zoo/param.yaml (edgeai-benchmark config)")
    assert "# not imported:\n" in text
    assert '#   preprocess.backend: "cv2"  (quantbuild resizes with Pillow' in text
    assert YAML(typ="safe").load(text) == imported.recipe
    assert len(imported.warnings) == len(imported.skipped) + len(imported.notes)


def test_absent_options_take_tidl_defaults(folder):
    imported = _import(folder, {"advanced_options:output_feature_16bit_names_list": ""})
    assert imported.recipe["calibration"]["data"]["limit"] == 20
    assert "advanced_options:calibration_frames 20" in imported.defaults
    assert "TIDL defaults for options it does not set" in render_recipe(imported)


def test_options_the_schema_has_map_and_paths_are_rebased(folder):
    (folder / "cfg").mkdir()
    options = {
        "advanced_options:quant_params_proto_path": "ranges.prototxt",
        "advanced_options:prequantized_model": 1,
    }
    imported = _import(folder, options, source="cfg/options.yaml")
    q = imported.recipe.get("quantization", {})
    if _has_field(("quantization", "ranges", "import")):
        assert q["ranges"] == {"import": "cfg/ranges.prototxt"}
    else:
        assert "advanced_options:quant_params_proto_path" in {s.key for s in imported.skipped}
    if _has_field(("quantization", "prequantized")):
        assert q["prequantized"] is True


def test_interpolation_and_layout_variants(folder):
    config = {
        "preprocess": {"backend": "cv2", "interpolation": 2, "resize": 20},
        "session": {"input_data_layout": "NHWC", "runtime_options": {}},
    }
    pre = _import(folder, config).recipe["calibration"]["preprocess"]
    assert pre == {"resize": 20, "interpolation": "bicubic", "layout": "NHWC"}
    # edgeai-tidl-tools' param.yaml: mean and scale inside preprocess
    config = {"preprocess": {"mean": [0, 0, 0], "scale": [1, 1, 1], "resize": [8, 8]}}
    pre = _import(folder, config).recipe["calibration"]["preprocess"]
    assert pre == {"resize": [8, 8], "mean": [0, 0, 0], "scale": [1, 1, 1]}


# ---------------------------------------------------------------------------------------------
# Export warnings: what TIDL cannot say


def test_export_warns_where_tidl_cannot_follow(folder):
    data = _resolve(
        folder,
        _recipe_text(
            "extends: [devices/am68a]\nquantization:\n  weights: {per_channel: false}\n"
            "  activation_clipping: entropy\n  percentile: 99.9\n  bias_bits: 16\n"
        ),
    )
    options, warnings = export_options(data)
    assert options[SCALE_TYPE] == 4
    text = "\n".join(warnings)
    assert "per-channel weights" in text
    assert "entropy" in text
    assert "bias_bits" in text


def test_calibration_frames_follow_what_quantbuild_runs(folder):
    def frames(limit: int | None, bias: str) -> tuple:
        text = _recipe_text(f"quantization: {{bias_calibration: {bias}, equalization: false}}\n")
        if limit:
            text = text.replace("{images: calib}", f"{{images: calib, limit: {limit}}}")
        options, warnings = export_options(_resolve(folder, text))
        return options.get("advanced_options:calibration_frames"), warnings

    # Bias calibration runs on the first `frames` of the (limited) calibration set.
    assert frames(None, "{frames: 30}") == (30, [])
    assert frames(6, "{frames: 30}") == (6, [])
    count, warnings = frames(40, "{frames: 30}")
    assert count == 30 and "calibration.data.limit 40" in warnings[0]
    assert frames(6, "false") == (6, [])
    count, warnings = frames(None, "false")
    assert count is None and "20 frames" in warnings[0]


def test_export_edgeai_shape(folder):
    data = _resolve(folder, _recipe_text("extends: [devices/tda4vm]\n"))
    text, _ = export_config(data, "edgeai", out_dir=folder / "out", source="r.yaml")
    config = YAML(typ="safe").load(text)
    assert set(config) == {"preprocess", "session"}
    assert config["preprocess"]["reverse_channels"] is True
    assert config["preprocess"]["data_layout"] == "NHWC"
    assert config["preprocess"]["interpolation"] == 3  # PIL.Image.BICUBIC
    session = config["session"]
    assert session["model_path"] == "../model.onnx"
    assert session["target_device"] == "TDA4VM"
    assert session["input_mean"] == [1.5, 2, 3]
    assert session["runtime_options"][SCALE_TYPE] == 1


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file, the key and the fix


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- tensor_bits\n- 8\n", "document: not a mapping; give a TIDL runtime-options dict"),
        ("tensor_bits: eight\n", "tensor_bits: 'eight' is not valid; use 8, 16"),
        ("tensor_bits: 32\n", "tensor_bits: 32 is not valid; use 8, 16"),
        (f"{SCALE_TYPE}: 2\n", f"{SCALE_TYPE}: 2 is not valid; use 0 (float scales), 1"),
        ("advanced_options:calibration_frames: 0\n", "calibration_frames: 0 is not valid; give 1"),
        ("accuracy_level: [1]\n", "accuracy_level: [1] is not valid; use 0, 1, 9"),
        ("session: {input_mean: abc}\n", "session.input_mean: 'abc' is not valid; give a list"),
        ("preprocess: {resize: [1, 2, 3]}\n", "preprocess.resize: [1, 2, 3] is not valid; give"),
        ("session: [a]\npreprocess: {}\n", "session: not a mapping"),
    ],
)
def test_bad_input_is_one_line(folder, text, expected):
    (folder / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        _import(folder, read_config(folder / "bad.yaml"), source="bad.yaml")
    message = str(caught.value)
    assert message.startswith(str(folder / "bad.yaml") + ": ")
    assert expected in message
    assert "\n" not in message


def test_scale_type_3_is_reported_not_imported(folder):
    imported = _import(folder, {SCALE_TYPE: 3})
    assert SCALE_TYPE in {s.key for s in imported.skipped}


# ---------------------------------------------------------------------------------------------
# The commands, as a user runs them


def test_cli_round_trip(folder):
    (folder / "r.yaml").write_text(
        _recipe_text("extends: [devices/am69a]\nquantization: {bits: 16}\n"), encoding="utf-8"
    )
    run = run_cli("export-config", "r.yaml", "-o", "out/r.edgeai.yaml", cwd=folder)
    assert run.code == 0, run.stderr
    assert "target_device: AM69A" in (folder / "out" / "r.edgeai.yaml").read_text()
    run = run_cli(
        "import-config", "out/r.edgeai.yaml", "-o", "back.yaml", "--data", "calib", cwd=folder
    )
    assert run.code == 0, run.stderr
    assert run.stderr == ""  # nothing lost, nothing unknown
    shown = run_cli("show", "--resolved", "back.yaml", cwd=folder)
    original = run_cli("show", "--resolved", "r.yaml", cwd=folder)
    resolved = [YAML(typ="safe").load(r.stdout) for r in (shown, original)]
    assert resolved[0]["quantization"] == resolved[1]["quantization"]
    assert resolved[0]["calibration"]["preprocess"] == resolved[1]["calibration"]["preprocess"]

    (folder / "tidl.json").write_text(
        json.dumps({"tensor_bits": 16, "deny_list:layer_type": "MaxPool", "debug_level": 1}),
        encoding="utf-8",
    )
    run = run_cli("import-config", "tidl.json", "--device", "tda4vm", cwd=folder)
    assert run.code == 0
    assert "extends: [devices/tda4vm]" in run.stdout
    assert '#   deny_list:layer_type: "MaxPool"' in run.stdout
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert "warning: tidl.json: deny_list:layer_type: not imported" in warnings[0]

    (folder / "bad.json").write_text('{"advanced_options:quantization_scale_type": 7}')
    run = run_cli("import-config", "bad.json", cwd=folder)
    assert run.code == 2
    assert run.stderr.startswith("error: bad.json: advanced_options:quantization_scale_type: 7")


def test_equalization_is_not_a_tidl_option_and_export_says_which_model_to_compile(folder):
    _, warnings = export_options(_resolve(folder, _recipe_text("")))
    assert warnings == [
        "quantization.equalization: not a TIDL option; where it rescaled the model (the "
        "equalize stage logs how many tensors), give TIDL build/<recipe>/model.float.onnx "
        "(with quant_params.prototxt for the same ranges)"
    ]


def test_gptq_weight_rounding_is_not_carried_to_tidl(folder):
    text = _recipe_text("quantization: {weight_rounding: gptq, equalization: false}\n")
    _, warnings = export_options(_resolve(folder, text))
    assert warnings == [
        "quantization.weight_rounding: not a TIDL option; TIDL rounds the float weights to "
        "nearest itself, so the GPTQ integers (model.qdq.onnx) are not carried over"
    ]
