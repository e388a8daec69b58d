"""`quantbuild diagnose`: TI's accuracy workflow as one build — float, 16-bit, 8-bit, then
automatic mixed precision — and a verdict on where the accuracy goes.

Each step is the recipe with a few fields overridden, built as its own recipe
(`<name>.16bit`, `<name>.8bit`, `<name>.mixed`): statistics are shared, every artifact is
cached, and the results land in `build/<name>.<step>/` like any build's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantbuild.errors import RecipeError
from quantbuild.pipeline.plan import RecipeBuild
from quantbuild.pipeline.project import Project
from quantbuild.recipe import Recipe
from quantbuild.recipe.resolve import load_recipe
from quantbuild.stages.evaluate import METRICS
from quantbuild.stages.quantize import PRECISION
from quantbuild.stages.sensitivity import SENSITIVITY

DEFAULT_FACTOR = 1.2
# "Accurate": within a point of float top-1, or, without labels, output SQNR of 30 dB or more
# (about 3 % RMS error relative to the signal).
TOP1_TOLERANCE = 0.01
SQNR_ACCURATE_DB = 30.0
LAYERS_NAMED = 5


@dataclass(frozen=True)
class Step:
    name: str
    label: str
    overrides: tuple[str, ...]


def steps(factor: float) -> list[Step]:
    """The builds diagnose runs, in TI's order (float is every build's reference)."""
    return [
        Step("16bit", "16-bit", ("quantization.bits=16", "quantization.mixed_precision={}")),
        Step("8bit", "8-bit", ("quantization.bits=8", "quantization.mixed_precision={}")),
        Step(
            "mixed",
            f"mixed (factor {factor:g})",
            ("quantization.bits=8", f"quantization.mixed_precision.factor={factor}"),
        ),
    ]


@dataclass
class Result:
    """One step's figures: its metrics.json and precision.json."""

    step: Step
    recipe: str
    metrics: dict[str, Any]
    precision: dict[str, Any]
    sensitivity: dict[str, Any] | None = None

    @property
    def top1(self) -> float | None:
        return (self.metrics.get("top1") or {}).get("quantized")

    @property
    def float_top1(self) -> float | None:
        return (self.metrics.get("top1") or {}).get("float")

    @property
    def sqnr_db(self) -> float | None:
        values = [o["sqnr_db"] for o in self.metrics["outputs"].values() if "sqnr_db" in o]
        return min(values) if values else None

    @property
    def latency_ratio(self) -> float:
        return float(self.precision["latency"]["ratio"])

    def score(self) -> float | None:
        """The figure the verdict compares: top-1 where there are labels, else SQNR."""
        return self.top1 if self.top1 is not None else self.sqnr_db

    def accurate(self) -> bool:
        if self.top1 is not None and self.float_top1 is not None:
            return self.float_top1 - self.top1 <= TOP1_TOLERANCE
        return self.sqnr_db is not None and self.sqnr_db >= SQNR_ACCURATE_DB


@dataclass
class Diagnosis:
    recipe: str
    factor: float
    results: dict[str, Result]

    def verdict(self) -> list[str]:
        """Sentences, most important first."""
        wide, narrow, mixed = (self.results[k] for k in ("16bit", "8bit", "mixed"))
        if narrow.accurate():
            return ["8-bit is accurate: nothing to fix."]
        if not wide.accurate():
            return [
                "16-bit is not accurate either: quantization is not the only cause. Check the "
                "preprocessing and calibration data against the model's training pipeline, and "
                "`quantbuild doctor` for layers that stay in float or have extreme ranges."
            ]
        lines = [
            "16-bit is accurate and 8-bit is not: quantization is the cause; these layers "
            f"matter most: {', '.join(self.sensitive_layers())}."
        ]
        # 16-bit is accurate, so it has a score; an 8-bit or mixed build without one recovered nothing.
        top, low, mid = wide.score() or 0.0, narrow.score(), mixed.score()
        gap = top - low if low is not None else 0.0
        recovered = (mid - low) / gap if gap > 0 and low is not None and mid is not None else 0.0
        lines.append(
            f"Mixed precision at factor {self.factor:g} (T_MP/T_8 {mixed.latency_ratio:.2f}) "
            f"recovers {recovered:.0%} of the 8-to-16-bit gap"
            + (
                ": accurate."
                if mixed.accurate()
                else "; not accurate yet: raise quantization.mixed_precision.factor, or add "
                "the layers above to output_16bit / params_16bit."
            )
        )
        return lines

    def sensitive_layers(self) -> list[str]:
        """The layers whose 16-bit promotion removes the most 8-bit error."""
        gains = (self.results["mixed"].sensitivity or {}).get("gains", {})
        best = sorted(gains, key=lambda name: (-gains[name], name))
        return [name for name in best if gains[name] > 0][:LAYERS_NAMED]


def diagnose(
    project: Project, ref: str, factor: float = DEFAULT_FACTOR, log: Callable[[str], None] = print
) -> Diagnosis:
    """Build the recipe's 16-bit, 8-bit and mixed-precision variants and compare them."""
    base = project.find(ref)
    if "evaluation" not in base.data:
        raise RecipeError(
            f"{base.name}: diagnose compares quantized and float outputs; add an evaluation "
            "section (evaluation.data) to the recipe",
            base.where(()),
        )
    results = {}
    for step in steps(factor):
        recipe = _variant(project, base, step)
        build = RecipeBuild(project, recipe)
        entries = {}
        for stage in build.stages:
            log(f"{stage.name}:{recipe.name}")
            entries[stage.name], _ = build.run(stage.name, log=lambda line: log(f"   {line}"))
        entry = entries.__getitem__
        result = Result(
            step,
            recipe.name,
            json.loads(entry("evaluate").path(METRICS).read_text(encoding="utf-8")),
            json.loads(entry("quantize").path(PRECISION).read_text(encoding="utf-8")),
        )
        if step.name == "mixed":
            path = entry("sensitivity").path(SENSITIVITY)
            result.sensitivity = json.loads(path.read_text(encoding="utf-8"))
        results[step.name] = result
    return Diagnosis(base.name, factor, results)


def _variant(project: Project, base: Recipe, step: Step) -> Recipe:
    overrides = (*project.overrides, f"name={base.name}.{step.name}", *step.overrides)
    return load_recipe(base.file, overrides)


def render_text(d: Diagnosis) -> str:
    """The comparison table and the verdict."""
    first = next(iter(d.results.values()))
    labels = first.top1 is not None
    lines = [
        f"diagnose {d.recipe}",
        "",
        f"| step | build | T/T_8 | {'top-1 | ' if labels else ''}min output SQNR (dB) |",
        f"|---|---|---|{'---|' if labels else ''}---|",
    ]
    if labels:
        lines.append(f"| float | – | – | {first.float_top1:.4f} | – |")
    for result in d.results.values():
        sqnr = "–" if result.sqnr_db is None else f"{result.sqnr_db:.2f}"
        top1 = f"{result.top1:.4f} | " if labels else ""
        lines.append(
            f"| {result.step.label} | {result.recipe} | {result.latency_ratio:.2f} | {top1}{sqnr} |"
        )
    return "\n".join(lines + ["", *d.verdict()]) + "\n"


def render_json(d: Diagnosis) -> str:
    data = {
        "recipe": d.recipe,
        "factor": d.factor,
        "steps": {
            name: {
                "recipe": r.recipe,
                "latency_ratio": r.latency_ratio,
                "top1": r.top1,
                "float_top1": r.float_top1,
                "min_sqnr_db": r.sqnr_db,
                "accurate": r.accurate(),
            }
            for name, r in d.results.items()
        },
        "sensitive_layers": d.sensitive_layers(),
        "verdict": d.verdict(),
    }
    return json.dumps(data, indent=1) + "\n"
