"""`openseek-nanochat db upgrade|current`: the database schema (Alembic migrations). `serve` upgrades on start."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True)
    upgrade = sub.add_parser("upgrade", help="migrate the database to the newest schema (creating it if needed)")
    upgrade.add_argument("revision", nargs="?", default="head")
    sub.add_parser("current", help="print the database's schema revision and the newest one")


def run(args: argparse.Namespace) -> int:
    from openseek_nanochat.settings import get_settings

    from .db import make_engine
    from .migrate import current_revision, head_revision, upgrade

    settings = get_settings()
    if settings.database_url is None:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    url = engine.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "upgrade":
            upgrade(engine, args.revision)
        print(f"{url}: at revision {current_revision(engine)} (newest: {head_revision()})")
    finally:
        engine.dispose()
    return 0
