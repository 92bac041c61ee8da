"""The tables: jobs, the folders they claim, and the workers that run them.

A job's life: queued -> running -> succeeded | failed | cancelled, with `cancelling` while a cancel is under way. A
running job belongs to one worker (`worker_id`) for one attempt (`attempts`) until `lease_expires_at`; the worker
extends the lease while it lives, and a job whose lease ran out goes back to the queue (see app/jobs/queue.py).
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
    job_id: str | None = Field(default=None, max_length=32)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
