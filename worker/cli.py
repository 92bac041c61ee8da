"""`openseek-nanochat worker`: one worker that claims and runs jobs until SIGTERM or Ctrl-C.

Run as many as the machine has room for; with PostgreSQL as the database, on as many machines as share the data dir.
"""

import argparse

from openseek_nanochat.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import logging

    from openseek_nanochat.settings import get_settings

    from worker.loop import Worker

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check's chatter
    return Worker(get_settings()).run()


command = Command("run one worker that claims and runs jobs", add_arguments, run)
