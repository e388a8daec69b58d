"""Whether this process shares the machine's cores with other builds (`doit -n N`)."""

from __future__ import annotations

shared = False


def share(workers: int) -> None:
    """Note that `workers` build processes run at once (doit's -n): onnxruntime's idle threads
    then sleep instead of spinning, so the workers do not burn each other's cores."""
    global shared
    shared = workers > 1
