"""`openseek-nanochat train SPEC.json [--events]`: run a train job in the foreground.

The run dir is <data dir>/runs/<$OPENSEEK_NANOCHAT_JOB_ID>, or runs/spec-<hash> without a job id; running the same
spec again continues it from its last checkpoint.
"""

import argparse
import json
import sys

from openseek_nanochat.cli import Command, fail, read_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a TrainSpec JSON file")
    parser.add_argument("--events", action="store_true", help="print progress/metric/result events for a worker")


def run(args) -> int:
    from openseek_nanochat.errors import InputError
    from openseek_nanochat.settings import get_settings
    from openseek_nanochat.train import job
    from openseek_nanochat.train.spec import TrainSpec

    try:
        spec = read_spec(args.spec, TrainSpec)
    except InputError as e:
        return fail(e.message, e.where, args.events)
    settings = get_settings()
    try:
        spec = job.prepare(spec, settings)
        run_dir = job.run_dir_for(spec, settings)
        result = job.run(spec, run_dir, events=args.events)
    except InputError as e:
        return fail(e.message, e.where, args.events)
    except RuntimeError as e:  # the trainer crashed: its output above says why
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


command = Command("train a tokenizer and a model on converted shards", add_arguments, run)
