"""The API's side of the jobs table: create, read, list, cancel, delete. Each change is one short write transaction.

The worker's side (claim, heartbeat, finish, expiry) is in app/jobs/queue.py; what a submit or a delete does beyond
the row (checks, idempotency, files) is in app/jobs/service.py.
"""

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine, bindparam, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.jobs import folders
from app.jobs.db import reading, writing
from app.jobs.models import FINISHED, Job, JobState, Worker, utcnow

_JOB_ID = re.compile(r"^[0-9a-f]{16}$")


class NotFound(LookupError):
    pass


class Conflict(Exception):
    pass


# The most frequent query of all (every poll): built once, run without the ORM's unit of work.
_JOB_BY_ID = select(Job.__table__).where(Job.__table__.c.id == bindparam("job_id"))


def get_job(engine: Engine, job_id: str) -> Job:
    # An id that cannot exist is not sent to the database (PostgreSQL rejects some strings, e.g. with NUL bytes).
    row = None
    if _JOB_ID.match(job_id):
        with engine.connect() as connection:
            row = connection.execute(_JOB_BY_ID, {"job_id": job_id}).mappings().first()
    if row is None:
        raise NotFound(f"no job with id {job_id!r}")
    return Job.model_validate(row)


def find_by_idempotency_key(engine: Engine, key: str) -> Job | None:
    with reading(engine) as session:
        return session.exec(select(Job).where(Job.idempotency_key == key)).first()


def create_job(engine: Engine, job: Job, writes: Sequence[str] = (), reads: Sequence[str] = ()) -> Job:
    """Insert a queued job and claim the folders it `writes` and `reads` (resolved paths), in one transaction. With
    an idempotency key already taken (a concurrent retry), return that key's job. Conflict when an unfinished job
    writes one of `writes`, inside one or above one."""
    try:
        with writing(engine) as session:
            folders.lock(session)
            if job.idempotency_key is not None:
                existing = session.exec(select(Job).where(Job.idempotency_key == job.idempotency_key)).first()
                if existing is not None:
                    return existing
            if (busy := folders.writer_overlapping(session, [Path(p) for p in writes])) is not None:
                use, folder = busy
                raise Conflict(f"{use.describe(folder)}; wait for it, cancel it, or choose another name or output_dir")
            session.add(job)
            session.flush()  # the row the claims refer to
            folders.record(session, job.id, list(writes), list(reads))
    except IntegrityError:
        existing = job.idempotency_key and find_by_idempotency_key(engine, job.idempotency_key)
        if not existing:
            raise
        return existing
    return job


def list_jobs(engine: Engine, kind: str | None, state: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
    query = select(Job)
    if kind:
        query = query.where(Job.kind == kind)
    if state:
        query = query.where(Job.state == state)
    with reading(engine) as session:
        total = session.exec(select(func.count()).select_from(query.subquery())).one()
        jobs = session.exec(
            query.order_by(col(Job.created_at).desc(), col(Job.id).desc()).limit(limit).offset(offset)
        ).all()
    return list(jobs), total


def request_cancel(engine: Engine, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one becomes `cancelling` until its worker has stopped it."""
    get_job(engine, job_id)  # a 404 before taking the write lock
    now = utcnow()
    with writing(engine) as session:
        cancelled = _transition(session, job_id, JobState.queued, state=JobState.cancelled, finished_at=now)
        if cancelled is None:
            cancelled = _transition(session, job_id, JobState.running, state=JobState.cancelling)
        if cancelled is not None:
            return cancelled
        job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    if job.state == JobState.cancelling:
        return job
    raise Conflict(f"job {job_id} has already {_finished_verb(job.state)}; there is nothing to cancel")


def delete_job(engine: Engine, job_id: str, before: Callable[[Session, Job], None] | None = None) -> Job:
    """Delete a finished job's row (and its claims); the caller removes its files. `before` runs in the same
    transaction, claims locked, once the job is known to be finished: what it raises undoes the delete."""
    get_job(engine, job_id)
    with writing(engine) as session:
        folders.lock(session)
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        if job.state not in FINISHED:
            raise Conflict(
                f"job {job_id} is {job.state}; only finished jobs can be deleted "
                f"(cancel it first: POST /jobs/{job_id}/cancel)"
            )
        if before is not None:
            before(session, job)
        session.delete(job)
    return job


def list_workers(engine: Engine) -> list[Worker]:
    with reading(engine) as session:
        return list(session.exec(select(Worker).order_by(col(Worker.started_at))).all())


def _transition(session, job_id: str, from_state: JobState, **values) -> Job | None:
    values.setdefault("updated_at", utcnow())
    statement = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.state) == from_state)
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).scalars().first()


def _finished_verb(state: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "cancelled": "been cancelled"}.get(state, state)
