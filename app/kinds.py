"""The kinds of job, and for each what the control plane needs to know: its spec, its submit-time checks, its command.

Adding a kind is one `JobKind` entry: the API grows a `POST /jobs/<name>` route from it and workers run its command.
Heavy imports (the conversion engine, torch) stay inside the functions, so the API and workers start fast.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from openseek_nanochat.settings import Settings
from openseek_nanochat.spec import ConvertSpec


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_model: type[BaseModel]
    # Checks everything knowable at submit (raising InputError, PathPolicyError or another ValueError with a message a
    # user can act on) and fills defaults that depend on the job id. Returns the spec the job will run.
    prepare: Callable[[BaseModel, Settings, str], BaseModel]
    # The job process's argv, given the file holding the prepared spec (JSON).
    command: Callable[[Path], list[str]]
    # Folders the job writes outside its job dir; `DELETE /jobs/{id}?purge=true` removes them.
    outputs: Callable[[dict], list[str]]
    # The manifest describing the outputs, if this kind writes one.
    manifest: Callable[[dict], Path | None] = lambda spec: None
    summary: str = ""
    examples: dict[str, Any] = field(default_factory=dict)  # OpenAPI examples for the request body


def _prepare_convert(spec: ConvertSpec, settings: Settings, job_id: str) -> ConvertSpec:
    from openseek_nanochat import convert

    return convert.prepare(spec, settings, job_id)


def _cli_command(subcommand: str) -> Callable[[Path], list[str]]:
    return lambda spec_file: [sys.executable, "-m", "openseek_nanochat.cli", subcommand, str(spec_file), "--events"]


CONVERT = JobKind(
    name="convert",
    spec_model=ConvertSpec,
    prepare=_prepare_convert,
    command=_cli_command("convert"),
    outputs=lambda spec: [spec["output_dir"]],
    manifest=lambda spec: Path(spec["output_dir"]) / "manifest.json",
    summary="Convert datasets into nanochat parquet shards",
    examples={
        "jsonl": {
            "summary": "JSONL files with a template over two columns",
            "value": {
                "name": "gsm8k",
                "sources": [{"type": "files", "paths": ["/data/gsm8k/*.jsonl"], "text_template": "{question}\n{answer}"}],
                "chars_per_shard": 1_000_000,
            },
        },
        "mixture": {
            "summary": "A weighted mixture of a text file and Megatron datasets",
            "value": {
                "name": "mix",
                "sources": [
                    {"type": "files", "paths": ["/data/books.txt"], "format": "text", "weight": 1.0},
                    {
                        "type": "megatron",
                        "data_path": [3.0, "/data/arxiv/007_00000_text_document"],
                        "tokenizer": {"type": "qwen", "path": "/data/qwen.tiktoken"},
                        "weight": 2.0,
                    },
                ],
                "seed": 7,
            },
        },
    },
)

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (CONVERT,)}

# Kinds the API names before they can run: submitting one answers 422 with this reason.
PLANNED: dict[str, str] = {"train": "training is not available yet"}
