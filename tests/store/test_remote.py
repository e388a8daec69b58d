"""The store on S3 (a real SeaweedFS server on 127.0.0.1), read through the local store."""

from __future__ import annotations

import shutil
import time

import pytest
from builders import make_project
from cli_runner import run_cli, tree_bytes
from s3server import make_bucket, needs_s3, s3_server

from quantbuild.errors import StoreError
from quantbuild.store.entries import Store
from quantbuild.store.remote import RemoteStore, is_url

pytestmark = needs_s3()
KEY = "ab" + "0" * 62


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as env:
        make_bucket(env, "builds")
        yield env


@pytest.fixture
def s3_env(s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    return s3


def _remote_files(url: str) -> set[str]:
    remote = RemoteStore(url)
    return {p.removeprefix(remote.root + "/") for p in remote.fs.find(remote.root)}


def _writer(data: bytes):
    def build(folder):
        (folder / "artifact.bin").write_bytes(data)
        return {}

    return build


def test_is_url():
    assert is_url("s3://bucket/prefix") and is_url("gcs://b") and is_url("memory://x")
    assert not is_url(".quantbuild/store") and not is_url("/abs/store")
    assert not is_url("file:///tmp/store") and not is_url("C:\\store")


def test_published_entries_are_uploaded_and_read_through_on_another_machine(tmp_path, s3_env):
    url = "s3://builds/unit-a"
    first = Store(tmp_path / "one", remote=RemoteStore(url))
    entry = first.publish("stats", KEY, _writer(b"histograms"), {"recipe": "r"})
    assert f"stats/ab/{KEY}/manifest.json" in _remote_files(url)
    # another machine: an empty local store
    second = Store(tmp_path / "two", remote=RemoteStore(url))
    found = second.lookup("stats", KEY)
    assert found is not None and found.dir.is_relative_to(tmp_path / "two")
    assert found.path("artifact.bin").read_bytes() == b"histograms"
    assert found.manifest == entry.manifest
    assert second.lookup("stats", "cd" + "1" * 62) is None


def test_a_tampered_remote_file_is_a_miss_not_a_corrupt_artifact(tmp_path, s3_env):
    url = "s3://builds/unit-b"
    Store(tmp_path / "one", remote=RemoteStore(url)).publish("stats", KEY, _writer(b"good"), {})
    remote = RemoteStore(url)
    remote.fs.pipe_file(f"{remote.root}/stats/ab/{KEY}/artifact.bin", b"evil")
    warnings: list[str] = []
    second = Store(tmp_path / "two", remote=RemoteStore(url), warn=warnings.append)
    assert second.lookup("stats", KEY) is None
    assert "does not match its sha256" in warnings[0] and "s3://builds/unit-b" in warnings[0]
    # no half-installed entry, no staging folder left behind
    assert not [p for p in (tmp_path / "two").rglob("*") if p.is_file()]
    rebuilt = second.publish("stats", KEY, _writer(b"good"), {})
    assert rebuilt.path("artifact.bin").read_bytes() == b"good"
    # the rebuild replaced the damaged remote entry: the next machine gets good bytes
    third = Store(tmp_path / "three", remote=RemoteStore(url))
    found = third.lookup("stats", KEY)
    assert found is not None and found.path("artifact.bin").read_bytes() == b"good"


def test_an_entry_without_its_manifest_does_not_exist(tmp_path, s3_env):
    url = "s3://builds/unit-c"
    remote = RemoteStore(url)
    remote.fs.pipe_file(f"{remote.root}/stats/ab/{KEY}/artifact.bin", b"half an upload")
    assert Store(tmp_path / "two", remote=RemoteStore(url)).lookup("stats", KEY) is None


def test_read_only_never_writes_the_remote_store(tmp_path, s3_env):
    url = "s3://builds/unit-d"
    store = Store(tmp_path / "one", remote=RemoteStore(url, read_only=True))
    entry = store.publish("stats", KEY, _writer(b"local only"), {})
    assert entry.dir.is_relative_to(tmp_path / "one")
    assert _remote_files(url) == set()


def test_a_missing_bucket_is_one_clear_error(tmp_path, s3_env):
    store = Store(tmp_path / "one", remote=RemoteStore("s3://no-such-bucket/x"))
    with pytest.raises(StoreError, match="s3://no-such-bucket/x"):
        store.publish("stats", KEY, _writer(b"x"), {})
    assert not [p for p in (tmp_path / "one").rglob("*") if p.is_file()]


def test_an_unreachable_server_is_one_clear_error_and_quick(tmp_path, monkeypatch, s3):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError) as error:
        Store(tmp_path / "one", remote=RemoteStore("s3://builds/x")).lookup("stats", KEY)
    assert time.monotonic() - start < 60
    message = str(error.value)
    assert "s3://builds/x" in message and "AWS_ENDPOINT_URL" in message
    assert "\n" not in message


def test_a_project_on_s3_second_checkout_runs_no_stage_and_exports_the_same(tmp_path, s3_env):
    env = {**s3_env, "QUANTBUILD_CACHE": "s3://builds/projects/example", "QUANTBUILD_PROGRESS": "0"}
    first = make_project(tmp_path / "first")
    built = run_cli("build", cwd=first, env=env)
    assert built.code == 0, built.stderr
    assert built.ran and "store hit" not in built.stdout
    second = tmp_path / "second"  # a fresh checkout: no .quantbuild, no build/
    shutil.copytree(first, second, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    again = run_cli("build", cwd=second, env=env)
    assert again.code == 0, again.stderr
    hits = [line for line in again.stdout.splitlines() if line.startswith("   store hit")]
    assert len(hits) == len([t for t in again.ran if ":" in t])  # every stage a store hit
    assert tree_bytes(first / "build") == tree_bytes(second / "build")
    # a pull request's build: reads the shared store, uploads nothing
    before = _remote_files("s3://builds/projects/example")
    pr = tmp_path / "pr"
    shutil.copytree(first, pr, ignore=shutil.ignore_patterns(".quantbuild", "build"))
    recipe = (pr / "base.yaml").read_text(encoding="utf-8")
    (pr / "base.yaml").write_text(recipe + "quantization: {bits: 16}\n", encoding="utf-8")
    changed = run_cli("build", cwd=pr, env={**env, "QUANTBUILD_CACHE_READONLY": "1"})
    assert changed.code == 0, changed.stderr
    assert "store hit" in changed.stdout and "quantize:base" in changed.ran  # hits and misses
    assert _remote_files("s3://builds/projects/example") == before


def test_a_project_whose_bucket_is_missing_fails_with_one_line(tmp_path, s3):
    env = {**s3, "QUANTBUILD_CACHE": "s3://missing-bucket/p", "QUANTBUILD_PROGRESS": "0"}
    project = make_project(tmp_path / "p")
    done = run_cli("build", cwd=project, env=env)
    assert done.code == 5
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "s3://missing-bucket/p" in errors[0], done.stderr


def test_an_entry_published_after_the_listing_is_found_when_announced(tmp_path, s3_env):
    url = "s3://builds/unit-e"
    client = Store(tmp_path / "client", remote=RemoteStore(url))
    assert client.lookup("stats", KEY) is None  # lists the stage: empty
    worker = Store(tmp_path / "worker", remote=RemoteStore(url))
    worker.publish("stats", KEY, _writer(b"from a worker"), {})
    assert client.lookup("stats", KEY) is None  # one listing per stage: not asked again
    found = client.lookup("stats", KEY, published=True)  # a worker said it published it
    assert found is not None and found.path("artifact.bin").read_bytes() == b"from a worker"
    other = "ab" + "2" * 62
    worker.publish("stats", other, _writer(b"later"), {})
    client.refresh()  # a long-lived process forgets its listings
    assert client.lookup("stats", other) is not None
