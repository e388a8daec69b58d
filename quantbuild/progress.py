"""Progress of long loops (calibration, evaluation): frames/s and ETA.

On a terminal one status line is redrawn in place and erased at the end; in a log (CI, a
pipe) nothing is written unless the loop runs long, then one plain line every LOG_EVERY
seconds, so logs stay quiet and line-oriented. QUANTBUILD_PROGRESS=0 turns it off, =1 forces
the terminal form.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
REDRAW_EVERY = 0.2  # seconds between terminal redraws
LOG_EVERY = 30.0  # seconds between log lines


def _mode(stream: TextIO) -> str:
    setting = os.environ.get("QUANTBUILD_PROGRESS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return "off"
    if setting in ("1", "true", "yes", "on"):
        return "terminal"
    return "terminal" if getattr(stream, "isatty", lambda: False)() else "log"


def status(label: str, done: int, total: int, seconds: float, unit: str = "frames") -> str:
    """`label: 12/64 frames, 5.1 frames/s, ETA 8 s`."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{label}: {done}/{total} {unit}, {rate:.1f} {unit}/s"
    if 0 < done < total and rate > 0:
        text += f", ETA {_duration((total - done) / rate)}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def track(
    items: Iterable[T],
    label: str,
    total: int,
    unit: str = "frames",
    stream: TextIO | None = None,
    clock=time.monotonic,
) -> Iterator[T]:
    """Yield `items`, reporting progress on `stream` (default stderr) as described above."""
    stream = stream or sys.stderr
    mode = _mode(stream)
    if mode == "off" or total <= 0:
        yield from items
        return
    start = last = clock()
    done = 0
    drawn = False
    try:
        for item in items:
            yield item
            done += 1
            now = clock()
            if mode == "terminal" and (now - last >= REDRAW_EVERY or done == total):
                stream.write("\r\x1b[K" + status(label, done, total, now - start, unit))
                stream.flush()
                drawn, last = True, now
            elif mode == "log" and now - last >= LOG_EVERY and done < total:
                stream.write(status(label, done, total, now - start, unit) + "\n")
                stream.flush()
                last = now
    finally:
        if drawn:  # the stage's own summary line follows; leave no half line behind
            stream.write("\r\x1b[K")
            stream.flush()
