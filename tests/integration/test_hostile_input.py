"""Hostile or unlucky input (issue 15's table): each case ends in one line on stderr with the
documented exit code, never a traceback or a hang, and nothing already built is lost."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import onnx
import pytest
from builders import RECIPE, heavy_cnn, make_project, write_images, write_model, write_npz
from cli_runner import run_cli, run_doit, tree_bytes
from onnx import TensorProto, helper

RECIPE_EXIT, DATA_EXIT = 2, 4


def _one_error(run, code: int, *needles: str) -> str:
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert run.code == code, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_an_exported_ranges_file_in_the_project_is_not_taken_for_a_recipe(project):
    assert run_cli("build", "-C", str(project)).code == 0
    shutil.copy(project / "build" / "base" / "ranges.yaml", project / "ranges.yaml")
    again = run_cli("build", "-C", str(project))
    assert again.code == 0, again.stderr
    assert "note: ranges.yaml: not a recipe (a quantbuild ranges file" in again.stderr
    listed = run_cli("list", "--all", "-C", str(project))
    assert "ranges.yaml" in listed.stdout and "not a recipe" in listed.stdout
    assert "ranges.yaml" not in run_cli("list", "-C", str(project)).stdout
    # a broken recipe without `version:` is still reported, not skipped
    (project / "typo.yaml").write_text(
        "model: model.onnx\ncalibration: {data: {tensors: calib.npz}}\n"
    )
    _one_error(run_cli("build", "-C", str(project)), RECIPE_EXIT, "typo.yaml", "version")


def test_a_yaml_alias_bomb_is_refused_in_seconds(project):
    lines = ["version: 1", 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    (project / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    run = run_cli("build", "-C", str(project))
    assert time.perf_counter() - start < 60
    _one_error(run, RECIPE_EXIT, "bomb.yaml", "more than 100000 values")


def test_a_huge_or_deeply_nested_recipe_is_refused(project):
    (project / "huge.yaml").write_text("version: 1\n" + "# padding\n" * 120_000)
    _one_error(run_cli("list", "-C", str(project)), RECIPE_EXIT, "huge.yaml", "at most 1 MB")
    (project / "huge.yaml").unlink()
    (project / "deep.yaml").write_text("version: 1\nx: " + "[" * 80 + "]" * 80 + "\n")
    _one_error(run_cli("list", "-C", str(project)), RECIPE_EXIT, "deep.yaml", "nested deeper")


def test_images_for_a_two_input_model(tmp_path):
    x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in "ab"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="add")], "g", x, [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    root = tmp_path / "p"
    root.mkdir()
    onnx.save(model, root / "model.onnx")
    write_images(root / "imgs", size=8)
    (root / "two.yaml").write_text(
        "version: 1\nmodel: model.onnx\ncalibration:\n  data: {images: imgs}\n"
        "  preprocess: {resize: [8, 8]}\n"
    )
    run = run_cli("build", "-C", str(root))
    _one_error(run, DATA_EXIT, "two.yaml:4:9", "images feed one model input", "'a', 'b'")


def test_ranges_import_pointing_at_a_binary_file(project):
    write_images(project / "imgs", per_class=1, classes=1)
    extra = "quantization: {ranges: {import: imgs/0/0.png}}\n"
    (project / "base.yaml").write_text(RECIPE.format(extra=extra))
    _one_error(run_cli("build", "-C", str(project)), RECIPE_EXIT, "0.png", "not a text ranges file")


def test_a_recipe_file_name_that_is_not_utf8(project):
    name = os.path.join(os.fsencode(project), b"caf\xe9.yaml")
    with open(name, "wb") as f:
        f.write(RECIPE.format(extra="name: cafe\n").encode())
    run = run_cli("build", "-C", str(project))
    _one_error(run, RECIPE_EXIT, "not valid UTF-8", "rename the file")


def test_build_into_a_closed_pipe_ends_quietly_and_loses_nothing(project):
    piped = subprocess.run(
        f"'{sys.executable}' -m quantbuild build -C '{project}' | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    assert len(piped.stdout.splitlines()) == 1
    resumed = run_cli("build", "-C", str(project))
    assert resumed.code == 0, resumed.stderr
    assert (project / "build" / "base" / "metrics.json").is_file()


def test_artifacts_follow_the_umask(project):
    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    done = subprocess.run(
        [sys.executable, "-m", "quantbuild", "build", "-C", str(project)],
        capture_output=True,
        env=env,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    for path in (project / "build").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_clean_removes_what_diagnose_made(project):
    for step in ("16bit", "8bit", "mixed"):
        (project / "build" / f"base.{step}").mkdir(parents=True)
        (project / "build" / f"base.{step}" / "metrics.json").write_text("{}")
    (project / "build" / "basement").mkdir()  # another recipe's folder stays
    assert run_cli("clean", "-C", str(project), "base").code == 0
    assert sorted(p.name for p in (project / "build").iterdir()) == ["basement"]


def _stats_entry(project):
    (entry,) = (project / ".quantbuild" / "store" / "stats").glob("*/*")
    return entry


def test_force_recomputes_and_replaces_store_entries(project):
    assert run_cli("build", "-C", str(project)).code == 0
    before = tree_bytes(project / "build")
    inode = _stats_entry(project).stat().st_ino
    forced = run_cli("build", "--force", "-C", str(project))
    assert forced.code == 0, forced.stderr
    assert "store hit" not in forced.stdout
    assert _stats_entry(project).stat().st_ino != inode  # a new entry, same key
    assert tree_bytes(project / "build") == before  # and the same bytes
    inode = _stats_entry(project).stat().st_ino
    assert run_doit(project, "-a").code == 0  # plain doit's --always-execute alike
    assert _stats_entry(project).stat().st_ino != inode


def test_the_next_build_removes_what_a_killed_build_left_in_the_store(project):
    assert run_cli("build", "-C", str(project)).code == 0
    stats_dir = project / ".quantbuild" / "store" / "stats"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = stats_dir / f".tmp-{socket.gethostname()}-{dead.pid}-0123456789ab"
    leftover.mkdir()
    (leftover / "stats.npz").write_bytes(b"half")
    write_npz(project / "calib.npz", 8, seed=5)  # new statistics: the stats stage publishes
    assert run_cli("build", "-C", str(project)).code == 0
    assert not leftover.exists()


def _build_with_files_capped(project, limit: int):
    """`quantbuild build` with every file written capped at `limit` bytes (RLIMIT_FSIZE: writes
    past it fail with EFBIG, as they fail with ENOSPC on a full disk)."""

    def capped():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "QUANTBUILD_CACHE"}
    return subprocess.run(
        [sys.executable, "-m", "quantbuild", "build", "-C", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=capped,
    )


def test_a_full_store_is_one_line_and_the_next_build_recovers(tmp_path):
    """Files capped at 64 kB for the build (RLIMIT_FSIZE: writes fail with EFBIG, as on a full
    disk with ENOSPC): doit's small database fits, the model artifact does not. Exit 5 naming
    the store; nothing half-published; the next build, with room, completes."""
    project = make_project(
        tmp_path / "p", {"base": RECIPE.format(extra="").split("evaluation:")[0]}
    )
    write_model(project / "model.onnx", heavy_cnn(size=16, width=64))
    write_npz(project / "calib.npz", 2, shape=(1, 3, 16, 16))

    full = _build_with_files_capped(project, 64_000)
    assert "Traceback" not in full.stderr, full.stderr
    assert full.returncode == 5, full.stdout + full.stderr
    assert "cannot write the prepare artifact into the store (File too large)" in full.stderr
    store = project / ".quantbuild" / "store"
    assert not [p for p in store.rglob("*") if p.name.startswith(".tmp-")]
    assert run_cli("build", "-C", str(project)).code == 0


@pytest.mark.parametrize("when", ["opening", "saving"])
def test_doit_state_on_a_full_disk_is_one_line_and_loses_nothing(project, when):
    """doit's database cannot grow (the store is complete, so nothing else needs the space):
    one line naming .quantbuild/doit.db, exit 5, every export intact; with room, the next
    build runs no stage."""
    assert run_cli("build", "-C", str(project)).code == 0
    built = tree_bytes(project / "build")
    state = project / ".quantbuild" / "doit.db"
    state.unlink()
    if when == "saving":  # an empty database exists: the run's records at the end do not fit
        with sqlite3.connect(state) as db:
            db.execute("create table doit (task_id text not null primary key, task_data json)")
        db.close()
    full = _build_with_files_capped(project, state.stat().st_size if state.exists() else 0)
    assert "Traceback" not in full.stderr, full.stderr
    assert full.returncode == 5, full.stdout + full.stderr
    (line,) = [line for line in full.stderr.splitlines() if "doit's state" in line]
    assert f"{state}: cannot write doit's state" in line and "full" in line, line
    assert tree_bytes(project / "build") == built
    again = run_cli("build", "-C", str(project))
    assert again.code == 0, again.stderr
    assert all(line.startswith("-- ") for line in again.stdout.splitlines())  # all up to date


def test_a_damaged_doit_state_is_replaced_with_a_warning(project):
    assert run_cli("build", "-C", str(project)).code == 0
    (project / ".quantbuild" / "doit.db").write_bytes(b"not sqlite " * 100)
    again = run_cli("build", "-C", str(project))
    assert again.code == 0, again.stderr
    assert "doit.db: not a doit state database" in again.stderr
    assert all(line.startswith("-- ") for line in again.stdout.splitlines())  # nothing re-ran


def test_labels_that_are_not_class_indices_are_warned_about(project):
    write_npz(project / "val.npz", 6, seed=2, labels=9)  # the model has 5 classes
    built = run_cli("build", "-C", str(project))
    assert built.code == 0, built.stderr
    assert "warning: top1:" in built.stdout and "not class indices of the model's 5" in built.stdout


def test_top1_on_a_model_without_a_classifier_output_is_warned_about(project):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [0.5] * 9)
    conv = helper.make_node("Conv", ["input", "w"], ["y"], name="conv")
    graph = helper.make_graph([conv], "g", [x], [y], [w])
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
        project / "model.onnx",
    )
    built = run_cli("build", "-C", str(project))
    assert built.code == 0, built.stderr
    assert "warning: top1: the first output 'y' has shape [1, 3, 8, 8]" in built.stdout


def test_a_zero_preprocess_scale_is_a_recipe_error(project):
    write_images(project / "imgs", size=8)
    text = RECIPE.format(extra="").replace(
        "{tensors: calib.npz}", "{images: imgs}\n  preprocess: {scale: [0]}"
    )
    (project / "base.yaml").write_text(text)
    run = run_cli("build", "-C", str(project))
    assert run.code == RECIPE_EXIT and "Traceback" not in run.stderr, run.stderr
    errors = run.stderr.splitlines()  # calibration's, and evaluation's that inherits it
    assert errors and all("base.yaml:5:15" in e and "scale[0] is 0" in e for e in errors)


def test_an_unwritable_own_store_does_not_suggest_read_only_mode(project):
    (project / ".quantbuild").mkdir()
    (project / ".quantbuild" / "store").write_text("not a folder")  # unwritable even as root
    line = _one_error(run_cli("build", "-C", str(project)), 5, "cannot write the artifact store")
    assert "QUANTBUILD_CACHE to a writable folder" in line
    assert "QUANTBUILD_CACHE_READONLY" not in line
