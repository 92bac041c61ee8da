"""`openseek-nanochat sample SPEC.json` and `openseek-nanochat eval SPEC.json` [--events]: a sample or eval job in the
foreground. The spec must name its checkpoint (as a submit fills it in: a job's spec.json has it)."""

import argparse
import json

from openseek_nanochat.cli import Command, fail, read_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a prepared SampleSpec or EvalSpec JSON file")
    parser.add_argument("--events", action="store_true", help="print progress/result events for a worker")


def _runner(kind: str):
    def run(args) -> int:
        from openseek_nanochat.errors import InputError
        from openseek_nanochat.probe import evaluate, sample
        from openseek_nanochat.probe.spec import EvalSpec, SampleSpec
        from openseek_nanochat.train.job import emitter

        model, runner = {"sample": (SampleSpec, sample.run), "eval": (EvalSpec, evaluate.run)}[kind]
        try:
            spec = read_spec(args.spec, model)
        except InputError as e:
            return fail(e.message, e.where, args.events)
        if spec.checkpoint is None:
            return fail("no checkpoint: submit the spec to the service, which finds it", "checkpoint", args.events)
        try:
            result = runner(spec, emitter(args.events))
        except (OSError, RuntimeError) as e:
            return fail(str(e), None, args.events)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0

    return run


sample = Command("sample text from a train job's checkpoint", add_arguments, _runner("sample"))
evaluate = Command("bits per byte of a train job's checkpoint on a validation shard", add_arguments, _runner("eval"))
