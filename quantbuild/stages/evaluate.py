"""evaluate: float vs quantized on the evaluation set: top-1, output SQNR/cosine, layer SQNR.

Per quantized tensor, two SQNRs against float: layer-wise (that layer alone quantized, with
float inputs) and accumulated (everything up to it quantized)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild import cores
from quantbuild.data.dataset import Dataset
from quantbuild.evaluate.metrics import ErrorSums, Fidelity, Top1
from quantbuild.progress import track
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.quantize import QDQ_MODEL
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact

# onnx and onnxruntime are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx

    from quantbuild.evaluate import layerwise

METRICS = Artifact("metrics.json", export="metrics.json")
LAYER_ERRORS = Artifact("layers.json", export="layer_errors.json")
WORST_LOGGED = 3
LAYER_FRAMES = 32  # evaluation frames for the per-layer SQNR (the first ones)
LAYER_BYTES = 192 << 20  # analysed tensor values held per frame and chunk
# Frame pipelines (float and QDQ sessions each) run side by side on one machine: the two
# models take turns on every frame, and one pipeline leaves cores idle between them (detection
# model, 2 cores: 64 frames 16.9 s in one pipeline with spinning threads, 11.5 s without
# spinning, 9.3 s in two pipelines).
LOCAL_PIPELINES = 2


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.evaluate import layerwise
    from quantbuild.graph.onnx_utils import graph_inputs

    metrics = ctx.recipe.data["evaluation"]["metrics"]
    float_model = onnx.load(str(float_model_path(ctx)))
    quant_model = onnx.load(str(ctx.inputs["quantize"].path(QDQ_MODEL)))
    outputs = [o.name for o in float_model.graph.output]
    inputs = graph_inputs(float_model)
    dataset = ctx.dataset("evaluation")
    with_top1 = "top1" in metrics and dataset.has_labels
    if with_top1:
        _check_classifier(float_model, dataset, ctx.log)
    lw = layerwise.build(float_model, quant_model)
    if ctx.fan_out:  # a cluster's workers
        shards = dataset.shards(ctx.fan_out.workers)
        models = (float_model.SerializeToString(), quant_model.SerializeToString())
        jobs = [(*models, shard, start, with_top1) for shard, start in _starts(shards)]
        scores = ctx.fan_out.map(score_shard, jobs)
    else:  # this machine's cores, each frame pipeline in a thread
        shards = dataset.shards(cores.side_by_side(LOCAL_PIPELINES))
        pipelines = [
            # one progress line: the first pipeline's (the others keep pace)
            (float_model, quant_model, lw, shard, start, with_top1, start == 0)
            for shard, start in _starts(shards)
        ]
        scores = cores.in_threads(score_frames, pipelines)
    fidelity, top1, errors = _add_up(scores, outputs, lw, with_top1)
    if any(shard_scores.layers is None for shard_scores in scores):  # no error model
        errors = _layer_errors(lw, quant_model, dataset, inputs)
    result: dict[str, Any] = {"frames": len(dataset.frames), "outputs": {}}
    if top1:
        result["top1"] = {k: v.value() for k, v in top1.items()}
    for name, f in fidelity.items():
        entry = {}
        if "sqnr" in metrics:
            entry["sqnr_db"] = f.sqnr_db()
        if "cosine" in metrics:
            entry["cosine"] = f.cosine()
        result["outputs"][name] = entry
    (out / METRICS.file).write_text(
        json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    table = layer_table(lw.layers, errors)
    (out / LAYER_ERRORS.file).write_text(
        json.dumps({"frames": min(result["frames"], LAYER_FRAMES), "layers": table}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.get("top1", {}).items())
    where = f" on {len(scores)} workers" if ctx.fan_out and len(scores) > 1 else ""
    ctx.log(f"{result['frames']} frames{where}" + (f"; top-1 {summary}" if summary else ""))
    for row in table[:WORST_LOGGED]:
        ctx.log(
            f"SQNR {_db(row['layerwise_sqnr_db'])} alone, {_db(row['accumulated_sqnr_db'])} "
            f"accumulated: {row['tensor']} ({row['op']} {row['node']})"
        )
    return result


def _starts(shards: list[Dataset]) -> list[tuple[Dataset, int]]:
    """Each shard with the index of its first frame in the whole evaluation set."""
    starts = np.cumsum([0] + [len(shard.frames) for shard in shards[:-1]])
    return [(shard, int(start)) for shard, start in zip(shards, starts)]


def _add_up(
    scores: list[Scores], outputs: list[str], lw: layerwise.LayerwiseModel, with_top1: bool
) -> tuple[dict[str, Fidelity], dict[str, Top1] | None, list[ErrorSums]]:
    """The shards' per-frame sums added frame by frame in evaluation order: the same sums in
    the same order however the frames were split."""
    fidelity = {name: Fidelity() for name in outputs}
    top1 = {"float": Top1(), "quantized": Top1()} if with_top1 else None
    errors = [ErrorSums(2) for _ in lw.layers]
    for shard in scores:
        for frame_sums in shard.fidelity:
            for name, sums in zip(outputs, frame_sums):
                fidelity[name].add(sums)
        if top1:
            for float_hit, quantized_hit in shard.top1:
                top1["float"].add(bool(float_hit))
                top1["quantized"].add(bool(quantized_hit))
        for frame_layers in shard.layers if shard.layers is not None else ():
            _add_layer_sums(errors, lw, frame_layers)
    return fidelity, top1, errors


def _add_layer_sums(
    errors: list[ErrorSums], lw: layerwise.LayerwiseModel, frame_layers: np.ndarray
) -> None:
    """Add one frame's per-layer (signal, alone, accumulated) sums; `alone` only where the
    layer has a layer-wise copy (elsewhere it is NaN)."""
    for sums, layer, (signal, alone, accumulated) in zip(errors, lw.layers, frame_layers):
        sums.add(signal, alone if layer.layerwise else None, accumulated)


def _check_classifier(model: onnx.ModelProto, dataset: Dataset, log: Callable[[str], None]) -> None:
    """Warn when top-1 cannot mean what it says: the first output is no [batch, classes]
    score vector, or labels name classes the model does not have."""
    output = model.graph.output[0]
    dims = [d.dim_value or None for d in output.type.tensor_type.shape.dim]
    if len([d for d in dims[1:] if d != 1]) > 1:
        log(
            f"warning: top1: the first output {output.name!r} has shape {dims}, not [batch, "
            "classes]; top-1 takes the argmax of its first row (drop top1 from metrics?)"
        )
    classes = dims[-1] if dims else None
    labels = [f.label for f in dataset.frames if f.label is not None]
    out_of_range = [label for label in labels if label < 0 or (classes and label >= classes)]
    if out_of_range:
        log(
            f"warning: top1: {len(out_of_range)} of {len(labels)} labels are not class indices "
            f"of the model's {classes} outputs (e.g. {out_of_range[0]}); check the labels file "
            "or the class folder order"
        )


@dataclass
class Scores:
    """Per-frame contributions of consecutive evaluation frames, added up by the stage in
    frame order (the same sums in the same order as one pass: bit-identical however the
    frames were split over workers)."""

    fidelity: np.ndarray  # [frame, output, (signal, noise, dot, quantized energy)]
    top1: np.ndarray  # [frame, (float, quantized)] whether the argmax is the label
    # [analysed frame, layer, (signal, alone, accumulated)]; None: no error model (subgraphs)
    layers: np.ndarray | None


def score_shard(
    float_model: bytes, quant_model: bytes, dataset: Dataset, start: int, top1: bool
) -> Scores:
    """`score_frames` of a shard of the evaluation set whose first frame is frame `start`
    (run where a fan-out sends it)."""
    import onnx

    from quantbuild.evaluate import layerwise

    reference, quantized = onnx.load_from_string(float_model), onnx.load_from_string(quant_model)
    lw = layerwise.build(reference, quantized) if start < LAYER_FRAMES else None
    return score_frames(reference, quantized, lw, dataset, start, top1)


def score_frames(
    float_model: onnx.ModelProto,
    quant_model: onnx.ModelProto,
    lw: layerwise.LayerwiseModel | None,
    dataset: Dataset,
    start: int,
    top1: bool,
    progress: bool = True,
) -> Scores:
    """Each frame's output sums and top-1 hits, and for frames among the evaluation set's
    first LAYER_FRAMES (`start`: the index of the dataset's first frame there) every layer's
    error sums. The analysed frames run once through the error model (both models' outputs
    and the layers' sums), the rest through the two models alone. `lw` is needed only where
    frames are analysed."""
    from quantbuild.graph.onnx_utils import graph_inputs
    from quantbuild.runtime import run_frame, session

    outputs = [o.name for o in float_model.graph.output]
    inputs = graph_inputs(float_model)
    count = len(dataset.frames)
    analysed = max(0, min(LAYER_FRAMES - start, count))
    analysis = _error_pass(lw, quant_model) if analysed and lw is not None else None
    in_graph = not analysed or analysis is not None  # else the stage's exposed-tensor fallback
    sums = np.zeros((analysed, len(lw.layers) if lw else 0, 3))
    fidelity = np.zeros((count, len(outputs), 4))
    hits = np.zeros((count, 2 if top1 else 0), dtype=bool)
    sessions: dict[str, Any] = {}
    frames = dataset.iterate(inputs)
    for index, (frame, feed) in enumerate(
        track(frames, "evaluation", count) if progress else frames
    ):
        cores.check_stop()  # a sibling pipeline failed or the build was interrupted
        if analysis is not None and index < analysed:
            ref, got, sums[index] = analysis.run(feed, dataset, frame)
        else:
            analysis = None  # its session (three graphs) is not needed any more
            if not sessions:
                sessions.update(  # taking turns: their idle threads must not spin
                    reference=session(float_model, spinning=False),
                    quantized=session(quant_model, spinning=False),
                )
            ref = dict(
                zip(outputs, run_frame(sessions["reference"], outputs, feed, dataset, frame))
            )
            got = dict(
                zip(outputs, run_frame(sessions["quantized"], outputs, feed, dataset, frame))
            )
        for column, name in enumerate(outputs):
            fidelity[index, column] = Fidelity.sums(ref[name], got[name])
        if top1:
            hits[index] = (
                Top1.hit(ref[outputs[0]], frame.label),
                Top1.hit(got[outputs[0]], frame.label),
            )
    return Scores(fidelity, hits, sums if in_graph else None)


class _ErrorPass:
    """One session over layerwise.error_model: per frame, the float and quantized outputs and
    every layer's error sums, without any large tensor leaving onnxruntime."""

    def __init__(self, errors: layerwise.ErrorModel):
        from quantbuild.runtime import session

        self.errors = errors
        self.names = errors.names
        self.session = session(errors.model, in_order=True)  # see layerwise._interleave

    def run(
        self, feed: dict[str, Any], dataset: Dataset, frame: Any
    ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
        """The frame's (float, quantized) outputs and per layer (signal, alone, accumulated)
        error sums (alone: NaN where the layer has no layer-wise copy)."""
        from quantbuild.runtime import run_frame

        values = dict(zip(self.names, run_frame(self.session, self.names, feed, dataset, frame)))
        sums = np.array(
            [
                (
                    values[layer.signal],
                    values[layer.alone] if layer.alone else np.nan,
                    values[layer.accumulated],
                )
                for layer in self.errors.layers
            ],
            dtype=np.float64,
        ).reshape(-1, 3)
        outputs = self.errors.float_outputs
        ref = {name: values[name] for name in outputs}
        got = {n: values[q] for n, q in zip(outputs, self.errors.quantized_outputs)}
        return ref, got, sums


def _error_pass(lw: layerwise.LayerwiseModel, qdq: onnx.ModelProto) -> _ErrorPass | None:
    """The error model's session, or None where it cannot be built (subgraphs)."""
    from quantbuild.evaluate import layerwise

    try:
        errors = layerwise.error_model(lw, qdq)
    except ValueError:
        return None
    return _ErrorPass(errors)


def layer_errors(
    lw: layerwise.LayerwiseModel, qdq: onnx.ModelProto, dataset: Dataset, inputs: list[Any]
) -> list[ErrorSums]:
    """Per layer [layer-wise, accumulated] error sums over the first LAYER_FRAMES frames, as
    the stage computes them (one pass of the error model per frame)."""
    analysis = _error_pass(lw, qdq)
    if analysis is None:
        return _layer_errors(lw, qdq, dataset, inputs)
    errors = [ErrorSums(2) for _ in lw.layers]
    for frame in dataset.frames[:LAYER_FRAMES]:
        _, _, values = analysis.run(dataset.load(frame, inputs), dataset, frame)
        _add_layer_sums(errors, lw, values)
    return errors


def _layer_errors(
    lw: layerwise.LayerwiseModel,
    quant_model: onnx.ModelProto,
    dataset: Dataset,
    inputs: list[Any],
) -> list[ErrorSums]:
    """Per layer [layer-wise, accumulated] error sums over the first LAYER_FRAMES frames,
    where the error model cannot be built (subgraphs).

    The layer-wise model gives the float reference and each layer quantized alone; the QDQ
    model everything quantized up to each tensor. Every analysed tensor is a session output,
    so the tensors go in chunks whose values for one frame fit LAYER_BYTES: memory stays
    bounded on large feature maps, at the cost of re-running the models per chunk."""
    from quantbuild.mixed.latency import static_shapes
    from quantbuild.runtime import run_frame, session, with_outputs

    frames = dataset.frames[:LAYER_FRAMES]
    errors = [ErrorSums(2) for _ in lw.layers]
    if not frames or not lw.layers:
        return errors
    first = dataset.load(frames[0], inputs)
    try:
        shapes = static_shapes(lw.model, {name: value.shape for name, value in first.items()})
    except Exception:  # unknown shapes: one chunk, as much memory as the model needs
        shapes = {}
    chunks = _chunks(lw.layers, shapes)
    for number, chunk in enumerate(chunks, 1):
        ref_names = list(dict.fromkeys([lw.layers[i].tensor for i in chunk]))
        ref_names += [name for i in chunk if (name := lw.layers[i].layerwise)]
        got_names = list(dict.fromkeys(lw.layers[i].quantized for i in chunk))
        analysed = session(with_outputs(lw.model, ref_names))
        analysed_quantized = session(with_outputs(quant_model, got_names))
        label = "layer errors" + (f" {number}/{len(chunks)}" if len(chunks) > 1 else "")
        for frame in track(frames, label, len(frames)):
            feed = dataset.load(frame, inputs)
            ref = dict(zip(ref_names, run_frame(analysed, ref_names, feed, dataset, frame)))
            got = dict(
                zip(got_names, run_frame(analysed_quantized, got_names, feed, dataset, frame))
            )
            for i in chunk:
                layer = lw.layers[i]
                alone = ref[layer.layerwise] if layer.layerwise else None
                errors[i].update(ref[layer.tensor], alone, got[layer.quantized])
    return errors


def _chunks(layers: list[layerwise.Layer], shapes: dict[str, Any]) -> list[list[int]]:
    """Layer indices in graph order, grouped so that each group's outputs fit LAYER_BYTES."""
    chunks: list[list[int]] = [[]]
    used = 0
    for i, layer in enumerate(layers):
        # float value, quantized value, and the layer-wise copy: float32 each
        size = 4 * math.prod(shapes.get(layer.tensor, (1,))) * (3 if layer.layerwise else 2)
        if chunks[-1] and used + size > LAYER_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += size
    return chunks


def layer_table(layers: list[layerwise.Layer], errors: list[ErrorSums]) -> list[dict[str, Any]]:
    """One row per quantized tensor, worst layer-wise SQNR first; ties keep graph order.

    An undefined SQNR is null in JSON: sorted last without error, first without signal."""
    rows, keys = [], []
    for index, (layer, sums) in enumerate(zip(layers, errors)):
        alone, accumulated = sums.sqnr_db()
        rows.append(
            {
                "tensor": layer.tensor,
                "node": layer.node,
                "op": layer.op,
                "index": index,  # graph order
                "layerwise_sqnr_db": alone if layer.layerwise else None,
                "accumulated_sqnr_db": accumulated,
            }
        )
        versions = zip((alone if layer.layerwise else None, accumulated), sums.noise)
        keys.append(tuple(_rank(sqnr, sums.signal, noise) for sqnr, noise in versions))
    return [rows[i] for i in sorted(range(len(rows)), key=lambda i: keys[i])]


def _rank(sqnr: float | None, signal: float, noise: float) -> float:
    if sqnr is not None:
        return sqnr
    return -math.inf if noise > 0.0 and signal == 0.0 else math.inf


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} dB"


def applies(recipe: dict[str, Any]) -> bool:
    """Whether a recipe builds this stage: it has an `evaluation:` section."""
    return "evaluation" in recipe


STAGE = Stage(
    name="evaluate",
    version=6,
    reads=("/evaluation",),
    inputs=("prepare", "equalize", "quantize"),
    artifacts=(
        METRICS,
        LAYER_ERRORS,
    ),
    run=run,
    applies=applies,
    doc=__doc__.splitlines()[0],
)
