"""/jobs: submit, list, read, cancel, delete; and a job's manifest, log and metrics."""

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi import Path as PathParam
from pydantic import BaseModel

from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError, check_output_path
from openseek_nanochat.settings import Settings

from app.jobs import files as jobfiles

from app.jobs import store
from app.jobs.db import read_for_async
from app.api.deps import EngineDep, SettingsDep
from app.api.errors import spec_error
from app.jobs.kinds import KINDS, PLANNED, JobKind
from app.jobs.models import FINISHED, Job, JobState, new_job_id
from app.api.schemas import Deleted, ErrorDetail, JobList, JobRead, LogChunk, ValidationErrors
from app.api.routes.events import follow_log

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, PathParam(max_length=64, description="The job's id, as returned on submit.")]
KindName = Literal[tuple(sorted({*KINDS, *PLANNED}))]  # type: ignore[valid-type]
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
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted and queued. `Location` names the job.", "headers": {"Location": {"schema": {"type": "string"}}}},
    409: {
        "model": ErrorDetail,
        "description": "The Idempotency-Key was used before for a different spec, or an unfinished job writes to the "
        "same output folder.",
    },
    413: {"model": ErrorDetail, "description": "The body is larger than the server accepts."},
    422: {"model": ValidationErrors, "description": "The spec is wrong: what and where is in `detail`."},
}


def _request_hash(kind: str, spec: BaseModel) -> str:
    canonical = json.dumps({"kind": kind, "spec": spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _accepted(job: Job, response: Response, replayed: bool) -> JobRead:
    response.headers["Location"] = f"/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobRead.of(job)


def _replay(job: Job, key: str, request_hash: str, response: Response) -> JobRead:
    if job.request_hash != request_hash:
        raise store.Conflict(
            f"Idempotency-Key {key!r} was already used for a different request (job {job.id}); use a new key"
        )
    return _accepted(job, response, replayed=True)


def _job_writing_to(engine, folders: list[str], other_than: str | None = None) -> Job | None:
    """An unfinished job whose outputs include one of `folders`: two jobs must not write one folder at once."""
    for job in store.unfinished_jobs(engine):
        kind = KINDS.get(job.kind)
        if job.id != other_than and kind is not None and set(kind.outputs(job.spec, job.id)) & set(folders):
            return job
    return None


def submit(kind: JobKind, spec: BaseModel, key: str | None, settings: Settings, engine, response: Response) -> JobRead:
    request_hash = _request_hash(kind.name, spec)
    if key is not None and (existing := store.find_by_idempotency_key(engine, key)) is not None:
        return _replay(existing, key, request_hash, response)
    job_id = new_job_id()
    try:
        prepared = kind.prepare(spec, settings, job_id, engine)
    except (InputError, ValueError, OSError) as error:  # PathPolicyError is a ValueError
        raise spec_error(error) from error
    prepared_spec = prepared.model_dump(mode="json")
    outputs = kind.outputs(prepared_spec, job_id)
    if (busy := _job_writing_to(engine, outputs)) is not None:
        raise store.Conflict(f"job {busy.id} ({busy.state}) already writes to {', '.join(outputs)}; wait for it, "
                             f"cancel it, or choose another name or output_dir")
    job = store.create_job(
        engine,
        Job(
            id=job_id,
            kind=kind.name,
            state=JobState.queued,
            spec=prepared_spec,
            idempotency_key=key,
            request_hash=request_hash,
        ),
    )
    if job.id != job_id:  # the same key won a race with this request
        return _replay(job, key or "", request_hash, response)
    return _accepted(job, response, replayed=False)


def _submit_endpoint(kind: JobKind):
    def submit_job(
        spec: Annotated[kind.spec_model, Body(openapi_examples=kind.examples or None)],  # type: ignore[name-defined]
        response: Response,
        settings: SettingsDep,
        engine: EngineDep,
        idempotency_key: IdempotencyKey = None,
    ) -> JobRead:
        return submit(kind, spec, idempotency_key, settings, engine, response)

    submit_job.__doc__ = f"{kind.summary}. The job is queued; poll `GET /jobs/{{id}}` for its state and progress."
    return submit_job


def _planned_endpoint(reason: str):
    def submit_job(spec: Annotated[dict[str, Any], Body()]) -> JobRead:
        raise RequestValidationError([{"type": "unavailable", "loc": ["body"], "msg": reason}])

    submit_job.__doc__ = f"Not available yet: {reason}."
    return submit_job


_SUBMIT_ROUTES = [(kind.name, _submit_endpoint(kind), kind.summary, SUBMIT_RESPONSES) for kind in KINDS.values()] + [
    (name, _planned_endpoint(reason), f"Submit a {name} job (not available yet)", {422: SUBMIT_RESPONSES[422]})
    for name, reason in PLANNED.items()
    if name not in KINDS
]
for _name, _endpoint, _summary, _responses in _SUBMIT_ROUTES:
    router.add_api_route(
        f"/{_name}",
        _endpoint,
        methods=["POST"],
        status_code=202,
        response_model=JobRead,
        summary=_summary,
        responses=_responses,
        operation_id=f"submit_{_name}",
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
    return JobRead.of(await read_for_async(engine, store.get_job, job_id))


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
    purge: Annotated[bool, Query(description="Also remove what the job wrote (e.g. the shards).")] = False,
) -> Deleted:
    """Removes the job and its log. Only finished jobs (succeeded, failed, cancelled) can be deleted."""
    existing = store.get_job(engine, job_id)
    kind = KINDS.get(existing.kind)
    outputs = kind.outputs(existing.spec, existing.id) if purge and kind is not None else []
    if outputs and (busy := _job_writing_to(engine, outputs, other_than=job_id)) is not None:
        raise store.Conflict(f"job {busy.id} ({busy.state}) writes to {', '.join(outputs)} now; not purging it")
    job = store.delete_job(engine, job_id)
    folders = [jobfiles.job_dir(settings, job.id), *map(Path, outputs)]
    removed = []
    for folder in folders:
        try:
            folder = check_output_path(folder, settings)  # never remove anything outside the data dir
        except PathPolicyError:
            continue
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return Deleted(id=job.id, removed=removed)


@router.get(
    "/{job_id}/manifest",
    summary="The manifest of a job's outputs",
    responses={404: {"model": ErrorDetail, "description": "No such job, or no manifest (yet)."}},
)
def get_manifest(job_id: JobId, engine: EngineDep) -> dict[str, Any]:
    """The `manifest.json` the job wrote (shards with rows, characters, bytes, sha256), plus `output_dir`."""
    job = store.get_job(engine, job_id)
    kind = KINDS.get(job.kind)
    path = kind.manifest(job.spec) if kind else None
    if path is None:
        raise store.NotFound(f"{job.kind} jobs have no manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        why = "it is still queued" if job.state == JobState.queued else f"it is {job.state}"
        raise store.NotFound(f"job {job.id} has no manifest yet ({why}); expected at {path}") from None
    return {**manifest, "output_dir": str(path.parent)}


@router.get(
    "/{job_id}/logs",
    summary="A job's output, incrementally",
    responses={**NOT_FOUND, 200: {"content": {"text/plain": {}}, "description": "JSON; with `follow=true`, plain text."}},
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
