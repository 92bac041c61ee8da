"""The tables: jobs, the folders they claim, the workers that run them, and the nodes of multi-node jobs.

A job's life: queued -> running -> succeeded | failed | cancelled, with `cancelling` while a cancel is under way. A
running job belongs to one worker (`worker_id`) for one attempt (`attempts`) until `lease_expires_at`; the worker
extends the lease while it lives, and a job whose lease ran out goes back to the queue (see app/jobs/queue.py).

A job of `nnodes` > 1 is run by that many workers at once: each holds a row of job_nodes for the attempt, with a lease
of its own; the job's own row belongs to node 0's worker (see app/jobs/gang.py).
"""

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, String, TypeDecorator
from sqlmodel import Field, SQLModel

from openseek_nanochat.jobstates import FINISHED as FINISHED
from openseek_nanochat.jobstates import JobState as JobState

OWNED = (JobState.running, JobState.cancelling)  # states in which a worker holds the job


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return secrets.token_hex(8)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on every backend (SQLite keeps no zone; it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created_at", "state", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=32, index=True)
    state: JobState = Field(sa_type=String(16))
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    progress: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    attempts: int = 0
    worker_id: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # What one node of the job needs (app/jobs/placement.py): a worker claims only what it can serve.
    nnodes: int = Field(default=1)
    nproc_per_node: int = Field(default=1)
    device: str = Field(default="cpu", max_length=8)  # "cpu", "cuda" or "auto" (CUDA where there is one)
    idempotency_key: str | None = Field(default=None, max_length=255, unique=True, index=True)
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class JobFolder(SQLModel, table=True):
    """A folder a job writes or reads, resolved; claimed in the transaction that inserts the job (app/jobs/folders.py),
    so no two unfinished jobs write one folder, nor one inside the other's. Deleted with its job."""

    __tablename__ = "job_folders"

    job_id: str = Field(foreign_key="jobs.id", ondelete="CASCADE", primary_key=True, max_length=32)
    access: str = Field(primary_key=True, max_length=8)  # "writes" or "reads"
    path: str = Field(primary_key=True, max_length=4096)


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    # What it can run (openseek_nanochat/capacity.py), and the address other nodes reach it by.
    address: str | None = Field(default=None, max_length=255)
    cpus: int = Field(default=1)
    cuda: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    job_id: str | None = Field(default=None, max_length=32)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class JobNode(SQLModel, table=True):
    """One node of one attempt of a multi-node job, held by one worker until `lease_expires_at`.

    `state`: waiting (the gang is gathering), running, then exited (with `returncode`), stopped (cancelled or its
    gang broke) or lost (its worker stopped heartbeating). Node 0's row carries the rendezvous endpoint.
    """

    __tablename__ = "job_nodes"

    job_id: str = Field(foreign_key="jobs.id", ondelete="CASCADE", primary_key=True, max_length=32)
    attempt: int = Field(primary_key=True)
    node: int = Field(primary_key=True)
    worker_id: str = Field(max_length=128)
    host: str = Field(max_length=255)
    state: str = Field(max_length=16)
    endpoint: str | None = Field(default=None, max_length=300)
    returncode: int | None = None
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claimed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
