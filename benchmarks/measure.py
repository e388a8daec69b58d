"""Run one command and record its wall time and peak memory (max RSS of the process tree).

    python benchmarks/measure.py --out stats.json --log run.log [--cwd DIR] [--env K=V] -- CMD...

Each output line is logged with the seconds since the start, e.g. `[  12.30s] .  stats:am68a`.
Run this wrapper in its own process, so that getrusage(RUSAGE_CHILDREN) sees only CMD and its
descendants. A watchdog polls the tree's summed RSS and kills it above --max-rss-mb, so a
runaway calibration cannot take the machine down; the result then says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_rss_mb(root: int) -> float:
    """Summed RSS of a process and its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--cwd", type=Path)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-rss-mb", type=float, default=0.0, help="0: no limit")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(item.split("=", 1) for item in args.env)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    killed = threading.Event()
    watched_peak = [0.0]
    with open(args.log, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=args.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def watch() -> None:
            while proc.poll() is None:
                rss = tree_rss_mb(proc.pid)
                watched_peak[0] = max(watched_peak[0], rss)
                if args.max_rss_mb and rss > args.max_rss_mb:
                    killed.set()
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for raw in proc.stdout:  # each line stamped with the seconds since the start
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            log.write(f"[{time.perf_counter() - started:7.2f}s] {line}\n")
            log.flush()
        code = proc.wait()
        wall = time.perf_counter() - started
        watcher.join(timeout=1)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "command": command,
        "returncode": code,
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB; largest single process
        "peak_tree_rss_mb_sampled": round(watched_peak[0], 1),
        "killed_over_rss_mb": args.max_rss_mb if killed.is_set() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
