"""quantize: the QDQ model and the record of every quantization parameter in it."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild.interop.ranges_file import read
from quantbuild.mixed.select import select_layers, select_within
from quantbuild.quant.params import DTYPES, QParams
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.prepare import PREQUANTIZED_WEIGHTS
from quantbuild.stages.ranges import RANGES
from quantbuild.stages.rounding import ROUNDING
from quantbuild.stages.selection import SELECTION
from quantbuild.stages.sensitivity import (
    CHECK_FRAMES,
    FRAMES,
    SENSITIVITY,
    SWEEP,
    ErrorProbe,
    Promotions,
    observed_shapes,
    split_candidates,
)
from quantbuild.stages.settings import Quantization, latency_table
from quantbuild.stages.spec import Stage
from quantbuild.stages.stats import STATS
from quantbuild.store.entries import Artifact
from quantbuild.store.files import load_npz

# onnx, onnxruntime and networkx are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx

    from quantbuild.mixed.latency import LatencyTable
    from quantbuild.mixed.precision import Assignment

QDQ_MODEL = Artifact("model.qdq.onnx", export="model.qdq.onnx")
QUANT_PARAMS = Artifact("quant_params.json", export="quant_params.json")
# The same parameters for other tools: TIDL quant_params_proto_path, onnxruntime overrides.
QUANT_PARAMS_PROTO = Artifact("quant_params.prototxt", export="quant_params.prototxt")
ORT_OVERRIDES = Artifact("tensor_quant_overrides.json", export="tensor_quant_overrides.json")
# Every layer's bits and why.
PRECISION = Artifact("precision.json", export="precision.json")


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.interop import ort_overrides, tidl_proto
    from quantbuild.mixed.apply import wide_layers, widen_ranges
    from quantbuild.mixed.latency import estimate
    from quantbuild.quant.qdq import write_qdq
    from quantbuild.runtime import session

    q = Quantization.of(ctx.recipe.data)
    model = onnx.load(str(float_model_path(ctx)))
    ranges, _ = read(ctx.inputs["ranges"].path(RANGES))
    options = q.weights
    if q.prequantized:
        options = replace(options, given=_prequantized_weights(ctx))
    shapes = observed_shapes(ctx, model)
    table = latency_table(ctx)  # read once: the selection and precision.json both use it
    assignment = _assignment(ctx, model, shapes, table)
    if q.bits == 8 and (assignment.tensors_16bit or assignment.weights_16bit):
        stats = load_npz(ctx.inputs["stats"].path(STATS))
        ranges = widen_ranges(ranges, stats, assignment, q.grid)
        options = replace(options, wide_layers=wide_layers(assignment))
        wide = sum(info["output_bits"] == 16 for info in assignment.layers.values())
        ctx.log(
            f"mixed precision: {wide} layers with 16-bit outputs, {len(options.wide_layers)} with 16-bit parameters"
        )
    latency = estimate(model, assignment, shapes, table)
    # A 16-bit build runs every layer at the 16-bit rate.
    t_mp = latency.t16 if q.bits == 16 else latency.t_mp
    precision = {
        "bits": q.bits,
        # TIDL's latency model: T_MP / T_8 is what mixed_precision_factor bounds.
        "latency": {
            "t8": latency.t8,
            "t16": latency.t16,
            "t_mp": t_mp,
            "ratio": t_mp / latency.t8 if latency.t8 else latency.ratio,
            "unit": latency.unit,
        },
        "layers": _table(assignment, q.bits),
    }
    (out / PRECISION.file).write_text(json.dumps(precision, indent=1) + "\n", encoding="utf-8")
    qdq, record = write_qdq(model, ranges, options)
    qdq = _finish(ctx, model, qdq, record)
    onnx.checker.check_model(qdq)
    session(qdq)  # fails here, not in evaluate, if onnxruntime cannot run it
    (out / QDQ_MODEL.file).write_bytes(qdq.SerializeToString())
    (out / QUANT_PARAMS.file).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    proto = tidl_proto.dumps(tidl_proto.from_record(record, _with_final_biases(model, qdq, record)))
    (out / QUANT_PARAMS_PROTO.file).write_text(proto, encoding="utf-8")
    overrides = ort_overrides.dumps(record)
    (out / ORT_OVERRIDES.file).write_text(overrides, encoding="utf-8")
    raised = sum(b["weight_scales_raised"] for b in record["biases"].values())
    ctx.log(
        f"{len(record['activations'])} activations, {len(record['weights'])} weights, "
        f"{len(record['biases'])} biases quantized ({raised} weight scales raised to fit biases)"
    )
    return {
        "activations": len(record["activations"]),
        "weights": len(record["weights"]),
        "biases": len(record["biases"]),
        "weight_scales_raised": raised,
    }


def _finish(
    ctx: Context, model: onnx.ModelProto, qdq: onnx.ModelProto, record: dict[str, Any]
) -> onnx.ModelProto:
    """Bias calibration, and with the rounding stage the same on its GPTQ-rounded weights: then
    the candidate whose output is closer to the float model's on calibration frames that
    neither fitted is kept (GPTQ alone lowers every layer's error but not always the model's,
    and bias calibration can undo its gain)."""
    from quantbuild.calib.bias_runner import calibrate_biases, check_frames, output_errors
    from quantbuild.calib.rounding_runner import ROUNDING_FRAMES, Rounding, apply_rounding

    dataset = ctx.dataset("calibration")
    bias = Quantization.of(ctx.recipe.data).bias_calibration

    def calibrated(candidate: onnx.ModelProto) -> onnx.ModelProto:
        if not bias:
            return candidate
        return calibrate_biases(
            model, candidate, record, dataset, bias["frames"], bias["iterations"], ctx.log
        )

    nearest = calibrated(qdq)
    if "rounding" not in ctx.inputs:
        return nearest
    rounding = Rounding.from_arrays(load_npz(ctx.inputs["rounding"].path(ROUNDING)))
    candidate, applied = apply_rounding(qdq, record, rounding)
    ctx.log(f"weight rounding: gptq integers for {applied}/{len(rounding.integers)} weights")
    if not applied:
        return nearest
    rounded = calibrated(candidate)
    check, where = check_frames(dataset, max(ROUNDING_FRAMES, bias["frames"] if bias else 0))
    before, after = (
        errors.mean() for errors in output_errors(model, [nearest, rounded], dataset, check)
    )
    kept = "gptq" if after < before else "nearest"
    ctx.log(
        f"weight rounding: output error nearest {before:.3g}, gptq {after:.3g} on {where}: "
        f"kept {kept} rounding"
    )
    return rounded if after < before else nearest


def _prequantized_weights(ctx: Context) -> dict[str, QParams]:
    """The weight grids the pre-quantized model states (prepare wrote them)."""
    path = ctx.inputs["prepare"].path(PREQUANTIZED_WEIGHTS)
    out = {}
    for name, w in json.loads(path.read_text(encoding="utf-8")).items():
        zero_type = DTYPES.get(w["dtype"], np.int32)
        out[name] = QParams(
            np.asarray(w["scale"], dtype=np.float32),
            np.asarray(w["zero_point"], dtype=zero_type),
            w["dtype"],
            w["axis"],
        )
    return out


def _with_final_biases(
    model: onnx.ModelProto, qdq: onnx.ModelProto, record: dict[str, Any]
) -> onnx.ModelProto:
    """The float model with the biases the QDQ model uses (bias calibration changed them)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in qdq.graph.initializer}
    final = onnx.ModelProto()
    final.CopyFrom(model)
    for tensor in final.graph.initializer:
        if tensor.name in record["biases"]:
            q = numpy_helper.to_array(inits[f"{tensor.name}_quantized"]).astype(np.float32)
            scale = np.asarray(record["biases"][tensor.name]["scale"], dtype=np.float32)
            tensor.CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), tensor.name))
    return final


def _assignment(
    ctx: Context, model: onnx.ModelProto, shapes: dict[str, Any], table: LatencyTable | None
) -> Assignment:
    """The recipe's manual mixed precision (everything at `bits` without one)."""
    from quantbuild.mixed.precision import assign

    q = Quantization.of(ctx.recipe.data)
    mp = q.mixed_precision
    where = ctx.recipe.where(("quantization", "mixed_precision"))
    if "selection" in ctx.inputs:
        selection = json.loads(ctx.inputs["selection"].path(SELECTION).read_text())
        chosen, reason = selection["chosen"], f"max_drop {mp['max_drop']}"
    elif "sensitivity" in ctx.inputs:
        chosen, reason = _auto_selection(ctx, model, shapes, table), f"factor {mp['factor']}"
    else:
        chosen, reason = [], ""
    promoted, promoted_params = split_candidates(chosen)
    lists = ("output_16bit", "params_16bit", "ranges")
    if q.bits == 16 or not (chosen or any(mp.get(k) for k in lists)):
        return assign(model, where=where)
    listed = list(mp.get("output_16bit", []))
    weights = list(mp.get("params_16bit", []))
    assignment = assign(
        model,
        listed + [p for p in promoted if p not in listed],
        weights + [p for p in promoted_params if p not in weights],
        [tuple(pair) for pair in mp.get("ranges", [])],
        where=where,
    )
    for name in (set(promoted) - set(listed)) | (set(promoted_params) - set(weights)):
        if name in assignment.layers:  # chosen by the latency budget, not by the recipe
            assignment.layers[name]["why"] = f"promoted ({reason})"
    return assignment


def _table(assignment: Assignment, bits: int) -> list[dict[str, Any]]:
    """Every layer's output and weight bits (a 16-bit build is 16-bit throughout)."""
    rows = assignment.table()
    if bits == 16:
        for row in rows:
            row["output_bits"] = 16
            row["weight_bits"] = 16 if row.get("weight_bits") else None
            row["why"] = "bits: 16"
    return rows


def _auto_selection(
    ctx: Context, model: onnx.ModelProto, shapes: dict[str, Any], table: LatencyTable | None
) -> list[str]:
    """Layers promoted under `mixed_precision.factor`, from the cached sensitivities."""
    from quantbuild.mixed.latency import estimate
    from quantbuild.mixed.precision import assign

    mp = Quantization.of(ctx.recipe.data).mixed_precision
    sensitivity = json.loads(ctx.inputs["sensitivity"].path(SENSITIVITY).read_text())
    promotions = Promotions(model, mp, shapes, table)
    lists, ratio_of, spans = promotions.lists, promotions.ratio, promotions.spans
    manual = assign(model, *lists([]), spans)

    frames = len(ctx.dataset("calibration").frames)
    check = CHECK_FRAMES if frames > CHECK_FRAMES.start else slice(FRAMES)
    probe = functools.cache(lambda: ErrorProbe(ctx, model, check))  # only if selections differ
    factor, gains = float(mp["factor"]), sensitivity["gains"]
    chosen = select_within(
        gains, ratio_of, factor, SWEEP, lambda c: probe().frame_errors(*lists(c), spans)
    )
    greedy = select_layers(gains, ratio_of, factor)
    smaller = " (a smaller budget's selection: it measured clearly lower error)" * (
        chosen != greedy
    )
    ctx.log(
        f"automatic mixed precision (factor {mp['factor']}): {len(chosen)} layers promoted"
        f"{smaller}, estimated T_MP / T_8 {ratio_of(chosen):.3f} (manual lists alone "
        f"{estimate(model, manual, shapes, table).ratio:.3f})"
    )
    return chosen


STAGE = Stage(
    name="quantize",
    version=24,
    reads=(
        "/quantization/prequantized",
        "/quantization/mixed_precision",
        "/quantization/bits",
        "/quantization/scale",
        "/quantization/weights",
        "/quantization/bias_bits",
        "/quantization/weight_clipping",
        "/quantization/weight_rounding",
        "/quantization/bias_calibration",
        "/calibration/data",
        "/calibration/preprocess",
    ),
    inputs=(
        "prepare",
        "equalize",
        "stats",
        "ranges",
        "rounding",  # with weight_rounding: gptq only
        "sensitivity",  # automatic mixed precision only
        "selection",  # with max_drop only
    ),
    artifacts=(
        QDQ_MODEL,
        QUANT_PARAMS,
        QUANT_PARAMS_PROTO,
        ORT_OVERRIDES,
        PRECISION,
    ),
    run=run,
    doc=__doc__.splitlines()[0],
)
