"""`openseek-nanochat <command>`: one entry point; each command lives in the package that owns it.

A command is a `Command` (help, add_arguments, run) whose module keeps heavy imports inside `run`, so `--help` is
fast. Commands are found through the `openseek_nanochat.commands` entry points (pyproject.toml): the library's own
(convert, train) and the service's (serve, db, worker), which live in `app` and `worker`. The library never imports
those packages by name, so it installs and runs without the web stack.
"""

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import NamedTuple

COMMAND_GROUP = "openseek_nanochat.commands"


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def fail(message: str, where: str | None, events: bool) -> int:
    """A job command's failure: an `error` event for its worker (with --events) and one line for a person; exit 2."""
    if events:
        from openseek_nanochat.events import emit

        emit("error", message=message, where=where)
    print(f"error: {where + ': ' if where else ''}{message}", file=sys.stderr)
    return 2


def read_spec(path: str, model):
    """The spec file at `path` as an instance of `model` (a pydantic model); InputError naming the file and every
    field that is wrong."""
    from pydantic import ValidationError

    from openseek_nanochat.errors import InputError

    try:
        with open(path, encoding="utf-8") as f:
            return model.model_validate_json(f.read())
    except OSError as e:
        raise InputError(f"cannot read the spec: {e}", path) from None
    except ValidationError as e:
        errors = (f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in e.errors())
        raise InputError("; ".join(errors), path) from None


def commands() -> dict[str, Command]:
    """Every installed command (the project must be installed, `pip install -e .` for a checkout: entry points are
    package metadata)."""
    return {ep.name: ep.load() for ep in entry_points(group=COMMAND_GROUP)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openseek-nanochat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in commands().items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(command_parser)
        command_parser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
