"""load_recipe: schema errors with positions, defaults, presets, paths and input checks."""

from __future__ import annotations

import pytest
from builders import write_images, write_model, write_npz

from quantbuild.errors import DataError, ModelError, QuantbuildError, RecipeError, Where
from quantbuild.recipe import load_recipe
from quantbuild.recipe.validate import RecipeErrors

HEAD = "version: 1\nmodel: model.onnx\ncalibration:\n  data: {tensors: calib.npz}\n"


def _recipe(project, text: str, name: str = "r.yaml"):
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(project, text: str, kind: type[QuantbuildError] = RecipeError) -> tuple:
    f = _recipe(project, text)
    with pytest.raises(kind) as info:
        load_recipe(f)
    return str(f), info.value


def test_unknown_key_suggests_the_right_one(project):
    f, err = _error(project, HEAD + "quantization:\n  bitz: 16\n")
    assert str(err) == f"{f}:6:3: quantization.bitz: unknown key; did you mean 'bits'?"
    assert err.exit_code == 2


def test_unknown_key_without_close_match_lists_allowed_keys(project):
    f, err = _error(project, HEAD + "quantization:\n  zzz: 1\n")
    assert str(err) == (
        f"{f}:6:3: quantization.zzz: unknown key; "
        "allowed: accuracy_level, activation_clipping, activations, bias_bits, "
        "bias_calibration, bits, equalization, mixed_precision, percentile, prequantized, "
        "ranges, scale, weight_clipping, weight_rounding, weights"
    )


def test_unknown_top_level_key(project):
    f, err = _error(project, HEAD + "evalution:\n  data: {tensors: val.npz}\n")
    assert str(err) == f"{f}:5:1: evalution: unknown key; did you mean 'evaluation'?"


def test_unknown_key_inside_a_flow_mapping_points_at_the_key(project):
    f, err = _error(project, HEAD + "quantization: {weights: {perchannel: true}}\n")
    assert str(err) == (
        f"{f}:5:26: quantization.weights.perchannel: unknown key; did you mean 'per_channel'?"
    )


def test_wrong_type_boolean(project):
    f, err = _error(project, HEAD + "quantization:\n  weights:\n    per_channel: yes\n")
    assert str(err) == f"{f}:7:18: quantization.weights.per_channel: 'yes' is not of type 'boolean'"


def test_wrong_type_object(project):
    f, err = _error(project, HEAD + "quantization: 8\n")
    assert str(err) == f"{f}:5:15: quantization: 8 is not of type 'object'"


def test_wrong_type_list_item(project):
    f, err = _error(project, HEAD.replace("calib.npz}", "calib.npz}\n  preprocess: {mean: [1, x]}"))
    assert str(err) == f"{f}:5:26: calibration.preprocess.mean[1]: 'x' is not of type 'number'"


def test_enum_violation_lists_the_allowed_values(project):
    f, err = _error(project, HEAD + "quantization:\n  bits: 12\n")
    assert str(err) == f"{f}:6:9: quantization.bits: 12 is not one of [8, 16]"


def test_enum_violation_for_strings(project):
    f, err = _error(project, HEAD + "quantization: {scale: pow2}\n")
    assert str(err) == f"{f}:5:23: quantization.scale: 'pow2' is not one of ['float', 'power_of_2']"


def test_version_must_be_one(project):
    f, err = _error(project, HEAD.replace("version: 1", "version: 2"))
    assert str(err) == f"{f}:1:10: version: 1 was expected"


def test_size_below_minimum(project):
    f, err = _error(
        project, HEAD.replace("calib.npz}", "calib.npz}\n  preprocess: {resize: 0, crop: [0, 4]}")
    )
    assert err.errors and [str(e) for e in err.errors] == [
        f"{f}:5:24: calibration.preprocess.resize: 0 is less than the minimum of 1",
        f"{f}:5:34: calibration.preprocess.crop[0]: 0 is less than the minimum of 1",
    ]


def test_missing_required_top_level_keys(project):
    f, err = _error(project, "version: 1\n")
    assert isinstance(err, RecipeErrors)
    assert [str(e) for e in err.errors] == [
        f"{f}:1:1: recipe: missing required key 'model'",
        f"{f}:1:1: recipe: missing required key 'calibration'",
    ]


def test_missing_required_nested_key(project):
    f, err = _error(project, "version: 1\nmodel: model.onnx\ncalibration:\n  preprocess: {}\n")
    assert str(err) == f"{f}:4:3: calibration: missing required key 'data'"


def test_missing_version(project):
    f, err = _error(project, HEAD.replace("version: 1\n", ""))
    assert str(err) == f"{f}:1:1: recipe: missing required key 'version'"


def test_several_errors_are_reported_together_sorted_by_line(project):
    text = (
        "version: 1\n"  # 1
        "model: model.onnx\n"  # 2
        "calibration:\n"  # 3
        "  data: {tensors: calib.npz}\n"  # 4
        "quantization:\n"  # 5
        "  bits: 12\n"  # 6
        "  scale: pow2\n"  # 7
        "evaluation:\n"  # 8
        "  metrics: [top5]\n"  # 9
        "naem: x\n"  # 10
    )
    f, err = _error(project, text)
    assert isinstance(err, RecipeErrors)
    lines = str(err).splitlines()
    assert lines == [
        f"{f}:6:9: quantization.bits: 12 is not one of [8, 16]",
        f"{f}:7:10: quantization.scale: 'pow2' is not one of ['float', 'power_of_2']",
        f"{f}:9:3: evaluation: missing required key 'data'",
        f"{f}:9:13: evaluation.metrics[0]: 'top5' is not one of ['top1', 'sqnr', 'cosine']",
        f"{f}:10:1: naem: unknown key; did you mean 'name'?",
    ]
    assert [e.where.line for e in err.errors] == [6, 7, 9, 9, 10]


def test_defaults_are_filled(project):
    f = _recipe(project, HEAD)
    recipe = load_recipe(f)
    assert recipe.data == {
        "version": 1,
        "model": str(project / "model.onnx"),
        "device": None,
        "calibration": {
            "data": {"tensors": str(project / "calib.npz"), "seed": 0},
            "preprocess": {
                "color": "rgb",
                "interpolation": "bilinear",
                "pad_value": 0,
                "layout": "NCHW",
            },
        },
        "quantization": {
            "bits": 8,
            "scale": "float",
            "activations": "symmetric",
            "weights": {"per_channel": False},
            "bias_bits": 32,
            "accuracy_level": 1,
            "activation_clipping": "percentile",
            "percentile": 99.99,
            "weight_clipping": "mse",
            "weight_rounding": "nearest",
            "bias_calibration": {"frames": 50, "iterations": 50},
            "equalization": {"frames": 16},
            "prequantized": False,
            "ranges": {},
            "mixed_precision": {"output_16bit": [], "params_16bit": [], "ranges": []},
        },
    }
    assert recipe.name == "r"
    assert recipe.file == f
    assert recipe.model == project / "model.onnx"
    assert "evaluation" not in recipe.data


def test_defaults_fill_around_given_values(project):
    recipe = load_recipe(_recipe(project, HEAD + "quantization: {weights: {}, bits: 16}\n"))
    assert recipe.get(("quantization", "bits")) == 16
    assert recipe.get(("quantization", "weights", "per_channel")) is False
    assert recipe.get(("quantization", "bias_bits")) == 32


def test_name_is_taken_from_the_recipe_when_given(project):
    recipe = load_recipe(_recipe(project, HEAD + "name: my-build.v2\n", "other.yaml"))
    assert recipe.name == "my-build.v2"


def test_evaluation_preprocess_defaults_to_calibration_preprocess(project):
    text = (
        "version: 1\nmodel: model.onnx\ncalibration:\n  data: {tensors: calib.npz}\n"
        "  preprocess: {color: bgr, resize: 12, crop: 8, mean: [1, 2, 3], scale: [0.5]}\n"
        "evaluation:\n  data: {tensors: val.npz, labels: labels}\n"
    )
    f = _recipe(project, text)
    recipe = load_recipe(f)
    expected = {
        "color": "bgr",
        "resize": 12,
        "crop": 8,
        "mean": [1, 2, 3],
        "scale": [0.5],
        "interpolation": "bilinear",
        "pad_value": 0,
        "layout": "NCHW",
    }
    assert recipe.data["calibration"]["preprocess"] == expected
    assert recipe.data["evaluation"]["preprocess"] == expected
    assert recipe.data["evaluation"]["metrics"] == ["top1", "sqnr", "cosine"]
    # a copy, not the same object
    assert recipe.data["evaluation"]["preprocess"] is not recipe.data["calibration"]["preprocess"]
    assert (
        recipe.data["evaluation"]["preprocess"]["mean"]
        is not recipe.data["calibration"]["preprocess"]["mean"]
    )
    # provenance follows the calibration values
    assert recipe.where(("evaluation", "preprocess", "color")) == Where(str(f), 5, 23)


def test_explicit_evaluation_preprocess_is_not_mixed_with_calibration(project):
    text = (
        "version: 1\nmodel: model.onnx\ncalibration:\n  data: {tensors: calib.npz}\n"
        "  preprocess: {color: bgr, mean: [1, 2, 3]}\n"
        "evaluation:\n  data: {tensors: val.npz}\n  preprocess: {resize: 8}\n"
    )
    recipe = load_recipe(_recipe(project, text))
    assert recipe.data["evaluation"]["preprocess"] == {
        "resize": 8,
        "color": "rgb",
        "interpolation": "bilinear",
        "pad_value": 0,
        "layout": "NCHW",
    }


# accuracy_level 1 (the default) expands to TIDL's advanced calibration switches.
ADVANCED = {
    "accuracy_level": 1,
    "activation_clipping": "percentile",
    "percentile": 99.99,
    "weight_clipping": "mse",
    "weight_rounding": "nearest",
    "bias_calibration": {"frames": 50, "iterations": 50},
    "equalization": {"frames": 16},
    "prequantized": False,
    "ranges": {},
    "mixed_precision": {"output_16bit": [], "params_16bit": [], "ranges": []},
}
TDA4VM = {
    "bits": 8,
    "scale": "power_of_2",
    "activations": "symmetric",
    "weights": {"per_channel": False},
    "bias_bits": 16,
    **ADVANCED,
}
MMAV2 = {
    "bits": 8,
    "scale": "float",
    "activations": "asymmetric",
    "weights": {"per_channel": True},
    "bias_bits": 32,
    **ADVANCED,
}


@pytest.mark.parametrize(
    ("device", "quantization"),
    [
        ("tda4vm", TDA4VM),
        ("am62a", MMAV2),
        ("am67a", MMAV2),
        ("am68a", MMAV2),
        ("am69a", MMAV2),
    ],
)
def test_device_presets(project, device, quantization):
    recipe = load_recipe(_recipe(project, f"extends: devices/{device}\n" + HEAD))
    assert recipe.data["device"] == device
    assert recipe.data["quantization"] == quantization


def test_recipe_values_override_the_preset(project):
    recipe = load_recipe(
        _recipe(project, "extends: devices/tda4vm\n" + HEAD + "quantization: {bits: 16}\n")
    )
    # 16 bits: no activation clipping unless asked for (resolution to spare)
    assert recipe.data["quantization"] == {**TDA4VM, "bits": 16, "activation_clipping": "minmax"}


def test_explicit_clipping_wins_at_16_bits(project):
    text = HEAD + "quantization: {bits: 16, activation_clipping: percentile}\n"
    recipe = load_recipe(_recipe(project, text))
    assert recipe.data["quantization"]["activation_clipping"] == "percentile"
    implied = load_recipe(_recipe(project, HEAD + "quantization: {bits: 16}\n"))
    assert str(implied.where(("quantization", "activation_clipping"))) == "accuracy_level 1, 16-bit"


def test_missing_model_is_a_model_error_at_the_model_line(project):
    f = _recipe(project, HEAD.replace("model.onnx", "missing.onnx"))
    with pytest.raises(ModelError) as info:
        load_recipe(f)
    err = info.value
    assert err.exit_code == 3
    assert err.where.file == str(f)
    assert err.where.line == 2
    assert str(err).startswith(f"{f}:2:")
    assert f"model: file not found: {project / 'missing.onnx'}" in str(err)
    assert "\n" not in str(err)


def test_missing_model_set_in_a_base_names_the_base(project):
    base = _recipe(project, "model: ../nothere.onnx\n", "bases/common.yaml")
    f = _recipe(project, "version: 1\nextends: bases/common.yaml\n" + HEAD.split("\n", 2)[2])
    with pytest.raises(ModelError) as info:
        load_recipe(f)
    assert str(info.value).startswith(f"{base}:1:8: model: file not found: ")
    assert str(project / "nothere.onnx") in str(info.value)


def test_paths_are_resolved_relative_to_the_file_that_set_them(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    write_model(root / "model.onnx")
    write_npz(root / "data" / "calib.npz", 4)
    write_npz(root / "val.npz", 3)
    (root / "bases" / "deeper").mkdir(parents=True)
    (root / "bases" / "deeper" / "labels.txt").write_text("0/0.png 1\n", encoding="utf-8")
    write_images(root / "bases" / "imgs", per_class=1, classes=1)
    (root / "bases" / "common.yaml").write_text(
        "extends: deeper/more.yaml\nmodel: ../model.onnx\n"
        "calibration:\n  data: {tensors: ../data/calib.npz}\n",
        encoding="utf-8",
    )
    (root / "bases" / "deeper" / "more.yaml").write_text(
        "evaluation:\n  data: {images: ../imgs, labels: labels.txt}\n", encoding="utf-8"
    )
    f = _recipe(root, "version: 1\nextends: bases/common.yaml\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    recipe = load_recipe(f)
    assert recipe.data["model"] == str(root / "model.onnx")
    assert recipe.model == root / "model.onnx"
    assert recipe.data["calibration"]["data"]["tensors"] == str(root / "data" / "calib.npz")
    assert recipe.data["evaluation"]["data"]["images"] == str(root / "bases" / "imgs")
    assert recipe.data["evaluation"]["data"]["labels"] == str(
        root / "bases" / "deeper" / "labels.txt"
    )


def test_the_extending_file_may_repoint_a_path_of_its_base(project):
    write_npz(project / "other.npz", 2)
    _recipe(project, "model: ../model.onnx\ncalibration: {data: {tensors: nope.npz}}\n", "b/c.yaml")
    f = _recipe(
        project, "version: 1\nextends: b/c.yaml\ncalibration:\n  data: {tensors: other.npz}\n"
    )
    recipe = load_recipe(f)
    assert recipe.data["calibration"]["data"]["tensors"] == str(project / "other.npz")
    assert recipe.model == project / "model.onnx"


def test_labels_array_names_are_not_paths(project):
    recipe = load_recipe(
        _recipe(project, HEAD + "evaluation:\n  data: {tensors: val.npz, labels: labels}\n")
    )
    assert recipe.data["evaluation"]["data"]["labels"] == "labels"


@pytest.mark.parametrize(
    "data",
    ["{tensors: calib.npz, images: imgs}", "{limit: 3}", "{}"],
    ids=["both", "neither", "empty"],
)
def test_dataset_needs_exactly_one_of_images_or_tensors(project, data):
    (project / "imgs").mkdir()
    f, err = _error(project, HEAD.replace("{tensors: calib.npz}", data))
    assert type(err) is RecipeError
    assert err.exit_code == 2
    assert str(err).startswith(
        f"{f}:4:9: calibration.data: give exactly one of 'images' (a folder) or 'tensors' (.npz/.npy)"
    )
    assert ("images: null" in str(err)) == (data.count(":") == 2)  # both given: how to drop one


def test_a_recipe_switches_an_inherited_images_folder_to_tensors_with_null(project):
    (project / "imgs").mkdir()
    base = _recipe(project, HEAD.replace("{tensors: calib.npz}", "{images: imgs}"))
    derived = project / "derived.yaml"
    derived.write_text(
        f"extends: {base.name}\ncalibration:\n  data: {{images: null, tensors: calib.npz}}\n"
    )
    recipe = load_recipe(derived)
    assert recipe.data["calibration"]["data"]["tensors"] == str(project / "calib.npz")
    assert "images" not in recipe.data["calibration"]["data"]


def test_evaluation_dataset_needs_exactly_one_source(project):
    f, err = _error(project, HEAD + "evaluation:\n  data: {labels: folders}\n")
    assert str(err) == (
        f"{f}:6:9: evaluation.data: give exactly one of 'images' (a folder) or 'tensors' (.npz/.npy)"
    )


def test_missing_data_folder_is_a_data_error(project):
    f, err = _error(project, HEAD.replace("{tensors: calib.npz}", "{images: nope}"), DataError)
    assert err.exit_code == 4
    assert (
        str(err)
        == f"{f}:4:18: calibration.data.images: not found: {project / 'nope'}; fix the path"
    )


def test_missing_tensors_file_is_a_data_error(project):
    f, err = _error(project, HEAD + "evaluation:\n  data:\n    tensors: gone.npz\n", DataError)
    assert str(err) == (
        f"{f}:7:14: evaluation.data.tensors: not found: {project / 'gone.npz'}; fix the path"
    )


def test_missing_labels_file_is_a_data_error(project):
    write_images(project / "imgs", per_class=1, classes=1)
    f, err = _error(
        project,
        HEAD + "evaluation:\n  data: {images: imgs, labels: lbl.txt}\n",
        DataError,
    )
    assert str(err) == f"{f}:6:32: evaluation.data.labels: file not found: {project / 'lbl.txt'}"


@pytest.mark.parametrize(
    ("level", "expanded"),
    [
        (
            0,
            {"activation_clipping": "minmax", "weight_clipping": "none", "bias_calibration": False},
        ),
        (
            1,
            {
                "activation_clipping": "percentile",
                "weight_clipping": "mse",
                "bias_calibration": {"frames": 50, "iterations": 50},
            },
        ),
        (
            9,
            {
                "activation_clipping": "percentile",
                "weight_clipping": "mse",
                "bias_calibration": {"frames": 50, "iterations": 50},
            },
        ),
    ],
)
def test_accuracy_level_expands_to_the_tidl_switches(project, level, expanded):
    recipe = load_recipe(_recipe(project, HEAD + f"quantization: {{accuracy_level: {level}}}\n"))
    q = recipe.data["quantization"]
    assert {k: q[k] for k in expanded} == expanded
    assert str(recipe.where(("quantization", "activation_clipping"))) == f"accuracy_level {level}"


def test_explicit_switches_win_over_accuracy_level(project):
    text = "quantization: {accuracy_level: 1, activation_clipping: mse, bias_calibration: {iterations: 5}}\n"
    q = load_recipe(_recipe(project, HEAD + text)).data["quantization"]
    assert q["activation_clipping"] == "mse"
    assert q["weight_clipping"] == "mse"
    assert q["bias_calibration"] == {"frames": 50, "iterations": 5}


def test_bias_calibration_true_means_the_tidl_defaults(project):
    q = load_recipe(
        _recipe(project, HEAD + "quantization: {accuracy_level: 0, bias_calibration: true}\n")
    ).data["quantization"]
    assert q["bias_calibration"] == {"frames": 50, "iterations": 50}
    assert q["activation_clipping"] == "minmax"
