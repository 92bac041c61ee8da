"""What the HTTP API returns. The tables (app/jobs/models.py) stay private; these shapes are the contract."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.models import Job, JobNode, JobState, Worker, utcnow

_JOB_EXAMPLE = {
    "id": "3f9c2a1b7d4e5f60",
    "kind": "convert",
    "state": "running",
    "spec": {"name": "gsm8k", "sources": [{"type": "files", "paths": ["/data/gsm8k.jsonl"]}], "output_dir": "..."},
    "progress": {
        "fraction": 0.42,
        "docs": 120000,
        "chars": 250000000,
        "shards": 1,
        "rate": 9500000.0,
        "eta_s": 36.5,
        "message": "shard 2 of ~3",
    },
    "result": None,
    "error": None,
    "attempts": 1,
    "worker_id": "node1-4242-a1b2",
    "created_at": "2026-01-01T12:00:00Z",
    "updated_at": "2026-01-01T12:00:21Z",
    "started_at": "2026-01-01T12:00:00.3Z",
    "finished_at": None,
    "lease_expires_at": "2026-01-01T12:00:51Z",
}


class Progress(BaseModel):
    """How far a job is. Convert jobs fill the fields below; other kinds add their own (e.g. step, loss)."""

    model_config = ConfigDict(extra="allow")

    fraction: float | None = Field(default=None, description="0..1, when the total is known.")
    docs: int | None = None
    chars: int | None = None
    shards: int | None = None
    rate: float | None = Field(default=None, description="Characters per second.")
    eta_s: float | None = Field(default=None, description="Seconds left, when the total is known.")
    message: str | None = None


class JobError(BaseModel):
    message: str
    where: str | None = Field(default=None, description="The file, line or field at fault.")


class NodeRead(BaseModel):
    """One node of a multi-node job's latest attempt."""

    node: int = Field(description="The node's number; node 0 hosts the rendezvous and writes the job's log.")
    attempt: int
    host: str = Field(description="The address its worker advertised (OPENSEEK_NANOCHAT_WORKER_HOST).")
    worker_id: str
    state: str = Field(description="waiting, running, exited, stopped or lost.")
    returncode: int | None = None
    endpoint: str | None = Field(default=None, description="Node 0: the rendezvous endpoint, host:port.")

    @classmethod
    def of(cls, node: JobNode) -> "NodeRead":
        return cls.model_validate(node, from_attributes=True)


class JobRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str
    kind: str
    state: JobState
    spec: dict[str, Any] = Field(description="The spec as it runs, defaults filled (e.g. output_dir).")
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = Field(description="How many times a worker started this job.")
    worker_id: str | None = Field(default=None, description="The worker running (or that last ran) the job.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    nnodes: int = Field(default=1, description="Nodes the job runs on at once (train jobs' nnodes).")
    nodes: list[NodeRead] = Field(
        default_factory=list,
        description="A multi-node job's nodes of its latest attempt (GET /jobs/{id} only; empty in lists).",
    )

    @classmethod
    def of(cls, job: Job, nodes: list[JobNode] = ()) -> "JobRead":
        read = cls.model_validate(job, from_attributes=True)
        read.nodes = [NodeRead.of(node) for node in nodes]
        return read


class JobList(BaseModel):
    jobs: list[JobRead]
    total: int = Field(description="Jobs matching the filters, over all pages.")
    limit: int
    offset: int


class Kept(BaseModel):
    path: str
    reason: str = Field(description="Why the purge left it: e.g. its manifest names another job as owner.")


class Deleted(BaseModel):
    id: str
    removed: list[str] = Field(description="Folders removed along with the job.")
    kept: list[Kept] = Field(
        default_factory=list,
        description="Outputs a purge left in place because the job does not own them (a dataset is owned by the job "
        "its manifest names; a train run dir by its job).",
    )


class LogChunk(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "offset": 0,
                    "next_offset": 58,
                    "size": 58,
                    "text": "reading gsm8k.jsonl\nshard 0 done\n",
                    "complete": False,
                }
            ]
        }
    )

    offset: int
    next_offset: int = Field(description="Pass as ?offset= to get what follows.")
    size: int = Field(description="The log's size in bytes now.")
    text: str = Field(description="Whole lines (unless a single line is longer than the limit).")
    complete: bool = Field(description="The job has finished and this chunk reaches the end of its log.")


class WorkerRead(BaseModel):
    id: str
    host: str
    pid: int
    job_id: str | None = Field(default=None, description="The job it runs now.")
    address: str | None = Field(default=None, description="The address other nodes reach it by.")
    cpus: int = Field(description="CPU cores it may use.")
    cuda: list[str] = Field(description="Its CUDA devices, by name (empty: CPU only).")
    started_at: datetime
    heartbeat_at: datetime
    alive: bool = Field(description="It heartbeated within the lease time.")

    @classmethod
    def of(cls, worker: Worker, lease_seconds: float, now: datetime | None = None) -> "WorkerRead":
        """`now`: the database's clock (queue.database_now), the one heartbeats are written in."""
        alive = ((now or utcnow()) - worker.heartbeat_at).total_seconds() <= lease_seconds
        return cls.model_validate({**worker.model_dump(), "alive": alive})


class Health(BaseModel):
    status: str = "ok"


class ErrorDetail(BaseModel):
    detail: str


class FieldError(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrors(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "type": "input_error",
                            "loc": ["body", "sources", 0, "paths"],
                            "msg": "no such file: '/data/x.jsonl'",
                        }
                    ]
                }
            ]
        }
    )

    detail: list[FieldError]
