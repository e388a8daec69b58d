"""The content-addressed store: publish, lookup, damaged entries as misses, atomic publishing,
concurrent writers, a read-only shared store, and what maintenance may touch."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quantbuild.errors import StoreError
from quantbuild.pipeline.store_admin import leftovers, scan
from quantbuild.store import entries as store_module
from quantbuild.store.entries import LOCKS, MANIFEST, Store, discard
from quantbuild.store.keys import digest

KEY = "ab" + "0" * 62
OTHER_KEY = "cd" + "1" * 62


def _writer(files: dict[str, bytes], meta: dict | None = None):
    def build(folder: Path) -> dict:
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return meta if meta is not None else {"files": len(files)}

    return build


FILES = {"model.onnx": b"\x08\x07model bytes", "sub/stats.npz": b"stats" * 100}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith((".tmp-", ".trash-")))


def test_publish_then_lookup(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES, {"frames": 8}), {"recipe": "base"})
    assert entry.dir == tmp_path / "store" / "stats" / "ab" / KEY
    assert entry.path("model.onnx").read_bytes() == FILES["model.onnx"]
    assert entry.path("sub/stats.npz").read_bytes() == FILES["sub/stats.npz"]
    assert entry.meta == {"frames": 8}
    found = store.lookup("stats", KEY)
    assert found is not None
    assert found.dir == entry.dir and found.manifest == entry.manifest
    manifest = json.loads((entry.dir / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["stage"] == "stats" and manifest["key"] == KEY
    assert manifest["record"] == {"recipe": "base"}
    assert manifest["files"] == {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in FILES.items()
    }
    assert sorted(p.name for p in entry.dir.iterdir()) == [MANIFEST, "model.onnx", "sub"]
    # other stages and keys miss
    assert store.lookup("prepare", KEY) is None
    assert store.lookup("stats", OTHER_KEY) is None
    assert _leftovers(store.root) == []


def test_digest_depends_only_on_file_contents(tmp_path):
    store = Store(tmp_path / "store")
    a = store.publish("stats", KEY, _writer(FILES, {"x": 1}), {"r": 1})
    b = store.publish("ranges", OTHER_KEY, _writer(dict(reversed(FILES.items())), {"y": 2}), {})
    assert a.digest == b.digest
    expected = digest({n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()})
    assert a.digest == expected
    changed = dict(FILES, **{"model.onnx": b"\x08\x07model bytez"})
    c = store.publish("stats", "ef" + "2" * 62, _writer(changed), {})
    assert c.digest != a.digest
    renamed = {"renamed.onnx": FILES["model.onnx"], "sub/stats.npz": FILES["sub/stats.npz"]}
    d = store.publish("stats", "ef" + "3" * 62, _writer(renamed), {})
    assert d.digest != a.digest  # file names are part of the content


def test_truncated_file_is_a_miss_and_republish_replaces_it(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    target = entry.path("sub/stats.npz")
    target.write_bytes(target.read_bytes()[:10])
    assert store.lookup("stats", KEY) is None
    again = store.publish("stats", KEY, _writer(FILES), {})
    assert again.path("sub/stats.npz").read_bytes() == FILES["sub/stats.npz"]
    assert store.lookup("stats", KEY) is not None
    assert _leftovers(store.root) == []
    assert len(list((store.root / "stats" / "ab").iterdir())) == 1


def test_missing_file_is_a_miss(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    entry.path("model.onnx").unlink()
    assert store.lookup("stats", KEY) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "null",
        "[]",
        '"text"',
        '{"stage": "stats"}',
        '{"stage": "stats", "key": "KEY", "files": 3}',
        '{"stage": "stats", "key": "KEY", "files": {"model.onnx": 5}}',
        '{"stage": "stats", "key": "KEY", "files": {"model.onnx": {}}}',
        '{"stage": "other", "key": "KEY", "files": {}}',
    ],
    ids=[
        "empty",
        "syntax",
        "null",
        "list",
        "string",
        "no-key",
        "files-number",
        "info-number",
        "info-empty",
        "wrong-stage",
    ],
)
def test_corrupt_manifest_is_a_miss_and_republish_replaces_it(tmp_path, text):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    (entry.dir / MANIFEST).write_text(text.replace("KEY", KEY), encoding="utf-8")
    assert store.lookup("stats", KEY) is None
    again = store.publish("stats", KEY, _writer(FILES, {"second": True}), {})
    assert again.meta == {"second": True}
    found = store.lookup("stats", KEY)
    assert found is not None and found.meta == {"second": True}
    assert _leftovers(store.root) == []


def test_failing_build_leaves_nothing(tmp_path):
    store = Store(tmp_path / "store")

    def build(folder: Path) -> dict:
        (folder / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        store.publish("stats", KEY, build, {})
    assert store.lookup("stats", KEY) is None
    assert not store.entry_dir("stats", KEY).exists()
    assert _leftovers(store.root) == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_keyboard_interrupt_during_build_leaves_nothing(tmp_path):
    store = Store(tmp_path / "store")

    def build(folder: Path) -> dict:
        (folder / "half.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.publish("stats", KEY, build, {})
    assert _leftovers(store.root) == []
    assert not store.entry_dir("stats", KEY).exists()


def test_failing_build_keeps_an_existing_entry(tmp_path):
    store = Store(tmp_path / "store")
    store.publish("stats", KEY, _writer(FILES), {})

    def build(folder: Path) -> dict:
        raise ValueError("boom")

    assert store.publish("stats", KEY, build, {}).manifest["files"]  # a hit: no build at all
    with pytest.raises(ValueError):  # a forced rebuild that fails
        store.publish("stats", KEY, build, {}, replace=True)
    found = store.lookup("stats", KEY)
    assert found is not None and found.path("model.onnx").read_bytes() == FILES["model.onnx"]


def test_publishing_the_same_key_twice_keeps_one_entry(tmp_path):
    store = Store(tmp_path / "store")
    first = store.publish("stats", KEY, _writer(FILES, {"n": 1}), {})
    second = store.publish("stats", KEY, _writer(FILES, {"n": 2}), {})
    # the intact first entry wins; the second build's output is discarded
    assert second.dir == first.dir
    assert second.manifest == first.manifest
    assert store.lookup("stats", KEY).meta == {"n": 1}
    assert [p.name for p in (store.root / "stats" / "ab").iterdir()] == [KEY]
    assert sorted(os.listdir(store.root / "stats")) == ["ab"]
    assert _leftovers(store.root) == []


def test_remove_deletes_the_store(tmp_path):
    store = Store(tmp_path / "store")
    store.publish("stats", KEY, _writer(FILES), {})
    store.remove()
    assert not store.root.exists()
    assert store.lookup("stats", KEY) is None


# -- integrity: sha256 against the manifest, hashed once per process --------------------------


def test_changed_byte_of_the_same_size_is_a_miss(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    target = entry.path("model.onnx")
    data = bytearray(target.read_bytes())
    data[3] ^= 0xFF
    target.write_bytes(bytes(data))
    assert Store(store.root).lookup("stats", KEY) is None  # a fresh process: sizes still match
    again = store.publish("stats", KEY, _writer(FILES), {})
    assert again.path("model.onnx").read_bytes() == FILES["model.onnx"]
    assert Store(store.root).lookup("stats", KEY) is not None
    assert _leftovers(store.root) == []


def test_an_entry_is_hashed_once_per_process_until_its_files_change(tmp_path, monkeypatch):
    hashed: list[str] = []
    real = store_module.file_sha256
    monkeypatch.setattr(
        store_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path)
    )
    writer = Store(tmp_path / "store")
    entry = writer.publish("stats", KEY, _writer(FILES), {})
    hashed.clear()
    assert writer.lookup("stats", KEY) is not None
    assert hashed == []  # the writer hashed these bytes while publishing

    reader = Store(tmp_path / "store")  # another process
    for _ in range(3):
        assert reader.lookup("stats", KEY) is not None
    assert sorted(hashed) == ["model.onnx", "stats.npz"]

    hashed.clear()
    target = entry.path("model.onnx")
    target.write_bytes(b"\x08\x07model bytez")  # same size, new mtime
    stamp = target.stat().st_mtime_ns + 1_000_000_000  # coarse clocks: make the change visible
    os.utime(target, ns=(stamp, stamp))
    assert reader.lookup("stats", KEY) is None
    assert "model.onnx" in hashed


def test_a_lookup_marks_the_entry_as_used_for_gc(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    os.utime(entry.dir, (1_000_000, 1_000_000))
    assert Store(store.root).lookup("stats", KEY) is not None
    assert entry.dir.stat().st_mtime > 1_000_000


# -- concurrent writers ------------------------------------------------------------------------


def test_a_writer_that_finishes_second_keeps_the_first_writers_entry(tmp_path):
    ours, theirs = Store(tmp_path / "store"), Store(tmp_path / "store")
    won = {}

    def build(folder: Path) -> dict:
        # Another process publishes the same key while we are still building (one that takes
        # no lease: another host whose file system has no locks).
        won["entry"] = theirs._publish("stats", KEY, _writer(FILES, {"by": "them"}), {}, False)
        return _writer(FILES, {"by": "us"})(folder)

    entry = ours.publish("stats", KEY, build, {})
    assert entry.dir == won["entry"].dir and entry.meta == {"by": "them"}
    assert entry.path("sub/stats.npz").read_bytes() == FILES["sub/stats.npz"]
    assert Store(tmp_path / "store").lookup("stats", KEY).meta == {"by": "them"}
    assert _leftovers(ours.root) == []


def test_a_bad_entry_replaced_by_another_writer_meanwhile_is_kept(tmp_path):
    ours, theirs = Store(tmp_path / "store"), Store(tmp_path / "store")
    bad = ours.publish("stats", KEY, _writer(FILES), {})
    bad.path("model.onnx").write_bytes(b"\x08\x07model bytez")

    def build(folder: Path) -> dict:
        theirs._publish("stats", KEY, _writer(FILES, {"by": "them"}), {}, False)  # no lease
        return _writer(FILES, {"by": "us"})(folder)

    entry = Store(tmp_path / "store").publish("stats", KEY, build, {})
    assert entry.meta == {"by": "them"}
    assert entry.path("model.onnx").read_bytes() == FILES["model.onnx"]
    assert _leftovers(ours.root) == []


def test_discard_removes_only_the_folder_it_judged(tmp_path):
    store = Store(tmp_path / "store")
    entry = store.publish("stats", KEY, _writer(FILES), {})
    judged_earlier = entry.dir.stat().st_ino + 1  # the bad folder that was there before
    # A fresh entry published after the check is put back, not deleted.
    assert discard(entry.dir, judged_earlier) is False
    assert Store(store.root).lookup("stats", KEY) is not None
    assert discard(entry.dir, entry.dir.stat().st_ino) is True
    assert not entry.dir.exists()
    assert discard(entry.dir, 0) is False  # already gone
    assert _leftovers(store.root) == []


@pytest.mark.parametrize("round_", range(3))  # a lost race shows in nearly every round
def test_many_writers_racing_over_a_bad_entry_all_succeed(tmp_path, round_):
    root = tmp_path / "store"
    Store(root).publish("stats", KEY, _writer({"model.onnx": b"bad"}), {})
    (root / "stats" / "ab" / KEY / MANIFEST).write_text("{broken", encoding="utf-8")
    start = threading.Barrier(8)

    def build(folder: Path) -> dict:
        start.wait()  # finish together: every rename races
        return _writer(FILES)(folder)

    def publish(_: int):
        # One Store per writer process, racing without leases (hosts without file locks).
        return Store(root)._publish("stats", KEY, build, {}, False)

    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(publish, range(8)))
    assert {e.dir for e in entries} == {root / "stats" / "ab" / KEY}
    assert len({e.digest for e in entries}) == 1
    found = Store(root).lookup("stats", KEY)
    assert found is not None and found.path("model.onnx").read_bytes() == FILES["model.onnx"]
    assert os.listdir(root / "stats" / "ab") == [KEY]
    assert _leftovers(root) == []


def test_concurrent_writers_of_one_key_build_it_once(tmp_path):
    root = tmp_path / "store"
    builds: list[int] = []

    def build(folder: Path) -> dict:
        builds.append(1)
        time.sleep(0.2)  # long enough for every other writer to be waiting on the lease
        return _writer(FILES)(folder)

    waits: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        entries = list(
            pool.map(
                lambda _: Store(root, warn=waits.append).publish("stats", KEY, build, {}), range(4)
            )
        )
    assert len(builds) == 1 and len({e.dir for e in entries}) == 1
    assert waits and all(
        "waiting for another process building this stats entry" in w for w in waits
    )
    assert not list((root / LOCKS).iterdir())  # leases are removed when released
    assert _leftovers(root) == []


def test_an_unwritable_store_is_a_one_line_store_error(tmp_path):
    (tmp_path / "store").write_text("not a folder")
    with pytest.raises(StoreError, match="QUANTBUILD_CACHE_READONLY=1") as err:
        Store(tmp_path / "store").publish("stats", KEY, _writer(FILES), {})
    assert "\n" not in str(err.value) and str(tmp_path / "store") in str(err.value)


# -- read-only shared store ---------------------------------------------------------------------


def _listing(root: Path) -> dict[str, tuple]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(root.rglob("*"))
    }


def test_read_only_store_serves_hits_and_misses_go_to_the_local_store(tmp_path):
    shared = Store(tmp_path / "shared")
    shared.publish("stats", KEY, _writer(FILES, {"from": "shared"}), {})
    os.utime(shared.entry_dir("stats", KEY), (1_000_000, 1_000_000))
    before = _listing(shared.root)

    layered = Store(tmp_path / "local", read_only=shared.root)
    hit = layered.lookup("stats", KEY)
    assert hit is not None and hit.dir == shared.entry_dir("stats", KEY)
    assert layered.lookup("stats", OTHER_KEY) is None
    built = layered.publish("stats", OTHER_KEY, _writer(FILES, {"from": "local"}), {})
    assert built.dir == tmp_path / "local" / "stats" / "cd" / OTHER_KEY
    assert Store(tmp_path / "local", read_only=shared.root).lookup("stats", OTHER_KEY).meta == {
        "from": "local"
    }
    # the shared store first, even when the local one has the key too
    layered.publish("stats", KEY, _writer(FILES, {"from": "local"}), {})
    assert Store(tmp_path / "local", read_only=shared.root).lookup("stats", KEY).meta == {
        "from": "shared"
    }
    assert _listing(shared.root) == before  # not even an mtime changed


# -- maintenance: what `quantbuild cache gc` may touch ------------------------------------------


def test_scan_lists_only_entry_folders_of_known_stages(tmp_path):
    store = Store(tmp_path / "store")
    store.publish("stats", KEY, _writer(FILES), {})
    store.publish("ranges", OTHER_KEY, _writer(FILES), {})
    for stray in ("stats/ab/notakey", "stats/zz/" + KEY, "mystage/ab/" + KEY, "stats/.tmp-x"):
        (store.root / stray).mkdir(parents=True)
    found = [(e.stage, e.key, e.size) for e in scan(store.root)]
    size = sum(len(d) for d in FILES.values())
    manifest_size = (store.entry_dir("stats", KEY) / MANIFEST).stat().st_size
    assert found == [("stats", KEY, size + manifest_size), ("ranges", OTHER_KEY, found[1][2])]


def test_leftovers_are_old_staging_and_trash_folders_of_gone_writers(tmp_path):
    root = tmp_path / "store"
    host = socket.gethostname()
    now = time.time()
    folders = {
        "dead": root / "stats" / f".tmp-{host}-999999999-abc",
        "live": root / "stats" / f".tmp-{host}-{os.getpid()}-abc",
        "young": root / "stats" / f".tmp-{host}-999999998-abc",  # dead: whatever its age
        "elsewhere": root / "ranges" / ".tmp-other-host-1-abc",
        "young_elsewhere": root / "ranges" / ".tmp-other-host-2-abc",  # may still run
        "trash": root / "stats" / "ab" / ".trash-abc",
        "unknown_stage": root / "mystage" / ".tmp-x-1-abc",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        if not name.startswith("young"):
            os.utime(folder, (now - 7200, now - 7200))
    found = set(leftovers(root, now))
    assert found == {folders[n] for n in ("dead", "young", "elsewhere", "trash")}
