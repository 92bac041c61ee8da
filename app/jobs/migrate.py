"""Schema migrations (Alembic), run by `openseek-nanochat db upgrade` and at the start of `serve`."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from app.jobs.db import for_writing

APP = Path(__file__).resolve().parents[1]


def migrations_dir() -> Path:
    """The top-level alembic/ folder: in a checkout (beside alembic.ini), or where a wheel installed it (pyproject.toml
    maps it to the package app.migrations)."""
    checkout = APP.parent
    if (checkout / "alembic.ini").is_file():
        return checkout / "alembic"
    return APP / "migrations"


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    # On SQLite the write lock is taken before Alembic reads the current revision, so two processes upgrading at once
    # run one after the other instead of both creating the tables.
    with for_writing(engine).connect() as connection:
        command.upgrade(alembic_config(connection), revision)
        connection.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def check_schema(engine: Engine) -> None:
    """Fail with the fix when the database is not at the schema this code expects."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SystemExit(
            f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current or 'none'}, this code needs {head}: run `openseek-nanochat db upgrade`"
        )
