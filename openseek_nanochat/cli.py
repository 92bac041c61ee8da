"""`openseek-nanochat <command>`: one entry point, each command in the module that owns it.

Each command module exposes `add_arguments(parser)` and `run(args) -> int` and keeps heavy imports inside `run`, so
`--help` is fast and the library never imports the web stack unless asked to serve.
"""

import argparse
import importlib
import sys

COMMANDS = {
    "convert": ("openseek_nanochat.convert_cli", "convert datasets into nanochat parquet shards"),
    "train": ("openseek_nanochat.train_cli", "train a tokenizer and a model on converted shards"),
    "serve": ("app.serve_cli", "run the HTTP API and worker processes"),
    "worker": ("worker.cli", "run one worker that claims and runs jobs"),
    "db": ("app.db_cli", "database migrations"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openseek-nanochat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue  # a command whose module is not there yet
            raise
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
