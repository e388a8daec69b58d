"""estimate / read_table: the target's latency model and user latency tables."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import small_cnn
from onnx import TensorProto, helper, numpy_helper, shape_inference

from quantbuild.errors import RecipeError
from quantbuild.graph.layers import layer_table
from quantbuild.graph.prepare import prepare_model
from quantbuild.mixed.latency import BYTES_PER_CYCLE, LatencyTable, estimate, read_table
from quantbuild.mixed.precision import assign


def _model(nodes, inputs: dict, inits: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(s, dtype=np.float32), n) for n, s in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return shape_inference.infer_shapes(model, strict_mode=True)


def _conv(x: str, w: str, y: str, name: str, pad: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[pad] * 4)


def big_conv(then: list | None = None) -> onnx.ModelProto:
    """3x3 conv 128 -> 128 on 32x32: 151 M MACs against 400 kB moved, compute-bound."""
    return _model(
        [_conv("x", "w", "c", "conv"), *(then or [])],
        {"x": [1, 128, 32, 32]},
        {"w": (128, 128, 3, 3)},
    )


MACS = 32 * 32 * 128 * 128 * 9
FEATURE = 128 * 32 * 32  # elements of x and of c
WEIGHT = 128 * 128 * 9


def test_all_16bit_conv_is_4x_slower_when_compute_bound():
    model = big_conv()
    e = estimate(model, assign(model, output_16bit=["x", "conv"]))
    row = e.layers["conv"]
    assert row.macs == MACS
    assert (row.t8, row.t16, row.t_mp) == (MACS / 4096, MACS / 1024, MACS / 1024)
    assert row.bound == "compute"
    assert e.t16 / e.t8 == 4 and e.ratio == 4
    assert e.unit == "cycles" and e.unknown == ()


def test_all_8bit_assignment_has_ratio_one():
    model = big_conv()
    e = estimate(model, assign(model))
    assert e.t_mp == e.t8 == MACS / 4096 and e.ratio == 1


def test_16bit_output_alone_keeps_the_8bit_mac_rate():
    # a MaxPool listed 16-bit forces the conv's output (not its input or weights) to 16 bits
    model = big_conv([helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[1, 1])])
    a = assign(model, output_16bit=["pool"])
    assert a.layers["conv"]["weight_bits"] == 8 and a.bits("c") == 16
    row = estimate(model, a).layers["conv"]
    # memory grows (x 1 B + c 2 B + w 1 B per element) but stays under the 8-bit compute time
    assert (FEATURE + 2 * FEATURE + WEIGHT) / BYTES_PER_CYCLE < MACS / 4096
    assert row.t_mp == row.t8 == MACS / 4096


def test_16bit_weights_alone_run_at_the_16bit_rate():
    model = big_conv()
    row = estimate(model, assign(model, params_16bit=["conv"])).layers["conv"]
    assert row.t_mp == MACS / 1024 and row.bound == "compute"


def test_memory_bound_layer_costs_its_bytes():
    # 1x1 conv 8 -> 8 on 64x64: 262 k MACs (64 cycles) but 65.6 kB moved (4100 cycles)
    model = _model(
        [_conv("x", "w", "y", "conv", pad=0)], {"x": [1, 8, 64, 64]}, {"w": (8, 8, 1, 1)}
    )
    e = estimate(model, assign(model, output_16bit=["x", "conv"]))
    row = e.layers["conv"]
    assert row.macs == 64 * 64 * 8 * 8
    bytes8 = 8 * 64 * 64 * 2 + 64
    assert row.t8 == bytes8 / BYTES_PER_CYCLE
    assert row.t16 == row.t_mp == 2 * bytes8 / BYTES_PER_CYCLE
    assert row.bound == "memory"
    assert e.ratio == 2


def test_layers_without_macs_cost_bytes_and_fused_activations_cost_nothing():
    model = _model(
        [
            _conv("x", "w", "c", "conv", pad=0),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "x"], ["y"], name="add"),
        ],
        {"x": [1, 8, 64, 64]},
        {"w": (8, 8, 1, 1)},
    )
    e = estimate(model, assign(model, output_16bit=["add"]))
    elements = 8 * 64 * 64
    assert e.layers["relu"].t8 == e.layers["relu"].t_mp == 0 and e.layers["relu"].bound == "fused"
    add = e.layers["add"]
    assert add.macs == 0 and add.t8 == 3 * elements / BYTES_PER_CYCLE
    # Add can change precision: 8-bit inputs, 16-bit output
    assert add.t_mp == 4 * elements / BYTES_PER_CYCLE
    assert e.t8 == sum(row.t8 for row in e.layers.values())
    assert [r["layer"] for r in e.table()] == ["conv", "relu", "add"]
    assert e.table()[2] == {
        "layer": "add",
        "op": "Add",
        "macs": 0,
        "t8": add.t8,
        "t16": add.t16,
        "t_mp": add.t_mp,
        "bound": "memory",
    }


def test_observed_shapes_fill_in_symbolic_dimensions():
    nodes = [_conv("x", "w", "c", "conv")]
    symbolic = _model(nodes, {"x": [1, 128, "H", "W"]}, {"w": (128, 128, 3, 3)})
    unknown = estimate(symbolic, assign(symbolic))
    assert unknown.unknown == ("conv",) and unknown.layers["conv"].macs is None
    shapes = {"x": (1, 128, 32, 32), "c": (1, 128, 32, 32)}
    observed = estimate(symbolic, assign(symbolic), shapes=shapes)
    assert observed.unknown == ()
    assert observed == estimate(big_conv(), assign(big_conv()))


def test_macs_are_the_layer_tables():
    model = prepare_model(small_cnn())[0]
    e = estimate(model, assign(model, output_16bit=["conv2"]))
    assert {n: row.macs for n, row in e.layers.items()} == {
        row["name"]: row["macs"] for row in layer_table(model)
    }
    assert e.unknown == () and 1 < e.ratio < e.t16 / e.t8


def two_convs() -> onnx.ModelProto:
    """conv1 (3x3 128 -> 128, compute-bound) -> conv2 (1x1 128 -> 8, memory-bound) -> pool."""
    return _model(
        [
            _conv("x", "w", "c", "conv1"),
            _conv("c", "w2", "c2", "conv2", pad=0),
            helper.make_node("MaxPool", ["c2"], ["y"], name="pool", kernel_shape=[1, 1]),
        ],
        {"x": [1, 128, 32, 32]},
        {"w": (128, 128, 3, 3), "w2": (8, 128, 1, 1)},
    )


def test_table_overrides_named_layers_and_sets_the_unit():
    model = two_convs()
    a = assign(model, output_16bit=["conv1"])
    cycles = estimate(model, a)
    ms = estimate(model, a, table=LatencyTable({"conv1": (2.0, 6.0)}))
    assert ms.unit == "table"
    assert (ms.layers["conv1"].t8, ms.layers["conv1"].t16) == (2.0, 6.0)
    assert ms.layers["conv1"].t_mp == 6.0 and ms.layers["conv1"].bound == "table"
    # the other layers keep the model's proportions, in milliseconds
    scale = 2.0 / cycles.layers["conv1"].t8
    for name in ("conv2", "pool"):
        for t in ("t8", "t16", "t_mp"):
            assert getattr(ms.layers[name], t) == pytest.approx(
                getattr(cycles.layers[name], t) * scale
            )
    assert ms.ratio == pytest.approx(ms.t_mp / ms.t8)


def test_a_partly_16bit_table_layer_sits_where_the_model_puts_it():
    model = two_convs()
    a = assign(model, output_16bit=["pool"])  # conv2: 8-bit input and weights, 16-bit output
    ms = estimate(model, a, table=LatencyTable({"conv2": (1.0, 3.0)}))
    model_row = estimate(model, a).layers["conv2"]
    share = (model_row.t_mp - model_row.t8) / (model_row.t16 - model_row.t8)
    assert share == pytest.approx(8 * 32 * 32 / (128 * 32 * 32 + 8 * 32 * 32 + 8 * 128))
    assert ms.layers["conv2"].t_mp == pytest.approx(1.0 + 2.0 * share)


def test_table_names_are_checked_against_the_model():
    model = two_convs()
    with pytest.raises(RecipeError) as caught:
        estimate(model, assign(model), table=LatencyTable({"conv_2": (1.0, 2.0)}, "lat.csv"))
    assert str(caught.value) == (
        "lat.csv: latency table: no layer or tensor named 'conv_2'; did you mean 'conv2'?"
    )
    both = LatencyTable({"conv2": (1.0, 2.0), "c2": (1.0, 2.0)}, "lat.csv")
    with pytest.raises(RecipeError, match="'conv2' and 'c2' name the same layer 'conv2'"):
        estimate(model, assign(model), table=both)


def test_read_table_csv_and_json_forms(tmp_path):
    rows = {"conv1": (2.0, 6.5), "conv2": (0.25, 0.5)}
    csv_file = tmp_path / "lat.csv"
    csv_file.write_text("layer, t8, t16, note\nconv1,2,6.5,first\n conv2 ,0.25,0.5,\n")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"layer": k, "t8": a, "t16": b} for k, (a, b) in rows.items()]))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({k: {"t8": a, "t16": b} for k, (a, b) in rows.items()}))
    for path in (csv_file, listed, mapping):
        table = read_table(path)
        assert table.rows == rows and table.source == str(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "layer,t8\nconv1,1\n", "a.csv: missing column(s) t16 in the header"),
        (
            "a.csv",
            "layer,t8,t16\nconv1,1,2\nconv2,fast,2\n",
            "a.csv:3:1: row.t8: 'fast' is not a number",
        ),
        (
            "a.csv",
            "layer,t8,t16\nconv1,1,-2\n",
            "a.csv:2:1: row.t16: '-2' is not a time (finite, >= 0)",
        ),
        (
            "a.csv",
            "layer,t8,t16\nconv1,1,2\nconv1,1,2\n",
            "a.csv:3:1: row: layer 'conv1' appears twice",
        ),
        ("a.csv", "layer,t8,t16\n", "a.csv: the latency table has no rows"),
        (
            "a.json",
            '[{"layer": "conv1", "t8": 1}]',
            "a.json: rows[0]: expected keys layer, t8, t16",
        ),
        (
            "a.json",
            '[{"layer": "c", "t8": true, "t16": 1}]',
            "a.json: rows[0].t8: True is not a number",
        ),
        ("a.json", '{"conv1": [1, 2]}', "a.json: rows[0]: expected keys layer, t8, t16"),
        ("a.json", "[1,", "a.json:1:4: not valid JSON (Expecting value)"),
        ("a.txt", "conv1 1 2", "a.txt: a latency table is a .csv or .json file"),
    ],
)
def test_read_table_errors_are_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        read_table(path)
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_read_table_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="absent.csv: file not found"):
        read_table(tmp_path / "absent.csv")
