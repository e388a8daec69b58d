"""The HTML report: one static file with the recipe table and, per recipe, per-layer SQNR,
activation histograms with their clip ranges, and the precision map (inline SVG, no scripts)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from quantbuild.calib.histogram import bucket_bounds
from quantbuild.quant.params import DTYPES, TensorRange
from quantbuild.report import svg
from quantbuild.report.markdown import Row, precision_label, scheme_label

WORST_HIGHLIGHTED = 5  # red bars in the SQNR chart
WORST_LISTED = 10  # rows of the worst-layers table
WORST_HISTOGRAMS = 3  # activation histograms shown
DISPLAY_BINS = 80

CSS = """
body{font-family:system-ui,sans-serif;color:#333;margin:24px;max-width:1140px}
h1{font-size:22px}h2{font-size:18px;margin-top:36px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin-top:22px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child,.name{text-align:left}
p.note{font-size:12px;color:#666}.hists{display:flex;flex-wrap:wrap;gap:12px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""


@dataclass(frozen=True)
class Histogram:
    """An activation histogram for display, with the range the build chose for it."""

    tensor: str
    edges: list[float]
    counts: list[float]
    observed: tuple[float, float]  # calibration min, max
    chosen: tuple[float, float]  # ranges.yaml min, max
    grid: tuple[float, float]  # what the quantization grid can represent


@dataclass(frozen=True)
class RecipeDetails:
    """What the HTML report shows about one recipe beyond its table row."""

    row: Row
    layers: list[dict] | None = None  # evaluate's layers.json "layers", worst first
    histograms: list[Histogram] = field(default_factory=list)
    sweep: list[dict] | None = None  # sensitivity.json "sweep": automatic mixed precision
    selection: dict | None = None  # selection.json: mixed precision to an accuracy target


def worst_tensors(layers: list[dict] | None, count: int = WORST_HISTOGRAMS) -> list[str]:
    """The tensors of the `count` worst layers (layers.json is sorted worst first)."""
    return [row["tensor"] for row in (layers or [])[:count]]


def display_histograms(
    stats: dict[str, np.ndarray], ranges: dict[str, TensorRange], tensors: list[str]
) -> list[Histogram]:
    """Histograms of `tensors` (those with statistics and a range), rebinned from the stats
    stage's bfloat16 buckets to DISPLAY_BINS linear bins over the observed, chosen and grid
    ranges."""
    names = [str(n) for n in stats["names"]]
    if not names or stats["hist"].shape[1] == 0:
        return []
    low_bounds, high_bounds = bucket_bounds()
    out = []
    for tensor in tensors:
        if tensor not in names or tensor not in ranges:
            continue
        i = names.index(tensor)
        r = ranges[tensor]
        observed = (float(stats["min"][i]), float(stats["max"][i]))
        chosen = (float(r.min), float(r.max))
        counts = stats["hist"][i]
        used = np.flatnonzero(counts)
        centers = (low_bounds[used] + high_bounds[used]) / 2  # a bucket is 0.8 % wide
        grid = _grid_range(r)
        # The whole grid is shown: unused grid (e.g. symmetric after Relu) is worth seeing.
        low, high = min(observed[0], chosen[0], grid[0]), max(observed[1], chosen[1], grid[1])
        if not high > low:
            low, high = low - 1.0, high + 1.0
        pad = (high - low) * 0.02
        edges = np.linspace(low - pad, high + pad, DISPLAY_BINS + 1)
        binned, _ = np.histogram(np.clip(centers, edges[0], edges[-1]), edges, weights=counts[used])
        out.append(Histogram(tensor, edges.tolist(), binned.tolist(), observed, chosen, grid))
    return out


def _grid_range(r: TensorRange) -> tuple[float, float]:
    info = np.iinfo(DTYPES[r.qparams.dtype])
    scale, zero = float(r.qparams.scale), int(r.qparams.zero_point)
    return (info.min - zero) * scale, (info.max - zero) * scale


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(rows: list[Row]) -> str:
    """The recipe comparison table, the same columns as report.md."""
    head = (
        "recipe",
        "device",
        "bits",
        "16-bit layers",
        "scheme",
        "float top-1",
        "quant top-1",
        "Δ top-1",
        "min SQNR (dB)",
        "min cosine",
        "frames",
    )
    lines = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for row in sorted(rows, key=lambda r: r.recipe):
        m = row.metrics or {}
        top1 = m.get("top1", {})
        f, q = top1.get("float"), top1.get("quantized")
        outputs = m.get("outputs", {}).values()
        sqnrs = [o["sqnr_db"] for o in outputs if o.get("sqnr_db") is not None]
        cosines = [o["cosine"] for o in outputs if "cosine" in o]
        cells = (
            f'<a href="#{escape(row.recipe)}">{escape(row.recipe)}</a>',
            escape(row.device or "–"),
            str(row.quantization["bits"]),
            escape(precision_label(row.precision)),
            escape(scheme_label(row.quantization)),
            _fmt(f, 4),
            _fmt(q, 4),
            "–" if f is None or q is None else f"{q - f:+.4f}",
            _fmt(min(sqnrs) if sqnrs else None, 2),
            _fmt(min(cosines) if cosines else None, 5),
            str(m.get("frames", "–")),
        )
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _sqnr_section(layers: list[dict]) -> str:
    in_order = sorted(layers, key=lambda r: r["index"])
    worst = {r["tensor"] for r in layers[:WORST_HIGHLIGHTED] if r["layerwise_sqnr_db"] is not None}
    chart = svg.bar_chart(
        [f"{r['tensor']} ({r['op']})" for r in in_order],
        [r["layerwise_sqnr_db"] for r in in_order],
        [r["accumulated_sqnr_db"] for r in in_order],
        [r["tensor"] in worst for r in in_order],
        y_title="SQNR (dB)",
        bar_name="layer alone",
        dot_name="accumulated",
    )
    rows = [
        '<table><tr><th>tensor</th><th class="name">node</th><th class="name">op</th>'
        "<th>alone (dB)</th><th>accumulated (dB)</th></tr>"
    ]
    for r in layers[:WORST_LISTED]:
        rows.append(
            f'<tr><td class="name">{escape(r["tensor"])}</td><td class="name">{escape(r["node"])}</td>'
            f'<td class="name">{escape(r["op"])}</td><td>{_fmt(r["layerwise_sqnr_db"], 2)}</td>'
            f"<td>{_fmt(r['accumulated_sqnr_db'], 2)}</td></tr>"
        )
    rows.append("</table>")
    return (
        "<h3>Per-layer SQNR</h3>\n"
        '<p class="note">Bars: each layer quantized alone with float inputs; dots: everything up '
        "to it quantized. Graph order, the worst layers in red (hover for names).</p>\n"
        + chart
        + "\n<h3>Worst layers</h3>\n"
        + "\n".join(rows)
    )


def _histogram_section(histograms: list[Histogram]) -> str:
    charts = []
    for h in histograms:
        markers = [
            svg.Marker(h.chosen[0], f"min {h.chosen[0]:.4g}", svg.RED),
            svg.Marker(h.chosen[1], f"max {h.chosen[1]:.4g}", svg.RED),
            svg.Marker(h.grid[0], "grid", svg.GREY, "4 3"),
            svg.Marker(h.grid[1], "grid", svg.GREY, "4 3"),
        ]
        charts.append(svg.histogram_chart(h.edges, h.counts, markers, h.tensor))
    return (
        "<h3>Activation histograms of the worst layers</h3>\n"
        '<p class="note">Calibration histograms (log scale); red: the range chosen by the range '
        "policy (ranges.yaml); dashed grey: what the quantization grid represents.</p>\n"
        f'<div class="hists">{"".join(charts)}</div>'
    )


_BITS_COLORS = {
    (8, 8): svg.BLUE,
    (8, None): svg.BLUE,
    (16, 8): svg.ORANGE,
    (16, None): svg.ORANGE,
    (8, 16): "#b279a2",
    (16, 16): svg.RED,
}
_BITS_LEGEND = (
    (svg.BLUE, "8-bit"),
    (svg.ORANGE, "16-bit output"),
    ("#b279a2", "16-bit weights"),
    (svg.RED, "16-bit output and weights"),
)


def _precision_section(precision: dict) -> str:
    cells = []
    for r in precision["layers"]:
        key = (r["output_bits"], r.get("weight_bits"))
        title = (
            f"{r['layer']} ({r['op']}): output {r['output_bits']}-bit"
            + (f", weights {r['weight_bits']}-bit" if r.get("weight_bits") else "")
            + f" — {r['why']}"
        )
        cells.append((title, _BITS_COLORS.get(key, svg.GREY)))
    legend = "".join(
        f'<span style="background:{color}"></span>{escape(label)}' for color, label in _BITS_LEGEND
    )
    return (
        "<h3>Precision map</h3>\n"
        f'<p class="note legend">{len(cells)} layers in graph order '
        f"({escape(precision_label(precision))} widened): {legend}</p>\n" + svg.strip_chart(cells)
    )


def _sweep_section(sweep: list[dict]) -> str:
    points = [
        (
            p["ratio"],
            10 * math.log10(1 / p["error"]) if p["error"] > 0 else 99.0,
            "8-bit" if p["factor"] == 1.0 else f"F {p['factor']:g}",
        )
        for p in sweep
    ]
    chart = svg.line_chart(points, "estimated T_MP / T_8", "output SQNR (dB)")
    return (
        "<h3>Automatic mixed precision: fidelity against latency</h3>\n"
        '<p class="note">Each point: the layers selected at that mixed_precision factor, the '
        "estimated latency and the output SQNR on the sensitivity frames (calibration data).</p>\n"
        + chart
    )


def _selection_section(selection: dict) -> str:
    points = sorted(selection["points"], key=lambda p: p["ratio"])
    chosen = selection["ratio"]
    chart = svg.line_chart(
        [
            (
                p["ratio"],
                p["metric"],
                ("chosen, " if p["ratio"] == chosen else "") + f"{p['layers']}",
            )
            for p in points
        ],
        "estimated T_MP / T_8",
        f"{selection['metric']} (evaluation data)",
    )
    verdict = "met" if selection["met"] else "not met: the best measured set is kept"
    return (
        "<h3>Mixed precision to an accuracy target</h3>\n"
        f'<p class="note">Each point: a set of 16-bit layers (labelled with its size), its '
        f"estimated latency and its {escape(selection['metric'])} on the evaluation data "
        f"(before bias calibration). Float {selection['float']:.4f}, max_drop "
        f"{selection['max_drop']:g}, target {selection['target']:.4f}: {verdict}.</p>\n" + chart
    )


def render(details: list[RecipeDetails]) -> str:
    """The report page (deterministic for the same details)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>quantbuild report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>quantbuild report</h1>",
        _table([d.row for d in details]),
        '<p class="note">SQNR and cosine compare each quantized output with the float model on '
        "the evaluation set (the lowest over outputs is shown); top-1 needs labels.</p>",
    ]
    for d in sorted(details, key=lambda d: d.row.recipe):
        parts.append(f'<h2 id="{escape(d.row.recipe)}">{escape(d.row.recipe)}</h2>')
        if d.layers:
            parts.append(_sqnr_section(d.layers))
        if d.histograms:
            parts.append(_histogram_section(d.histograms))
        if d.row.precision:
            parts.append(_precision_section(d.row.precision))
        if d.sweep:
            parts.append(_sweep_section(d.sweep))
        if d.selection:
            parts.append(_selection_section(d.selection))
        if not (d.layers or d.histograms or d.row.precision):
            parts.append('<p class="note">Not evaluated.</p>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
