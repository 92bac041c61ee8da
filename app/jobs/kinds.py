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
from sqlalchemy import Engine

from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.probe.spec import EvalSpec, SampleSpec
from openseek_nanochat.settings import Settings
from openseek_nanochat.train.spec import TrainSpec

from app.jobs.placement import Needs


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_model: type[BaseModel]
    # Checks everything knowable at submit (raising InputError, PathPolicyError or another ValueError with a message a
    # user can act on) and fills defaults that depend on the job id. Returns the spec the job will run. The engine
    # lets a spec refer to other jobs (a train job names the convert job whose shards it reads).
    prepare: Callable[[BaseModel, Settings, str, Engine], BaseModel]
    # The job process's argv, given the file holding the prepared spec (JSON).
    command: Callable[[Path], list[str]]
    # Folders the job (spec, id) writes outside its job dir; `DELETE /jobs/{id}?purge=true` removes those it owns.
    outputs: Callable[[dict, str], list[str]]
    # The manifest describing the outputs, if this kind writes one.
    manifest: Callable[[dict], Path | None] = lambda spec: None
    # Folders (or files) the job reads that other jobs wrote: no purge removes them while the job is unfinished.
    inputs: Callable[[dict], list[str]] = lambda spec: []
    # The dataset (a conversion's output dir) the job reads, if it reads one.
    dataset: Callable[[dict], Path | None] = lambda spec: None
    # What each node of the job needs, and how many nodes (app/jobs/placement.py): workers claim only what they serve.
    needs: Callable[[dict], Needs] = lambda spec: Needs()
    summary: str = ""
    examples: dict[str, Any] = field(default_factory=dict)  # OpenAPI examples for the request body


def _prepare_convert(spec: ConvertSpec, settings: Settings, job_id: str, engine: Engine) -> ConvertSpec:
    from openseek_nanochat.convert import run as convert

    return convert.prepare(spec, settings, job_id)


def _convert_manifest(spec: dict) -> Path:
    from openseek_nanochat.convert import manifest

    return Path(spec["output_dir"]) / manifest.NAME


def _cli_command(subcommand: str) -> Callable[[Path], list[str]]:
    return lambda spec_file: [sys.executable, "-m", "openseek_nanochat.cli", subcommand, str(spec_file), "--events"]


CONVERT = JobKind(
    name="convert",
    spec_model=ConvertSpec,
    prepare=_prepare_convert,
    command=_cli_command("convert"),
    outputs=lambda spec, job_id: [spec["output_dir"]],
    manifest=_convert_manifest,
    summary="Convert datasets into nanochat parquet shards",
    examples={
        "jsonl": {
            "summary": "JSONL files with a template over two columns",
            "value": {
                "name": "gsm8k",
                "sources": [
                    {"type": "files", "paths": ["/data/gsm8k/*.jsonl"], "text_template": "{question}\n{answer}"}
                ],
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


def _convert_lookup(engine: Engine) -> Callable[[str], str | None]:
    """Maps a job id named as a dataset to the shard dir of that convert job once it has succeeded; None when no job
    has that id."""
    from app.jobs import store

    def convert_output(dataset: str) -> str | None:
        try:
            job = store.get_job(engine, dataset)
        except store.NotFound:
            return None
        if job.kind != "convert":
            raise InputError(f"job {dataset} is a {job.kind} job, not a convert job", where="dataset")
        if job.state != "succeeded":
            raise InputError(
                f"convert job {dataset} is {job.state}; a job can use its shards once it has succeeded",
                where="dataset",
            )
        return job.spec["output_dir"]

    return convert_output


def _prepare_train(spec: TrainSpec, settings: Settings, job_id: str, engine: Engine) -> TrainSpec:
    from openseek_nanochat.train.job import prepare

    # The devices are checked where the job runs: a worker claims only what its machine can serve.
    return prepare(spec, settings, job_id, lookup=_convert_lookup(engine), this_machine=False)


def _train_outputs(spec: dict, job_id: str) -> list[str]:
    from openseek_nanochat.settings import get_settings
    from openseek_nanochat.train.job import run_dir_for

    return [str(run_dir_for(TrainSpec.model_validate(spec), get_settings(), job_id))]


def _train_inputs(spec: dict) -> list[str]:
    tokenizer = spec.get("tokenizer") or {}
    return [spec["dataset"], *([tokenizer["path"]] if "path" in tokenizer else [])]


def _train_needs(spec: dict) -> Needs:
    return Needs(nnodes=spec.get("nnodes", 1), nproc_per_node=spec.get("nproc_per_node", 1), device=spec["device"])


TRAIN = JobKind(
    name="train",
    spec_model=TrainSpec,
    prepare=_prepare_train,
    command=_cli_command("train"),
    outputs=_train_outputs,
    inputs=_train_inputs,
    dataset=lambda spec: Path(spec["dataset"]),
    needs=_train_needs,
    summary="Train a tokenizer and a model on converted shards (torchrun)",
    examples={
        "cpu": {
            "summary": "A tiny model on CPU, 2 ranks, on a finished convert job's shards",
            "value": {
                "dataset": "<convert job id>",
                "tokenizer": {"vocab_size": 4096},
                "depth": 4,
                "max_seq_len": 256,
                "device_batch_size": 8,
                "num_iterations": 200,
                "eval_every": 50,
                "save_every": 50,
                "nproc_per_node": 2,
                "device": "cpu",
            },
        },
        "gpu": {
            "summary": "A d20 model on 8 GPUs",
            "value": {
                "dataset": "<convert job id>",
                "tokenizer": {"vocab_size": 65536},
                "depth": 20,
                "max_seq_len": 2048,
                "device_batch_size": 32,
                "total_batch_size": 524288,
                "num_iterations": 20000,
                "eval_every": 250,
                "save_every": 1000,
                "nproc_per_node": 8,
                "device": "cuda",
            },
        },
    },
)


def _train_job(engine: Engine, settings: Settings, job_id: str) -> tuple[TrainSpec, Path, str]:
    """The spec, run dir and state of the train job a sample or eval job names."""
    from openseek_nanochat.train.job import run_dir_for

    from app.jobs import store

    try:
        job = store.get_job(engine, job_id)
    except store.NotFound:
        raise InputError(f"no job with id {job_id!r}", where="train_job") from None
    if job.kind != "train":
        raise InputError(f"job {job_id} is a {job.kind} job, not a train job", where="train_job")
    spec = TrainSpec.model_validate(job.spec)
    return spec, run_dir_for(spec, settings, job.id), job.state


def _prepare_sample(spec: SampleSpec, settings: Settings, job_id: str, engine: Engine) -> SampleSpec:
    from openseek_nanochat.probe.locate import prepare_sample

    train, run_dir, state = _train_job(engine, settings, spec.train_job)
    return prepare_sample(spec, train, run_dir, spec.train_job, state)


def _prepare_eval(spec: EvalSpec, settings: Settings, job_id: str, engine: Engine) -> EvalSpec:
    from openseek_nanochat.probe.locate import prepare_eval

    train, run_dir, state = _train_job(engine, settings, spec.train_job)
    return prepare_eval(spec, settings, train, run_dir, spec.train_job, state, lookup=_convert_lookup(engine))


def _checkpoint_inputs(spec: dict) -> list[str]:
    """The train run a sample or eval job reads (no purge removes it meanwhile), and an eval job's dataset."""
    return [spec["checkpoint"]["run_dir"], *([spec["dataset"]] if spec.get("dataset") else [])]


SAMPLE = JobKind(
    name="sample",
    spec_model=SampleSpec,
    prepare=_prepare_sample,
    command=_cli_command("sample"),
    outputs=lambda spec, job_id: [],
    inputs=_checkpoint_inputs,
    summary="Sample text from a train job's checkpoint",
    examples={
        "latest": {
            "summary": "Two prompts, the latest complete checkpoint",
            "value": {
                "train_job": "<train job id>",
                "prompts": ["The capital of France is", "Once upon a time"],
                "max_tokens": 64,
                "temperature": 0.8,
                "top_k": 50,
                "seed": 42,
            },
        },
        "greedy": {
            "summary": "The likeliest continuation at a given step",
            "value": {"train_job": "<train job id>", "step": 500, "prompts": ["ROMEO:"], "temperature": 0},
        },
    },
)

EVAL = JobKind(
    name="eval",
    spec_model=EvalSpec,
    prepare=_prepare_eval,
    command=_cli_command("eval"),
    outputs=lambda spec, job_id: [],
    inputs=_checkpoint_inputs,
    dataset=lambda spec: Path(spec["dataset"]),
    summary="Bits per byte of a train job's checkpoint on a dataset's validation shard",
    examples={
        "own": {
            "summary": "The latest checkpoint on the dataset it was trained on, as much as its training evaluated",
            "value": {"train_job": "<train job id>"},
        },
        "other": {
            "summary": "Another conversion's validation shard, 2M tokens",
            "value": {"train_job": "<train job id>", "step": 1000, "dataset": "<convert job id>", "tokens": 2097152},
        },
    },
)

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (CONVERT, TRAIN, SAMPLE, EVAL)}
