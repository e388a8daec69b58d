from pathlib import Path

import pytest
from builders import make_project

SLOW = (Path(__file__).parent / "integration", Path(__file__).parent / "test_example.py")


def pytest_collection_modifyitems(items):
    """End-to-end builds (tests/integration, the bundled example) are `slow`: a quick loop is
    `pytest -m "not slow"`; CI runs everything."""
    for item in items:
        if any(item.path == p or p in item.path.parents for p in SLOW):
            item.add_marker(pytest.mark.slow)
    # Longest first: with -n the workers then finish together instead of one worker running
    # the last end-to-end builds alone (the suite's wall time is its longest worker's).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A ready recipe project in a temporary folder (store inside it)."""
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    return make_project(tmp_path / "proj")
