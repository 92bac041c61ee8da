import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(autouse=True, scope="session")
def offline_hugging_face(tmp_path_factory):
    """No test reaches the hub (this machine can't), and `datasets` caches stay out of the user's home."""
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"the shared test data is missing: {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh data dir for the test; inputs may come from it and from the shared test data."""
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("OPENSEEK_NANOCHAT_DATA_DIR", str(d))
    monkeypatch.setenv("OPENSEEK_NANOCHAT_INPUT_ROOTS", os.pathsep.join([str(d), str(SHARED_DATA), str(tmp_path)]))
    return d
