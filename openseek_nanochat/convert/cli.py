"""`openseek-nanochat convert`: a spec file, or the OpenSeek example's flags (--dataset, --num-shards, ...)."""

import argparse
import json
import re
import sys
from pathlib import Path

from openseek_nanochat.cli import Command

FLAG_HELP = "the OpenSeek example's flags; they build the spec when no SPEC file is given"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="a ConvertSpec JSON file, or - for stdin")
    parser.add_argument("--events", action="store_true", help="print progress events (for workers) instead of a bar")
    parser.add_argument(
        "--processes",
        type=int,
        help="cores to keep busy (default: the spec's, else every usable core); the output is the same for any number",
    )
    flags = parser.add_argument_group("spec from flags", FLAG_HELP)
    flags.add_argument("--dataset", help="a Hugging Face dataset id, a local dataset dir, or files/globs")
    flags.add_argument("--num-shards", type=int, help="shards to create, the val shard included (-1: all data)")
    flags.add_argument("--shard-size", type=int, help="characters per shard (default 250M)")
    flags.add_argument("--text-column", help="column holding the text (default: text)")
    flags.add_argument("--text-template", help="e.g. '{question}\\n{answer}'")
    flags.add_argument(
        "--streaming",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream a Hugging Face dataset instead of downloading it whole (default: on)",
    )
    flags.add_argument("--split", help="dataset split (default: train)")
    flags.add_argument("--output-dir", help="a folder inside <data dir>/datasets/ (default: .../<name>)")
    flags.add_argument("--name", help="names the default output dir")
    flags.add_argument("--max-docs", type=int)
    flags.add_argument("--max-chars", type=int)
    flags.add_argument("--val-docs", type=int)
    flags.add_argument("--seed", type=int)
    flags.add_argument("--no-shuffle", action="store_true")
    openseek = parser.add_argument_group(
        "spec from an OpenSeek training config", "convert the Megatron parts an OpenSeek/FlagScale config trains on"
    )
    openseek.add_argument("--openseek-config", help="the training YAML: its data.data_path and data.tokenizer")
    openseek.add_argument("--dataset-base-dir", help="what ${experiment.dataset_base_dir} stands for")
    openseek.add_argument("--experiment-config", help="the Hydra experiment YAML that sets dataset_base_dir")


def spec_from_flags(args: argparse.Namespace) -> dict:
    """The spec the OpenSeek example's command line means."""
    dataset = args.dataset
    local = Path(dataset).expanduser()
    text = {k: v for k, v in {"text_column": args.text_column, "text_template": args.text_template}.items() if v}
    if local.is_file() or any(c in dataset for c in "*?["):
        source = {"type": "files", "paths": [dataset], **text}
    else:
        source = {"type": "hf", "dataset": dataset, **text}
        if args.streaming is not None:
            source["streaming"] = args.streaming
        if args.split:
            source["split"] = args.split
    spec = {"sources": [source], "name": re.sub(r"[^A-Za-z0-9._-]+", "_", local.name or dataset).strip("._-")[:128]}
    optional = {
        "chars_per_shard": args.shard_size,
        "output_dir": args.output_dir,
        "max_docs": args.max_docs,
        "max_chars": args.max_chars,
        "val_docs": args.val_docs,
        "seed": args.seed,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    if args.name:
        spec["name"] = args.name
    if args.num_shards is not None and args.num_shards != -1:
        spec["max_shards"] = args.num_shards
    if args.no_shuffle:
        spec["shuffle"] = False
    return spec


def spec_from_openseek_config(args: argparse.Namespace) -> dict:
    """One megatron source reading what the training config reads; the general flags apply as with --dataset."""
    source = {"type": "megatron", "openseek_config": args.openseek_config}
    for field in ("dataset_base_dir", "experiment_config"):
        if getattr(args, field):
            source[field] = getattr(args, field)
    args.dataset = args.openseek_config
    spec = spec_from_flags(args)
    spec["sources"] = [source]
    if not args.name:  # the output dir is named after the config file
        spec["name"] = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.openseek_config).stem).strip("._-")[:128]
    return spec


def load_spec_dict(args: argparse.Namespace) -> dict:
    if sum(map(bool, (args.spec, args.dataset, args.openseek_config))) > 1:
        raise SystemExit("give one of a SPEC file, --dataset or --openseek-config")
    if (args.dataset_base_dir or args.experiment_config) and not args.openseek_config:
        raise SystemExit("--dataset-base-dir and --experiment-config go with --openseek-config")
    if args.openseek_config:
        return spec_from_openseek_config(args)
    if args.dataset:
        return spec_from_flags(args)
    if not args.spec:
        raise SystemExit("give a SPEC file (or - for stdin), --dataset or --openseek-config; see --help")
    text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{args.spec}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def with_processes(spec: dict, args: argparse.Namespace) -> dict:
    """--processes overrides the spec's: how a run is spread over cores is the machine's business, not the data's."""
    if args.processes is not None and isinstance(spec, dict):
        spec = {**spec, "processes": args.processes}
    return spec


class ProgressBar:
    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {postfix}", dynamic_ncols=True)

    def __call__(self, p: dict) -> None:
        if p.get("fraction") is not None:
            self.bar.n = round(100 * p["fraction"], 1)
        eta = f", ETA {p['eta_s']:.0f}s" if p.get("eta_s") else ""
        self.bar.set_postfix_str(
            f"{p['docs']:,} docs, {p['chars'] / 1e6:,.1f} MB, {p['shards']} shards, "
            f"{p['rate']:,.0f} docs/s, {p['mb_per_s']:.1f} MB/s{eta}"
        )

    def close(self):
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from openseek_nanochat import events
    from openseek_nanochat.convert import manifest as manifest_file
    from openseek_nanochat.convert.run import convert
    from openseek_nanochat.convert.spec import ConvertSpec
    from openseek_nanochat.errors import InputError
    from openseek_nanochat.paths import PathPolicyError

    try:
        spec = ConvertSpec.model_validate(with_processes(load_spec_dict(args), args))
    except ValidationError as e:
        print(f"invalid spec: {e}", file=sys.stderr)
        return 2
    progress = (lambda p: events.emit("progress", **p)) if args.events else ProgressBar()
    try:
        manifest = convert(spec, on_progress=progress)
    except (InputError, PathPolicyError) as e:
        where = getattr(e, "where", None)
        if args.events:
            events.emit("error", message=getattr(e, "message", str(e)), where=where)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.events:
            progress.close()
    totals = manifest["totals"]
    summary = {
        "output_dir": manifest["output_dir"],
        "manifest": str(Path(manifest["output_dir"]) / manifest_file.NAME),
        **totals,
    }
    if args.events:
        events.emit("result", **summary)
    else:
        print(
            f"wrote {totals['shards']} shards ({totals['train_shards']} train + 1 val), {totals['docs']:,} docs, "
            f"{totals['chars']:,} chars, {totals['bytes'] / 1e6:,.1f} MB to {manifest['output_dir']}"
        )
        skipped = totals["skipped"]
        if any(skipped.values()):
            print("skipped: " + ", ".join(f"{k}={v:,}" for k, v in sorted(skipped.items()) if v))
    return 0


command = Command("convert datasets into nanochat parquet shards", add_arguments, run)
