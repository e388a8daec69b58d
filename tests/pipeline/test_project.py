"""The project: its recipes found and loaded, every mistake reported once."""

from __future__ import annotations

import pytest
from builders import device_recipes, make_project

from quantbuild.errors import RecipeError
from quantbuild.pipeline.plan import Plan
from quantbuild.pipeline.project import Project, ProjectErrors


def _errors(root, overrides=()) -> list[str]:
    with pytest.raises(ProjectErrors) as info:
        Plan(Project(root, overrides))
    return [str(e) for e in info.value.errors]


def test_an_override_every_recipe_rejects_is_reported_once(tmp_path):
    root = make_project(tmp_path / "p", device_recipes())
    assert _errors(root, ("quantization.bits=9",)) == [
        "-S quantization.bits=9: quantization.bits: 9 is not one of [8, 16]"
    ]


def test_a_mistake_in_a_shared_section_is_reported_once(tmp_path):
    """evaluation.preprocess defaults to calibration's: one mistake, one line."""
    text = device_recipes()["a_tda4vm"].replace(
        "calibration:\n", "calibration:\n  preprocess: {color: gray, scale: [0]}\n"
    )
    root = make_project(tmp_path / "p", {"a": text})
    (line,) = _errors(root)
    assert "a.yaml:5:15: calibration.preprocess: scale[0] is 0" in line


def test_different_mistakes_at_one_place_are_all_reported():
    first = RecipeError("recipe: missing required key 'model'", "r.yaml")
    second = RecipeError("recipe: missing required key 'calibration'", "r.yaml")
    assert ProjectErrors([first, second, first]).errors == [first, second]
