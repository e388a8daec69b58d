"""schemas/ranges.v1.schema.json describes what interop.ranges_file.dumps writes, and ships in the wheel."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from ruamel.yaml import YAML

from quantbuild.interop.ranges_file import FORMAT, TensorRange, dumps
from quantbuild.quant.params import QParams, activation_qparams

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "ranges.v1.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def document() -> dict:
    """A real ranges file, as the ranges stage writes it, loaded back as plain data."""
    ranges = {
        "input": TensorRange(-2.0, 2.5, activation_qparams(-2.0, 2.5, 8, False, False)),
        "relu": TensorRange(0.0, 6.0, activation_qparams(0.0, 6.0, 8, True, True)),
        "conv16": TensorRange(-3.0, 1.0, activation_qparams(-3.0, 1.0, 16, True, False)),
        "add16": TensorRange(-3.0, 1.0, activation_qparams(-3.0, 1.0, 16, False, False)),
        "edge": TensorRange(-1.0, 1.0, QParams(np.float32(1e-42), np.array(-128, np.int8), "int8")),
    }
    info = {"policy": "percentile", "bits": 8, "activations": "asymmetric", "scale": "float"}
    text = dumps(ranges, {**info, "frames": 20, "percentile": 99.99, "imported": 1})
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


def test_real_file_is_valid(validator, document):
    assert document["format"] == FORMAT
    assert {t["dtype"] for t in document["tensors"].values()} == {
        "uint8",
        "int8",
        "uint16",
        "int16",
    }
    validator.validate(document)


def _set(path: str, value):
    def edit(doc):
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (_set("format", "quantbuild-ranges/2"), "was expected"),
        (_set("tensors", KeyError), "'tensors' is a required property"),
        (_set("tensors.input.scale", KeyError), "'scale' is a required property"),
        (_set("tensors.input.scale", 0.0), "less than or equal to the minimum"),
        (_set("tensors.input.dtype", "int4"), "is not one of"),
        (_set("tensors.input.zero_point", 256), "greater than the maximum of 255"),
        (_set("tensors.edge.zero_point", -129), "less than the minimum of -128"),
        (_set("tensors.conv16.zero_point", 1.5), "is not of type 'integer'"),
        (_set("tensors.input.bits", 16), "8 was expected"),
        (_set("tensors.relu.minimum", 0.0), "Additional properties are not allowed"),
        (_set("tensors.relu.max", "6"), "is not of type 'number'"),
        (_set("bits", 12), "is not one of"),
    ],
)
def test_broken_files_are_rejected(validator, document, edit, complaint):
    broken = copy.deepcopy(document)
    edit(broken)
    errors = [e.message for e in validator.iter_errors(broken)]
    assert any(complaint in m for m in errors), errors


def test_schema_ships_in_the_wheel():
    # pyproject force-includes the whole schemas/ folder as quantbuild/_bundled/schemas
    # (read as text: tomllib is not in Python 3.10)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.hatch.build.targets.wheel.force-include]", 1)[1]
    section = section.split("\n[", 1)[0]
    assert '"schemas" = "quantbuild/_bundled/schemas"' in section.splitlines()
    assert SCHEMA_FILE.parent == ROOT / "schemas"
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    recipe = json.loads((ROOT / "schemas" / "recipe.v1.schema.json").read_text(encoding="utf-8"))
    assert schema["$id"] == recipe["$id"].replace("recipe.v1", "ranges.v1")
