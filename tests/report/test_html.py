"""The HTML report: chart geometry, histogram rebinning, the page as a whole, and the doit
report task that writes it beside report.md."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from builders import device_recipes, make_project
from cli_runner import run_cli, run_doit

from quantbuild.calib.histogram import BINS, accumulate
from quantbuild.interop.ranges_file import TensorRange
from quantbuild.quant.params import QParams
from quantbuild.report import html, svg
from quantbuild.report.markdown import Row
from quantbuild.report.markdown import render as render_markdown

Q8 = {
    "bits": 8,
    "activations": "symmetric",
    "scale": "power_of_2",
    "weights": {"per_channel": False},
}


def _rects(markup: str, titled: bool = False) -> list[dict[str, str]]:
    """Attributes of the <rect> elements (only those with a tooltip when `titled`)."""
    found = re.findall(r"<rect ([^>]*)>(<title>)?", markup)
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', a)) for a, t in found if t or not titled]


def test_bar_heights_are_proportional_and_highlighted_bars_are_red():
    chart = svg.bar_chart(
        ["a", "b", "c", "d"], [10.0, 20.0, None, 5.0], highlight=[False, True, False, True]
    )
    bars = [r for r in _rects(chart, titled=True) if r["fill"] in (svg.BLUE, svg.RED)]
    heights = [float(r["height"]) for r in bars]
    assert heights[1] == pytest.approx(2 * heights[0], abs=0.02)
    assert heights[2] == pytest.approx(heights[0] / 2, abs=0.02)
    assert [r["fill"] for r in bars] == [svg.BLUE, svg.RED, svg.RED]
    assert "c: no value error" in chart  # None: a grey stub with its own tooltip


def test_nice_ticks_cover_the_range_with_round_steps():
    assert svg.nice_ticks(0, 42) == [0, 10, 20, 30, 40]
    assert svg.nice_ticks(-3.2, 7.9) == [-2.5, 0, 2.5, 5, 7.5]


def _stats(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    hist = np.zeros((len(values), BINS), np.int64)
    for i, v in enumerate(values.values()):
        accumulate(hist[i], v.astype(np.float32))
    return {
        "names": np.array(list(values)),
        "min": np.array([v.min() for v in values.values()], np.float64),
        "max": np.array([v.max() for v in values.values()], np.float64),
        "hist": hist,
    }


def _range(low: float, high: float, scale: float, zero: int = 0, dtype="int8") -> TensorRange:
    return TensorRange(low, high, QParams(np.float32(scale), np.array(zero, np.int8), dtype))


def test_histograms_keep_every_count_inside_the_shown_range():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(0, 1, 5000), 0)
    stats = _stats({"r1": relu, "other": rng.normal(0, 1, 10)})
    ranges = {"r1": _range(0.0, 2.5, 2.5 / 127), "other": _range(-1, 1, 1 / 127)}
    (h,) = html.display_histograms(stats, ranges, ["r1", "missing"])
    assert h.tensor == "r1"
    assert sum(h.counts) == 5000
    assert h.chosen == (0.0, 2.5)
    assert h.grid == pytest.approx((-128 * 2.5 / 127, 2.5))  # symmetric int8 grid
    assert h.edges[0] <= h.grid[0] and h.edges[-1] >= relu.max()
    # Nothing below zero was observed: the negative half of the grid is empty.
    edges = np.array(h.edges)
    assert sum(c for c, right in zip(h.counts, edges[1:]) if right < -0.05) == 0
    assert len(h.counts) == html.DISPLAY_BINS


class _Balance(HTMLParser):
    """Checks that every element is closed (void elements aside) and collects text."""

    VOID = {"meta", "br", "line", "circle", "rect", "img"}

    def __init__(self):
        super().__init__()
        self.stack, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (self.stack[-3:], tag)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _details() -> list[html.RecipeDetails]:
    metrics = {"frames": 6, "top1": {"float": 0.5, "quantized": 0.25}, "outputs": {}}
    metrics["outputs"]["logits"] = {"sqnr_db": 17.254, "cosine": 0.99}
    layers = [
        {
            "tensor": f"t<{i}>&",
            "node": f"n{i}",
            "op": "Conv",
            "index": i,
            "layerwise_sqnr_db": 40.0 - i,
            "accumulated_sqnr_db": 39.0 - 2 * i,
        }
        for i in range(12)
    ][::-1]  # worst first
    precision = {
        "bits": 8,
        "layers": [
            {"layer": "conv1", "op": "Conv", "output_bits": 16, "weight_bits": 8, "why": "listed"},
            {"layer": "conv2", "op": "Conv", "output_bits": 8, "weight_bits": 8, "why": "default"},
        ],
    }
    row = Row("tda4vm", "tda4vm", Q8, metrics, precision)
    hist = html.Histogram("t<11>&", [0.0, 1.0, 2.0], [3.0, 0.0], (0.0, 1.5), (0.0, 1.0), (-2, 2))
    return [html.RecipeDetails(row, layers, [hist]), html.RecipeDetails(Row("b", None, Q8, None))]


def test_page_is_balanced_self_contained_and_matches_the_markdown_numbers():
    details = _details()
    page = html.render(details)
    parser = _Balance()
    parser.feed(page)
    assert parser.stack == []
    assert "<script" not in page and "<link" not in page
    assert set(re.findall(r"https?://[^\"]+", page)) == {"http://www.w3.org/2000/svg"}
    text = "".join(parser.text)
    markdown = render_markdown([d.row for d in details])
    for cell in ("0.5000", "0.2500", "-0.2500", "17.25", "0.99000", "1/2"):
        assert cell in markdown and cell in text
    assert "t<11>&" in text and "t<11>&" not in page  # names are escaped
    # The worst layers table lists WORST_LISTED rows, worst first.
    table = page.split("<h3>Worst layers</h3>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + html.WORST_LISTED
    assert table.index("t&lt;11&gt;") < table.index("t&lt;10&gt;")
    # Per-layer chart: WORST_HIGHLIGHTED red bars, the worst ones.
    chart = page.split("<h3>Per-layer SQNR</h3>")[1].split("</svg>")[0]
    red = [r for r in _rects(chart, titled=True) if r["fill"] == svg.RED]
    assert len(red) == html.WORST_HIGHLIGHTED
    assert "t&lt;11&gt;&amp; (Conv): layer alone 29.00" in chart
    assert "output 16-bit, weights 8-bit" in page  # the precision map's tooltip
    assert html.render(details) == page  # deterministic


def test_report_task_writes_html_beside_markdown_and_keeps_it_current(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    recipes = device_recipes()
    root = make_project(tmp_path / "proj", recipes)
    built = run_cli("build", "-C", str(root))
    assert built.code == 0, built.stdout + built.stderr
    page = (root / "build" / "report.html").read_text()
    for recipe in recipes:
        assert f'<h2 id="{recipe}">' in page
    assert page.count("<h3>Activation histograms") == 2
    assert page.count("<h3>Precision map</h3>") == 2
    assert run_doit(root).ran == set()  # both files current
    (root / "build" / "report.html").write_text("stale")
    again = run_doit(root)
    assert again.ran == {"report"}
    assert (root / "build" / "report.html").read_text() == page


def test_mixed_precision_sweep_is_a_labelled_curve():
    sweep = [
        {"factor": 1.0, "ratio": 1.0, "error": 0.1, "layers": 0},
        {"factor": 1.2, "ratio": 1.19, "error": 0.01, "layers": 4},
    ]
    row = Row("r", None, Q8, None)
    page = html.render([html.RecipeDetails(row, None, [], sweep)])
    chart = page.split("fidelity against latency</h3>")[1].split("</svg>")[0]
    assert "8-bit: 1.000, 10.00" in chart and "F 1.2: 1.190, 20.00" in chart
    assert chart.count("<line") >= 2 and ">F 1.2</text>" in chart
