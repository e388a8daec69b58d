"""Create the venv that run.py runs ModelOpt's ONNX PTQ in (benchmarks/work/venv-modelopt).

    python benchmarks/setup_modelopt.py [--venv DIR]

nvidia-modelopt[onnx] needs torch and pulls onnxruntime-gpu 1.24, which would replace the
harness's onnxruntime, so it gets a venv of its own (git-ignored under benchmarks/work/). torch is
installed first and alone, so that a CPU build is taken before anything can pull a CUDA one;
then benchmarks/requirements-modelopt.txt (every package pinned). Running it again on an
existing venv only checks that the pins are installed. Point run.py at another venv with
QUANTBUILD_MODELOPT_PYTHON=<venv>/bin/python.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-modelopt.txt"
DEFAULT_VENV = HERE / "work" / "venv-modelopt"


def pinned(name: str) -> str:
    """The requirement line of one package in requirements-modelopt.txt."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    raise SystemExit(f"{name} is not pinned in {REQUIREMENTS}")


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    started = time.perf_counter()
    python = args.venv / "bin" / "python"
    if not python.is_file():
        print(f"creating {args.venv} with {sys.executable}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
    pip = [str(python), "-m", "pip", "install"]
    subprocess.run([*pip, pinned("torch")], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    probe = (
        "import importlib.metadata as m, PIL, onnx, numpy, modelopt.onnx.quantization; "
        "print(*(f'{n} {m.version(n)}' for n in "
        "('nvidia-modelopt', 'onnxruntime-gpu', 'torch', 'onnx', 'numpy', 'pillow')), sep=', ')"
    )
    subprocess.run([str(python), "-c", probe], check=True)
    print(
        f"{args.venv}: ready in {time.perf_counter() - started:.0f} s, {size_mb(args.venv):.0f} MB"
        + ("" if args.venv == DEFAULT_VENV else f"; export QUANTBUILD_MODELOPT_PYTHON={python}"),
        flush=True,
    )


if __name__ == "__main__":
    main()
