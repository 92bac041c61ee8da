"""`openseek-nanochat db upgrade`: creates the schema the models describe, is idempotent, and workers refuse a database
that is not at it."""

import subprocess

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import app.jobs.models  # noqa: F401  (the tables, on SQLModel.metadata)
from app.jobs.db import make_engine

from serverutil import cli, service_env


def test_db_upgrade_creates_the_models_schema(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir)
    database = data_dir / "jobs.db"
    for _ in range(2):  # the second run finds nothing to do
        done = subprocess.run(cli("db", "upgrade"), env=env, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == f"sqlite:///{database}: at revision 0003 (newest: 0003)"
    engine = make_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []  # the migrations and the models agree
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_worker_refuses_a_database_without_the_schema(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    done = subprocess.run(cli("worker"), env=service_env(data_dir), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "is at schema revision none, this code needs 0003: run `openseek-nanochat db upgrade`" in done.stderr
