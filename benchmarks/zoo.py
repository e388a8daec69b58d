"""The whole zoo in one command: run.py per model and image set, then a scorecard.

    python benchmarks/zoo.py [--quick] [--models a,b] [--no-peers] [--sets tuning,heldout]
                             [--report-only] [any other run.py option, e.g. --no-nncf]

Each model and set is one run.py process (`--models <model> --set <set> --results
benchmarks/results/zoo/<set>/<model>`, its output in run.log there), so one failure does not
stop the others. Options zoo.py does not know are handed to every run.py (e.g. --no-nncf,
--frames 32, --work DIR). Then benchmarks/results/zoo/scorecard.md and scorecard.json: one row
per model and set with the float metric, the best quantbuild tda4vm row, the best peer
per-tensor row (any tool, any method), the best quantbuild am68a row, the best peer per-channel
row, the gaps (quantbuild minus peer), which configuration was best, and the peers that failed
with their one-line cause. --report-only rewrites the scorecard from the results on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, MODELS, ZOO, write_json

RESULTS = HERE / "results" / "zoo"
SETS = ("tuning", "heldout")
# What each model's metric and fidelity are (evaluate.py; run.py's METRIC_TEXT says more).
METRIC = {
    "orientation": ("top-1", "top-1 agreement with float"),
    "detection": ("text-box hmean", "prob-map IoU vs float"),
    "resnet": ("top-1 agreement with float", "top-1 agreement with float"),
    "saliency": ("Pearson vs float", "Pearson vs float"),
    "recognition": ("character accuracy", "exact-string agreement with float"),
    "yolox": ("box F1 vs ground truth", "box F1 vs float"),
    "minilm": ("embedding cosine vs float", "embedding cosine vs float"),
}
# Rows are ranked by fidelity (closeness to the float model: the labelled metrics are noisy on
# small sets and a quantized model can beat float by chance), then metric (--rank metric: the
# other way round); None ranks last, and of equal rows the first in run.py's order wins (its
# defaults before its rebuild rows).
RANK_KEYS = {"fidelity": ("fidelity", "metric"), "metric": ("metric", "fidelity")}
QUANTBUILD = {"tda4vm": "quantbuild tda4vm", "am68a": "quantbuild am68a"}


# -- running ------------------------------------------------------------------------------------
def run_one(model: str, data_set: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """One run.py process; its output goes to <results>/<set>/<model>/run.log."""
    folder = args.results / data_set / model
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / "run.py"), "--models", model, "--set", data_set]
    command += ["--results", str(folder)]
    command += ["--quick"] if args.quick else []
    command += ["--no-peers"] if args.no_peers else []
    command += extra
    print(f"zoo: {model} / {data_set}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with (folder / "run.log").open("w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = round(time.perf_counter() - started, 1)
    print(f"zoo: {model} / {data_set}: exit {done.returncode} in {seconds} s", flush=True)
    return {"command": command, "returncode": done.returncode, "seconds": seconds}


# -- the scorecard ------------------------------------------------------------------------------
def granularity(entry: dict) -> str | None:
    """'per-tensor' or 'per-channel' from a peer row's config string, else None."""
    config = entry.get("config", "")
    for kind in ("per-tensor", "per-channel"):
        if kind in config:
            return kind
    return None


def best(rows: list[dict], keys: tuple[str, ...]) -> dict | None:
    """The best ok row by keys (max keeps the first of equal rows)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("metric") is not None]
    rank = lambda r: tuple((r.get(k) is not None, r.get(k) or 0.0) for k in keys)  # noqa: E731
    return max(ok, key=rank) if ok else None


def cell(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    keep = ("tool", "config", "metric", "fidelity", "cosine", "activation_quantizers")
    found = {k: entry.get(k) for k in keep}
    found["float_layers"] = len(entry.get("float_layers") or [])
    return found


def gap(ours: dict | None, peer: dict | None, key: str) -> float | None:
    if not ours or not peer or ours.get(key) is None or peer.get(key) is None:
        return None
    return round(ours[key] - peer[key], 6)


def score(
    model: str, data_set: str, results: dict | None, run: dict | None, keys: tuple[str, ...]
) -> dict:
    """One scorecard row from one run.py results.json (None when the run left none)."""
    entry: dict = {"model": model, "set": data_set, "metric_name": METRIC[model][0]}
    entry["fidelity_name"] = METRIC[model][1]
    if run is not None:
        entry["run"] = {k: run[k] for k in ("returncode", "seconds")}
    if results is None:
        entry["status"] = f"no results.json (run.py exit {run['returncode'] if run else '?'})"
        return entry
    rows = [r for r in results["rows"] if r["model"] == model]
    floats = [r for r in rows if r["tool"] == "float"]
    entry["float"] = cell(floats[0]) if floats else None
    entry["quick"] = results["meta"].get("quick")
    entry["frames"] = results["meta"].get("frames")
    entry["run_s"] = results["meta"].get("total_s")
    entry["eval_images"] = results["meta"].get("eval_images", {}).get(model)
    ours = [r for r in rows if r["tool"] == "quantbuild"]
    peers = [r for r in rows if r["tool"] not in ("float", "quantbuild")]
    for recipe in QUANTBUILD:
        # The recipe as it ships (its cold build), never a rebuild with another setting: a
        # setting that wins on one set and loses on the other is not a default.
        entry[f"quantbuild_{recipe}"] = cell(
            best([r for r in ours if r["config"] == f"{recipe} (defaults)"], keys)
        )
    entry["peer_per_tensor"] = cell(
        best([r for r in peers if granularity(r) == "per-tensor"], keys)
    )
    entry["peer_per_channel"] = cell(
        best([r for r in peers if granularity(r) == "per-channel"], keys)
    )
    other = best([r for r in peers if granularity(r) is None], keys)
    entry["peer_other"] = cell(other)  # a peer whose config names no granularity
    entry["gaps"] = {
        f"{side}_{key}": gap(entry[f"quantbuild_{recipe}"], entry[f"peer_{side}"], key)
        for side, recipe in (("per_tensor", "tda4vm"), ("per_channel", "am68a"))
        for key in ("metric", "fidelity")
    }
    entry["failed"] = [
        f"{r['tool']} {r['config']}: {r['status'].splitlines()[0][:160]}"
        for r in rows
        if r.get("status") != "ok"
    ]
    entry["status"] = "ok" if floats else "no float row"
    return entry


def load(folder: Path) -> dict | None:
    file = folder / "results.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def pair(entry: dict | None, name: bool = False) -> str:
    """'metric / fidelity' of a cell, with its tool and config when asked."""
    if entry is None:
        return "–"
    text = f"{fmt(entry['metric'])} / {fmt(entry['fidelity'])}"
    if name:
        text += f" ({entry['tool']} {entry['config']})"
    elif "(" in entry["config"] and "defaults" not in entry["config"]:
        text += f" ({entry['config'].split(' ', 1)[1].strip('()')})"
    return text


def markdown(card: dict) -> str:
    meta = card["meta"]
    quick = [r.get("quick") for r in card["rows"]]
    title = (
        " (QUICK smoke runs)" if all(quick) else " (some QUICK smoke runs)" if any(quick) else ""
    )
    lines = [
        f"# Zoo scorecard{title}",
        "",
        f"{meta['date']}; {len(card['rows'])} runs (model × set) of run.py, "
        f"{meta['run_s']:.0f} s in all. Each cell: metric / fidelity of the best row of that "
        f"kind (ranked by {', then '.join(meta['ranked_by'])}). Peers: every tool but quantbuild "
        "(onnxruntime, NNCF, ModelOpt, …), any method, classified per-tensor or per-channel by "
        "their config string. Gaps: quantbuild minus the peer (positive: quantbuild ahead), "
        "tda4vm vs per-tensor peers and am68a vs per-channel peers."
        + (" Sets marked (quick): run.py --quick smoke runs." if any(quick) else ""),
        "",
        "| model | set | float | quantbuild tda4vm | best peer per-tensor | gap metric / "
        "fidelity | quantbuild am68a | best peer per-channel | gap metric / fidelity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in card["rows"]:
        data_set = f"{r['set']} (quick)" if r.get("quick") else r["set"]
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {data_set} | {r.get('status')} |  |  |  |  |  |  |")
            continue
        g = r["gaps"]
        lines.append(
            f"| {r['model']} | {data_set} | {fmt((r['float'] or {}).get('metric'))} | "
            f"{pair(r['quantbuild_tda4vm'])} | {pair(r['peer_per_tensor'], True)} | "
            f"{fmt(g['per_tensor_metric'], sign=True)} / {fmt(g['per_tensor_fidelity'], sign=True)} | "
            f"{pair(r['quantbuild_am68a'])} | {pair(r['peer_per_channel'], True)} | "
            f"{fmt(g['per_channel_metric'], sign=True)} / "
            f"{fmt(g['per_channel_fidelity'], sign=True)} |"
        )
    lines += ["", "Metrics (metric; fidelity):", ""]
    for model in dict.fromkeys(r["model"] for r in card["rows"]):
        lines.append(f"- {model}: {METRIC[model][0]}; {METRIC[model][1]}.")
    notes = []
    for r in card["rows"]:
        if r.get("peer_other"):
            notes.append(
                f"- {r['model']} / {r['set']}: best peer row naming no granularity: "
                f"{pair(r['peer_other'], True)}."
            )
        for failed in r.get("failed", []):
            notes.append(f"- {r['model']} / {r['set']}: failed: {failed}")
        run = r.get("run")
        if run and run["returncode"] != 0:
            notes.append(f"- {r['model']} / {r['set']}: run.py exit {run['returncode']}.")
    if notes:
        lines += ["", "Failed or unclassified rows:", "", *notes]
    lines += ["", f"Results of each run: `{meta['results']}/<set>/<model>/results.{{json,md}}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run.py --quick (smoke runs)")
    parser.add_argument("--models", default=",".join(ZOO), help="default: %(default)s")
    parser.add_argument("--sets", default=",".join(SETS), help="default: %(default)s")
    parser.add_argument("--no-peers", action="store_true", help="quantbuild only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument(
        "--rank", choices=sorted(RANK_KEYS), default="fidelity", help="best row by (%(default)s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the scorecard from results on disk"
    )
    args, extra = parser.parse_known_args()
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(args.sets.split(",")) - set(SETS))
    if unknown:
        parser.error(f"unknown models or sets {unknown}; models: {', '.join(ZOO)}")
    args.results = args.results.resolve()
    started = time.perf_counter()
    runs: dict[tuple[str, str], dict] = {}
    if not args.report_only:
        for data_set in args.sets.split(","):
            for model in models:
                runs[model, data_set] = run_one(model, data_set, args, extra)
    rows = []
    for model in models:
        for data_set in args.sets.split(","):
            results = load(args.results / data_set / model)
            run = runs.get((model, data_set))
            rows.append(score(model, data_set, results, run, RANK_KEYS[args.rank]))
    card = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "quick": any(r.get("quick") for r in rows),
            "seconds": round(time.perf_counter() - started, 1),
            "run_s": round(sum(r.get("run_s") or 0.0 for r in rows), 1),
            "results": str(args.results),
            "run_options": extra,
            "ranked_by": list(RANK_KEYS[args.rank]),
        },
        "rows": rows,
    }
    write_json(args.results / "scorecard.json", card)
    (args.results / "scorecard.md").write_text(markdown(card), encoding="utf-8")
    print(markdown(card))
    print(f"wrote {args.results / 'scorecard.md'} and scorecard.json")
    if any(r.get("status") != "ok" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
