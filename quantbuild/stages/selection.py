"""selection: mixed precision to an accuracy target (`mixed_precision.max_drop`).

The cheapest set of 16-bit layers (by the latency model) whose task metric on the evaluation
data is within max_drop of the float model's: top-1 when the evaluation data has labels and
`top1` is among the metrics, else the output cosine similarity to float (float: 1). Candidate
sets come from the cached sensitivities (mixed.target.cheapest_within); each is quantized
with nearest rounding and no bias calibration, which quantize adds afterwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantbuild.evaluate.metrics import Fidelity, Top1
from quantbuild.mixed.target import cheapest_within
from quantbuild.progress import track
from quantbuild.stages.context import Context
from quantbuild.stages.equalize import float_model_path
from quantbuild.stages.sensitivity import SENSITIVITY, MixedModels, Promotions, observed_shapes
from quantbuild.stages.settings import Quantization, latency_table
from quantbuild.stages.spec import Stage
from quantbuild.store.entries import Artifact

# onnx and onnxruntime are imported where used: a no-op build loads only the stage specs
if TYPE_CHECKING:
    import onnx

SELECTION = Artifact("selection.json", export="selection.json")


def applies(recipe: dict[str, Any]) -> bool:
    """Whether a recipe builds this stage."""
    q = Quantization.of(recipe)
    return q.bits == 8 and "max_drop" in q.mixed_precision


class TaskMetric:
    """The task metric of a model on the evaluation data (float's reference kept in memory)."""

    def __init__(self, ctx: Context, model: onnx.ModelProto):
        from quantbuild.graph.onnx_utils import graph_inputs

        self.dataset = ctx.dataset("evaluation")
        self.inputs = graph_inputs(model)
        self.names = [o.name for o in model.graph.output]
        metrics = ctx.recipe.data["evaluation"]["metrics"]
        self.kind = "top1" if "top1" in metrics and self.dataset.has_labels else "cosine"
        self.reference: list[list[np.ndarray]] = []
        self.float = self._measure(model, keep=True)

    def _measure(self, model: onnx.ModelProto, keep: bool = False) -> float:
        from quantbuild.runtime import run_frame, session

        runner = session(model)
        top1, fidelity = Top1(), [Fidelity() for _ in self.names]
        frames = self.dataset.iterate(self.inputs)
        for i, (frame, feed) in enumerate(track(frames, "selection", len(self.dataset.frames))):
            outputs = run_frame(runner, self.names, feed, self.dataset, frame)
            if self.kind == "top1":
                top1.update(outputs[0], frame.label)
                continue
            if keep:
                self.reference.append(outputs)
            for f, ref, got in zip(fidelity, self.reference[i], outputs):
                f.update(ref, got)
        if self.kind == "top1":
            return float(top1.value() or 0.0)
        return min(f.cosine() for f in fidelity)

    def __call__(self, model: onnx.ModelProto) -> float:
        return self._measure(model)


def run(ctx: Context, out: Path) -> dict[str, Any]:
    import onnx

    mp = Quantization.of(ctx.recipe.data).mixed_precision
    model = onnx.load(str(float_model_path(ctx)))
    models = MixedModels(ctx, model)
    metric = TaskMetric(ctx, model)
    gains = json.loads(ctx.inputs["sensitivity"].path(SENSITIVITY).read_text())["gains"]
    promotions = Promotions(model, mp, observed_shapes(ctx, model), latency_table(ctx))

    def metric_of(chosen: list[str]) -> float:
        value = metric(models.qdq(*promotions.lists(chosen), promotions.spans))
        ctx.log(
            f"{len(chosen)} layers promoted: T_MP / T_8 {promotions.ratio(chosen):.3f}, "
            f"{metric.kind} {value:.4f}"
        )
        return value

    target = metric.float - float(mp["max_drop"])
    cap = float(mp.get("factor") or math.inf)
    search = cheapest_within(gains, promotions.ratio, metric_of, target, cap)
    result = {
        "metric": metric.kind,
        "float": metric.float,
        "max_drop": mp["max_drop"],
        "target": target,
        "met": search.met,
        "factor_cap": None if math.isinf(cap) else cap,
        "chosen": search.chosen,
        "ratio": search.point.ratio,
        "points": search.table(),
        "frames": len(metric.dataset.frames),
    }
    (out / SELECTION.file).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    verdict = "meets the target" if search.met else "misses the target (best measured set kept)"
    ctx.log(
        f"max_drop {mp['max_drop']}: {len(search.chosen)} layers promoted, T_MP / T_8 "
        f"{search.point.ratio:.3f}, {metric.kind} {search.point.metric:.4f} vs float "
        f"{metric.float:.4f}: "
        f"{verdict}; {len(search.points)} selections measured on "
        f"{result['frames']} evaluation frames"
    )
    return {"met": search.met, "layers": len(search.chosen), "ratio": search.point.ratio}


STAGE = Stage(
    name="selection",
    version=3,
    reads=(
        "/quantization/mixed_precision",
        "/evaluation/data",
        "/evaluation/preprocess",
        "/evaluation/metrics",
    ),
    inputs=("prepare", "equalize", "stats", "ranges", "sensitivity"),
    artifacts=(SELECTION,),
    run=run,
    applies=applies,
    doc=__doc__.splitlines()[0],
)
