import pytest
from builders import make_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A ready recipe project in a temporary folder (store inside it)."""
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    return make_project(tmp_path / "proj")
