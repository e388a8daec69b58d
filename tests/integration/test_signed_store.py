"""Trust in a shared store: entries signed with the team key, and a consumer that uses only
signed entries refuses a forgery (a tampered artifact whose manifest was recomputed to match)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builders import make_project
from cli_runner import run_cli, tree_bytes

from quantbuild.store.keys import digest

KEY = "7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"


def _signed_only(root: Path) -> Path:
    config = root / "doit.cfg"
    config.write_text(config.read_text().replace("store_signed = false", "store_signed = true"))
    return root


def _forge(entry: Path, name: str) -> None:
    """What someone with write access to the store could do: change a file and recompute its
    manifest so that every hash matches again (the signature cannot be recomputed)."""
    target = entry / name
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["digest"] = digest({n: f["sha256"] for n, f in manifest["files"].items()})
    (entry / "manifest.json").write_text(json.dumps(manifest))


def test_a_forged_entry_is_refused_by_a_consumer_that_trusts_only_signed_entries(tmp_path):
    store = tmp_path / "shared"
    env = {"QUANTBUILD_CACHE": str(store), "QUANTBUILD_STORE_KEY": KEY}
    writer = make_project(tmp_path / "writer" / "repo")
    assert run_cli("build", "-C", str(writer), env=env).code == 0
    manifests = [json.loads(p.read_text()) for p in store.glob("*/*/*/manifest.json")]
    assert manifests and all(m["signature"]["algorithm"] == "hmac-sha256" for m in manifests)

    reader = _signed_only(make_project(tmp_path / "reader" / "repo"))
    reused = run_cli("build", "-C", str(reader), env=env)
    assert reused.code == 0, reused.stderr
    assert (
        "warning" not in reused.stderr and reused.stdout.count("store hit") == 5
    )  # stats: no export

    (entry,) = (store / "quantize").glob("*/*")
    _forge(entry, "model.qdq.onnx")
    verified = run_cli("cache", "verify", "-C", str(reader), env=env)
    assert verified.code == 5
    assert f"bad quantize {entry.name[:12]}: wrong signature" in verified.stdout
    unsigned_reader = run_cli(
        "cache", "verify", "-C", str(writer), env={**env, "QUANTBUILD_STORE_KEY": ""}
    )
    assert unsigned_reader.code == 0  # hashes alone cannot tell: the forgery is consistent

    victim = _signed_only(make_project(tmp_path / "victim" / "repo"))
    built = run_cli("build", "-C", str(victim), env=env)
    assert built.code == 0, built.stderr
    assert f"warning: store entry {entry} not used: wrong signature" in built.stderr
    assert tree_bytes(victim / "build") == tree_bytes(writer / "build")  # the forgery unused
    assert run_cli("cache", "verify", "-C", str(reader), env=env).code == 0  # replaced


def test_store_signed_without_a_key_is_a_config_error(tmp_path):
    root = _signed_only(make_project(tmp_path / "p"))
    run = run_cli("build", "-C", str(root), env={"QUANTBUILD_STORE_KEY": ""})
    assert run.code == 2
    assert "store_signed is true but there is no key" in run.stderr


def test_strict_mode_stops_at_a_forged_entry_and_touches_nothing(tmp_path):
    store = tmp_path / "shared"
    env = {"QUANTBUILD_CACHE": str(store), "QUANTBUILD_STORE_KEY": KEY}
    writer = make_project(tmp_path / "writer" / "repo")
    assert run_cli("build", "-C", str(writer), env=env).code == 0
    (entry,) = (store / "quantize").glob("*/*")
    _forge(entry, "model.qdq.onnx")
    forged = tree_bytes(entry)

    victim = make_project(tmp_path / "victim" / "repo")
    strict = run_cli("build", "--strict", "-C", str(victim), env=env)
    assert strict.code == 5, strict.stderr
    assert f"{entry}: store entry not used: wrong signature" in strict.stderr
    assert "(store_signed = strict)" in strict.stderr
    assert "Traceback" not in strict.stderr
    assert tree_bytes(entry) == forged  # left for `cache verify --fix`, not replaced
    assert not (victim / "build" / "tiny" / "model.qdq.onnx").exists()

    config = victim / "doit.cfg"  # the same from doit.cfg, for plain `doit` runs
    config.write_text(config.read_text().replace("store_signed = false", "store_signed = strict"))
    assert run_cli("build", "-C", str(victim), env=env).code == 5
    no_key = run_cli("build", "-C", str(victim), env={**env, "QUANTBUILD_STORE_KEY": ""})
    assert no_key.code == 2 and "store_signed is strict but there is no key" in no_key.stderr
    config.write_text(config.read_text().replace("store_signed = strict", "store_signed = maybe"))
    bad = run_cli("build", "-C", str(victim), env=env)
    assert bad.code == 2 and "'maybe' is not one of true, false, strict" in bad.stderr


def test_strict_mode_builds_when_every_entry_is_signed(tmp_path):
    env = {"QUANTBUILD_CACHE": str(tmp_path / "shared"), "QUANTBUILD_STORE_KEY": KEY}
    first = make_project(tmp_path / "a" / "repo")
    assert run_cli("build", "--strict", "-C", str(first), env=env).code == 0
    second = make_project(tmp_path / "b" / "repo")
    reused = run_cli("build", "--strict", "-C", str(second), env=env)
    assert reused.code == 0 and reused.stdout.count("store hit") == 5, reused.stderr


def test_strict_without_a_key_says_what_it_needs(tmp_path):
    root = make_project(tmp_path / "p")
    run = run_cli("build", "--strict", "-C", str(root), env={"QUANTBUILD_STORE_KEY": ""})
    assert run.code == 2
    assert "quantbuild build --strict needs the store key: set QUANTBUILD_STORE_KEY" in run.stderr
