"""load_yaml: plain data with 1-based positions, one-line errors, no unsafe construction."""

from __future__ import annotations

import os

import pytest

from quantbuild.errors import RecipeError, Where
from quantbuild.recipe.load import load_yaml

DOC = """\
version: 1
quantization:
  bits: 16
  weights: {per_channel: true}
list: [a, b]
block:
  - x
  -   y
"""


def _write(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def test_loads_plain_builtin_data(tmp_path):
    doc = load_yaml(_write(tmp_path, DOC))
    assert doc.data == {
        "version": 1,
        "quantization": {"bits": 16, "weights": {"per_channel": True}},
        "list": ["a", "b"],
        "block": ["x", "y"],
    }
    assert type(doc.data) is dict
    assert type(doc.data["quantization"]["bits"]) is int
    assert type(doc.data["list"]) is list
    assert type(doc.data["list"][0]) is str


def test_key_positions_are_one_based_line_and_column(tmp_path):
    f = _write(tmp_path, DOC)
    doc = load_yaml(f)
    name = str(f)
    assert doc.keys[("version",)] == Where(name, 1, 1)
    assert doc.keys[("quantization",)] == Where(name, 2, 1)
    assert doc.keys[("quantization", "bits")] == Where(name, 3, 3)
    assert doc.keys[("quantization", "weights")] == Where(name, 4, 3)
    assert doc.keys[("quantization", "weights", "per_channel")] == Where(name, 4, 13)
    assert doc.keys[("list",)] == Where(name, 5, 1)
    assert doc.keys[("block",)] == Where(name, 6, 1)


def test_value_positions_are_one_based_line_and_column(tmp_path):
    f = _write(tmp_path, DOC)
    doc = load_yaml(f)
    name = str(f)
    assert doc.values[()] == Where(name, 1, 1)
    assert doc.values[("version",)] == Where(name, 1, 10)
    assert doc.values[("quantization", "bits")] == Where(name, 3, 9)
    assert doc.values[("quantization", "weights", "per_channel")] == Where(name, 4, 26)
    # flow and block sequence items
    assert doc.values[("list", 0)] == Where(name, 5, 8)
    assert doc.values[("list", 1)] == Where(name, 5, 11)
    assert doc.values[("block", 0)] == Where(name, 7, 5)
    assert doc.values[("block", 1)] == Where(name, 8, 7)


def test_where_falls_back_to_the_nearest_located_parent(tmp_path):
    f = _write(tmp_path, DOC)
    doc = load_yaml(f)
    assert doc.where(("quantization", "bits", "deeper")) == Where(str(f), 3, 9)
    assert doc.where(("nothing", "here")) == Where(str(f), 1, 1)
    assert str(doc.where(("quantization", "bits"))) == f"{f}:3:9"


def test_empty_value_is_located_on_its_own_line(tmp_path):
    # `model:` with nothing after it is null; its position must not be the next key's line
    f = _write(tmp_path, "version: 1\nmodel:\ncalibration:\n  data: {}\n")
    doc = load_yaml(f)
    assert doc.data["model"] is None
    assert doc.keys[("model",)] == Where(str(f), 2, 1)
    assert doc.values[("model",)].line == 2, doc.values[("model",)]


def test_crlf_line_endings_keep_positions(tmp_path):
    f = _write(tmp_path, "a: 1\r\nb:\r\n  c: 2\r\n")
    doc = load_yaml(f)
    assert doc.data == {"a": 1, "b": {"c": 2}}
    assert doc.keys[("b", "c")] == Where(str(f), 3, 3)
    assert doc.values[("b", "c")] == Where(str(f), 3, 6)


def test_empty_file_is_an_empty_mapping(tmp_path):
    assert load_yaml(_write(tmp_path, "")).data == {}
    assert load_yaml(_write(tmp_path, "# only a comment\n", "c.yaml")).data == {}


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("version: 1\nmodel: a: b\n", 2, 9, "mapping values are not allowed here"),
        ("version: 1\n  model: x\n", 2, 8, "mapping values are not allowed here"),
        ("a: [1, 2\nb: 3\n", 2, 2, "expected ',' or ']', but got ':'"),
        ("a:\n\t- x\n", 2, 1, "found character '\\t' that cannot start any token"),
        ('a: "unterminated\n', 2, 1, "found unexpected end of stream"),
        ("a: *nope\n", 1, 4, "found undefined alias 'nope'"),
    ],
)
def test_malformed_yaml_is_one_line_with_file_line_column(tmp_path, text, line, column, problem):
    f = _write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    message = str(info.value)
    assert message == f"{f}:{line}:{column}: invalid YAML: {problem}"
    assert "\n" not in message
    assert info.value.exit_code == 2
    assert info.value.where == Where(str(f), line, column)


def test_second_document_is_malformed_yaml(tmp_path):
    f = _write(tmp_path, "a: 1\n---\nb: 2\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value).startswith(f"{f}:2:1: invalid YAML: ")
    assert "\n" not in str(info.value)


def test_control_character_is_malformed_yaml_with_a_position(tmp_path):
    # \x07 is the 5th character of line 2 ("b: x\x07y")
    f = _write(tmp_path, "a: 1\nb: x\x07y\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    message = str(info.value)
    assert "\n" not in message
    assert "unacceptable character #x0007" in message
    assert message.startswith(f"{f}:2:5: invalid YAML: "), message


def test_missing_file_is_a_recipe_error(tmp_path):
    f = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value) == f"{f}: file not found"


def test_not_utf8_is_a_recipe_error(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value) == (f"{f}:1:10: not UTF-8 text (byte 0xe9); save the recipe as UTF-8")


def test_duplicate_top_level_key_is_rejected_at_the_second_occurrence(tmp_path):
    f = _write(tmp_path, "a: 1\nb: 2\na: 3\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    message = str(info.value)
    assert message.startswith(f"{f}:3:1: invalid YAML: ")
    assert 'duplicate key "a"' in message
    assert "\n" not in message


def test_duplicate_nested_key_is_rejected(tmp_path):
    f = _write(tmp_path, "quantization:\n  bits: 8\n  bits: 16\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value).startswith(f"{f}:3:3: invalid YAML: ")
    assert 'duplicate key "bits"' in str(info.value)


def test_duplicate_key_in_flow_mapping_is_rejected(tmp_path):
    f = _write(tmp_path, "quantization: {bits: 8, bits: 16}\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert 'duplicate key "bits"' in str(info.value)
    assert str(info.value).startswith(f"{f}:1:")


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n", "[1, 2]\n"])
def test_document_must_be_a_mapping(tmp_path, text):
    f = _write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value) == f"{f}:1:1: a recipe must be a YAML mapping (key: value lines)"


def test_non_string_keys_are_rejected_at_the_key(tmp_path):
    f = _write(tmp_path, "quantization:\n  8: bits\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value) == f"{f}:2:3: quantization.8: keys must be strings"


def test_dates_are_not_silently_turned_into_objects(tmp_path):
    f = _write(tmp_path, "name: x\nwhen: 2024-01-01\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value) == f"{f}:2:7: when: unsupported YAML value date"


def test_custom_tag_is_rejected_with_its_position(tmp_path):
    f = _write(tmp_path, "model: !include other.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert (
        str(info.value) == f"{f}:1:8: model: explicit YAML tag !include is not supported; remove it"
    )


UNSAFE = {
    "apply-flow-seq": 'x: !!python/object/apply:os.system ["touch {marker}"]\n',
    "apply-block-map": "x: !!python/object/apply:os.system\n  args: [touch {marker}]\n",
    "apply-document": '!!python/object/apply:os.system ["touch {marker}"]\n',
    "new-flow-seq": 'x: !!python/object/new:os.system ["touch {marker}"]\n',
    "apply-subprocess": "x: !!python/object/apply:subprocess.check_call [[touch, {marker}]]\n",
    "apply-in-list": 'x:\n  - !!python/object/apply:os.system ["touch {marker}"]\n',
}


@pytest.mark.parametrize("template", list(UNSAFE.values()), ids=list(UNSAFE))
def test_unsafe_python_tags_never_execute(tmp_path, template):
    marker = tmp_path / "pwned"
    f = _write(tmp_path, template.format(marker=marker))
    try:
        doc = load_yaml(f)
    except RecipeError as err:  # a user error naming the file, never any other exception
        assert str(err).startswith(str(f))
        assert "\n" not in str(err)
    else:
        assert _is_plain(doc.data), doc.data
    assert not marker.exists()


def test_python_name_tag_is_rejected_not_resolved(tmp_path):
    f = _write(tmp_path, "x: !!python/name:os.system\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(f)
    assert str(info.value).startswith(
        f"{f}:1:4: x: explicit YAML tag !!python/name:os.system is not supported"
    )
    assert "python/name:os.system" in str(info.value)


def test_aliases_are_expanded_to_plain_copies(tmp_path):
    f = _write(tmp_path, "a: &m [1, 2]\nb: *m\n")
    doc = load_yaml(f)
    assert doc.data == {"a": [1, 2], "b": [1, 2]}
    assert _is_plain(doc.data)


def test_merge_key_is_merged_or_rejected_cleanly(tmp_path):
    f = _write(tmp_path, "base: &b {bits: 8}\nquantization:\n  <<: *b\n  scale: float\n")
    try:
        doc = load_yaml(f)
    except RecipeError as err:
        assert str(err).startswith(f"{f}:")
    else:
        assert doc.data["quantization"] == {"bits": 8, "scale": "float"}
        assert doc.where(("quantization", "bits")).file == str(f)


def test_a_file_is_parsed_once_per_content_and_callers_get_their_own_copy(tmp_path):
    f = _write(tmp_path, "version: 1\nquantization: {bits: 8}\n")
    first = load_yaml(f)
    first.data["quantization"]["bits"] = 99  # merging mutates what it loads
    assert load_yaml(f).data["quantization"]["bits"] == 8
    f.write_text("version: 1\nquantization: {bits: 16}\n")  # same size: mtime and inode tell
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert load_yaml(f).data["quantization"]["bits"] == 16
