"""One store shared by several checkouts and CI runners: reuse, concurrent writers, damaged
entries, read-only mode for pull requests, and `quantbuild cache ls | verify | gc`.

Which stages ran is judged by doit's own reporting (`.  task` ran, `-- task` up to date) and by
the statistics stage's log line, printed only when it runs forward passes.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from builders import RECIPE, make_project
from cli_runner import run_cli, run_doit, tree_bytes

ALL = {f"{s}:base" for s in ("prepare", "equalize", "stats", "ranges", "quantize", "evaluate")} | {
    "report"
}
STATS_PASS = re.compile(r"^   \d+ frames, \d+ tensors", re.M)  # stats ran forward passes


def _checkouts(tmp_path: Path, *names: str) -> list[Path]:
    """Project folders with the same recipes and data, as separate clones would be."""
    return [make_project(tmp_path / name / "repo") for name in names]


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".tmp-", ".trash-"))]


def test_a_second_checkout_builds_from_the_shared_store_without_forward_passes(tmp_path):
    first, second = _checkouts(tmp_path, "one", "two")
    env = {"QUANTBUILD_CACHE": str(tmp_path / "cache")}
    built = run_cli("build", "-C", str(first), env=env)
    assert built.code == 0, built.stdout + built.stderr
    assert len(STATS_PASS.findall(built.stdout)) == 1

    reused = run_doit(second, env=env)
    assert reused.code == 0, reused.stdout + reused.stderr
    assert "stats:base" in reused.up_to_date  # no exports: nothing to copy, nothing to run
    assert not STATS_PASS.search(reused.stdout)
    assert reused.ran == ALL - {"stats:base"}  # exporting results from the store
    assert reused.stdout.count("store hit") == 5
    assert tree_bytes(second / "build") == tree_bytes(first / "build")
    assert not (second / ".quantbuild" / "store").exists()


def test_two_checkouts_building_into_one_store_at_once_both_succeed(tmp_path):
    first, second = _checkouts(tmp_path, "one", "two")
    cache = tmp_path / "cache"
    env = {**os.environ, "QUANTBUILD_CACHE": str(cache)}
    builds = [
        subprocess.Popen(
            [sys.executable, "-m", "quantbuild", "build", "-C", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for root in (first, second)
    ]
    outputs = [build.communicate(timeout=120)[0] for build in builds]
    assert [b.returncode for b in builds] == [0, 0], "\n".join(outputs)
    # One statistics pass in all: the second build waits for the first's (a lease on the key).
    assert sum(len(STATS_PASS.findall(output)) for output in outputs) == 1, outputs
    assert tree_bytes(first / "build") == tree_bytes(second / "build")
    verified = run_cli("cache", "verify", "-C", str(first), env={"QUANTBUILD_CACHE": str(cache)})
    assert verified.code == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[-1] == f"verified 6 entries in {cache}: 0 bad"
    assert _leftovers(cache) == []


def test_a_truncated_or_altered_store_file_is_detected_and_rebuilt(project):
    assert run_doit(project).code == 0
    store = project / ".quantbuild" / "store"
    before, results = tree_bytes(store), tree_bytes(project / "build")
    (stats_file,) = store.glob("stats/*/*/stats.npz")
    stats_file.write_bytes(stats_file.read_bytes()[:100])  # truncated
    (model,) = store.glob("prepare/*/*/model.onnx")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the sha256 shows it
    model.write_bytes(bytes(data))

    rebuilt = run_doit(project)
    assert rebuilt.code == 0, rebuilt.stdout + rebuilt.stderr
    assert rebuilt.ran == {"prepare:base", "stats:base"}
    assert STATS_PASS.search(rebuilt.stdout)
    assert rebuilt.up_to_date == ALL - rebuilt.ran  # same bytes again: nothing downstream re-keyed
    assert tree_bytes(store) == before
    assert tree_bytes(project / "build") == results
    assert _leftovers(store) == []


def _listing(root: Path) -> dict[str, tuple]:
    """Every file and folder with its size, mtime and mode: any write would show."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


def test_read_only_mode_hits_the_shared_store_and_builds_misses_locally(tmp_path):
    main, pull_request = _checkouts(tmp_path, "main", "pr")
    shared = tmp_path / "cache"
    assert run_cli("build", "-C", str(main), env={"QUANTBUILD_CACHE": str(shared)}).code == 0
    (pull_request / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 16}\n"))
    _chmod_tree(shared, writable=False)
    before = _listing(shared)
    try:
        env = {"QUANTBUILD_CACHE": str(shared), "QUANTBUILD_CACHE_READONLY": "1"}
        built = run_cli("build", "-C", str(pull_request), env=env)
        assert built.code == 0, built.stdout + built.stderr
        assert "stats:base" in built.up_to_date and not STATS_PASS.search(built.stdout)
        assert {"ranges:base", "quantize:base", "evaluate:base"} <= built.ran
        local = pull_request / ".quantbuild" / "store"
        assert sorted(p.name for p in local.iterdir()) == [
            ".locks",
            "evaluate",
            "quantize",
            "ranges",
        ]

        # The same through doit.cfg, with plain `doit`: everything is a hit now.
        config = pull_request / "doit.cfg"
        config.write_text(
            config.read_text()
            .replace("store = .quantbuild/store", f"store = {shared}")
            .replace("store_readonly = false", "store_readonly = true")
        )
        again = run_doit(pull_request, env={"QUANTBUILD_CACHE_READONLY": ""})
        assert again.code == 0, again.stdout + again.stderr
        assert again.ran == set() and again.up_to_date == ALL
        assert _listing(shared) == before
    finally:
        _chmod_tree(shared, writable=True)

    wrong = run_cli("list", "-C", str(pull_request), env={"QUANTBUILD_CACHE_READONLY": "maybe"})
    assert wrong.code == 2
    assert wrong.stderr == (
        "error: QUANTBUILD_CACHE_READONLY: 'maybe' is not a boolean; use true or false (1 or 0)\n"
    )


def _entry_lines(output: str) -> list[list[str]]:
    return [line.split(None, 4) for line in output.splitlines() if not line[0].isdigit()]


def test_cache_ls_gc_and_verify(project):
    cache = ["-C", str(project)]
    assert run_cli("build", *cache).code == 0
    (project / "base.yaml").write_text(RECIPE.format(extra="quantization: {bits: 16}\n"))
    assert run_cli("build", *cache).code == 0

    listed = run_cli("cache", "ls", *cache)
    assert listed.code == 0, listed.stderr
    rows = _entry_lines(listed.stdout)
    twice = ["ranges", "ranges", "quantize", "quantize", "evaluate", "evaluate"]
    assert [r[0] for r in rows] == ["prepare", "equalize", "stats", *twice]  # pipeline order
    unused = {(r[0], r[1]) for r in rows if r[-1] == "-"}
    assert {s for s, _ in unused} == {"ranges", "quantize", "evaluate"} and len(unused) == 3
    assert sum(r[-1] == "base" for r in rows) == 6
    assert listed.stdout.splitlines()[-1].startswith("9 entries, ")

    stats_dir = project / ".quantbuild" / "store" / "stats"
    # A writer killed a moment ago (its pid is gone) and one still running (this process).
    killed = stats_dir / f".tmp-{socket.gethostname()}-999999999-0123456789ab"
    running = stats_dir / f".tmp-{socket.gethostname()}-{os.getpid()}-0123456789ab"
    for folder in (killed, running):
        folder.mkdir()
    os.utime(running, (time.time() - 7200, time.time() - 7200))  # however old

    dry = run_cli("cache", "gc", "--dry-run", *cache)
    assert dry.code == 0, dry.stderr
    assert {tuple(line.split()[2:4]) for line in dry.stdout.splitlines()[:3]} == unused
    assert f"would remove stats/{killed.name}" in dry.stdout
    assert killed.exists() and run_cli("cache", "ls", *cache).stdout.count("\n") == 10

    recent = run_cli("cache", "gc", "--keep-days", "1", *cache)
    assert recent.stdout.splitlines()[-1].startswith("removed 0 entries (0B) and 1 leftover")
    assert not killed.exists() and running.exists()

    collected = run_cli("cache", "gc", *cache)
    assert collected.code == 0, collected.stderr
    assert {tuple(line.split()[1:3]) for line in collected.stdout.splitlines()[:3]} == unused
    rows = _entry_lines(run_cli("cache", "ls", *cache).stdout)
    assert len(rows) == 6 and all(r[-1] == "base" for r in rows)
    assert run_doit(project).ran == set()  # nothing the project uses was removed

    (model,) = project.glob(".quantbuild/store/quantize/*/*/model.qdq.onnx")
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    key = model.parent.name
    bad = run_cli("cache", "verify", *cache)
    assert bad.code == 5  # StoreError
    assert f"bad quantize {key[:12]}: model.qdq.onnx: content does not match its sha256" in (
        bad.stdout
    )
    assert bad.stderr.startswith("error: ") and "cache verify --fix" in bad.stderr
    assert run_cli("cache", "ls", "--fix", *cache).code == 2

    fixed = run_cli("cache", "verify", "--fix", *cache)
    assert fixed.code == 0 and f"removed bad quantize {key[:12]}" in fixed.stdout
    assert not model.parent.exists()
    clean = run_cli("cache", "verify", *cache)
    assert clean.code == 0 and clean.stdout.endswith(": 0 bad\n")
    assert run_doit(project).ran == {"quantize:base"}
