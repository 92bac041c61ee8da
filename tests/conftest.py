import os
from collections import Counter
from pathlib import Path

import pytest

from app.jobs.db import make_engine, writing
from app.jobs.migrate import upgrade
from app.jobs.models import Job, Worker

import syspackages
from serverutil import start_postgres

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


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster, shared by one module's tests."""
    with start_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs("postgresql"))])
def engine(request, tmp_path):
    """The jobs database, migrated and empty, on SQLite and on PostgreSQL (a test runs once on each)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    with writing(engine) as session:  # a PostgreSQL cluster is shared by the module's tests
        session.execute(Job.__table__.delete())
        session.execute(Worker.__table__.delete())
    yield engine
    engine.dispose()


@pytest.fixture
def datasets(data_dir) -> Path:
    """`<data dir>/datasets`: a conversion's output_dir must be a folder inside it."""
    return data_dir / "datasets"


# Tests marked `needs(package)` drive a system package for real (tests/syspackages.py). Where it is missing they
# skip, unless OPENSEEK_NANOCHAT_TESTS_REQUIRE names it (CI installed it): then they fail, as a skip must never pass
# for coverage.
MISSING = set(syspackages.missing())
REQUIRED = set(os.environ.get("OPENSEEK_NANOCHAT_TESTS_REQUIRE", "").lower().split())
WANTING: dict[str, str] = {}  # test id -> the missing package it skips for
SKIPPED: dict[str, list[str]] = {}  # package -> the tests that skipped for want of it


def needs(item) -> set[str]:
    packages = {package for mark in item.iter_markers("needs") for package in mark.args}
    unknown = packages - syspackages.PACKAGES.keys()
    assert not unknown, f"{item.nodeid}: tests/syspackages.py knows no package {unknown}"
    return packages


@pytest.hookimpl(trylast=True)  # after -k/-m deselected what will not run
def pytest_collection_modifyitems(items):
    for item in items:
        missing = sorted(needs(item) & MISSING)
        if missing and not REQUIRED.intersection(missing):  # a required one fails the test in pytest_runtest_setup
            WANTING[item.nodeid] = missing[0]
            item.add_marker(pytest.mark.skip(reason=f"needs the system package {missing[0]}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if missing := needs(item) & MISSING & REQUIRED:
        pytest.fail(
            f"needs {' and '.join(sorted(missing))}, which OPENSEEK_NANOCHAT_TESTS_REQUIRE names: "
            f"{syspackages.install_command(sorted(missing))}",
            pytrace=False,
        )


def pytest_runtest_logreport(report):
    if report.skipped and report.nodeid in WANTING:
        SKIPPED.setdefault(WANTING[report.nodeid], []).append(report.nodeid)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside the terminal's own summary: this line comes after it
def pytest_terminal_summary(terminalreporter):
    """One line: which tests skipped for a missing system package, and the command that installs it."""
    yield
    if SKIPPED:
        files = Counter(nodeid.split("::")[0] for ids in SKIPPED.values() for nodeid in ids)
        tests = ", ".join(f"{path} ({count})" for path, count in sorted(files.items()))
        packages = sorted(SKIPPED)
        terminalreporter.write_line(
            f"skipped for want of {' and '.join(packages)}: {tests}; to run them: "
            f"{syspackages.install_command(packages)}",
            yellow=True,
            bold=True,
        )
