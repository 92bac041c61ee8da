"""/jobs: submit, list, read, cancel, delete; and a job's manifest, log and metrics.

The handlers translate between HTTP and app/jobs/ (service.py, store.py, files.py), where what they do lives.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.exceptions import RequestValidationError

from openseek_nanochat.errors import InputError

from app.api.bodies import JSONBodyRoute
from app.api.deps import EngineDep, JobId, SettingsDep
from app.api.routes.events import follow_log
from app.api.schemas import Deleted, ErrorDetail, JobList, JobRead, LogChunk, ValidationErrors
from app.jobs import files as jobfiles
from app.jobs import gang, service, store
from app.jobs.db import read_for_async
from app.jobs.kinds import KINDS, JobKind
from app.jobs.models import FINISHED, JobState

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JSONBodyRoute)

KindName = Literal[tuple(sorted(KINDS))]  # type: ignore[valid-type]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Any unique string (e.g. a UUID). Retrying a submit with the same key returns the job the first "
        "request created instead of creating another; reusing a key for a different spec is a 409.",
    ),
]

NOT_FOUND = {404: {"model": ErrorDetail, "description": "No such job."}}
CONFLICT = {409: {"model": ErrorDetail, "description": "The job is not in a state that allows this."}}
DATASET_EXAMPLE = {
    "complete": True,
    "sources": [
        {"name": "gsm8k", "type": "files", "weight": 1.0, "docs": 7473, "chars": 5_100_000, "share_chars": 0.34},
        {"name": "arxiv", "type": "megatron", "weight": 2.0, "docs": 1200, "chars": 9_900_000, "share_chars": 0.66},
    ],
    "shards": [{"file": "shard_00000.parquet", "split": "train", "rows": 8000, "chars": 14_000_000}],
    "totals": {"docs": 8673, "chars": 15_000_000, "shards": 2},
    "output_dir": "/data/datasets/mix",
}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Accepted and queued. `Location` names the job.",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    409: {
        "model": ErrorDetail,
        "description": "The Idempotency-Key was used before for a different spec, or an unfinished job writes to the "
        "same output folder, or to one inside or above it.",
    },
    413: {"model": ErrorDetail, "description": "The body is larger than the server accepts."},
    422: {"model": ValidationErrors, "description": "The spec is wrong: what and where is in `detail`."},
}


def _submit_endpoint(kind: JobKind):
    def submit_job(
        spec: Annotated[kind.spec_model, Body(openapi_examples=kind.examples or None)],  # type: ignore[name-defined]
        response: Response,
        settings: SettingsDep,
        engine: EngineDep,
        idempotency_key: IdempotencyKey = None,
    ) -> JobRead:
        job, replayed = service.submit(engine, settings, kind, spec, idempotency_key)
        response.headers["Location"] = f"/jobs/{job.id}"
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return JobRead.of(job)

    submit_job.__doc__ = f"{kind.summary}. The job is queued; poll `GET /jobs/{{id}}` for its state and progress."
    return submit_job


for _kind in KINDS.values():
    router.add_api_route(
        f"/{_kind.name}",
        _submit_endpoint(_kind),
        methods=["POST"],
        status_code=202,
        response_model=JobRead,
        summary=_kind.summary,
        responses=SUBMIT_RESPONSES,
        operation_id=f"submit_{_kind.name}",
    )


@router.get("", summary="List jobs, newest first")
async def list_jobs(
    engine: EngineDep,
    kind: KindName | None = None,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobList:
    jobs, total = await read_for_async(engine, store.list_jobs, kind, state, limit, offset)
    return JobList(jobs=[JobRead.of(job) for job in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", summary="A job's state, progress, result or error", responses=NOT_FOUND)
async def get_job(job_id: JobId, engine: EngineDep) -> JobRead:
    job = await read_for_async(engine, store.get_job, job_id)
    nodes = await read_for_async(engine, gang.nodes_of, job_id) if job.nnodes > 1 else []
    return JobRead.of(job, nodes)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Cancel a job",
    responses={**NOT_FOUND, **CONFLICT},
)
def cancel_job(job_id: JobId, engine: EngineDep) -> JobRead:
    """A queued job is cancelled at once. A running one turns `cancelling`: its worker stops every process of the job
    (SIGTERM, then SIGKILL after a grace period) and then marks it `cancelled`."""
    return JobRead.of(store.request_cancel(engine, job_id))


@router.delete("/{job_id}", summary="Delete a finished job", responses={**NOT_FOUND, **CONFLICT})
def delete_job(
    job_id: JobId,
    engine: EngineDep,
    settings: SettingsDep,
    purge: Annotated[
        bool, Query(description="Also remove the outputs the job owns (e.g. the shards its manifest names it for).")
    ] = False,
) -> Deleted:
    """Removes the job and its log. Only finished jobs (succeeded, failed, cancelled) can be deleted. With `purge`, a
    dataset goes only when its manifest names this job as owner (the job that created it, or that finished it after
    an interrupted run); others stay and are listed in `kept` with the reason. 409 while an unfinished job writes
    the folder or reads from it."""
    job, removed, kept = service.delete(engine, settings, job_id, purge)
    return Deleted(id=job.id, removed=removed, kept=kept)


@router.get(
    "/{job_id}/manifest",
    summary="The manifest of a job's outputs",
    responses={404: {"model": ErrorDetail, "description": "No such job, or no manifest (yet)."}},
)
def get_manifest(job_id: JobId, engine: EngineDep) -> dict[str, Any]:
    """The `manifest.json` the job wrote (shards with rows, characters, bytes, sha256), plus `output_dir`."""
    return service.read_manifest(engine, job_id)


@router.get(
    "/{job_id}/dataset",
    summary="The manifest of the dataset a train or eval job reads",
    responses={
        200: {"content": {"application/json": {"example": DATASET_EXAMPLE}}},
        404: {"model": ErrorDetail, "description": "No such job, a job that reads no dataset, or no manifest."},
    },
)
def get_dataset(job_id: JobId, engine: EngineDep) -> dict[str, Any]:
    """The `manifest.json` of the conversion the job reads: its sources with weights and shares (the mixture), shards
    and totals, plus `output_dir`. Runs that trained on different mixtures compare by it."""
    return service.read_dataset_manifest(engine, job_id)


SAMPLES_EXAMPLE = [
    {
        "text": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May…",
        "chars": 412,
        "split": "train",
        "shard": "shard_00000.parquet",
        "row": 17,
        "source": "/data/gsm8k/train.jsonl",
        "locator": {"file": "/data/gsm8k/train.jsonl", "line": 1},
    },
    {
        "text": "First Citizen:\nBefore we proceed any further, hear me speak.…",
        "chars": 2810,
        "split": "val",
        "shard": "shard_00003.parquet",
        "row": 2,
        "source": "/data/OpenSeek-Pretrain-100B/arxiv/007_00000_text_document",
        "locator": {"prefix": "/data/OpenSeek-Pretrain-100B/arxiv/007_00000_text_document", "doc": 5123},
    },
]


@router.get(
    "/{job_id}/samples",
    summary="Documents of a conversion's dataset, with where each came from",
    responses={
        200: {"content": {"application/json": {"example": SAMPLES_EXAMPLE}}},
        404: {"model": ErrorDetail, "description": "No such job, or not a convert job."},
        409: {"model": ErrorDetail, "description": "The dataset is not finished (or has no provenance)."},
        422: {"model": ValidationErrors, "description": "A parameter out of range, or a source the dataset lacks."},
    },
)
def get_samples(
    job_id: JobId,
    engine: EngineDep,
    n: Annotated[int, Query(ge=1, le=100, description="At most this many documents.")] = 10,
    source: Annotated[
        str | None, Query(max_length=4096, description="Only this source (its `name` in the manifest).")
    ] = None,
    split: Annotated[Literal["train", "val"] | None, Query(description="Only this split.")] = None,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="The same seed draws the same documents.")] = 0,
    max_chars: Annotated[int, Query(ge=1, le=100_000, description="Each text cut to this many characters.")] = 2000,
) -> list[dict[str, Any]]:
    """Documents drawn uniformly, without replacement, from the dataset a convert job wrote: each with its `text` (cut
    to `max_chars`; `chars` is its whole length), `split`, `shard` and `row`, the `source` it came from and its
    `locator` in that source's input: `{"file", "line"}` (JSONL, 1-based), `{"file", "row"}` (parquet, Arrow; 0-based),
    `{"prefix", "doc"}` (Megatron, 0-based) or `{"dataset", "name", "split", "row"}` (Hugging Face). Read from the
    shards' provenance sidecars (`provenance/` in the dataset folder)."""
    try:
        return service.sample_dataset(engine, job_id, n, seed, source, split, max_chars)
    except InputError as e:
        raise RequestValidationError(
            [{"type": "input_error", "loc": ["query", e.where or "source"], "msg": e.message}]
        ) from None


@router.get(
    "/{job_id}/logs",
    summary="A job's output, incrementally",
    responses={
        **NOT_FOUND,
        200: {"content": {"text/plain": {}}, "description": "JSON; with `follow=true`, plain text."},
    },
)
def get_logs(
    job_id: JobId,
    engine: EngineDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Byte offset: 0, then the last `next_offset`.")] = 0,
    limit: Annotated[int, Query(ge=1, le=4 << 20, description="At most this many bytes.")] = 256 << 10,
    follow: Annotated[
        bool, Query(description="Stream the log as plain text from `offset` until the job has finished.")
    ] = False,
) -> LogChunk:
    """Everything the job printed (and what its workers noted), from `offset` on."""
    job = store.get_job(engine, job_id)
    if follow:
        return follow_log(engine, settings, job.id, offset)
    text, next_offset, size = jobfiles.read_log(jobfiles.job_dir(settings, job.id), offset, limit)
    return LogChunk(
        offset=min(offset, size),
        next_offset=next_offset,
        size=size,
        text=text,
        complete=job.state in FINISHED and next_offset >= size,
    )


@router.get("/{job_id}/metrics", summary="A training job's metrics, one record per step", responses=NOT_FOUND)
def get_metrics(job_id: JobId, engine: EngineDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """`{step, loss, lr, dt_ms, tok_per_sec, mfu, val_bpb}` per logged step, in step order; empty for other jobs."""
    job = store.get_job(engine, job_id)
    return jobfiles.read_metrics(jobfiles.job_dir(settings, job.id))
