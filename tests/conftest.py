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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Where CI installed a system package (OPENSEEK_NANOCHAT_TESTS_REQUIRE="postgresql chromium"), a test that
    skips for want of it fails instead: a skip must never pass for coverage."""
    outcome = yield
    report = outcome.get_result()
    required = os.environ.get("OPENSEEK_NANOCHAT_TESTS_REQUIRE", "").lower().split()
    if report.skipped and required:
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if any(name in reason.lower() for name in required):
            report.outcome = "failed"
            report.longrepr = f"skipped, but CI installed what it needs: {reason}"
