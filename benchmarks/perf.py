"""How close quantbuild runs to the physical limit: each figure a ratio against the float
model's own inference over the same frames, measured side by side in one run.

    python benchmarks/perf.py [--frames 64] [--rounds 3] [--only stats,noop,parallel,layers,stages]

Rows (issue 16's table; goals in GOALS):
- stats: the statistics pass (`collect_statistics` on the prepared model, what the stats stage
  runs) ÷ a float inference pass (onnxruntime's default optimization, outputs only) over the
  same frames, both including image decoding; peak memory of each in its own process.
  Rounds are interleaved (float, stats, float, stats, ...) so that drift on a shared machine
  hits both; the ratio is of medians (and of minimums).
- noop: a no-op `quantbuild build`, and plain `doit`, of a 20-recipe project (the bundled
  example with 20 quantization variants), median of five runs each.
- parallel: a cold build of that project with plain `doit` and with `doit -n 2`.
- stages: bias calibration (quantize rebuilt with and without it) and the sensitivity stage
  (`factor: 1.2`) of the detection model, each rebuilt alone, ÷ a float pass over its frames.
- layers: evaluate's per-layer analysis (layer-wise and accumulated error sums of every
  quantized tensor) of the detection model over the analysed frames ÷ a float pass over them,
  and its peak memory ÷ the float pass's.
Writes results/perf.json and results/perf.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import data as datasets
from common import HERE, MODELS, ensure_model_packages, write_json

RESULTS = HERE / "results"
EXAMPLE = HERE.parent / "examples" / "digits"
EVAL_IMAGES = {"orientation": 600, "detection": 100}
ORDER = ["stats", "noop", "parallel", "layers", "stages"]
GOALS = {"stats_time": 1.3, "stats_memory": 1.5, "noop_s": 0.5}


# -- children: one measurement each, in a fresh process ------------------------------------------


def _child(kind: str, args: list[str]) -> dict:
    import onnx
    from quantbuild.data.dataset import open_dataset
    from quantbuild.graph.onnx_utils import graph_inputs
    from quantbuild.graph.prepare import prepare_model

    model_name, folder, frames = args[0], Path(args[1]), int(args[2])
    spec = MODELS[model_name]
    section = {"images": str(folder), "limit": frames, "seed": 0}
    dataset = open_dataset(section, spec.preprocess, "data", str(folder))
    if kind in ("float", "stats", "stats-minmax"):
        model, _ = prepare_model(onnx.load(str(spec.path)))
    else:  # the float and QDQ models of a quantbuild build (layers, float-layers)
        model = onnx.load(str(Path(args[3]) / "model.float.onnx"))
    start = time.perf_counter()
    if kind in ("float", "float-layers"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        runner = ort.InferenceSession(model.SerializeToString(), options)
        inputs = graph_inputs(model)
        for frame in dataset.frames:
            runner.run(None, dataset.load(frame, inputs))
    elif kind in ("stats", "stats-minmax"):
        from quantbuild.calib.collect import collect_statistics

        collect_statistics(model, dataset, histograms=kind == "stats")
    elif kind == "metrics":  # what evaluate runs on every frame anyway: float and QDQ models
        from quantbuild.runtime import session

        qdq = onnx.load(str(Path(args[3]) / "model.qdq.onnx"))
        inputs = graph_inputs(model)
        sessions = [session(model), session(qdq)]
        for frame in dataset.frames:
            feed = dataset.load(frame, inputs)
            for runner in sessions:
                runner.run(None, feed)
    elif kind == "layers":
        from quantbuild.evaluate import layerwise
        from quantbuild.stages.evaluate import layer_errors

        qdq = onnx.load(str(Path(args[3]) / "model.qdq.onnx"))
        layer_errors(layerwise.build(model, qdq), qdq, dataset, graph_inputs(model))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "frames": len(dataset.frames)}


def child(kind: str, *args: str) -> dict:
    """Run one measurement in its own process (peak memory is the process's own)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def side_by_side(rounds: int, first: tuple, second: tuple) -> dict:
    """Interleaved rounds of two measurements; medians and minimums of time and memory."""
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for _ in range(rounds):
        runs["a"].append(child(*first))
        runs["b"].append(child(*second))
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    low = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    mem = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
    return {
        "float_s": med["a"],
        "tool_s": med["b"],
        "time_ratio": med["b"] / med["a"],
        "time_ratio_min": low["b"] / low["a"],
        "float_peak_mb": mem["a"],
        "tool_peak_mb": mem["b"],
        "memory_ratio": mem["b"] / mem["a"],
        "frames": runs["a"][0]["frames"],
    }


# -- rows ----------------------------------------------------------------------------------------


def stats_row(work: Path, model: str, frames: int, rounds: int) -> dict:
    root = datasets.prepare(work, model, EVAL_IMAGES[model], frames)
    calib = str(root / f"calib_{frames}")
    args = (model, calib, str(frames))
    row = side_by_side(rounds, ("float", *args), ("stats", *args))
    # the same pass without histograms: what counting every element costs
    row["minmax_s"] = statistics.median(
        child("stats-minmax", *args)["seconds"] for _ in range(rounds)
    )
    print(f"  stats {model}: {row['time_ratio']:.2f}x time, {row['memory_ratio']:.2f}x memory")
    return {"row": "stats", "model": model, **row}


VARIANTS = [
    {"activation_clipping": clip, "weights": {"per_channel": per_channel}, "bits": bits}
    for clip in ("minmax", "percentile", "mse", "entropy", "percentile")
    for per_channel in (True, False)
    for bits in (8, 16)
][:20]


def noop_row(work: Path) -> dict:
    """A 20-recipe project on the example's model and data: built once, then timed no-op."""
    root = work / "perf-noop"
    if not (root / "doit.cfg").exists():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("build", ".quantbuild"))
        for path in root.glob("*.yaml"):
            path.unlink()
        for i, variant in enumerate(VARIANTS):
            extra = {**variant, "percentile": 99.9 + 0.001 * i}  # 20 distinct recipes
            (root / f"v{i:02d}.yaml").write_text(
                "version: 1\nextends: [devices/am68a, bases/digits.yaml]\n"
                f"quantization: {json.dumps(extra)}\n",
                encoding="utf-8",
            )
    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    quantbuild = [sys.executable, "-m", "quantbuild", "build"]
    subprocess.run(quantbuild, cwd=root, env=env, check=True, capture_output=True)
    times: dict[str, list[float]] = {"quantbuild": [], "doit": []}
    for _ in range(5):
        for name, command in (("quantbuild", quantbuild), ("doit", [sys.executable, "-m", "doit"])):
            start = time.perf_counter()
            done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            ran = [ln for ln in done.stdout.splitlines() if ln.startswith(".  ")]
            if done.returncode != 0 or ran:
                raise SystemExit(f"no-op {name} ran {ran or done.stderr[-500:]}")
    row = {k: statistics.median(v) for k, v in times.items()}
    print(f"  no-op, 20 recipes: quantbuild {row['quantbuild']:.2f} s, doit {row['doit']:.2f} s")
    return {
        "row": "noop",
        "recipes": len(VARIANTS),
        "quantbuild_s": row["quantbuild"],
        "doit_s": row["doit"],
    }


def parallel_row(work: Path) -> dict:
    """A cold build of the 20-recipe project: plain `doit` vs `doit -n 2` (fresh store each),
    wall and CPU time; the store's leases keep the two workers from computing an entry twice."""
    root = work / "perf-noop"
    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    row: dict = {"row": "parallel", "recipes": len(VARIANTS)}
    for name, extra in (("serial", []), ("n2", ["-n", "2"])):
        for folder in (".quantbuild", "build"):
            shutil.rmtree(root / folder, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "doit", *extra],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row[f"{name}_s"] = time.perf_counter() - start
        row[f"{name}_cpu_s"] = (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime
        )
    for folder in (".quantbuild", "build"):  # one recipe alone: what every other one adds
        shutil.rmtree(root / folder, ignore_errors=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "quantbuild", "build", "v00"]
    subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    row["one_recipe_s"] = time.perf_counter() - start
    row["per_extra_recipe_s"] = (row["serial_s"] - row["one_recipe_s"]) / (len(VARIANTS) - 1)
    row["speedup"] = row["serial_s"] / row["n2_s"]
    row["serial_cores"] = row["serial_cpu_s"] / row["serial_s"]  # onnxruntime's own threads
    print(
        f"  doit -n 2, 20 recipes: {row['speedup']:.2f}x faster, CPU {row['n2_cpu_s'] / row['serial_cpu_s']:.2f}x"
    )
    return row


def layers_row(work: Path, frames: int, rounds: int) -> dict:
    """Per-layer analysis of the detection model (AM68A, 8-bit) over `frames` frames."""
    model = "detection"
    root = datasets.prepare(work, model, EVAL_IMAGES[model], frames)
    project = work / "perf-layers"
    recipe = project / "am68a.yaml"
    if not recipe.exists():
        project.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "quantbuild", "init", "-C", str(project)], check=True)
        shutil.copy(MODELS[model].path, project / "model.onnx")
        recipe.write_text(
            "version: 1\nextends: [devices/am68a]\nmodel: model.onnx\n"
            f"calibration:\n  data: {json.dumps({'images': str(root / f'calib_{frames}')})}\n"
            f"  preprocess: {json.dumps(MODELS[model].preprocess)}\n",
            encoding="utf-8",
        )
    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    subprocess.run(
        [sys.executable, "-m", "quantbuild", "build", "-C", str(project)],
        env=env,
        check=True,
        capture_output=True,
    )
    built = str(project / "build" / "am68a")
    images = str(root / f"calib_{frames}")
    args = (model, images, str(frames), built)
    row = side_by_side(rounds, ("float-layers", *args), ("layers", *args))
    metrics = [child("metrics", *args)["seconds"] for _ in range(rounds)]
    row["metrics_s"] = statistics.median(metrics)
    # evaluate runs the float and QDQ models on these frames anyway: the analysis's own cost is
    # what it adds to that, counted in float passes
    row["extra_passes"] = (row["tool_s"] - row["metrics_s"]) / row["float_s"]
    print(
        f"  layers {model}: {row['time_ratio']:.2f}x a float pass, {row['extra_passes']:.2f} "
        f"extra passes, {row['memory_ratio']:.2f}x memory"
    )
    return {"row": "layers", "model": model, **row}


STAGE_RECIPES = {  # the stages row's project: detection, tda4vm, no evaluation
    "bias": {},
    "nobias": {"bias_calibration": False},
    "mp": {"mixed_precision": {"factor": 1.2}},
}


def _rebuild(project: Path, recipe: str, stage: str, env: dict, *extra: str) -> float:
    """Seconds to rebuild `recipe` with `stage`'s store entries removed (upstream entries hit;
    downstream ones hit too when the stage's artifacts come out the same)."""
    shutil.rmtree(project / ".quantbuild" / "store" / stage, ignore_errors=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "quantbuild", "build", "-C", str(project), recipe, *extra]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    ran = [ln.split()[-1].split(":")[0] for ln in done.stdout.splitlines() if ln.startswith(".  ")]
    if ran != [stage]:
        raise SystemExit(f"rebuilding {stage} of {recipe} ran {ran}")
    return seconds


def stages_project(work: Path, frames: int) -> tuple[Path, Path]:
    """The detection model's project of STAGE_RECIPES over `frames` calibration frames, and the
    folder of those frames."""
    model = "detection"
    root = datasets.prepare(work, model, EVAL_IMAGES[model], frames)
    images = str(root / f"calib_{frames}")
    project = work / "perf-stages"
    if not (project / "doit.cfg").exists():
        project.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "quantbuild", "init", "-C", str(project)], check=True)
        shutil.copy(MODELS[model].path, project / "model.onnx")
        for name, quantization in STAGE_RECIPES.items():
            (project / f"{name}.yaml").write_text(
                "version: 1\nextends: [devices/tda4vm]\nmodel: model.onnx\n"
                f"calibration:\n  data: {json.dumps({'images': images, 'limit': frames, 'seed': 0})}\n"
                f"  preprocess: {json.dumps(MODELS[model].preprocess)}\n"
                f"quantization: {json.dumps(quantization)}\n",
                encoding="utf-8",
            )
    return project, Path(images)


def stages_row(work: Path, frames: int, rounds: int) -> dict:
    """Bias calibration and the sensitivity stage on the detection model (TDA4VM preset,
    `frames` calibration frames): each stage rebuilt alone, ÷ a float pass over its frames."""
    model = "detection"
    project, folder = stages_project(work, frames)
    images = str(folder)
    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    build = [sys.executable, "-m", "quantbuild", "build", "-C", str(project)]
    subprocess.run(build, env=env, check=True, capture_output=True)
    start = time.perf_counter()
    subprocess.run(build + ["bias"], env=env, check=True, capture_output=True)
    noop = time.perf_counter() - start
    from quantbuild.calib.bias_runner import CHECK_FRAMES
    from quantbuild.stages.sensitivity import FRAMES

    row: dict = {"row": "stages", "model": model, "frames": frames, "noop_s": noop}
    sensitivity = [_rebuild(project, "mp", "sensitivity", env) - noop for _ in range(rounds)]
    with_bias, without = [], []
    for _ in range(rounds):
        with_bias.append(_rebuild(project, "bias", "quantize", env))
        without.append(_rebuild(project, "nobias", "quantize", env))
    # (the quantize rebuilds remove every recipe's quantize entry: the next run's first build
    # restores them)
    row["sensitivity_s"] = statistics.median(sensitivity)
    row["quantize_s"] = statistics.median(with_bias)
    row["bias_s"] = row["quantize_s"] - statistics.median(without)
    row["float_s"] = statistics.median(
        child("float", model, images, str(frames))["seconds"] for _ in range(rounds)
    )
    row["float_frame_s"] = row["float_s"] / frames
    # bias calibration's frames: the fitted ones and the held-out check's (they overlap)
    fitted = min(50, frames)
    row["bias_frames"] = len(set(range(fitted)) | set(range(max(frames - CHECK_FRAMES, 0), frames)))
    row["bias_passes"] = row["bias_s"] / (row["float_frame_s"] * row["bias_frames"])
    row["sensitivity_passes"] = row["sensitivity_s"] / (row["float_frame_s"] * FRAMES)
    print(
        f"  stages {model}: bias calibration {row['bias_s']:.1f} s = {row['bias_passes']:.1f} "
        f"float passes; sensitivity {row['sensitivity_s']:.1f} s"
    )
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| measure | float | quantbuild | ratio (median; min) | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["row"] == "stats":
            lines.append(
                f"| statistics pass, {r['model']}, {r['frames']} frames | {r['float_s']:.2f} s | "
                f"{r['tool_s']:.2f} s | {r['time_ratio']:.2f}× ; {r['time_ratio_min']:.2f}× | "
                f"≤ {GOALS['stats_time']}× |"
            )
            lines.append(
                f"| … of which histograms (pass without them: {r['minmax_s']:.2f} s) | – | "
                f"{r['tool_s'] - r['minmax_s']:.2f} s | "
                f"{(r['tool_s'] - r['minmax_s']) / r['float_s']:.2f}× | – |"
            )
            lines.append(
                f"| statistics peak memory, {r['model']} | {r['float_peak_mb']:.0f} MB | "
                f"{r['tool_peak_mb']:.0f} MB | {r['memory_ratio']:.2f}× | ≤ {GOALS['stats_memory']}× |"
            )
        elif r["row"] == "noop":
            lines.append(
                f"| no-op build, {r['recipes']} recipes: `quantbuild build` / `doit` | – | "
                f"{r['quantbuild_s']:.2f} s / {r['doit_s']:.2f} s | – | < {GOALS['noop_s']} s |"
            )
        elif r["row"] == "parallel":
            lines.append(
                f"| cold build, {r['recipes']} recipes: `doit` / `doit -n 2` | – | "
                f"{r['serial_s']:.1f} s / {r['n2_s']:.1f} s (CPU {r['serial_cpu_s']:.1f} / "
                f"{r['n2_cpu_s']:.1f} s) | {r['speedup']:.2f}× faster; serial already uses "
                f"{r['serial_cores']:.2f} of 2 cores | ≥ 1.7×, no duplicate work |"
            )
            lines.append(
                f"| first build of each extra recipe sharing the model and data | – | "
                f"{r['per_extra_recipe_s']:.2f} s (one recipe alone {r['one_recipe_s']:.1f} s) | – | "
                "≤ 0.5 s |"
            )
        elif r["row"] == "layers":
            lines.append(
                f"| per-layer analysis, {r['model']}, {r['frames']} frames | {r['float_s']:.2f} s | "
                f"{r['tool_s']:.2f} s | {r['time_ratio']:.2f}× ; {r['time_ratio_min']:.2f}× | – |"
            )
            lines.append(
                f"| its cost beyond the float + QDQ passes evaluate makes anyway "
                f"({r['metrics_s']:.2f} s) | – | – | {r['extra_passes']:.2f} float passes | "
                "≤ 1 extra pass |"
            )
            lines.append(
                f"| per-layer analysis peak memory | {r['float_peak_mb']:.0f} MB | "
                f"{r['tool_peak_mb']:.0f} MB | {r['memory_ratio']:.2f}× | ≤ 1.5× |"
            )
        elif r["row"] == "stages":
            lines.append(
                f"| bias calibration, {r['model']} (TDA4VM: 50 frames fitted in 50 iterations, "
                f"checked on the last 32; {r['bias_frames']} frames in all) | "
                f"{r['float_frame_s'] * r['bias_frames']:.2f} s | {r['bias_s']:.1f} s | "
                f"{r['bias_passes']:.1f} float passes over its frames | ≤ 3 passes |"
            )
            lines.append(
                f"| sensitivity stage, {r['model']} (`factor: 1.2`, 8 frames) | "
                f"{r['float_frame_s'] * 8:.2f} s | {r['sensitivity_s']:.1f} s | "
                f"{r['sensitivity_passes']:.0f} float passes over its frames | ≥ 4× faster than "
                "before this issue |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child(sys.argv[2], sys.argv[3:])), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--layer-frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(ORDER))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    args = parser.parse_args()
    ensure_model_packages()
    only = set(args.only.split(","))
    rows = []
    if "stats" in only:
        rows += [
            stats_row(args.work, m, args.frames, args.rounds) for m in ("detection", "orientation")
        ]
    if "noop" in only:
        rows.append(noop_row(args.work))
    if "parallel" in only:
        rows.append(parallel_row(args.work))
    if "layers" in only:
        rows.append(layers_row(args.work, args.layer_frames, args.rounds))
    if "stages" in only:
        rows.append(stages_row(args.work, args.frames, args.rounds))
    # rows not measured this time are kept from the last run (each row is one run's ratios)
    kept = []
    if (RESULTS / "perf.json").exists():
        previous = json.loads((RESULTS / "perf.json").read_text(encoding="utf-8"))
        measured = {r["row"] for r in rows}
        kept = [
            {"date": previous["date"], **r} for r in previous["rows"] if r["row"] not in measured
        ]
    rows = [{"date": time.strftime("%Y-%m-%d"), **r} for r in rows]
    rows = sorted(kept + rows, key=lambda r: ORDER.index(r["row"]))
    write_json(RESULTS / "perf.json", {"date": time.strftime("%Y-%m-%d"), "rows": rows})
    (RESULTS / "perf.md").write_text(markdown(rows), encoding="utf-8")
    print(markdown(rows))


if __name__ == "__main__":
    main()
