"""What quantbuild's histograms cost: statistics time and peak memory, min/max-only vs histograms.

    python benchmarks/stats_cost.py [--frames 64,512] [--models orientation,detection] [--work DIR]

For each model and frame count, quantbuild's statistics pass (`collect_statistics`, the stats
stage's own function, on the prepared model) runs twice in separate measured processes: with
histograms (what the stats stage stores) and with min/max only. Reported: the pass's own time,
the process's wall time and peak RSS. Memory must not grow with the number of frames.
Writes benchmarks/results/stats_cost.json and stats_cost.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import data as datasets
from common import HERE, MODELS, ensure_model_packages, write_json

RESULTS = HERE / "results"
EVAL_IMAGES = {"orientation": 600, "detection": 100}  # the data folders run.py renders


def measure_once(model: str, calib: Path, frames: int, histograms: bool) -> dict:
    """In this process: prepare the model, collect statistics, print the pass's time as JSON."""
    import onnx
    from quantbuild.calib.collect import collect_statistics
    from quantbuild.data.dataset import open_dataset
    from quantbuild.graph.prepare import prepare_model

    prepared, _ = prepare_model(onnx.load(str(MODELS[model].path)))
    section = {"images": str(calib), "limit": frames, "seed": 0}
    dataset = open_dataset(section, MODELS[model].preprocess, "calibration.data", str(calib))
    start = time.perf_counter()
    stats = collect_statistics(prepared, dataset, histograms=histograms)
    seconds = time.perf_counter() - start
    return {"frames": int(stats["frames"]), "tensors": len(stats["names"]), "pass_s": seconds}


def measured(model: str, calib: Path, frames: int, histograms: bool, logs: Path) -> dict:
    """measure_once in its own process under measure.py (wall time, peak RSS)."""
    name = f"{model}-{frames}-{'hist' if histograms else 'minmax'}"
    out, log = logs / f"{name}.json", logs / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", model, str(calib)]
    command += [str(frames), "1" if histograms else "0"]
    wrapper = [sys.executable, str(HERE / "measure.py"), "--out", str(out), "--log", str(log)]
    subprocess.run(wrapper + ["--", *command], check=True)
    run = json.loads(out.read_text(encoding="utf-8"))
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if '"pass_s"' in ln]
    if run["returncode"] != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {run['returncode']}); see {log}")
    child = json.loads(lines[-1].split("]", 1)[1])
    result = {"wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], **child}
    print(f"  {name}: pass {child['pass_s']:.1f} s, {run['peak_rss_mb']:.0f} MB")
    return result


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | frames | tensors | min/max pass (s) | histogram pass (s) | ratio | "
        "min/max peak RSS (MB) | histogram peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mm, hi = r["minmax"], r["histograms"]
        lines.append(
            f"| {r['model']} | {r['frames']} | {hi['tensors']} | {mm['pass_s']:.1f} | "
            f"{hi['pass_s']:.1f} | {hi['pass_s'] / mm['pass_s']:.2f} | {mm['peak_rss_mb']:.0f} | "
            f"{hi['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        model, calib, frames, histograms = sys.argv[2:6]
        result = measure_once(model, Path(calib), int(frames), histograms == "1")
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="64,512")
    parser.add_argument("--models", default="orientation,detection")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    ensure_model_packages()
    work, logs = args.work.resolve(), args.work.resolve() / "stats-cost-logs"
    rows = []
    for model in args.models.split(","):
        for frames in (int(f) for f in args.frames.split(",")):
            root = datasets.prepare(work, model, EVAL_IMAGES[model], frames)
            calib = root / f"calib_{frames}"
            row = {"model": model, "frames": frames}
            row["minmax"] = measured(model, calib, frames, False, logs)
            row["histograms"] = measured(model, calib, frames, True, logs)
            rows.append(row)
    write_json(args.results / "stats_cost.json", {"date": time.strftime("%Y-%m-%d"), "rows": rows})
    (args.results / "stats_cost.md").write_text(markdown(rows), encoding="utf-8")
    print(markdown(rows))


if __name__ == "__main__":
    main()
