"""`extends:`: bundled presets, relative files, deep merge, provenance, cycles, typos."""

from __future__ import annotations

import pytest

from quantbuild.errors import RecipeError, Where
from quantbuild.recipe.load import load_yaml
from quantbuild.recipe.merge import load_with_extends, merge
from quantbuild.resources import preset_names, presets_dir


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_presets_are_listed():
    assert preset_names() == [
        "devices/am62a",
        "devices/am67a",
        "devices/am68a",
        "devices/am69a",
        "devices/tda4vm",
    ]


def test_extends_bundled_tda4vm(tmp_path):
    f = _write(tmp_path / "r.yaml", "version: 1\nextends: devices/tda4vm\nname: x\n")
    doc = load_with_extends(f)
    assert doc.data == {
        "device": "tda4vm",
        "quantization": {
            "scale": "power_of_2",
            "activations": "symmetric",
            "weights": {"per_channel": False},
            "bias_bits": 16,
        },
        "version": 1,
        "name": "x",
    }
    preset = str((presets_dir() / "devices" / "tda4vm.yaml").resolve())
    assert doc.values[("device",)] == Where(preset, 3, 9)
    assert doc.values[("quantization", "bias_bits")] == Where(preset, 8, 14)
    assert doc.values[("name",)] == Where(str(f), 3, 7)


def test_extends_bundled_am68a_as_a_list(tmp_path):
    f = _write(tmp_path / "r.yaml", "version: 1\nextends: [devices/am68a]\n")
    doc = load_with_extends(f)
    assert doc.data["device"] == "am68a"
    assert doc.data["quantization"] == {
        "scale": "float",
        "activations": "asymmetric",
        "weights": {"per_channel": True},
        "bias_bits": 32,
    }


def test_extends_is_removed_with_its_provenance(tmp_path):
    f = _write(tmp_path / "r.yaml", "version: 1\nextends: [devices/am68a, devices/tda4vm]\n")
    doc = load_with_extends(f)
    assert "extends" not in doc.data
    assert not [p for p in doc.values if p[:1] == ("extends",)]
    assert not [p for p in doc.keys if p[:1] == ("extends",)]


def test_later_bases_override_earlier_ones_and_the_file_overrides_all(tmp_path):
    f = _write(
        tmp_path / "r.yaml",
        "version: 1\nextends: [devices/tda4vm, devices/am68a]\nquantization:\n  bias_bits: 16\n",
    )
    doc = load_with_extends(f)
    assert doc.data["device"] == "am68a"
    assert doc.data["quantization"] == {
        "scale": "float",
        "activations": "asymmetric",
        "weights": {"per_channel": True},
        "bias_bits": 16,
    }
    assert doc.values[("quantization", "bias_bits")] == Where(str(f), 4, 14)
    am68a = str((presets_dir() / "devices" / "am68a.yaml").resolve())
    assert doc.values[("quantization", "scale")].file == am68a


def test_relative_yaml_is_relative_to_the_extending_file(tmp_path, monkeypatch):
    _write(tmp_path / "proj" / "bases" / "common.yaml", "quantization: {bits: 16}\n")
    f = _write(tmp_path / "proj" / "r.yaml", "version: 1\nextends: bases/common.yaml\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    doc = load_with_extends(f)
    assert doc.data == {"quantization": {"bits": 16}, "version": 1}
    common = str((tmp_path / "proj" / "bases" / "common.yaml").resolve())
    assert doc.values[("quantization", "bits")] == Where(common, 1, 22)


def test_nested_bases_resolve_relative_to_each_extending_file(tmp_path):
    root = tmp_path / "proj"
    _write(root / "shared.yml", "name: shared\ncalibration: {preprocess: {color: bgr}}\n")
    _write(
        root / "bases" / "deeper" / "q.yaml",
        "extends: [devices/tda4vm]\nquantization: {bits: 16}\n",
    )
    _write(
        root / "bases" / "common.yaml",
        "extends: [deeper/q.yaml, ../shared.yml]\nquantization: {scale: float}\n",
    )
    f = _write(root / "r.yaml", "version: 1\nextends: bases/common.yaml\nname: mine\n")
    doc = load_with_extends(f)
    assert doc.data == {
        "device": "tda4vm",
        "quantization": {
            "scale": "float",
            "activations": "symmetric",
            "weights": {"per_channel": False},
            "bias_bits": 16,
            "bits": 16,
        },
        "name": "mine",
        "calibration": {"preprocess": {"color": "bgr"}},
        "version": 1,
    }
    q = str((root / "bases" / "deeper" / "q.yaml").resolve())
    common = str((root / "bases" / "common.yaml").resolve())
    shared = str((root / "shared.yml").resolve())
    assert doc.values[("quantization", "bits")].file == q
    assert doc.values[("quantization", "scale")].file == common
    assert doc.values[("calibration", "preprocess", "color")].file == shared
    assert doc.values[("name",)].file == str(f.resolve())


def test_absolute_yaml_path_is_accepted(tmp_path):
    base = _write(tmp_path / "elsewhere" / "b.yaml", "name: from-abs\n")
    f = _write(tmp_path / "proj" / "r.yaml", f"version: 1\nextends: [{base}]\n")
    assert load_with_extends(f).data == {"name": "from-abs", "version": 1}


def test_diamond_is_not_a_cycle(tmp_path):
    _write(tmp_path / "d.yaml", "quantization: {bits: 16}\n")
    _write(tmp_path / "b.yaml", "extends: d.yaml\nname: b\n")
    _write(tmp_path / "c.yaml", "extends: d.yaml\ndevice: am62a\n")
    f = _write(tmp_path / "a.yaml", "extends: [b.yaml, c.yaml]\nversion: 1\n")
    doc = load_with_extends(f)
    assert doc.data == {
        "quantization": {"bits": 16},
        "name": "b",
        "device": "am62a",
        "version": 1,
    }


BASE = """\
quantization:
  bits: 16
  scale: power_of_2
  weights: {per_channel: true}
calibration:
  preprocess:
    mean: [1, 2, 3]
    resize: [4, 4]
    crop: 8
"""

OVER = """\
quantization:
  scale: float
calibration:
  preprocess:
    mean: [5]
    resize: 8
    crop: [2, 3]
"""


def test_deep_merge_mappings_merge_lists_and_scalars_are_replaced(tmp_path):
    base = load_yaml(_write(tmp_path / "base.yaml", BASE))
    over = load_yaml(_write(tmp_path / "over.yaml", OVER))
    out = merge(base, over)
    assert out.data == {
        "quantization": {"bits": 16, "scale": "float", "weights": {"per_channel": True}},
        "calibration": {"preprocess": {"mean": [5], "resize": 8, "crop": [2, 3]}},
    }
    # the inputs are left alone
    assert base.data["calibration"]["preprocess"]["mean"] == [1, 2, 3]
    assert over.data["quantization"] == {"scale": "float"}


def test_merge_provenance_follows_the_overriding_file(tmp_path):
    b = _write(tmp_path / "base.yaml", BASE)
    o = _write(tmp_path / "over.yaml", OVER)
    out = merge(load_yaml(b), load_yaml(o))
    base_file, over_file = str(b), str(o)
    # kept from the base
    assert out.values[("quantization", "bits")] == Where(base_file, 2, 9)
    assert out.keys[("quantization", "bits")] == Where(base_file, 2, 3)
    assert out.values[("quantization", "weights", "per_channel")] == Where(base_file, 4, 26)
    # replaced by the override: value and key positions
    assert out.values[("quantization", "scale")] == Where(over_file, 2, 10)
    assert out.keys[("quantization", "scale")] == Where(over_file, 2, 3)
    assert out.values[("calibration", "preprocess", "mean")] == Where(over_file, 5, 11)
    assert out.values[("calibration", "preprocess", "mean", 0)] == Where(over_file, 5, 12)
    assert out.values[("calibration", "preprocess", "resize")] == Where(over_file, 6, 13)
    assert out.values[("calibration", "preprocess", "crop", 1)] == Where(over_file, 7, 15)
    assert out.values[()] == Where(over_file, 1, 1)


def test_merge_drops_positions_of_replaced_list_items(tmp_path):
    out = merge(
        load_yaml(_write(tmp_path / "base.yaml", BASE)),
        load_yaml(_write(tmp_path / "over.yaml", OVER)),
    )
    pre = ("calibration", "preprocess")
    assert pre + ("mean", 1) not in out.values
    assert pre + ("mean", 2) not in out.values
    assert pre + ("resize", 0) not in out.values
    assert pre + ("resize", 1) not in out.values


def test_merge_mapping_replaced_by_scalar_and_scalar_by_mapping(tmp_path):
    base = load_yaml(_write(tmp_path / "b.yaml", "a: {x: 1, y: 2}\nb: 3\n"))
    over = load_yaml(_write(tmp_path / "o.yaml", "a: 7\nb: {z: 4}\n"))
    out = merge(base, over)
    assert out.data == {"a": 7, "b": {"z": 4}}
    assert ("a", "x") not in out.values
    assert ("a", "x") not in out.keys
    assert out.values[("b", "z")] == Where(str(tmp_path / "o.yaml"), 2, 8)


def test_null_removes_an_inherited_key_and_its_positions(tmp_path):
    base = load_yaml(
        _write(tmp_path / "b.yaml", "data: {images: calib, limit: 4}\ndevice: am68a\n")
    )
    over = load_yaml(_write(tmp_path / "o.yaml", "data: {images: null, tensors: t.npz}\n"))
    out = merge(merge(base, over), load_yaml(_write(tmp_path / "n.yaml", "device: null\n")))
    assert out.data == {"data": {"limit": 4, "tensors": "t.npz"}}
    assert ("data", "images") not in out.values and ("data", "images") not in out.keys
    assert ("device",) not in out.values
    assert out.values[("data", "tensors")] == Where(str(tmp_path / "o.yaml"), 1, 31)


def test_file_itself_overrides_its_base(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    f = _write(tmp_path / "r.yaml", "extends: base.yaml\n" + OVER)
    doc = load_with_extends(f)
    assert doc.data["calibration"]["preprocess"] == {"mean": [5], "resize": 8, "crop": [2, 3]}
    assert doc.data["quantization"]["bits"] == 16
    assert doc.values[("calibration", "preprocess", "mean")] == Where(str(f.resolve()), 6, 11)


def test_two_file_cycle_is_rejected_naming_the_chain(tmp_path):
    a = _write(tmp_path / "a.yaml", "version: 1\nextends: b.yaml\n")
    b = _write(tmp_path / "b.yaml", "extends: [a.yaml]\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(a)
    assert str(info.value) == (
        f"{b.resolve()}:1:11: extends: cycle a.yaml -> b.yaml -> a.yaml; remove one of these extends"
    )


def test_three_file_cycle_names_every_file(tmp_path):
    a = _write(tmp_path / "a.yaml", "extends: sub/b.yaml\n")
    _write(tmp_path / "sub" / "b.yaml", "extends: ../c.yaml\n")
    _write(tmp_path / "c.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(a)
    assert "extends: cycle a.yaml -> b.yaml -> c.yaml -> a.yaml" in str(info.value)
    assert str(info.value).startswith(f"{(tmp_path / 'c.yaml').resolve()}:1:10: ")


def test_self_extension_is_a_cycle(tmp_path):
    a = _write(tmp_path / "a.yaml", "extends: a.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(a)
    assert str(info.value) == (
        f"{a.resolve()}:1:10: extends: cycle a.yaml -> a.yaml; remove one of these extends"
    )


def test_unknown_preset_suggests_the_transposed_name(tmp_path):
    f = _write(tmp_path / "r.yaml", "version: 1\nextends: [devices/am86a]\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert str(info.value) == (
        f"{f.resolve()}:2:11: extends: unknown preset 'devices/am86a'; "
        "did you mean 'devices/am68a'? (files must end in .yaml)"
    )
    assert info.value.exit_code == 2


def test_unknown_preset_suggests_tda4vm(tmp_path):
    f = _write(tmp_path / "r.yaml", "extends: devices/tda4mv\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert "unknown preset 'devices/tda4mv'; did you mean 'devices/tda4vm'?" in str(info.value)
    assert str(info.value).startswith(f"{f.resolve()}:1:10: ")


def test_unknown_preset_without_close_match_lists_presets(tmp_path):
    f = _write(tmp_path / "r.yaml", "extends: fancy\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert str(info.value) == (
        f"{f.resolve()}:1:10: extends: unknown preset 'fancy'; bundled presets: "
        "devices/am62a, devices/am67a, devices/am68a, devices/am69a, devices/tda4vm "
        "(files must end in .yaml)"
    )


def test_missing_relative_base_file(tmp_path):
    f = _write(tmp_path / "r.yaml", "extends: [devices/am68a, bases/nope.yaml]\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert str(info.value) == (
        f"{f.resolve()}:1:26: extends: no such file 'bases/nope.yaml' (relative to r.yaml)"
    )


@pytest.mark.parametrize("value", ["3", "{a: b}", "[devices/am68a, 3]", "[[devices/am68a]]"])
def test_extends_must_be_a_name_or_a_list_of_names(tmp_path, value):
    f = _write(tmp_path / "r.yaml", f"version: 1\nextends: {value}\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert str(info.value).startswith(f"{f.resolve()}:2:")
    assert str(info.value).endswith("extends: must be a preset name or a list of them")


def test_error_in_a_base_names_the_base_file(tmp_path):
    base = _write(tmp_path / "bases" / "bad.yaml", "quantization: {bits: 8\n")
    f = _write(tmp_path / "r.yaml", "extends: bases/bad.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_with_extends(f)
    assert str(info.value).startswith(f"{base.resolve()}:2:1: invalid YAML: ")
