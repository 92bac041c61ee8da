"""Multi-node jobs in the database: node claims that gather into a gang, leases per node, and how an attempt ends.

A job of `nnodes` N > 1 is gang-scheduled. Each worker that can serve it takes one node of its next attempt (a row of
job_nodes, in the claim style of app/jobs/queue.py: one write transaction, the job row locked or skipped), the first
taker being node 0, which publishes the rendezvous endpoint. The job stays queued, its progress saying "waiting for
nodes: k of N", until the N-th node is taken: that same transaction starts the attempt (the job's row: running, the
attempt counted, owned by node 0's worker). All start or none does: a worker whose gathering is not complete within the
job's gang_timeout_s gives every node of it back, and a waiting node whose lease runs out takes the gathering with it.

While the attempt runs every node's worker renews its node's lease (`beat`) and learns whether the gang still stands:
a node whose lease ran out, or that was marked lost, breaks the attempt; node 0's worker then stops its processes and
requeues the job (`requeue`), counting the attempt, and every other node stops on its next beat. The next attempt
resumes from the last complete checkpoint in the shared run dir. Leases are in the database's clock (queue.db_now).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import Engine, delete, func, insert, update
from sqlmodel import col, select

from openseek_nanochat.capacity import Capacity

from app.jobs import placement
from app.jobs.db import reading, writing
from app.jobs.models import OWNED, Job, JobNode, JobState
from app.jobs.queue import Claim, db_now, set_worker_job

WAITING, RUNNING, EXITED, STOPPED, LOST = "waiting", "running", "exited", "stopped", "lost"
STARTED, GONE = "started", "gone"  # what a waiting node learns besides WAITING
OK, CANCELLED, BROKEN = "ok", "cancelled", "broken"  # what a running node learns besides LOST


@dataclass(frozen=True)
class Slot:
    """One node of one attempt, as the worker holding it knows it."""

    job_id: str
    kind: str
    spec: dict
    attempt: int
    node: int
    nnodes: int
    worker_id: str
    host: str
    endpoint: str | None = None  # node 0's rendezvous host:port, known to every node once the gang has started

    @property
    def gang_timeout_s(self) -> float:
        return float(self.spec["gang_timeout_s"])  # a prepared train spec holds every field, defaults filled

    @property
    def rdzv_id(self) -> str:
        return f"{self.job_id}-{self.attempt}"

    def claim(self, asked_at: float) -> Claim:
        """The attempt as a claim of the job (node 0's worker owns the job's row)."""
        return Claim(self.job_id, self.kind, self.spec, self.worker_id, self.attempt, asked_at=asked_at)


def _key(slot: Slot):
    return (col(JobNode.job_id) == slot.job_id, col(JobNode.attempt) == slot.attempt, col(JobNode.node) == slot.node)


def _of_attempt(job_id: str, attempt: int):
    return (col(JobNode.job_id) == job_id, col(JobNode.attempt) == attempt)


def waiting_message(joined: int, nnodes: int, then: str = "") -> dict:
    return {"message": f"waiting for nodes: {joined} of {nnodes}{then}", "nodes": joined, "nnodes": nnodes}


def take(
    engine: Engine,
    worker_id: str,
    host: str,
    capacity: Capacity,
    lease_seconds: float,
    port: int,
    skip: frozenset[str] = frozenset(),
) -> Slot | None:
    """Take a node of the oldest queued multi-node job this worker can serve (not one of `skip`). The N-th node taken
    starts the attempt. `port` is the rendezvous port this worker offers, should it be node 0."""
    candidates = (
        select(Job.id, Job.kind, Job.spec, Job.attempts, Job.nnodes)
        .where(col(Job.state) == JobState.queued, col(Job.nnodes) > 1, placement.servable(capacity))
        .order_by(col(Job.created_at), col(Job.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if skip:
        candidates = candidates.where(col(Job.id).not_in(skip))
    with writing(engine) as session:
        job = session.execute(candidates).first()
        if job is None:
            return None
        attempt = job.attempts + 1
        taken = session.execute(select(JobNode.node).where(*_of_attempt(job.id, attempt))).scalars().all()
        free = sorted(set(range(job.nnodes)) - set(taken))
        if not free:
            return None
        node = free[0]
        endpoint = f"{host}:{port}" if node == 0 else None
        session.execute(
            insert(JobNode).values(
                job_id=job.id,
                attempt=attempt,
                node=node,
                worker_id=worker_id,
                host=host,
                state=WAITING,
                endpoint=endpoint,
                lease_expires_at=db_now(lease_seconds),
                claimed_at=db_now(),
            )
        )
        joined = len(taken) + 1
        if joined == job.nnodes:
            _start(session, job.id, attempt, lease_seconds)
        else:
            session.execute(
                update(Job)
                .where(col(Job.id) == job.id)
                .values(progress=waiting_message(joined, job.nnodes), updated_at=db_now())
            )
        set_worker_job(session, worker_id, job.id)
    return Slot(job.id, job.kind, job.spec, attempt, node, job.nnodes, worker_id, host, endpoint)


def _start(session, job_id: str, attempt: int, lease_seconds: float) -> None:
    """The gang is complete: every node runs, and the job's row is node 0's worker's for this attempt."""
    owner = session.execute(
        select(JobNode.worker_id).where(*_of_attempt(job_id, attempt), col(JobNode.node) == 0)
    ).scalar_one()
    session.execute(
        update(JobNode)
        .where(*_of_attempt(job_id, attempt))
        .values(state=RUNNING, lease_expires_at=db_now(lease_seconds))
    )
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.state) == JobState.queued)
        .values(
            state=JobState.running,
            worker_id=owner,
            attempts=attempt,
            lease_expires_at=db_now(lease_seconds),
            started_at=db_now(),
            updated_at=db_now(),
            progress={"message": f"all nodes joined: starting attempt {attempt}"},
        )
    )


def wait_beat(engine: Engine, slot: Slot, lease_seconds: float) -> tuple[str, int, Slot]:
    """A waiting node renews its lease and learns: WAITING (with how many nodes have joined), STARTED (the slot now
    knows node 0's endpoint) or GONE (the gathering was given back, or the job is no longer queued)."""
    with writing(engine) as session:
        state = session.execute(
            update(JobNode)
            .where(*_key(slot), col(JobNode.worker_id) == slot.worker_id, col(JobNode.state).in_((WAITING, RUNNING)))
            .values(lease_expires_at=db_now(lease_seconds))
            .returning(JobNode.state)
        ).scalar_one_or_none()
        set_worker_job(session, slot.worker_id, slot.job_id if state else None)
        if state is None:
            return GONE, 0, slot
        if state == RUNNING:
            endpoint = session.execute(
                select(JobNode.endpoint).where(*_of_attempt(slot.job_id, slot.attempt), col(JobNode.node) == 0)
            ).scalar_one()
            return STARTED, slot.nnodes, replace(slot, endpoint=endpoint)
        job_state = session.execute(select(Job.state).where(col(Job.id) == slot.job_id)).scalar_one_or_none()
        if job_state != JobState.queued:  # cancelled (or deleted) while gathering
            session.execute(delete(JobNode).where(*_key(slot)))
            set_worker_job(session, slot.worker_id, None)
            return GONE, 0, slot
        joined = session.execute(
            select(func.count()).select_from(JobNode).where(*_of_attempt(slot.job_id, slot.attempt))
        ).scalar_one()
    return WAITING, joined, slot


def give_back(engine: Engine, slot: Slot, then: str) -> int:
    """Release every waiting node of the slot's gathering (its gang_timeout_s passed, or this worker stops); the job
    says so in its progress. Returns how many nodes were given back."""
    with writing(engine) as session:
        released = session.execute(
            delete(JobNode).where(*_of_attempt(slot.job_id, slot.attempt), col(JobNode.state) == WAITING)
        ).rowcount
        session.execute(
            update(Job)
            .where(col(Job.id) == slot.job_id, col(Job.state) == JobState.queued)
            .values(progress=waiting_message(released, slot.nnodes, then), updated_at=db_now())
        )
        set_worker_job(session, slot.worker_id, None)
    return released


def beat(engine: Engine, slot: Slot, lease_seconds: float) -> str:
    """A running node renews its lease and learns whether its attempt goes on: OK, CANCELLED, BROKEN (another node
    of the attempt was lost) or LOST (this node, or the attempt, is no longer this worker's)."""
    now = db_now()
    with writing(engine) as session:
        mine = session.execute(
            update(JobNode)
            .where(*_key(slot), col(JobNode.worker_id) == slot.worker_id, col(JobNode.state) == RUNNING)
            .values(lease_expires_at=db_now(lease_seconds))
            .returning(JobNode.node)
        ).scalar_one_or_none()
        set_worker_job(session, slot.worker_id, slot.job_id if mine is not None else None)
        if mine is None:
            return LOST
        job = session.execute(select(Job.state, Job.attempts).where(col(Job.id) == slot.job_id)).first()
        if job is None or job.attempts != slot.attempt:
            return LOST
        if job.state in (JobState.cancelling, JobState.cancelled):  # node 0 may have recorded the cancel already
            return CANCELLED
        if job.state not in OWNED:
            return LOST
        # a node that stopped early (it saw a lost node first) breaks the gang as a lost one does
        gone = col(JobNode.state).in_((LOST, STOPPED))
        lost = session.execute(
            select(JobNode.node).where(
                *_of_attempt(slot.job_id, slot.attempt),
                gone | ((col(JobNode.state) == RUNNING) & (col(JobNode.lease_expires_at) < now)),
            )
        ).first()
    return BROKEN if lost is not None else OK


def end_node(engine: Engine, slot: Slot, state: str, returncode: int | None = None) -> None:
    """How this node's part of the attempt ended: EXITED (with the job process's code), STOPPED or LOST."""
    with writing(engine) as session:
        session.execute(
            update(JobNode)
            .where(*_key(slot), col(JobNode.worker_id) == slot.worker_id)
            .values(state=state, returncode=returncode, lease_expires_at=None)
        )
        set_worker_job(session, slot.worker_id, None)


def others(engine: Engine, slot: Slot) -> list[JobNode]:
    """The attempt's other nodes; a running one whose lease ran out is marked lost first."""
    with writing(engine) as session:
        session.execute(
            update(JobNode)
            .where(
                *_of_attempt(slot.job_id, slot.attempt),
                col(JobNode.state) == RUNNING,
                col(JobNode.lease_expires_at) < db_now(),
            )
            .values(state=LOST)
        )
        rows = session.execute(
            select(JobNode).where(*_of_attempt(slot.job_id, slot.attempt), col(JobNode.node) != slot.node)
        ).scalars()
        return list(rows)


def settle(engine: Engine, slot: Slot, timeout: float, poll: float, keep: Callable[[], object]) -> list[JobNode]:
    """Node 0, its own process ended: wait (at most `timeout`, a lease: by then a dead node's lease has run out) for
    every other node to end too; return them. `keep` renews the job's lease meanwhile (node 0's worker owns it)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = others(engine, slot)
        if all(row.state != RUNNING for row in rows) or time.monotonic() > deadline:
            return rows
        keep()
        time.sleep(poll)


def requeue(engine: Engine, claim: Claim, max_attempts: int, why: str) -> JobState | None:
    """Node 0's worker: the attempt broke (a node was lost, or this worker stops). The job goes back to the queue, the
    attempt counted (its nodes' rows stay, as what happened to it), or fails after `max_attempts`."""
    values = {"worker_id": None, "lease_expires_at": None, "updated_at": db_now()}
    with writing(engine) as session:
        attempts = session.execute(
            select(Job.attempts).where(
                col(Job.id) == claim.job_id,
                col(Job.worker_id) == claim.worker_id,
                col(Job.attempts) == claim.attempt,
                col(Job.state).in_(OWNED),
            )
        ).scalar_one_or_none()
        if attempts is None:
            return None
        if attempts >= max_attempts:
            state = JobState.failed
            values |= {
                "finished_at": db_now(),
                "error": {"message": f"{why}, on each of its {attempts} attempts (max_attempts={max_attempts})"},
            }
        else:
            state = JobState.queued
            values["progress"] = {"message": f"queued again: {why}"}
        session.execute(
            update(Job)
            .where(col(Job.id) == claim.job_id, col(Job.attempts) == claim.attempt)
            .values(state=state, **values)
        )
        set_worker_job(session, claim.worker_id, None)
    return state


def expire(engine: Engine) -> int:
    """Nodes whose worker stopped heartbeating: a waiting one takes its gathering with it (the others gather again), a
    running one is marked lost (its attempt's other nodes stop on their next beat). Returns how many."""
    now = db_now()
    with writing(engine) as session:
        rows = session.execute(
            select(JobNode.job_id, JobNode.attempt, JobNode.state).where(
                col(JobNode.state).in_((WAITING, RUNNING)), col(JobNode.lease_expires_at) < now
            )
        ).all()
        for row in rows:
            if row.state == WAITING:
                session.execute(
                    delete(JobNode).where(*_of_attempt(row.job_id, row.attempt), col(JobNode.state) == WAITING)
                )
            else:
                session.execute(
                    update(JobNode)
                    .where(
                        *_of_attempt(row.job_id, row.attempt),
                        col(JobNode.state) == RUNNING,
                        col(JobNode.lease_expires_at) < now,
                    )
                    .values(state=LOST)
                )
    return len(rows)


def nodes_of(engine: Engine, job_id: str) -> list[JobNode]:
    """The nodes of the job's latest attempt (gathering or run), by node number."""
    with reading(engine) as session:
        latest = select(func.max(JobNode.attempt)).where(col(JobNode.job_id) == job_id).scalar_subquery()
        rows = session.exec(
            select(JobNode)
            .where(col(JobNode.job_id) == job_id, col(JobNode.attempt) == latest)
            .order_by(col(JobNode.node))
        )
        return list(rows.all())
