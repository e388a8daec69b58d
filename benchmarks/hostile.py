"""Hostile-input and fault audit: what a careless or hostile user can write, and what an unlucky
machine can do, each tried as a user would meet it (the `quantbuild` command in a subprocess on
a copy of the bundled example), then classified.

A bad input is *clean* when quantbuild exits with the documented code and prints exactly one
error line on stderr (naming the file, and file:line:col where a recipe field is at fault), or,
for inputs that build, the expected warning. It is a *traceback*, a *hang* (over 60 s) or
*unclear* otherwise. A fault is *survived* when quantbuild's own output stays clean and the next
build, with the fault gone, ends with every exported file identical to an undisturbed build.

    python benchmarks/hostile.py              # every case, two at a time; prints the tally
    python benchmarks/hostile.py -k ranges    # the cases whose name contains "ranges"
    python benchmarks/hostile.py --json results/hostile.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from quantbuild.store.keys import digest

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "digits"
TIMEOUT = 60.0  # seconds before a case counts as a hang
RECIPE = "version: 1\nextends: [devices/am68a, bases/digits.yaml]\n"
LOCATED = re.compile(r"\.ya?ml:\d+:\d+")
ERROR_LINE = re.compile(r"^(error|ERROR)\b")


@dataclass
class Outcome:
    code: int | None  # None: killed after TIMEOUT
    stdout: str
    stderr: str
    seconds: float

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ERROR_LINE.match(line)]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stdout + self.stderr


def quantbuild(
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    limit_bytes: int | None = None,
    timeout: float = TIMEOUT,
) -> Outcome:
    """`quantbuild ARGS` in `project`; `limit_bytes` caps every file it writes (RLIMIT_FSIZE:
    writes past it fail as they do on a full disk)."""

    def cap() -> None:
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quantbuild", *args],
            cwd=project,
            capture_output=True,
            text=True,
            errors="replace",
            env=_env(env),
            timeout=timeout,
            preexec_fn=cap,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        return Outcome(None, out, "", time.perf_counter() - start)
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def started(root: Path, *args: str) -> subprocess.Popen[str]:
    """`quantbuild ARGS` started in `root`, its output piped (for faults that need the process
    while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "quantbuild", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=_env(),
    )


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTBUILD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# -- bad inputs ----------------------------------------------------------------------------------


@dataclass
class BadInput:
    """A file or argument a user can get wrong: `setup` writes it into a copy of the example and
    returns the command's arguments."""

    name: str
    setup: Callable[[Path], list[str]]
    code: int  # the documented exit code (0: builds, with `needle` in a warning)
    needle: str  # in the error (or warning) line
    located: bool = False  # the line names file:line:col
    env: dict[str, str] = field(default_factory=dict)


def recipe(text: str, args: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    """A recipe `bad.yaml` = the example's am68a recipe plus `text`, then `build bad ARGS`."""

    def setup(root: Path) -> list[str]:
        (root / "bad.yaml").write_text(RECIPE + text, encoding="utf-8")
        return ["build", "bad", *args]

    return setup


def raw_recipe(data: bytes, name: bytes = b"bad.yaml") -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        with open(os.path.join(os.fsencode(root), name), "wb") as handle:
            handle.write(data)
        return ["build", "bad"]

    return setup


def with_file(
    path: str, data: bytes | Callable[[Path], None], text: str, args: tuple[str, ...] = ()
) -> Callable[[Path], list[str]]:
    """Write `data` at `path` (relative to the project), then the recipe `text` naming it."""

    def setup(root: Path) -> list[str]:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(target)
        else:
            target.write_bytes(data)
        return recipe(text, args)(root)

    return setup


def command(
    *args: str, config: str | None = None, files: dict[str, bytes] | None = None
) -> Callable[[Path], list[str]]:
    """Run `args`, with `files` written and doit.cfg's text edited ("old -> new") first."""

    def setup(root: Path) -> list[str]:
        for name, data in (files or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        if config is not None:
            cfg = root / "doit.cfg"
            old, new = config.split(" -> ")
            cfg.write_text(cfg.read_text().replace(old, new))
        return list(args)

    return setup


def images(count: int, make: Callable[[int], bytes]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"{i}.png").write_bytes(make(i))

    return write


def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    return write


def sparse(size: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)

    return write


def npy_objects(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def model(make: Callable[[], onnx.ModelProto]) -> Callable[[Path], None]:
    return lambda path: onnx.save(make(), path)


def two_input_model() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 16, 16])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")], "g", [a, b], [y]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def no_classifier_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1, 1, 1], [0.5, -0.25, 1.0])
    conv = helper.make_node("Conv", ["input", "w"], ["c"], name="conv")
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    graph = helper.make_graph([conv, relu], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


PNG = (EXAMPLE / "data" / "calib" / "0").glob("*.png")
A_PNG = next(iter(sorted(PNG))).read_bytes()
MODEL = (EXAMPLE / "models" / "digits_cnn.onnx").read_bytes()
CALIB = "calibration:\n  data: {images: %s}\n"
TENSORS = "calibration:\n  data: {images: null, tensors: %s}\n"
RANGES = "quantization:\n  ranges: {import: %s}\n"


def alias_bomb() -> bytes:
    lines = ["version: 1", 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n").encode()


BAD_INPUTS = [
    # recipe syntax and limits
    BadInput("yaml syntax error", recipe("quantization: {bits: 8\n"), 2, "bad.yaml:", True),
    BadInput("tab indentation", recipe("quantization:\n\tbits: 8\n"), 2, "bad.yaml:", True),
    BadInput(
        "duplicate key",
        recipe("quantization: {bits: 8}\nquantization: {bits: 16}\n"),
        2,
        "duplicate",
        True,
    ),
    BadInput(
        "python object tag",
        recipe("name: !!python/object/apply:os.system ['true']\n"),
        2,
        "bad.yaml:",
        True,
    ),
    BadInput("custom tag", recipe("name: !include other.yaml\n"), 2, "bad.yaml:", True),
    BadInput("YAML alias bomb", raw_recipe(alias_bomb()), 2, "bad.yaml"),
    BadInput(
        "2 MB recipe", raw_recipe(RECIPE.encode() + b"# " + b"x" * 2_000_000 + b"\n"), 2, "1 MB"
    ),
    BadInput(
        "nesting 100 deep",
        raw_recipe(RECIPE.encode() + b"name: " + b"[" * 100 + b"]" * 100 + b"\n"),
        2,
        "deep",
    ),
    BadInput("recipe not UTF-8", raw_recipe(RECIPE.encode() + b"name: caf\xe9\n"), 2, "UTF-8"),
    BadInput(
        "recipe file name not UTF-8", raw_recipe(RECIPE.encode(), b"bad\xff.yaml"), 2, "UTF-8"
    ),
    BadInput("top-level list", raw_recipe(b"- version\n- 1\n"), 2, "no recipe named 'bad'"),
    BadInput("empty recipe", raw_recipe(b""), 2, "no recipe named 'bad'"),
    BadInput(
        "version 2",
        raw_recipe(RECIPE.replace("version: 1", "version: 2").encode()),
        2,
        "version",
        True,
    ),
    BadInput("no version", raw_recipe(RECIPE.replace("version: 1\n", "").encode()), 2, "version"),
    # recipe fields
    BadInput("unknown key", recipe("quantization: {bitz: 8}\n"), 2, "did you mean 'bits'", True),
    BadInput("wrong type", recipe("quantization: {bits: eight}\n"), 2, "quantization.bits", True),
    BadInput(
        "value not allowed", recipe("quantization: {bits: 7}\n"), 2, "quantization.bits", True
    ),
    BadInput(
        "percentile over 100",
        recipe("quantization: {activation_clipping: percentile, percentile: 150}\n"),
        2,
        "percentile",
        True,
    ),
    BadInput(
        "calibration limit 0",
        recipe("calibration:\n  data: {images: data/calib, limit: 0}\n"),
        2,
        "limit",
        True,
    ),
    BadInput("unknown metric", recipe("evaluation:\n  metrics: [top5x]\n"), 2, "metrics", True),
    BadInput(
        "preprocess scale zero",
        recipe("calibration:\n  preprocess: {scale: [0]}\n"),
        2,
        "scale",
        True,
    ),
    BadInput(
        "preprocess mean for 3 channels on gray",
        recipe("calibration:\n  preprocess: {mean: [1, 2, 3]}\n"),
        2,
        "mean",
        True,
    ),
    BadInput(
        "resize to zero",
        recipe("calibration:\n  preprocess: {resize: [0, 16]}\n"),
        2,
        "resize",
        True,
    ),
    BadInput(
        "unknown device preset",
        raw_recipe(RECIPE.replace("devices/am68a", "devices/am99x").encode()),
        2,
        "am99x",
        True,
    ),
    BadInput(
        "extends a missing file",
        raw_recipe(RECIPE.replace("bases/digits.yaml", "bases/nope.yaml").encode()),
        2,
        "nope.yaml",
        True,
    ),
    BadInput(
        "extends cycle",
        with_file("bases/loop.yaml", b"extends: [../bad.yaml]\n", "extends: [bases/loop.yaml]\n"),
        2,
        "loop",
    ),
    BadInput(
        "mixed precision: unknown layer",
        recipe("quantization:\n  mixed_precision: {output_16bit: [no_such_layer]}\n"),
        2,
        "no_such_layer",
        True,
    ),
    BadInput(
        "mixed precision: factor 0.5",
        recipe("quantization:\n  mixed_precision: {factor: 0.5}\n"),
        2,
        "factor",
        True,
    ),
    BadInput(
        "latency table missing",
        recipe("quantization:\n  mixed_precision: {factor: 1.2, latency_table: nope.csv}\n"),
        2,
        "nope.csv",
        True,
    ),
    BadInput(
        "latency table garbage",
        with_file(
            "lat.csv",
            b"\x00\x01garbage",
            "quantization:\n  mixed_precision: {factor: 1.2, latency_table: lat.csv}\n",
        ),
        2,
        "lat.csv",
    ),
    # command line
    BadInput(
        "override of an unknown field",
        command("build", "am68a", "-S", "quantization.bitz=8"),
        2,
        "bitz",
    ),
    BadInput(
        "override with a bad value",
        command("build", "am68a", "-S", "quantization.bits=9"),
        2,
        "quantization.bits",
    ),
    BadInput(
        "override without '='",
        command("build", "am68a", "-S", "quantization.bits"),
        2,
        "quantization.bits",
    ),
    BadInput("unknown recipe", command("build", "nope"), 2, "nope"),
    BadInput("status of an unknown recipe", command("status", "nope"), 2, "nope"),
    BadInput("show of an unknown recipe", command("show", "nope"), 2, "nope"),
    BadInput("export-config of an unknown recipe", command("export-config", "nope"), 2, "nope"),
    BadInput(
        "diagnose with factor 0.5", command("diagnose", "am68a", "--factor", "0.5"), 2, "factor"
    ),
    BadInput(
        "import-config of a PNG",
        command("import-config", "opts.json", files={"opts.json": A_PNG}),
        2,
        "opts.json",
    ),
    BadInput(
        "import-config of bad JSON",
        command("import-config", "opts.json", files={"opts.json": b"{tensor_bits: 8,,}"}),
        2,
        "opts.json",
    ),
    # project configuration
    BadInput(
        "doit.cfg not INI", command("build", config="[quantbuild] -> [quantbuild\n"), 2, "doit.cfg"
    ),
    BadInput(
        "store_signed = maybe",
        command("build", config="store_signed = false -> store_signed = maybe"),
        2,
        "store_signed",
    ),
    BadInput(
        "store key file missing",
        command("build", config="store_key_file = -> store_key_file = /nonexistent/key"),
        2,
        "store_key_file",
    ),
    BadInput(
        "store key too short",
        command(
            "build",
            config="store_key_file = -> store_key_file = key.txt",
            files={"key.txt": b"abc"},
        ),
        2,
        "store_key_file",
    ),
    BadInput(
        "QUANTBUILD_CACHE_READONLY=maybe",
        command("build"),
        2,
        "QUANTBUILD_CACHE_READONLY",
        env={"QUANTBUILD_CACHE_READONLY": "maybe"},
    ),
    BadInput(
        "store path is a file", command("build"), 5, "store", env={"QUANTBUILD_CACHE": "doit.cfg"}
    ),
    # models
    BadInput("model missing", recipe("model: models/missing.onnx\n"), 3, "missing.onnx"),
    BadInput(
        "model is a PNG",
        with_file("models/fake.onnx", A_PNG, "model: models/fake.onnx\n"),
        3,
        "fake.onnx",
    ),
    BadInput(
        "model is empty",
        with_file("models/empty.onnx", b"", "model: models/empty.onnx\n"),
        3,
        "empty.onnx",
    ),
    BadInput(
        "model truncated",
        with_file("models/half.onnx", MODEL[: len(MODEL) // 2], "model: models/half.onnx\n"),
        3,
        "half.onnx",
    ),
    BadInput("model is a folder", recipe("model: models\n"), 3, "models"),
    BadInput(
        "doctor on a PNG",
        command("doctor", "models/fake.onnx", files={"models/fake.onnx": A_PNG}),
        3,
        "fake.onnx",
    ),
    # data
    BadInput("calibration folder missing", recipe(CALIB % "data/nope"), 4, "data/nope"),
    BadInput(
        "calibration folder empty",
        with_file("data/empty/.keep", b"", CALIB % "data/empty"),
        4,
        "no images",
    ),
    BadInput(
        "corrupt PNG",
        with_file("data/bad", images(3, lambda i: b"\x89PNG garbage"), CALIB % "data/bad"),
        4,
        "0.png",
    ),
    BadInput(
        "zero-byte image",
        with_file("data/zero", images(2, lambda i: b""), CALIB % "data/zero"),
        4,
        "0.png",
    ),
    BadInput(
        "npz of the wrong shape",
        with_file("t.npz", npz(input=np.zeros((4, 3, 8, 8), np.float32)), TENSORS % "t.npz"),
        4,
        "t.npz",
    ),
    BadInput(
        "npz of strings",
        with_file("s.npz", npz(input=np.array(["a", "b"])), TENSORS % "s.npz"),
        4,
        "s.npz",
    ),
    BadInput(
        "npz that is not a zip",
        with_file("g.npz", b"PK\x03\x04garbage", TENSORS % "g.npz"),
        4,
        "g.npz",
    ),
    BadInput(
        "npy of pickled objects", with_file("o.npy", npy_objects, TENSORS % "o.npy"), 4, "o.npy"
    ),
    BadInput(
        "npz with NaN frames",
        with_file(
            "n.npz", npz(input=np.full((2, 1, 16, 16), np.nan, np.float32)), TENSORS % "n.npz"
        ),
        4,
        "not finite",
    ),
    BadInput(
        "labels file missing",
        recipe("evaluation:\n  data: {images: data/val, labels: nope.txt}\n"),
        4,
        "nope.txt",
    ),
    BadInput(
        "labels file garbage",
        with_file(
            "labels.txt",
            b"\x00\xff\xfe",
            "evaluation:\n  data: {images: data/val, labels: labels.txt}\n",
        ),
        4,
        "labels.txt",
    ),
    BadInput(
        "images for a two-input model",
        with_file("models/two.onnx", model(two_input_model), "model: models/two.onnx\n"),
        4,
        "input",
    ),
    BadInput(
        "labels that are not class indices",
        with_file(
            "lab.npz",
            npz(
                input=np.random.default_rng(0).random((4, 1, 16, 16), np.float32),
                label=np.array([40, 41, 42, 43]),
            ),
            "evaluation:\n  data: {images: null, tensors: lab.npz, labels: label}\n",
        ),
        0,
        "not class indices",
    ),
    BadInput(
        "top1 without a classifier output",
        with_file("models/nocls.onnx", model(no_classifier_model), "model: models/nocls.onnx\n"),
        0,
        "top1",
    ),
    # imported ranges
    BadInput("ranges file missing", recipe(RANGES % "nope.yaml"), 2, "nope.yaml", True),
    BadInput("ranges file is a PNG", with_file("r.yaml", A_PNG, RANGES % "r.yaml"), 2, "r.yaml"),
    BadInput(
        "ranges file is a list", with_file("r.yaml", b"- 1\n- 2\n", RANGES % "r.yaml"), 2, "r.yaml"
    ),
    BadInput(
        "ranges name no tensor of the model",
        with_file(
            "r.yaml",
            b"format: quantbuild-ranges/1\ntensors:\n  nope: {min: 0, max: 1}\n",
            RANGES % "r.yaml",
        ),
        2,
        "nope",
    ),
    BadInput(
        "prototxt garbage",
        with_file("r.prototxt", b"layer { name: \x00 }}}", RANGES % "r.prototxt"),
        2,
        "r.prototxt",
    ),
    BadInput(
        "ORT overrides garbage", with_file("r.json", b"[1, 2", RANGES % "r.json"), 2, "r.json"
    ),
    BadInput(
        "ranges file over 256 MB",
        with_file("big.yaml", sparse(300 << 20), RANGES % "big.yaml"),
        2,
        "256 MB",
    ),
]


def run_bad_input(case: BadInput, base: Path, scratch: Path) -> dict:
    root = _copy(base, scratch / _slug(case.name))
    args = case.setup(root)
    out = quantbuild(root, *args, env=case.env)
    verdict, why = _classify(case, out)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "name": case.name,
        "kind": "input",
        "verdict": verdict,
        "why": why,
        "code": out.code,
        "seconds": round(out.seconds, 2),
        "line": (out.errors or [""])[0][:300],
        "output": "" if verdict == "clean" else (out.stdout + out.stderr)[-3000:],
    }


def _classify(case: BadInput, out: Outcome) -> tuple[str, str]:
    if out.code is None:
        return "hang", f"no answer in {TIMEOUT:.0f} s"
    if out.traceback:
        return "traceback", (out.stdout + out.stderr).strip().splitlines()[-1][:200]
    if case.code == 0:
        warned = [
            line
            for line in (out.stdout + out.stderr).splitlines()
            if "warning" in line and case.needle in line
        ]
        if out.code != 0:
            return "unclear", f"exit {out.code}: {out.stderr.strip()[:200]}"
        return ("clean", "") if warned else ("unclear", "built without the warning")
    if out.code != case.code:
        return "unclear", f"exit {out.code}, documented {case.code}: {out.stderr.strip()[:200]}"
    if len(out.errors) != 1:
        return "unclear", f"{len(out.errors)} error lines on stderr"
    line = out.errors[0]
    if case.needle not in line:
        return "unclear", f"{case.needle!r} not in the error"
    if case.located and not LOCATED.search(line):
        return "unclear", "no file:line:col"
    return "clean", ""


# -- faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    """Something that happens to a build; `inflict` returns a problem with quantbuild's own
    behaviour (None: clean), after which the next build must restore the undisturbed result."""

    name: str
    inflict: Callable[[Path], str | None]
    cold: bool = False  # start without the store and exports


def _expect(out: Outcome, code: int, needle: str = "") -> str | None:
    if out.code is None:
        return "hang"
    if out.traceback:
        return "traceback: " + out.stderr.strip().splitlines()[-1][:200]
    if out.code != code:
        return f"exit {out.code}, expected {code}: {out.stderr.strip()[-300:]}"
    if needle and needle not in out.stdout + out.stderr:
        return f"{needle!r} not in the output"
    return None


def killed_after(sig: int, delay: float, code: int | None) -> Callable[[Path], str | None]:
    """A cold build that receives `sig` after `delay` seconds (SIGKILL: no exit code to check)."""

    def inflict(root: Path) -> str | None:
        proc = started(root, "build")
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            return "hang after the signal"
        if proc.returncode == 0:
            return None  # finished before the signal: nothing to survive, still fine
        if "Traceback" in err:
            return "traceback: " + err.strip().splitlines()[-1][:200]
        # Ctrl-C before Python's handler or after the last line: killed by SIGINT, which a
        # shell reports as 130 too
        if code is not None and proc.returncode not in (code, -sig):
            return f"exit {proc.returncode}, expected {code}"
        return None

    return inflict


def capped(limit: int, needle: str, prepare: Callable[[Path], None] = lambda root: None):
    def inflict(root: Path) -> str | None:
        prepare(root)
        return _expect(quantbuild(root, "build", limit_bytes=limit), 5, needle)

    return inflict


def drop_exports(root: Path) -> None:
    shutil.rmtree(root / "build")


def empty_state(root: Path) -> None:
    state = root / ".quantbuild" / "doit.db"
    state.unlink()
    with sqlite3.connect(state) as db:
        db.execute("create table doit (task_id text not null primary key, task_data json)")
    db.close()


def damage(pick: Callable[[Path], list[Path]], how: Callable[[Path], None], needle: str = ""):
    """Damage files of a complete build, then build: quantbuild must notice and rebuild."""

    def inflict(root: Path) -> str | None:
        targets = pick(root)
        if not targets:
            return "nothing to damage"
        for target in targets:
            how(target)
        return _expect(quantbuild(root, "build"), 0, needle)

    return inflict


def store_files(name: str) -> Callable[[Path], list[Path]]:
    return lambda root: sorted((root / ".quantbuild" / "store").rglob(name))[:1]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def two_builds_at_once(root: Path) -> str | None:
    """Two cold builds of one recipe on one store: both correct, statistics computed once."""
    procs = [started(root, "build", "am68a") for _ in range(2)]
    outs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            return f"exit {proc.returncode}: {err.strip()[-200:]}"
    computed = sum(_computed(out, "stats:am68a") for out, _ in outs)
    return None if computed == 1 else f"statistics computed {computed} times"


def _computed(stdout: str, task: str) -> bool:
    """Whether this build ran the task's work itself (not up to date, no store hit, no wait)."""
    if f".  {task}" not in stdout:
        return False
    section = stdout.split(f".  {task}", 1)[1].split("\n.  ", 1)[0].split("\n-- ", 1)[0]
    return "store hit" not in section and "waiting for another process" not in section


def broken_pipe(root: Path) -> str | None:
    proc = started(root, "build")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    err = proc.stderr.read()
    proc.wait(timeout=TIMEOUT)
    if "Traceback" in err:
        return "traceback: " + err.strip().splitlines()[-1][:200]
    return None if proc.returncode in (0, -signal.SIGPIPE) else f"exit {proc.returncode}"


def dead_writer_staging(root: Path) -> str | None:
    """A writer on this host killed mid-stage left its staging folder (the pid is gone); the
    next build, which runs that stage again, removes it."""
    store = root / ".quantbuild" / "store"
    for entry in (store / "stats").glob("*/*"):
        shutil.rmtree(entry)
    staging = store / "stats" / f".tmp-{socket.gethostname()}-{_dead_pid()}-0123abcd"
    staging.mkdir(parents=True)
    (staging / "stats.npz").write_bytes(b"half written")
    problem = _expect(quantbuild(root, "build"), 0)
    return problem or (f"left {staging.name}" if staging.exists() else None)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def forged_entry(root: Path) -> str | None:
    key = {"QUANTBUILD_STORE_KEY": "7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"}
    cfg = root / "doit.cfg"
    shutil.rmtree(root / ".quantbuild")
    shutil.rmtree(root / "build")
    problem = _expect(quantbuild(root, "build", env=key), 0)
    if problem:
        return problem
    entry = next((root / ".quantbuild" / "store" / "quantize").glob("*/*"))
    target = entry / "model.qdq.onnx"
    flip_last_byte(target)
    manifest = json.loads((entry / "manifest.json").read_text())
    data = target.read_bytes()
    manifest["files"]["model.qdq.onnx"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    manifest["digest"] = digest({n: f["sha256"] for n, f in manifest["files"].items()})
    (entry / "manifest.json").write_text(json.dumps(manifest))
    cfg.write_text(cfg.read_text().replace("store_signed = false", "store_signed = true"))
    problem = _expect(quantbuild(root, "build", env=key), 0, "wrong signature")
    cfg.write_text(cfg.read_text().replace("store_signed = true", "store_signed = false"))
    return problem  # the next build (no key) must find the forgery replaced


FAULTS = [
    Fault("SIGKILL 0.5 s into a cold build", killed_after(signal.SIGKILL, 0.5, None), cold=True),
    Fault("SIGKILL 1.5 s into a cold build", killed_after(signal.SIGKILL, 1.5, None), cold=True),
    Fault("SIGKILL 2.5 s into a cold build", killed_after(signal.SIGKILL, 2.5, None), cold=True),
    Fault(
        "SIGINT (Ctrl-C) 1.5 s into a cold build", killed_after(signal.SIGINT, 1.5, 130), cold=True
    ),
    Fault("SIGTERM 1.5 s into a cold build", killed_after(signal.SIGTERM, 1.5, 143), cold=True),
    Fault("store full during a cold build", capped(16_000, "cannot write"), cold=True),
    Fault("export folder full", capped(4_000, "cannot write", drop_exports)),
    Fault(
        "doit state full when opened",
        capped(0, "doit's state", lambda r: (r / ".quantbuild" / "doit.db").unlink()),
    ),
    Fault("doit state full when saved", capped(8192, "doit's state", empty_state)),
    Fault(
        "doit state not a database",
        damage(
            lambda r: [r / ".quantbuild" / "doit.db"],
            lambda p: p.write_bytes(b"garbage" * 100),
            "doit",
        ),
    ),
    Fault("store artifact bit flip", damage(store_files("model.qdq.onnx"), flip_last_byte)),
    Fault("store manifest deleted", damage(store_files("manifest.json"), Path.unlink)),
    Fault(
        "store manifest garbage",
        damage(store_files("manifest.json"), lambda p: p.write_bytes(b"{]")),
    ),
    Fault(
        "exported file deleted",
        damage(lambda r: sorted((r / "build").rglob("*.onnx"))[:1], Path.unlink),
    ),
    Fault(
        "exported file tampered",
        damage(lambda r: sorted((r / "build").rglob("*.onnx"))[:1], flip_last_byte),
    ),
    Fault(
        "file-hash cache garbage",
        damage(lambda r: [r / ".quantbuild" / "filehashes.json"], lambda p: p.write_bytes(b"[[[")),
    ),
    Fault(
        "status records garbage",
        damage(
            lambda r: sorted((r / ".quantbuild" / "records").rglob("*.json"))[:3],
            lambda p: p.write_bytes(b"\xff"),
        ),
    ),
    Fault("dead writer's staging folder", dead_writer_staging),
    Fault("two builds at once on one store", two_builds_at_once, cold=True),
    Fault("reader closes the pipe", broken_pipe, cold=True),
    Fault("forged entry in a signed store", forged_entry),
]


def run_fault(fault: Fault, base: Path, reference: dict[str, bytes], scratch: Path) -> dict:
    root = _copy(base, scratch / _slug(fault.name))
    if fault.cold:
        shutil.rmtree(root / ".quantbuild")
        shutil.rmtree(root / "build")
    start = time.perf_counter()
    problem = fault.inflict(root)
    again = quantbuild(root, "build")  # the fault gone (no cap, no signal)
    if problem is None:
        problem = _expect(again, 0)
    if problem is None and _tree(root / "build") != reference:
        problem = "the next build's exports differ from an undisturbed build"
    staging = [p.name for p in (root / ".quantbuild" / "store").glob("*/.tmp-*")]
    if problem is None and staging:
        problem = f"staging folders left in the store: {staging}"
    shutil.rmtree(root, ignore_errors=True)
    return {
        "name": fault.name,
        "kind": "fault",
        "verdict": "survived" if problem is None else "lost",
        "why": problem or "",
        "seconds": round(time.perf_counter() - start, 2),
    }


# -- the audit ---------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _copy(base: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target, symlinks=True)
    return target


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every case's result here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="quantbuild-hostile-") as tmp:
        scratch = Path(tmp)
        base = _copy(EXAMPLE, scratch / "base")
        for leftover in (".quantbuild", "build"):
            shutil.rmtree(base / leftover, ignore_errors=True)
        built = quantbuild(base, "build", timeout=600)
        if built.code != 0:
            sys.exit(f"the example does not build: {built.stderr}")
        reference = _tree(base / "build")
        inputs = [c for c in BAD_INPUTS if args.k in c.name]
        faults = [f for f in FAULTS if args.k in f.name]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_bad_input(c, base, scratch), inputs))
            results += list(pool.map(lambda f: run_fault(f, base, reference, scratch), faults))

    for result in results:
        mark = "ok " if result["verdict"] in ("clean", "survived") else "BAD"
        why = f"  ({result['why']})" if result["why"] else ""
        print(f"{mark} {result['kind']:5} {result['verdict']:9} {result['name']}{why}")
    tally = {
        kind: {v: sum(r["kind"] == kind and r["verdict"] == v for r in results) for v in verdicts}
        for kind, verdicts in (
            ("input", ("clean", "traceback", "hang", "unclear")),
            ("fault", ("survived", "lost")),
        )
    }
    i, f = tally["input"], tally["fault"]
    print(
        f"\nbad inputs: {sum(i.values())} tried, {i['clean']} clean, {i['traceback']} tracebacks, "
        f"{i['hang']} hangs, {i['unclear']} unclear\n"
        f"faults: {sum(f.values())} tried, {f['survived']} survived with nothing lost"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tally": tally, "cases": results}, indent=1) + "\n")
    return 0 if i["clean"] == sum(i.values()) and f["survived"] == sum(f.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
