"""A no-op build imports no heavy third-party module: it needs only the stage specs, the recipes,
the dataset listings and hashes and the store, not onnx, onnxruntime, networkx or PIL (the stage
modules import those where they use them).

Each build runs in a fresh interpreter: this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from builders import RECIPE, make_project, write_images

HEAVY = ("onnx", "onnxruntime", "networkx", "PIL", "ml_dtypes", "fsspec", "distributed")

IMAGES_RECIPE = """\
version: 1
model: model.onnx
calibration:
  data: {images: imgs}
evaluation:
  data: {tensors: val.npz, labels: labels}
"""


def _run(code: str, cwd: Path) -> tuple[int, list[str], str]:
    """Run `code` (which sets `status`) in a fresh interpreter: (status, heavy modules loaded,
    stdout)."""
    probe = (
        "import json, sys\n"
        + code
        + f"\nprint(json.dumps([status, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    status, heavy = json.loads(done.stdout.splitlines()[-1])
    return status, heavy, done.stdout


def _build(root: Path) -> tuple[int, list[str], str]:
    """`quantbuild build` in-process, in a fresh interpreter."""
    return _run(
        f"from quantbuild.cli import main\nstatus = main(['build', '-C', {str(root)!r}])", root
    )


def _doit(root: Path) -> tuple[int, list[str], str]:
    """Plain `doit` in the project folder (its doit.cfg names the loader), in a fresh interpreter."""
    code = (
        "import runpy\n"
        "sys.argv = ['doit']\n"
        "try:\n"
        "    runpy.run_module('doit', run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    status = end.code\n"
    )
    return _run(code, root)


def _ran(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(".  ")]


def test_noop_build_imports_no_heavy_module(tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    recipes = {"tensors": RECIPE.format(extra=""), "images": IMAGES_RECIPE}
    root = make_project(tmp_path / "proj", recipes)
    write_images(root / "imgs", per_class=2, classes=2, size=8)

    status, heavy, out = _build(root)
    assert status == 0, out
    assert {"onnx", "onnxruntime", "PIL"} <= set(heavy)  # a cold build imports what it runs
    assert _ran(out)

    status, heavy, out = _build(root)
    assert status == 0, out
    assert not _ran(out), out
    assert heavy == []

    status, heavy, out = _doit(root)
    assert status == 0, out
    assert not _ran(out), out
    assert heavy == []
