"""resolved_yaml: the resolved recipe as YAML, each leaf annotated with where it was set."""

from __future__ import annotations

import re

import pytest
from ruamel.yaml import YAML

from quantbuild.recipe import load_recipe
from quantbuild.recipe.show import resolved_yaml

RECIPE = """\
version: 1
extends: [devices/tda4vm, bases/common.yaml]
name: shown
calibration:
  data: {tensors: calib.npz, limit: 4}
  preprocess:
    mean: [1, 2, 3]
evaluation:
  data: {tensors: val.npz, labels: labels}
"""


@pytest.fixture
def shown(project):
    (project / "bases").mkdir()
    (project / "bases" / "common.yaml").write_text(
        "model: ../model.onnx\nquantization:\n  bits: 16\n", encoding="utf-8"
    )
    (project / "r.yaml").write_text(RECIPE, encoding="utf-8")
    recipe = load_recipe(project / "r.yaml", ["quantization.weights.per_channel=true"])
    return recipe, resolved_yaml(recipe)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _line(text: str, key: str) -> str:
    """The first `key:` entry, with a long value the dumper wrapped onto the next lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{key}:"):
            entry = line.rstrip()
            for more in lines[i + 1 :]:
                if _indent(more) <= _indent(line) or re.match(r"^\s*[\w$]+:(\s|$)", more):
                    break
                entry += " " + more.strip()
            return entry
    raise AssertionError(f"no {key}: in\n{text}")


def _comment(line: str) -> str | None:
    match = re.search(r"\s#\s(.*)$", line)
    return match.group(1) if match else None


def test_output_parses_back_to_the_resolved_data(shown):
    recipe, text = shown
    assert YAML(typ="safe", pure=True).load(text) == recipe.data


def test_output_parses_back_for_a_minimal_recipe(project):
    recipe = load_recipe(project / "base.yaml")
    text = resolved_yaml(recipe)
    assert YAML(typ="safe", pure=True).load(text) == recipe.data
    assert text.splitlines()[0] == f"# base: resolved from {project / 'base.yaml'}"


def test_header_names_the_build_and_the_file(shown, project):
    _, text = shown
    assert text.splitlines()[0] == f"# shown: resolved from {project / 'r.yaml'}"


def test_values_from_the_recipe_carry_file_and_line(shown):
    _, text = shown
    assert _comment(_line(text, "name")) == "r.yaml:3"
    assert _comment(_line(text, "version")) == "r.yaml:1"
    assert _comment(_line(text, "limit")) == "r.yaml:5"
    assert _comment(_line(text, "mean")) == "r.yaml:7"  # calibration's, the first one
    assert _comment(_line(text, "labels")) == "r.yaml:9"


def test_values_from_a_base_carry_its_relative_path(shown):
    _, text = shown
    assert _comment(_line(text, "bits")) == "bases/common.yaml:3"
    assert _comment(_line(text, "model")) == "bases/common.yaml:1"


def test_values_from_a_bundled_preset_name_the_preset(shown):
    _, text = shown
    assert re.fullmatch(r"\S*devices/tda4vm\.yaml:3", _comment(_line(text, "device")))
    assert re.fullmatch(r"\S*devices/tda4vm\.yaml:5", _comment(_line(text, "scale")))
    assert re.fullmatch(r"\S*devices/tda4vm\.yaml:8", _comment(_line(text, "bias_bits")))


def test_overridden_values_name_the_argument(shown):
    _, text = shown
    assert _comment(_line(text, "per_channel")) == "-S quantization.weights.per_channel=true"


def test_defaults_are_marked_default(shown):
    _, text = shown
    for key in ("seed", "color", "interpolation", "pad_value", "layout", "metrics"):
        assert _comment(_line(text, key)) == "default", key


def test_defaulted_evaluation_preprocess_follows_calibration(shown):
    _, text = shown
    evaluation = text.split("\nevaluation:\n", 1)[1]
    assert _comment(_line(evaluation, "mean")) == "r.yaml:7"
    assert _comment(_line(evaluation, "color")) == "default"


def test_non_empty_mappings_have_no_comment(shown):
    _, text = shown
    for key in ("quantization", "calibration", "evaluation", "data", "preprocess", "weights"):
        assert _comment(_line(text, key)) is None, key


def test_every_leaf_is_annotated(shown):
    _, text = shown
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    for i, line in enumerate(lines[1:], 1):
        key = re.match(r"^\s*([\w$]+):", line)
        if not key:
            continue  # a long value wrapped onto its own line
        entry = _line("\n".join(lines[i:]), key.group(1))
        if entry.endswith(":"):
            continue  # a mapping with children
        assert _comment(entry), entry


def test_lists_are_written_in_flow_style(shown):
    _, text = shown
    line = _line(text, "mean")
    assert line.split("#")[0].strip() == "mean: [1, 2, 3]"
    assert _line(text, "metrics").split("#")[0].strip() == "metrics: [top1, sqnr, cosine]"
