"""The content-addressed store: publish, lookup, damaged entries as misses, atomic publishing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from quantbuild.build.keys import digest
from quantbuild.build.store import MANIFEST, Store

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

    with pytest.raises(ValueError):
        store.publish("stats", KEY, build, {})
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
