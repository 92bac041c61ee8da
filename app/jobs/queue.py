"""The worker's side of the jobs table: claim, heartbeat, finish, release, and expiry of lost leases.

A claim is one UPDATE ... RETURNING on the oldest queued job, inside a transaction that holds the write lock (SQLite:
BEGIN IMMEDIATE) or that skips rows another worker has locked (PostgreSQL: FOR UPDATE SKIP LOCKED), so a job is never
claimed twice. The claim stamps the job with the worker's id and increments `attempts`; every later write of that
worker names both, so a worker that lost its lease (its job requeued and claimed again) can no longer touch the job.

Every lease is written and compared in the database's clock (`db_now`), never a host's: workers on machines whose
clocks disagree still agree on when a lease ran out. The same goes for the workers' own heartbeats.
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, Float, bindparam, delete, exists, insert, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import col, select

from openseek_nanochat.capacity import Capacity
from openseek_nanochat.settings import Settings

from app.jobs import files as jobfiles
from app.jobs import placement
from app.jobs.db import reading, writing
from app.jobs.models import OWNED, Job, JobNode, JobState, UTCDateTime, Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """One attempt at one job: what the worker needs, and the fencing token (worker id, attempt) for every write."""

    job_id: str
    kind: str
    spec: dict
    worker_id: str
    attempt: int
    # time.monotonic() when the claim was sent: the lease it got runs at least lease_seconds from then
    asked_at: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Expired:
    job_id: str
    worker_id: str | None
    new_state: JobState
    attempts: int


class db_now(FunctionElement):  # noqa: N801 (named like the SQL functions it stands for)
    """The database's clock (UTC), `seconds` from now: what leases are written and compared in.

    SQLite: its own clock, as the text SQLAlchemy stores a datetime in ('YYYY-MM-DD HH:MM:SS.ffffff'), so that
    comparisons with stored values stay comparisons of equal-length strings. PostgreSQL: clock_timestamp(), the time
    of the statement itself (now() would be when its transaction began, maybe before it waited for a lock).
    """

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, seconds: float = 0.0):
        super().__init__(bindparam(None, float(seconds), type_=Float()))


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', julianday('now') + ({seconds}) / 86400.0) || '000')"


@compiles(db_now)
def _db_now_postgresql(element, compiler, **kw) -> str:
    return f"(clock_timestamp() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


def database_now(engine: Engine) -> datetime:
    """What time the database thinks it is."""
    with reading(engine) as session:
        return session.execute(select(db_now())).scalar_one()


def work_waiting(engine: Engine, capacity: Capacity) -> bool:
    """Is anything queued that this worker can serve, or any lease expired? A cheap read that idle workers poll instead
    of taking the write lock."""
    queued = exists().where(col(Job.state) == JobState.queued, placement.servable(capacity))
    expired = exists().where(col(Job.state).in_(OWNED), col(Job.lease_expires_at) < db_now())
    nodes_expired = exists().where(
        col(JobNode.state).in_(("waiting", "running")), col(JobNode.lease_expires_at) < db_now()
    )
    with reading(engine) as session:
        return bool(session.exec(select(queued | expired | nodes_expired)).one())


def claim(engine: Engine, worker_id: str, lease_seconds: float, capacity: Capacity) -> Claim | None:
    """Claim the oldest queued one-node job that this worker can serve (multi-node jobs: app/jobs/gang.py)."""
    asked_at = time.monotonic()
    oldest_queued = (
        select(Job.id)
        .where(col(Job.state) == JobState.queued, col(Job.nnodes) == 1, placement.servable(capacity))
        .order_by(col(Job.created_at), col(Job.id))
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(Job)
        .where(col(Job.id) == oldest_queued, col(Job.state) == JobState.queued)
        .values(
            state=JobState.running,
            worker_id=worker_id,
            attempts=col(Job.attempts) + 1,
            lease_expires_at=db_now(lease_seconds),
            started_at=db_now(),
            updated_at=db_now(),
        )
        .returning(Job.id, Job.kind, Job.spec, Job.attempts)
    )
    with writing(engine) as session:
        row = session.execute(statement).first()
        if row is not None:
            set_worker_job(session, worker_id, row.id)
    if row is None:
        return None
    return Claim(
        job_id=row.id, kind=row.kind, spec=row.spec, worker_id=worker_id, attempt=row.attempts, asked_at=asked_at
    )


def _owned_by(claim: Claim):
    return (
        col(Job.id) == claim.job_id,
        col(Job.worker_id) == claim.worker_id,
        col(Job.attempts) == claim.attempt,
        col(Job.state).in_(OWNED),
    )


def heartbeat(engine: Engine, claim: Claim, lease_seconds: float, progress: dict | None = None) -> str | None:
    """Extend the lease (and store progress). Returns the job's state, or None when the job is no longer ours."""
    values = {"lease_expires_at": db_now(lease_seconds), "updated_at": db_now()}
    if progress is not None:
        values["progress"] = progress
    statement = update(Job).where(*_owned_by(claim)).values(**values).returning(Job.state)
    with writing(engine) as session:
        state = session.execute(statement).scalar_one_or_none()
        set_worker_job(session, claim.worker_id, claim.job_id if state else None)
    return state


def finish(
    engine: Engine,
    claim: Claim,
    state: JobState,
    *,
    result: dict | None = None,
    error: dict | None = None,
    progress: dict | None = None,
) -> bool:
    """Record the outcome. False when the job was no longer ours (its lease expired and it went back to the queue)."""
    now = db_now()
    values = {
        "state": state,
        "result": result,
        "error": error,
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
    }
    if progress is not None:
        values["progress"] = progress
    with writing(engine) as session:
        done = session.execute(update(Job).where(*_owned_by(claim)).values(**values).returning(Job.id)).first()
        set_worker_job(session, claim.worker_id, None)
    return done is not None


def release(engine: Engine, claim: Claim) -> JobState | None:
    """Give a job back because this worker is stopping: it is queued again without counting the attempt
    (a job whose cancel was under way is cancelled instead)."""
    now = db_now()
    common = {"worker_id": None, "lease_expires_at": None, "updated_at": now}
    with writing(engine) as session:
        state = session.execute(
            update(Job)
            .where(*_owned_by(claim))
            .values(state=JobState.queued, attempts=col(Job.attempts) - 1, **common)
            .where(col(Job.state) == JobState.running)
            .returning(Job.state)
        ).scalar_one_or_none()
        if state is None:
            state = session.execute(
                update(Job)
                .where(*_owned_by(claim))
                .values(state=JobState.cancelled, finished_at=now, **common)
                .returning(Job.state)
            ).scalar_one_or_none()
        set_worker_job(session, claim.worker_id, None)
    return state


def expire_leases(engine: Engine, max_attempts: int) -> list[Expired]:
    """Jobs whose worker stopped heartbeating: queued again, or failed after `max_attempts`; a cancel under way
    completes (the worker that would have stopped the job is gone, and its job processes with it)."""
    now = db_now()
    expired: list[Expired] = []
    with writing(engine) as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.attempts, Job.worker_id)
            .where(col(Job.state).in_(OWNED), col(Job.lease_expires_at) < now)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            common = {"worker_id": None, "lease_expires_at": None, "updated_at": now}
            if row.state == JobState.cancelling:
                new_state, values = JobState.cancelled, {"finished_at": now}
            elif row.attempts >= max_attempts:
                new_state = JobState.failed
                values = {
                    "finished_at": now,
                    "error": {
                        "message": f"the job's worker stopped heartbeating (lease expired) on each of its "
                        f"{row.attempts} attempts; not retried again (max_attempts={max_attempts})",
                        "where": f"worker {row.worker_id}",
                    },
                }
            else:
                new_state, values = JobState.queued, {}
            session.execute(
                update(Job)
                .where(col(Job.id) == row.id, col(Job.state) == row.state, col(Job.attempts) == row.attempts)
                .values(state=new_state, **values, **common)
            )
            expired.append(Expired(row.id, row.worker_id, new_state, row.attempts))
    return expired


def note_expired(expired: list[Expired], settings: Settings) -> None:
    """Say in each job's log what happened to it, so the log tells the whole story of its attempts."""
    max_attempts = settings.max_attempts
    for e in expired:
        then = {
            JobState.queued: f"queued again (attempt {e.attempts} of {max_attempts} lost)",
            JobState.failed: f"failed: {max_attempts} attempts lost",
            JobState.cancelled: "cancelled",
        }[e.new_state]
        line = f"[control] the lease of worker {e.worker_id} expired (it stopped heartbeating); job {then}\n"
        log.warning("job %s: %s", e.job_id, line.strip())
        log_file = jobfiles.job_dir(settings, e.job_id) / jobfiles.LOG
        if log_file.parent.is_dir():
            with open(log_file, "a", encoding="utf-8") as f:
                f.write(line)


# The workers table: who is there, what each runs, when each last spoke.


def register_worker(engine: Engine, worker_id: str, host: str, pid: int, address: str, capacity: Capacity) -> None:
    with writing(engine) as session:
        session.execute(
            insert(Worker).values(
                id=worker_id,
                host=host,
                pid=pid,
                address=address,
                cpus=capacity.cpus,
                cuda=list(capacity.cuda),
                started_at=db_now(),
                heartbeat_at=db_now(),
            )
        )


UNSERVABLE_SCAN = 100  # queued jobs looked at per pass: the oldest, the ones a user waits for longest


def note_unservable(engine: Engine, lease_seconds: float) -> int:
    """Say in the progress of each queued job that no live worker can serve why it waits (and stop saying it once one
    can: a worker's claim replaces the progress). Returns how many messages changed."""
    with reading(engine) as session:
        live = select(Worker).where(col(Worker.heartbeat_at) >= db_now(-lease_seconds)).order_by(col(Worker.id))
        alive = list(session.exec(live).all())
        queued = session.execute(
            select(Job.id, Job.nnodes, Job.nproc_per_node, Job.device, Job.progress)
            .where(col(Job.state) == JobState.queued)
            .order_by(col(Job.created_at))
            .limit(UNSERVABLE_SCAN)
        ).all()
    changes = {}
    for job in queued:
        reason = placement.unservable_reason(placement.Needs(job.nnodes, job.nproc_per_node, job.device), alive)
        said = (job.progress or {}).get("unservable")
        if reason != said and (reason is not None or said is not None):
            changes[job.id] = {"message": reason, "unservable": reason} if reason else None
    if changes:
        with writing(engine) as session:
            for job_id, progress in changes.items():
                session.execute(
                    update(Job)
                    .where(col(Job.id) == job_id, col(Job.state) == JobState.queued)
                    .values(progress=progress, updated_at=db_now())
                )
    return len(changes)


def worker_heartbeat(engine: Engine, worker_id: str, job_id: str | None) -> None:
    with writing(engine) as session:
        set_worker_job(session, worker_id, job_id)


def unregister_worker(engine: Engine, worker_id: str) -> None:
    with writing(engine) as session:
        session.execute(delete(Worker).where(col(Worker.id) == worker_id))


def forget_dead_workers(engine: Engine, older_than_seconds: float) -> int:
    with writing(engine) as session:
        return session.execute(delete(Worker).where(col(Worker.heartbeat_at) < db_now(-older_than_seconds))).rowcount


def set_worker_job(session, worker_id: str, job_id: str | None) -> None:
    session.execute(update(Worker).where(col(Worker.id) == worker_id).values(job_id=job_id, heartbeat_at=db_now()))
