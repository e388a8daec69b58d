"""`-S dotted.path=value` overrides: YAML-typed values, validation naming the `-S` argument."""

from __future__ import annotations

import pytest
from builders import write_model

from quantbuild.errors import ModelError, RecipeError, Where
from quantbuild.recipe import load_recipe
from quantbuild.recipe.load import load_yaml
from quantbuild.recipe.overrides import apply_overrides


def _load(project, *overrides: str):
    return load_recipe(project / "base.yaml", list(overrides))


def _fails(project, *overrides: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        _load(project, *overrides)
    return info.value


def test_integer_value_is_typed_as_int(project):
    recipe = _load(project, "quantization.bits=16")
    assert recipe.data["quantization"]["bits"] == 16
    assert type(recipe.data["quantization"]["bits"]) is int


def test_boolean_value_is_typed_as_bool(project):
    recipe = _load(project, "quantization.weights.per_channel=true")
    assert recipe.data["quantization"]["weights"]["per_channel"] is True
    # the siblings still get their defaults
    assert recipe.data["quantization"]["bits"] == 8
    assert recipe.data["quantization"]["bias_bits"] == 32


def test_list_values(project):
    recipe = _load(
        project, "evaluation.metrics=[top1, cosine]", "calibration.preprocess.mean=[1, 2.5, 3]"
    )
    assert recipe.data["evaluation"]["metrics"] == ["top1", "cosine"]
    assert recipe.data["calibration"]["preprocess"]["mean"] == [1, 2.5, 3]
    assert [type(v) for v in recipe.data["calibration"]["preprocess"]["mean"]] == [int, float, int]


def test_values_are_yaml_scalars(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("a: {b: 1}\n", encoding="utf-8")
    out = apply_overrides(
        load_yaml(f),
        ["a.list=[a, b]", "a.s=hello world", "a.q='16'", "a.f=0.5", "a.n=null", "a.e="],
    )
    assert out.data == {
        "a": {
            "b": 1,
            "list": ["a", "b"],
            "s": "hello world",
            "q": "16",
            "f": 0.5,
            "n": None,
            "e": None,
        }
    }


def test_string_values_stay_strings(project):
    recipe = _load(project, "name=my-build", "quantization.scale=power_of_2")
    assert recipe.name == "my-build"
    assert recipe.data["quantization"]["scale"] == "power_of_2"


def test_later_override_wins(project):
    recipe = _load(project, "quantization.bits=16", "quantization.bits=8")
    assert recipe.data["quantization"]["bits"] == 8
    assert recipe.where(("quantization", "bits")) == Where("-S quantization.bits=8")


def test_override_sets_a_whole_mapping(project, monkeypatch):
    monkeypatch.chdir(project)
    recipe = _load(project, "evaluation.data={tensors: calib.npz}")
    assert recipe.data["evaluation"]["data"] == {"tensors": str(project / "calib.npz"), "seed": 0}


def test_override_provenance_names_the_argument(project):
    recipe = _load(project, "quantization.bits=16")
    assert recipe.where(("quantization", "bits")) == Where("-S quantization.bits=16")
    assert str(recipe.where(("quantization", "bits"))) == "-S quantization.bits=16"
    # untouched values keep their file position
    assert recipe.where(("model",)) == Where(str(project / "base.yaml"), 2, 8)


def test_apply_overrides_leaves_the_input_alone(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("quantization:\n  bits: 8\n", encoding="utf-8")
    doc = load_yaml(f)
    out = apply_overrides(doc, ["quantization.bits=16", "quantization.weights.per_channel=true"])
    assert doc.data == {"quantization": {"bits": 8}}
    assert doc.values[("quantization", "bits")] == Where(str(f), 2, 9)
    assert out.data == {"quantization": {"bits": 16, "weights": {"per_channel": True}}}
    assert out.values[("quantization", "weights")] == Where(
        "-S quantization.weights.per_channel=true"
    )
    assert out.values[("quantization",)] == Where(str(f), 2, 3)


def test_override_overrides_a_preset(project):
    (project / "r.yaml").write_text(
        "extends: devices/tda4vm\n" + (project / "base.yaml").read_text(), encoding="utf-8"
    )
    recipe = load_recipe(project / "r.yaml", ["quantization.bias_bits=32"])
    assert recipe.data["quantization"]["bias_bits"] == 32
    assert recipe.data["quantization"]["scale"] == "power_of_2"


def test_invalid_enum_value_names_the_argument(project):
    err = _fails(project, "quantization.bits=12")
    assert str(err) == "-S quantization.bits=12: quantization.bits: 12 is not one of [8, 16]"
    assert err.exit_code == 2


def test_invalid_string_for_int_names_the_argument(project):
    err = _fails(project, "quantization.bits=sixteen")
    assert (
        str(err)
        == "-S quantization.bits=sixteen: quantization.bits: 'sixteen' is not one of [8, 16]"
    )


def test_quoted_number_is_a_string_and_rejected(project):
    err = _fails(project, "quantization.bits='16'")
    assert str(err) == "-S quantization.bits='16': quantization.bits: '16' is not one of [8, 16]"


def test_invalid_boolean_names_the_argument(project):
    err = _fails(project, "quantization.weights.per_channel=yes")
    assert str(err) == (
        "-S quantization.weights.per_channel=yes: "
        "quantization.weights.per_channel: 'yes' is not of type 'boolean'"
    )


def test_unknown_key_override_suggests_the_right_one(project):
    err = _fails(project, "quantization.bitz=16")
    assert (
        str(err) == "-S quantization.bitz=16: quantization.bitz: unknown key; did you mean 'bits'?"
    )


def test_invalid_override_is_reported_with_file_errors_sorted(project):
    (project / "base.yaml").write_text(
        (project / "base.yaml").read_text() + "quantization: {scale: pow2}\n", encoding="utf-8"
    )
    err = _fails(project, "quantization.bits=12")
    assert str(err).splitlines() == [
        "-S quantization.bits=12: quantization.bits: 12 is not one of [8, 16]",
        f"{project / 'base.yaml'}:7:23: quantization.scale: 'pow2' is not one of ['float', 'power_of_2']",
    ]


@pytest.mark.parametrize("text", ["foo", "=16", " =16", "quantization.bits"])
def test_malformed_override_is_rejected(project, text):
    err = _fails(project, text)
    assert str(err) == f"-S {text}: expected -S path=value, e.g. -S quantization.bits=16"
    assert err.exit_code == 2


def test_value_that_is_not_yaml_is_rejected(project):
    err = _fails(project, "quantization.bits=[8")
    assert str(err).startswith("-S quantization.bits=[8: value is not valid YAML (")
    assert "\n" not in str(err)


def test_setting_below_a_scalar_is_rejected(project):
    err = _fails(project, "model.path=x.onnx")
    assert str(err) == "-S model.path=x.onnx: model is not a mapping, cannot set model.path"


def test_unsafe_tag_in_override_never_executes(project, tmp_path):
    marker = tmp_path / "pwned"
    text = f'quantization.bits=!!python/object/apply:os.system ["touch {marker}"]'
    with pytest.raises(RecipeError) as info:
        _load(project, text)
    assert str(info.value).startswith(f"-S {text}: ")
    assert not marker.exists()


def test_override_paths_are_relative_to_the_working_directory(project, tmp_path, monkeypatch):
    write_model(tmp_path / "cwd" / "other.onnx")
    monkeypatch.chdir(tmp_path / "cwd")
    recipe = _load(project, "model=other.onnx")
    assert recipe.model == tmp_path / "cwd" / "other.onnx"


def test_missing_model_from_override_names_the_argument(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as info:
        _load(project, "model=nothere.onnx")
    assert str(info.value).startswith(
        f"-S model=nothere.onnx: model: file not found: {tmp_path / 'nothere.onnx'}"
    )
