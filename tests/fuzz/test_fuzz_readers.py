"""Fuzzing the readers of user files: the recipe loader and the three ranges formats.

Whatever the bytes, a reader returns or raises a QuantbuildError (a one-line error with a
distinct exit code): never another exception, never a hang (each example has a deadline).
Derandomized so CI runs the same examples every time (~20 s); QUANTBUILD_FUZZ_EXAMPLES=N
explores N fresh random examples per reader instead."""

from __future__ import annotations

import contextlib
import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantbuild.errors import QuantbuildError
from quantbuild.interop import ort_overrides, ranges_file, tidl_proto
from quantbuild.interop.imported import read_imported
from quantbuild.recipe import load_recipe

FUZZ = settings(
    max_examples=int(os.environ.get("QUANTBUILD_FUZZ_EXAMPLES", "250")),
    deadline=2000,
    derandomize=not os.environ.get("QUANTBUILD_FUZZ_EXAMPLES"),  # explore when asked
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = [
    "version", "model", "extends", "name", "device", "quantization", "calibration",
    "evaluation", "bits", "scale", "activations", "weights", "per_channel", "data", "images",
    "tensors", "preprocess", "mixed_precision", "output_16bit", "factor", "ranges", "import",
    "format", "tensors", "min", "max", "dtype", "zero_point", "layer", "t8", "t16", "x",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1", "8", "16", "model.onnx", "devices/am68a", "quantbuild-ranges/1"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=40,
)
yaml_noise = st.text(
    alphabet=string.printable + "&*!|>%@`{}[]:-#é\x00\x1b", max_size=400
)  # anchors, aliases, tags, flow collections, control characters


def _yaml(value) -> str:
    # JSON is YAML: a structurally valid document with wrong types and values.
    return json.dumps(value, allow_nan=True)


def _expect_clean(call) -> None:
    with contextlib.suppress(QuantbuildError):  # any other exception fails the test
        call()


@FUZZ
@given(st.one_of(documents.map(_yaml), yaml_noise))
def test_recipe_loader(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("r")
    (folder / "model.onnx").write_bytes(b"")
    recipe = folder / "fuzz.yaml"
    recipe.write_text(text, encoding="utf-8", errors="surrogatepass")
    _expect_clean(lambda: load_recipe(recipe))


@FUZZ
@given(st.one_of(documents.map(_yaml), yaml_noise))
def test_quantbuild_ranges_reader(text):
    _expect_clean(lambda: ranges_file.loads(text, "fuzz.yaml"))


@FUZZ
@given(st.one_of(documents.map(_yaml), yaml_noise))
def test_onnxruntime_overrides_reader(text):
    _expect_clean(lambda: ort_overrides.loads(text, "fuzz.json"))


prototxt_noise = st.text(
    alphabet=string.printable, max_size=400
) | st.lists(
    st.sampled_from(
        ["layer {", "}", 'name: "x"', "outputs {", "min: 1.5", "max: -2", "scale: 0",
         "zero_point: 3", "bits: 8", "tensor_name: 'a'", "layer_type: 1", "weights {", "#"]
    ),
    max_size=30,
).map("\n".join)  # fmt: skip


@FUZZ
@given(prototxt_noise)
def test_tidl_prototxt_reader(text):
    _expect_clean(lambda: tidl_proto.loads(text, "fuzz.prototxt"))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".yaml", ".json", ".prototxt", ".png", ""]))
def test_any_bytes_as_an_imported_ranges_file(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("i") / f"ranges{suffix}"
    path.write_bytes(data)
    _expect_clean(lambda: read_imported(Path(path)))


@pytest.mark.parametrize("reader", [ranges_file.loads, ort_overrides.loads, tidl_proto.loads])
def test_readers_refuse_an_empty_file_cleanly(reader):
    _expect_clean(lambda: reader("", "empty"))
