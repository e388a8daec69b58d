"""Run `doit` and `quantbuild` as a user would (subprocesses) and read doit's own reporting."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def ran(self) -> set[str]:
        """Tasks doit executed (`.  name`)."""
        return {line[3:].strip() for line in self.stdout.splitlines() if line.startswith(".  ")}

    @property
    def up_to_date(self) -> set[str]:
        """Tasks doit skipped as up to date (`-- name`)."""
        return {line[3:].strip() for line in self.stdout.splitlines() if line.startswith("-- ")}


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.pop("QUANTBUILD_CACHE", None)
    env.update(extra or {})
    return env


def _run(module: str, args: tuple[str, ...], cwd: Path | None, env: dict | None) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_env(env),
        timeout=300,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def run_doit(root: Path, *args: str, env: dict | None = None) -> Run:
    """`doit` in a project folder, through the project's doit.cfg loader plugin."""
    return _run("doit", args, root, env)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> Run:
    """The `quantbuild` command."""
    return _run("quantbuild", args, cwd, env)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), skipping doit's database and caches."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "doit.db" not in p.name and p.name != "filehashes.json"
    }
