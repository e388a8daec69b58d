"""Beyond one machine: the store on S3 and stages on Dask workers, against one process and a
local store, in one run.

    python benchmarks/scale.py [--rounds 3]

Rows (issue 17):
- noop: a no-op `quantbuild build` of the 20-recipe project (perf.py's) with the store on S3
  (SeaweedFS on 127.0.0.1, started here) vs the local store, median of `rounds`.
- checkout: a second checkout of that project built from the shared store (every stage a store
  hit, downloaded on S3; read from the shared folder locally).
- recipes: a cold build of the 20 recipes in one process vs on `--cluster local:2` (two worker
  processes, independent recipes at once; the store on S3 for both).
- stats: the statistics stage of the detection model over 512 calibration frames rebuilt alone,
  in one process vs sharded over `--cluster local:2` (the same stats.npz either way).
- eval: the evaluate stage of the detection model over 1000 evaluation frames rebuilt alone,
  in one process vs sharded over `--cluster local:2` (the same metrics and layer errors), with
  the float model's own inference over the same frames for scale.
- sensitivity: the sensitivity stage of the detection model (`factor: 1.2`, perf.py's project)
  rebuilt alone, in one process vs its candidates over `--cluster local:2`.
`--only eval,stats` measures those rows and keeps the others from results/scale.json.
Writes results/scale.json and results/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, write_json

sys.path.insert(0, str(HERE.parent / "tests"))
from s3server import make_bucket, s3_server  # noqa: E402  (the tests' real S3 server)

RESULTS = HERE / "results"


def _build(project: Path, env: dict, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "quantbuild", "build", *extra],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"build in {project} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _fresh(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    return target


def store_rows(work: Path, base: dict, rounds: int) -> dict:
    """No-op, second checkout and cold builds of the 20-recipe project, S3 vs local store, and
    on two local workers."""
    import perf

    perf.noop_row(work)  # makes (and builds) the 20-recipe project
    source = work / "perf-noop"
    root = work / "scale"
    rows: dict = {"recipes": len(perf.VARIANTS)}
    shutil.rmtree(root / "s3", ignore_errors=True)  # a fresh server: no entries from before
    with s3_server(root / "s3") as s3:
        make_bucket(s3, "scale")
        shared = root / "shared-store"
        shutil.rmtree(shared, ignore_errors=True)
        stores = {"local": str(shared), "s3": f"s3://scale/run-{time.time_ns()}"}
        for name, store in stores.items():
            env = {**base, **s3, "QUANTBUILD_CACHE": store}
            first = _fresh(source, root / f"{name}-first")
            rows[f"{name}_cold_s"] = _build(first, env)
            rows[f"{name}_noop_s"] = statistics.median(_build(first, env) for _ in range(rounds))
            checkouts = [
                _build(_fresh(source, root / f"{name}-second"), env) for _ in range(rounds)
            ]
            rows[f"{name}_checkout_s"] = statistics.median(checkouts)
            print(
                f"  {name}: cold {rows[f'{name}_cold_s']:.1f} s, no-op {rows[f'{name}_noop_s']:.2f} s, "
                f"second checkout {rows[f'{name}_checkout_s']:.1f} s"
            )
        env = {**base, **s3, "QUANTBUILD_CACHE": f"s3://scale/cluster-{time.time_ns()}"}
        rows["cluster_s"] = _build(_fresh(source, root / "cluster"), env, "--cluster", "local:2")
        print(f"  20 recipes on 2 local workers: {rows['cluster_s']:.1f} s")
    return rows


def _detection_project(
    project: Path, calib: Path, frames: int, evaluation: tuple[Path, int] | None = None
) -> Path:
    """A project of one TDA4VM recipe of the detection model (no bias calibration) over
    `frames` calibration images, and an evaluation set (folder, frames) if given; made once."""
    from common import MODELS

    if (project / "doit.cfg").exists():
        return project
    project.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "quantbuild", "init", "-C", str(project)], check=True)
    shutil.copy(MODELS["detection"].path, project / "model.onnx")
    preprocess = json.dumps(MODELS["detection"].preprocess)
    sections = [("calibration", calib, frames)] + (
        [("evaluation", *evaluation)] if evaluation else []
    )
    text = "version: 1\nextends: [devices/tda4vm]\nmodel: model.onnx\n"
    for section, folder, count in sections:
        data = {"images": str(folder), "limit": count, "seed": 0}
        text += f"{section}:\n  data: {json.dumps(data)}\n  preprocess: {preprocess}\n"
    (project / "tda4vm.yaml").write_text(
        text + "quantization: {bias_calibration: false}\n", encoding="utf-8"
    )
    return project


def stats_rows(work: Path, base: dict, frames: int = 512) -> dict:
    """The detection model's statistics stage over `frames` frames, rebuilt alone: in one
    process, then sharded over two local workers (same artifact: nothing downstream re-runs)."""
    import data as datasets
    import perf

    images = datasets.prepare(work, "detection", perf.EVAL_IMAGES["detection"], frames)
    project = _detection_project(work / "scale-stats", images / f"calib_{frames}", frames)
    _build(project, base)
    one = perf._rebuild(project, "tda4vm", "stats", base)
    two = perf._rebuild(project, "tda4vm", "stats", base, "--cluster", "local:2")
    print(f"  stats, {frames} frames: one process {one:.1f} s, 2 workers {two:.1f} s")
    return {"stats_frames": frames, "stats_one_s": one, "stats_two_s": two}


def eval_rows(work: Path, base: dict, frames: int = 1000) -> dict:
    """The detection model's evaluate stage over `frames` frames, rebuilt alone: in one
    process, then sharded over two local workers; and the float model alone on those frames."""
    import data as datasets
    import perf

    images = datasets.prepare(work, "detection", frames, 64)
    project = _detection_project(
        work / "scale-eval", images / "calib_64", 64, (images / "eval", frames)
    )
    _build(project, base)
    float_s = perf.child("float", "detection", str(images / "eval"), str(frames))["seconds"]
    one = perf._rebuild(project, "tda4vm", "evaluate", base)
    two = perf._rebuild(project, "tda4vm", "evaluate", base, "--cluster", "local:2")
    print(
        f"  evaluate, {frames} frames: float model {float_s:.1f} s, one process {one:.1f} s, "
        f"2 workers {two:.1f} s"
    )
    return {"eval_frames": frames, "eval_float_s": float_s, "eval_one_s": one, "eval_two_s": two}


def sensitivity_rows(work: Path, base: dict) -> dict:
    """The detection model's sensitivity stage rebuilt alone (perf.py's `mp` recipe): in one
    process, then its candidates over two local workers (the same sensitivity.json: nothing
    downstream re-runs)."""
    import perf

    project, _ = perf.stages_project(work, 64)
    _build(project, base)  # restores entries perf.py's quantize rebuilds removed
    one = perf._rebuild(project, "mp", "sensitivity", base)
    two = perf._rebuild(project, "mp", "sensitivity", base, "--cluster", "local:2")
    print(f"  sensitivity: one process {one:.1f} s, 2 workers {two:.1f} s")
    return {"sensitivity_one_s": one, "sensitivity_two_s": two}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    rows_known = "store,stats,eval,sensitivity"
    parser.add_argument("--only", default=rows_known, help=f"rows: {rows_known}")
    args = parser.parse_args()
    only = set(args.only.split(","))

    base = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    base["QUANTBUILD_PROGRESS"] = "0"
    earlier = RESULTS / "scale.json"
    rows: dict = (
        json.loads(earlier.read_text()) if earlier.exists() else {}
    )  # kept unless re-measured
    if "store" in only:
        rows.update(store_rows(args.work, base, args.rounds))
    if "stats" in only:
        rows.update(stats_rows(args.work, base))
    if "eval" in only:
        rows.update(eval_rows(args.work, base))
    if "sensitivity" in only:
        rows.update(sensitivity_rows(args.work, base))
    rows["date"] = time.strftime("%Y-%m-%d")
    write_json(RESULTS / "scale.json", rows)
    table = (
        "| measure | local store | S3 store |\n|---|---:|---:|\n"
        f"| cold build, {rows['recipes']} recipes, one process | {rows['local_cold_s']:.1f} s | "
        f"{rows['s3_cold_s']:.1f} s |\n"
        f"| no-op build | {rows['local_noop_s']:.2f} s | {rows['s3_noop_s']:.2f} s |\n"
        f"| second checkout (every stage a store hit) | {rows['local_checkout_s']:.1f} s | "
        f"{rows['s3_checkout_s']:.1f} s |\n"
        f"| cold build on `--cluster local:2` | – | {rows['cluster_s']:.1f} s "
        f"({rows['s3_cold_s'] / rows['cluster_s']:.2f}× one process) |\n"
        f"| statistics, detection, {rows['stats_frames']} frames: one process / 2 workers | "
        f"{rows['stats_one_s']:.1f} s / {rows['stats_two_s']:.1f} s "
        f"({rows['stats_one_s'] / rows['stats_two_s']:.2f}×) | – |\n"
    )
    if "eval_frames" in rows:
        table += (
            f"| evaluation, detection, {rows['eval_frames']} frames: one process / 2 workers "
            f"(float model alone: {rows['eval_float_s']:.1f} s) | {rows['eval_one_s']:.1f} s / "
            f"{rows['eval_two_s']:.1f} s ({rows['eval_one_s'] / rows['eval_two_s']:.2f}×; "
            f"{rows['eval_one_s'] / rows['eval_float_s']:.2f}× / "
            f"{rows['eval_two_s'] / rows['eval_float_s']:.2f}× the float model) | – |\n"
        )
    if "sensitivity_one_s" in rows:
        table += (
            "| sensitivity stage, detection (`factor: 1.2`): one process / 2 workers | "
            f"{rows['sensitivity_one_s']:.1f} s / {rows['sensitivity_two_s']:.1f} s "
            f"({rows['sensitivity_one_s'] / rows['sensitivity_two_s']:.2f}×) | – |\n"
        )
    (RESULTS / "scale.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
