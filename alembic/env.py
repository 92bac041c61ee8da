"""Alembic's entry point. The service hands in a connection (app/jobs/migrate.py); the alembic CLI gets one from
the settings."""

from logging.config import fileConfig

from alembic import context
from sqlmodel import SQLModel

import app.jobs.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config


def migrate(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")
    connection = config.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    from openseek_nanochat.settings import get_settings

    from app.jobs.db import for_writing, make_engine

    engine = make_engine(get_settings().sqlalchemy_url)
    with for_writing(engine).connect() as connection:
        migrate(connection)
    engine.dispose()


main()
