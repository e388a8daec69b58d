"""report.md and report.html from the artifact files of every recipe of a project."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantbuild.interop.ranges_file import read as read_ranges
from quantbuild.report import html
from quantbuild.report.html import RecipeDetails
from quantbuild.report.markdown import Row, render
from quantbuild.store.files import load_npz

REPORTS = ("report.md", "report.html")


@dataclass(frozen=True)
class RecipeFiles:
    """One recipe's settings and the artifact files the report reads (None: not built)."""

    name: str
    device: str | None
    quantization: dict[str, Any]
    metrics: Path | None = None
    layer_errors: Path | None = None
    precision: Path | None = None
    sensitivity: Path | None = None
    selection: Path | None = None
    stats: Path | None = None
    ranges: Path | None = None


def report_files(recipes: list[RecipeFiles]) -> dict[str, bytes]:
    """The report files' bytes, by name."""
    rows, details = [], []
    stats_cache: dict[Path, dict[str, np.ndarray]] = {}  # recipes may share one stats entry
    for recipe in recipes:
        metrics = _json(recipe.metrics) if recipe.metrics else None
        layers = _json(recipe.layer_errors)["layers"] if recipe.layer_errors else None
        precision = _json(recipe.precision) if recipe.precision else None
        row = Row(recipe.name, recipe.device, recipe.quantization, metrics, precision)
        rows.append(row)
        sweep = _json(recipe.sensitivity).get("sweep") if recipe.sensitivity else None
        selection = _json(recipe.selection) if recipe.selection else None
        histograms = _histograms(recipe, layers, stats_cache)
        details.append(RecipeDetails(row, layers, histograms, sweep, selection))
    return {
        "report.md": render(rows).encode("utf-8"),
        "report.html": html.render(details).encode("utf-8"),
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _histograms(
    recipe: RecipeFiles, layers: list[dict] | None, cache: dict[Path, dict[str, np.ndarray]]
) -> list[html.Histogram]:
    """Histograms of the worst layers' activations, with the ranges the recipe chose."""
    tensors = html.worst_tensors(layers)
    if not tensors or recipe.stats is None or recipe.ranges is None:
        return []
    if recipe.stats not in cache:
        cache[recipe.stats] = load_npz(recipe.stats)
    ranges, _ = read_ranges(recipe.ranges)
    return html.display_histograms(cache[recipe.stats], ranges, tensors)
