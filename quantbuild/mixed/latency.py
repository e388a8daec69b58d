"""A latency model of the target, for TIDL's mixed-precision budget T_MP / T_8.

Per layer, cycles = max(compute, memory):
- compute = MACs / MACS_PER_CYCLE[bits]: the MMA does 4096 8-bit MACs per cycle and 1024
  16-bit ones (docs/tidl.md). A layer runs at the 16-bit rate when a multiplier operand is
  16-bit: any feature-map input or its weights. A 16-bit *output* alone does not slow the
  MACs: it is written after the wide accumulation, so it costs bytes, not MAC rate (our
  reading of the MMA; TI publishes no per-case figure).
- memory = bytes moved / BYTES_PER_CYCLE, bytes = feature-map inputs and outputs at their bit
  widths + weights at theirs. Layers without MACs (pooling, element-wise, concat, ...) are
  memory-bound by construction. Activations fused into their producer cost nothing.

BYTES_PER_CYCLE = 16 is an assumption, not a measurement: a TDA4VM has one 32-bit LPDDR4
interface at up to 4266 MT/s (TI's datasheet figure as we know it, not re-checked here), about
17 GB/s peak, and its MMA runs at 1 GHz (4096 MACs x 2 ops x 1 GHz = its published 8 TOPS), so
DDR gives ~17 bytes per MMA cycle at best; we round down. Feature maps TIDL keeps on chip
(L2/MSMC) cost less than this, so the memory term is an upper bound.

A user table of measured per-layer times (any unit) replaces the model for the layers it
names; the model's times for the other layers are scaled by the table's total over the model's
total on the named layers, so that all layers share the table's unit.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from quantbuild.errors import RecipeError, Where
from quantbuild.graph.layers import layer_macs
from quantbuild.graph.onnx_utils import initializers, static_shape, tensor_types
from quantbuild.mixed.precision import Assignment, Network
from quantbuild.textfile import read_utf8

MACS_PER_CYCLE = {8: 4096, 16: 1024}
BYTES_PER_CYCLE = 16.0


@dataclass(frozen=True)
class LatencyTable:
    """Measured per-layer times: layer name -> (t8, t16), in any one unit."""

    rows: dict[str, tuple[float, float]]
    source: str = ""  # the file it came from, for error messages


@dataclass(frozen=True)
class LayerLatency:
    op: str
    macs: int | None  # None: shapes unknown (counted as 0)
    t8: float
    t16: float
    t_mp: float
    bound: str  # "compute" or "memory" (for t_mp), "fused", or "table"


@dataclass(frozen=True)
class Estimate:
    layers: dict[str, LayerLatency]  # graph order
    t8: float  # everything 8-bit
    t16: float  # everything 16-bit
    t_mp: float  # the assignment
    ratio: float  # t_mp / t8, TIDL's mixed_precision_factor
    unit: str  # "cycles", or "table" when a user table sets the unit
    unknown: tuple[str, ...] = ()  # layers whose shapes were unknown

    def table(self) -> list[dict[str, Any]]:
        """One row per layer, in graph order, for display."""
        return [{"layer": name, **vars(row)} for name, row in self.layers.items()]


@dataclass(frozen=True)
class _Layer:
    macs: int | None
    inputs: list[tuple[str, int]]  # feature maps and their element counts
    outputs: list[tuple[str, int]]
    weight: int  # weight elements (0: none)
    known: bool

    def cycles(self, bits: Callable[[str], int], weight_bits: int | None) -> tuple[float, str]:
        """Cycles and what bounds them, with `bits(tensor)` giving feature-map widths."""
        wide = weight_bits == 16 or any(bits(t) == 16 for t, _ in self.inputs)
        compute = (self.macs or 0) / MACS_PER_CYCLE[16 if wide else 8]
        moved = sum(n * bits(t) for t, n in self.inputs + self.outputs)
        moved += self.weight * (weight_bits or 8)
        memory = moved / 8 / BYTES_PER_CYCLE
        return max(compute, memory), "compute" if compute > memory else "memory"


def _layers(
    model: onnx.ModelProto, net: Network, shapes: dict[str, tuple[int, ...]]
) -> dict[str, _Layer]:
    types = tensor_types(model)
    # Observed shapes win over declared ones, which may be symbolic.
    for name, shape in shapes.items():
        types[name] = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, list(shape))
    inits = initializers(model)

    def count(tensor: str) -> int | None:
        shape = static_shape(types.get(tensor))
        return math.prod(shape) if shape is not None else None

    layers = {}
    for name, node in net.nodes.items():
        inputs = [(t, count(t)) for t in net.inputs[name]]
        outputs = [(t, count(t)) for t in net.outputs[name]]
        macs = layer_macs(node, types, inits)
        known = macs is not None and all(n is not None for _, n in inputs + outputs)
        weight = net.weight.get(name)
        layers[name] = _Layer(
            macs,
            [(t, n or 0) for t, n in inputs],
            [(t, n or 0) for t, n in outputs],
            math.prod(inits[weight].dims) if weight else 0,
            known,
        )
    return layers


def _table_rows(net: Network, table: LatencyTable) -> dict[str, tuple[float, float]]:
    """The table's rows keyed by node, every name checked against the model."""
    where = table.source or None
    rows: dict[str, tuple[float, float]] = {}
    named: dict[str, str] = {}
    for layer, times in table.rows.items():
        node = net.resolve(layer, "latency table", where)
        if node in rows:
            raise RecipeError(
                f"latency table: {named[node]!r} and {layer!r} name the same layer {node!r}",
                where,
            )
        rows[node], named[node] = times, layer
    return rows


def estimate(
    model: onnx.ModelProto,
    assignment: Assignment,
    shapes: dict[str, tuple[int, ...]] | None = None,
    table: LatencyTable | None = None,
) -> Estimate:
    """Latency of `model` all 8-bit, all 16-bit and under `assignment` (see module doc).

    `shapes` are observed feature-map shapes (e.g. from calibration) for symbolic dimensions.
    """
    return LatencyModel(model, shapes, table).estimate(assignment)


class LatencyModel:
    """The latency model of one network: its layers read once, any number of assignments
    estimated (automatic selection estimates thousands)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        shapes: dict[str, tuple[int, ...]] | None = None,
        table: LatencyTable | None = None,
        net: Network | None = None,
    ):
        self.net = net or Network(model)
        self.layers = _layers(model, self.net, shapes or {})
        self.measured = _table_rows(self.net, table) if table else {}

    def estimate(self, assignment: Assignment) -> Estimate:
        """Latency all 8-bit, all 16-bit and under `assignment`."""
        net, layers, measured = self.net, self.layers, self.measured
        model_times: dict[str, tuple[float, float, float, str]] = {}
        for name, layer in layers.items():
            if name in net.host:
                model_times[name] = (0.0, 0.0, 0.0, "fused")
                continue
            has_weight = name in net.weight
            t8, _ = layer.cycles(lambda t: 8, 8 if has_weight else None)
            t16, _ = layer.cycles(lambda t: 16, 16 if has_weight else None)
            t_mp, bound = layer.cycles(assignment.bits, assignment.layers[name]["weight_bits"])
            model_times[name] = (t8, t16, t_mp, bound)

        # Bring the model's cycles to the table's unit, matched on the layers both cover.
        model_total = sum(model_times[n][0] for n in measured)
        table_total = sum(t8 for t8, _ in measured.values())
        scale = table_total / model_total if model_total > 0 and table_total > 0 else 1.0

        result = {}
        for name, layer in layers.items():
            t8, t16, t_mp, bound = model_times[name]
            if name in measured:
                u8, u16 = measured[name]
                # A partly 16-bit layer sits where the model puts it between its t8 and t16.
                if t16 > t8:
                    share = (t_mp - t8) / (t16 - t8)
                else:  # the model has no time for it (shapes unknown): all or nothing
                    info = assignment.layers[name]
                    wide = info["output_bits"] == 16 or info["weight_bits"] == 16
                    share = float(wide or any(assignment.bits(t) == 16 for t, _ in layer.inputs))
                t8, t16, t_mp, bound = u8, u16, u8 + (u16 - u8) * share, "table"
            else:
                t8, t16, t_mp = t8 * scale, t16 * scale, t_mp * scale
            result[name] = LayerLatency(net.op[name], layer.macs, t8, t16, t_mp, bound)

        total8 = sum(r.t8 for r in result.values())
        total_mp = sum(r.t_mp for r in result.values())
        return Estimate(
            layers=result,
            t8=total8,
            t16=sum(r.t16 for r in result.values()),
            t_mp=total_mp,
            ratio=total_mp / total8 if total8 > 0 else 1.0,
            unit="table" if measured else "cycles",
            unknown=tuple(
                n
                for n, layer in layers.items()
                if not (layer.known or n in measured or n in net.host)
            ),
        )


def _number(value: object, what: str, where: Where | str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RecipeError(f"{what}: {value!r} is not a number", where)
    try:
        number = float(value)
    except ValueError:
        raise RecipeError(f"{what}: {value!r} is not a number", where) from None
    if not math.isfinite(number) or number < 0:
        raise RecipeError(f"{what}: {value!r} is not a time (finite, >= 0)", where)
    return number


def _add(
    rows: dict[str, Any], layer: object, t8: object, t16: object, what: str, where: Where | str
) -> None:
    if not isinstance(layer, str) or not layer:
        raise RecipeError(f"{what}.layer: expected a layer name, got {layer!r}", where)
    if layer in rows:
        raise RecipeError(f"{what}: layer {layer!r} appears twice", where)
    rows[layer] = (_number(t8, f"{what}.t8", where), _number(t16, f"{what}.t16", where))


def read_table(path: Path | str) -> LatencyTable:
    """Read a per-layer latency table: CSV with columns layer, t8, t16 (a header row, other
    columns ignored), or JSON as a list of {"layer", "t8", "t16"} objects or a mapping
    layer -> {"t8", "t16"}."""
    path = Path(path)
    source = str(path)
    text = read_utf8(path, RecipeError, "latency table")
    rows: dict[str, tuple[float, float]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            where = Where(source, err.lineno, err.colno)
            raise RecipeError(f"not valid JSON ({err.msg})", where) from None
        if isinstance(data, dict):
            data = [
                {"layer": k, **v} if isinstance(v, dict) else {"layer": k} for k, v in data.items()
            ]
        if not isinstance(data, list):
            raise RecipeError("expected a list of {layer, t8, t16} rows", source)
        for i, row in enumerate(data):
            if not isinstance(row, dict) or not {"layer", "t8", "t16"} <= row.keys():
                raise RecipeError(f"rows[{i}]: expected keys layer, t8, t16", source)
            _add(rows, row["layer"], row["t8"], row["t16"], f"rows[{i}]", source)
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("layer", "t8", "t16") if c not in columns]
        if missing:
            raise RecipeError(f"missing column(s) {', '.join(missing)} in the header", source)
        reader.fieldnames = columns
        for row in reader:
            where = Where(source, reader.line_num, 1)
            _add(rows, (row["layer"] or "").strip(), row["t8"], row["t16"], "row", where)
    else:
        raise RecipeError("a latency table is a .csv or .json file", source)
    if not rows:
        raise RecipeError("the latency table has no rows", source)
    return LatencyTable(rows, source)


def static_shapes(
    model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor when the graph inputs have the given shapes (symbolic
    dimensions such as H/W resolved by shape inference)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in inputs:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, inputs[value.name]):
                dim.ClearField("dim_param")
                dim.dim_value = size
    del fixed.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    values = (
        list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    )
    shapes = {v.name: static_shape(v.type) for v in values}
    return {name: shape for name, shape in shapes.items() if shape is not None}
