"""sensitivity: how much each layer's promotion to 16 bits improves the output (auto mixed precision).

Candidates are the layers with weights (Conv, ConvTranspose, Gemm, MatMul), each twice: 16-bit
outputs and weights (TIDL output_16bit, with its propagation) and 16-bit weights only
(params_16bit). A candidate's gain is the output error (against float, on a few calibration
frames) its promotion removes, averaged over two backgrounds:
- everything else 8-bit: what the layer buys on its own;
- everything else 16-bit: what the layer costs when it alone stays 8-bit. This catches chains
  of layers that only pay off together (each 8-bit feature map in a chain re-adds the error the
  others removed), which the first measure misses.
The average of a layer's marginal gain at the two ends of the path from all-8-bit to
all-16-bit is a two-point estimate of its average marginal gain along that path.

A cached artifact of its own: changing the latency budget (factor) re-runs only the selection
in quantize, which takes the greedy selection for the factor unless a smaller budget's
measures clearly lower per-frame errors (mixed.select.select_within).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild.data.dataset import Dataset
from quantbuild.evaluate.metrics import frame_errors
from quantbuild.graph.ops import WEIGHTED
from quantbuild.interop.ranges_file import read
from quantbuild.mixed.select import select_within
from quantbuild.progress import track
from quantbuild.recipe import Recipe
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.ranges import RANGES
from quantbuild.stages.settings import Quantization, latency_table
from quantbuild.stages.spec import Stage
from quantbuild.stages.stats import STATS
from quantbuild.store.entries import Artifact, Entry
from quantbuild.store.files import load_npz

# onnx, onnxruntime and networkx are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx

    from quantbuild.mixed.latency import LatencyTable
    from quantbuild.mixed.precision import Assignment

SENSITIVITY = Artifact("sensitivity.json", export="sensitivity.json")
FRAMES = 8  # calibration frames per measurement
# Frames on which quantize compares the selections of smaller budgets: others than those the
# gains were measured on, and more of them, so that the rule does not fit the gains' frames.
CHECK_FRAMES = slice(FRAMES, FRAMES + 32)
PARAMS = ":params"  # candidate suffix: the layer's weights only in 16 bits
Selection = tuple[list[str], list[str]]  # (output_16bit, params_16bit) lists
SWEEP = (1.05, 1.1, 1.2, 1.3, 1.5, 2.0)  # factors measured for the report


def applies(recipe: dict[str, Any]) -> bool:
    """Whether a recipe builds this stage: automatic mixed precision
    (a latency budget or an accuracy target) in an 8-bit build."""
    return Quantization.of(recipe).automatic_mixed_precision


def split_candidates(chosen: list[str]) -> tuple[list[str], list[str]]:
    """Selected candidates as (output_16bit layers, params_16bit layers)."""
    outputs = [c for c in chosen if not c.endswith(PARAMS)]
    params = [
        c.removesuffix(PARAMS)
        for c in chosen
        if c.endswith(PARAMS) and c.removesuffix(PARAMS) not in outputs
    ]
    return outputs, params


def observed_shapes(ctx: Context, model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor for the first calibration frame (symbolic H/W resolved)."""
    from quantbuild.graph.onnx_utils import graph_inputs
    from quantbuild.mixed.latency import static_shapes

    dataset = ctx.dataset("calibration")
    feed = dataset.load(dataset.frames[0], graph_inputs(model))
    return static_shapes(model, {name: value.shape for name, value in feed.items()})


class Promotions:
    """Automatic selections on top of a recipe's manual mixed precision: TIDL's lists for a set
    of candidates, and its estimated T_MP / T_8 (each set estimated once)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        mp: dict[str, Any],
        shapes: dict[str, Any],
        table: LatencyTable | None = None,
    ):
        from quantbuild.mixed.latency import LatencyModel
        from quantbuild.mixed.precision import Network

        self.mp = mp
        self.net = Network(model)  # built once: every ratio assigns lists on this model
        self.latency = LatencyModel(model, shapes, table, self.net)
        self.spans = [tuple(pair) for pair in mp.get("ranges", [])]
        self._ratios: dict[tuple[str, ...], float] = {}

    def lists(self, chosen: list[str]) -> tuple[list[str], list[str]]:
        """(output_16bit, params_16bit): the recipe's lists plus the chosen candidates."""
        outputs, params = split_candidates(chosen)
        manual = self.mp.get("output_16bit", []), self.mp.get("params_16bit", [])
        return list(manual[0]) + outputs, list(manual[1]) + params

    def ratio(self, chosen: list[str]) -> float:
        from quantbuild.mixed.precision import assign

        key = tuple(chosen)
        if key not in self._ratios:
            assignment = assign(self.net, *self.lists(chosen), self.spans)
            self._ratios[key] = self.latency.estimate(assignment).ratio
        return self._ratios[key]


class MixedModels:
    """The recipe's 8-bit QDQ model with some layers promoted to 16 bits, as TIDL's lists
    (and start/end `ranges`) state them."""

    def __init__(self, ctx: Context, model: onnx.ModelProto):
        from quantbuild.mixed.precision import Network

        q = Quantization.of(ctx.recipe.data)
        self.model = model
        self.net = Network(model)  # built once: every candidate assigns lists on this model
        self.ranges, _ = read(ctx.inputs["ranges"].path(RANGES))
        self.stats = load_npz(ctx.inputs["stats"].path(STATS))
        self.options = replace(q.weights, clip_memo={})
        self.grid = q.grid

    def qdq(
        self,
        output_16bit: Iterable[str],
        params_16bit: Iterable[str] = (),
        ranges: Iterable[tuple[str, str]] = (),
    ) -> onnx.ModelProto:
        from quantbuild.mixed.precision import assign

        return self.build(assign(self.net, output_16bit, params_16bit, ranges))

    def build(self, assignment: Assignment) -> onnx.ModelProto:
        """The QDQ model of a precision assignment."""
        from quantbuild.mixed.apply import wide_layers, widen_ranges
        from quantbuild.quant.qdq import write_qdq

        wide = widen_ranges(self.ranges, self.stats, assignment, self.grid)
        options = replace(self.options, wide_layers=wide_layers(assignment))
        return write_qdq(self.model, wide, options)[0]


class ErrorProbe:
    """The output error (relative to float, on calibration frames: the first FRAMES unless
    told) of the 8-bit model with some layers in 16 bits: what automatic mixed precision
    minimizes."""

    def __init__(self, ctx: Context, model: onnx.ModelProto, frames: slice = slice(FRAMES)):
        from quantbuild.graph.onnx_utils import graph_inputs
        from quantbuild.runtime import session

        self.models = MixedModels(ctx, model)
        dataset = ctx.dataset("calibration")
        inputs = graph_inputs(model)
        self.feeds = [dataset.load(frame, inputs) for frame in dataset.frames[frames]]
        self.names = [o.name for o in model.graph.output]
        float_runner = session(model)
        self.reference = [float_runner.run(self.names, feed) for feed in self.feeds]
        # Lists that TIDL's rules turn into the same precisions are measured once: in a
        # transformer every MatMul of an attention block ties to the others.
        self._errors: dict[tuple[frozenset[str], frozenset[str]], np.ndarray] = {}

    def frame_errors(
        self,
        output_16bit: Iterable[str],
        params_16bit: Iterable[str] = (),
        ranges: Iterable[tuple[str, str]] = (),
    ) -> np.ndarray:
        """Per-frame error with TIDL's lists (and start/end `ranges`) applied."""
        from quantbuild.mixed.precision import assign
        from quantbuild.runtime import session

        assignment = assign(self.models.net, output_16bit, params_16bit, ranges)
        key = (assignment.tensors_16bit, assignment.weights_16bit)
        if key not in self._errors:
            runner = session(self.models.build(assignment))
            outputs = [runner.run(self.names, feed) for feed in self.feeds]
            self._errors[key] = frame_errors(outputs, self.reference)
        return self._errors[key]

    def measure(self, selections: list[Selection], background: Selection) -> Iterator[None]:
        """Measure every selection (output_16bit, params_16bit lists), each run only where it
        differs from `background` (mixed.variants; the same errors as whole runs); yields once
        per selection, for progress."""
        from quantbuild.mixed.precision import assign
        from quantbuild.mixed.variants import Background

        def key(assignment: Assignment) -> tuple[frozenset[str], frozenset[str]]:
            return assignment.tensors_16bit, assignment.weights_16bit

        back = assign(self.models.net, *background)
        base = Background(self.models.build(back), self.feeds)
        if key(back) not in self._errors:
            self._errors[key(back)] = frame_errors(base.run(), self.reference)
        todo: dict[tuple[frozenset[str], frozenset[str]], Assignment] = {}
        for selection in selections:
            assignment = assign(self.models.net, *selection)
            if key(assignment) not in self._errors:
                todo.setdefault(key(assignment), assignment)
        variants = (self.models.build(a) for a in todo.values())
        for k, outputs in zip(todo, base.measure(variants)):
            self._errors[k] = frame_errors(outputs, self.reference)
            yield None
        for _ in range(len(selections) - len(todo)):
            yield None

    def remember(self, selection: Selection, errors: np.ndarray) -> None:
        """Take a selection's per-frame errors measured elsewhere on the same frames."""
        from quantbuild.mixed.precision import assign

        assignment = assign(self.models.net, *selection)
        self._errors.setdefault((assignment.tensors_16bit, assignment.weights_16bit), errors)

    def error(
        self,
        output_16bit: Iterable[str],
        params_16bit: Iterable[str] = (),
        ranges: Iterable[tuple[str, str]] = (),
    ) -> float:
        """Error with TIDL's lists (and start/end `ranges`) applied: the mean over frames."""
        return float(np.mean(self.frame_errors(output_16bit, params_16bit, ranges)))


def measure_shard(
    recipe: Recipe,
    inputs: dict[str, Entry],
    dataset: Dataset,
    selections: list[Selection],
    background: Selection,
) -> list[np.ndarray]:
    """Per-frame errors of `selections` measured against `background` (ErrorProbe.measure)
    on the calibration frames in `dataset`: one piece of the stage, run where a fan-out sends
    it."""
    import onnx

    ctx = Context(recipe, inputs, lambda section: dataset, lambda line: None)
    probe = ErrorProbe(ctx, onnx.load(str(float_model_path(ctx))))
    for _ in probe.measure(selections, background):
        pass
    return [probe.frame_errors(*selection) for selection in selections]


def _measure_on_workers(
    ctx: Context, probe: ErrorProbe, batches: list[tuple[list[Selection], Selection]]
) -> None:
    """Measure each batch's selections against its background on the fan-out's workers (each
    worker every n-th selection: the costly ones, early layers with long suffixes, spread
    evenly) and give the probe their errors: the same numbers it would measure itself."""
    assert ctx.fan_out is not None
    workers = ctx.fan_out.workers
    calibration = ctx.dataset("calibration")
    frames = calibration.subset(calibration.frames[:FRAMES])
    jobs = [
        (ctx.recipe, ctx.inputs, frames, selections[part::workers], background)
        for selections, background in batches
        for part in range(workers)
        if selections[part::workers]
    ]
    for job, errors in zip(jobs, ctx.fan_out.map(measure_shard, jobs)):
        for selection, per_frame in zip(job[3], errors):
            probe.remember(selection, per_frame)
    ctx.log(f"{sum(len(job[3]) for job in jobs)} variants measured on {workers} workers")


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    from quantbuild.mixed.latency import static_shapes
    from quantbuild.mixed.precision import CHANGES_PRECISION, Network

    model = onnx.load(str(float_model_path(ctx)))
    probe = ErrorProbe(ctx, model)
    feeds = probe.feeds

    def error_with(promoted: list[str]) -> float:
        return probe.error(*split_candidates(promoted))

    base = error_with([])
    layers = [n.name for n in model.graph.node if n.op_type in WEIGHTED]
    candidates = layers + [f"{name}{PARAMS}" for name in layers]
    # Every layer that can be listed, i.e. the model as 16-bit as TIDL's rules allow (fused
    # activations are not listed: they would name, and so keep promoted, their host).
    net = Network(model)
    promotable = CHANGES_PRECISION | WEIGHTED
    everything = [n for n, op in net.op.items() if op in promotable and n not in net.host]
    top = error_with(everything)

    # `name` back to 8 bits in the 16-bit model, then with its weights only promoted.
    def demoted(name: str) -> list[str]:
        return [other for other in everything if other != name]

    lowered = [
        split_candidates(selection)
        for name in layers
        for selection in (demoted(name), demoted(name) + [f"{name}{PARAMS}"])
    ]
    batches = [
        ([split_candidates([c]) for c in candidates], split_candidates([])),
        (lowered, split_candidates(everything)),
    ]
    if ctx.fan_out:
        _measure_on_workers(ctx, probe, batches)
    else:
        measures = itertools.chain(*(probe.measure(*batch) for batch in batches))
        for _ in track(measures, "sensitivity", 2 * len(candidates), unit="variants"):
            pass
    alone = {name: base - error_with([name]) for name in candidates}
    together: dict[str, float] = {}
    for name in layers:
        rest = demoted(name)
        together[name] = error_with(rest) - top
        together[f"{name}{PARAMS}"] = error_with(rest) - error_with(rest + [f"{name}{PARAMS}"])
    gains = {name: (alone[name] + together[name]) / 2 for name in candidates}
    shapes = static_shapes(model, {name: value.shape for name, value in feeds[0].items()})

    # The sweep's selections share every single-layer cost and their common prefixes.
    ratio_of = Promotions(model, {}, shapes, latency_table(ctx)).ratio

    # What automatic selection buys at each budget, for the report's fidelity/latency plot.
    def measured(chosen: list[str]) -> np.ndarray:
        return probe.frame_errors(*split_candidates(chosen))

    sweep = [{"factor": 1.0, "ratio": 1.0, "error": base, "layers": 0}]
    for factor in SWEEP:
        chosen = select_within(gains, ratio_of, factor, SWEEP, measured)
        sweep.append(
            {
                "factor": factor,
                "ratio": ratio_of(chosen),
                "error": float(np.mean(measured(chosen))),
                "layers": len(chosen),
            }
        )
    result = {
        "frames": len(feeds),
        "error_8bit": base,
        "error_16bit": top,
        "gains": gains,
        "gains_8bit_background": alone,
        "gains_16bit_background": together,
        "sweep": sweep,
    }
    (out / SENSITIVITY.file).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    best = sorted(gains, key=lambda name: gains[name], reverse=True)[:3]
    ctx.log(
        f"{len(layers)} layers (x2) measured on {len(feeds)} frames against 8- and 16-bit "
        f"backgrounds; relative error 8-bit {base:.3g}, 16-bit {top:.3g}; most sensitive: "
        f"{', '.join(best)}"
    )
    return {"candidates": len(candidates), "error_8bit": base}


STAGE = Stage(
    name="sensitivity",
    version=9,
    reads=(
        "/quantization/bits",
        "/quantization/scale",
        "/quantization/activations",
        "/quantization/weights",
        "/quantization/bias_bits",
        "/quantization/weight_clipping",
        "/quantization/accuracy_level",
        "/quantization/mixed_precision/latency_table",  # the report's factor sweep
        "/calibration/data",
        "/calibration/preprocess",
    ),
    inputs=("prepare", "equalize", "stats", "ranges"),
    artifacts=(SENSITIVITY,),
    run=run,
    applies=applies,
    doc=__doc__.splitlines()[0],
)
