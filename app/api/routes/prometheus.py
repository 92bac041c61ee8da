"""/metrics: the service in Prometheus' text format: jobs by kind and state, workers and their heartbeats, what
conversions and trainings have done.

Everything is read from the database at scrape time, so any API process answers the same. Totals add up the jobs
still in the database: deleting jobs lowers them, which Prometheus takes as a counter reset.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import Engine, func
from sqlmodel import col, select

from app.jobs import store
from app.jobs.db import reading
from app.api.deps import EngineDep, SettingsDep
from app.jobs.kinds import KINDS, PLANNED
from app.jobs.models import OWNED, Job, JobState
from app.api.schemas import WorkerRead

router = APIRouter(tags=["system"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metric:
    name: str
    type: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(metrics: Iterable[Metric]) -> str:
    lines = []
    for metric in metrics:
        lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.type}"]
        for labels, value in metric.samples:
            label_text = ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels.items())
            lines.append(f"{metric.name}{{{label_text}}} {_number(value)}" if labels else f"{metric.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _job_counts(engine: Engine) -> list[Metric]:
    jobs = Metric("openseek_jobs", "gauge", "Jobs in the database, by kind and state.")
    with reading(engine) as session:
        rows = session.exec(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
    counts = {(kind, str(JobState(state).value)): n for kind, state, n in rows}
    kinds = sorted({*KINDS, *PLANNED, *(kind for kind, _ in counts)})
    for kind in kinds:
        for state in JobState:
            jobs.add(counts.get((kind, state.value), 0), kind=kind, state=state.value)
    return [jobs]


def _workers(engine: Engine, lease_seconds: float) -> list[Metric]:
    alive = Metric("openseek_workers", "gauge", "Registered workers; alive: heartbeated within the lease time.")
    beat = Metric(
        "openseek_worker_last_heartbeat_timestamp_seconds", "gauge", "When each worker last heartbeated (Unix time)."
    )
    busy = Metric("openseek_worker_busy", "gauge", "1 while the worker runs a job, else 0.")
    workers = [WorkerRead.of(w, lease_seconds) for w in store.list_workers(engine)]
    for state in (True, False):
        alive.add(sum(w.alive is state for w in workers), alive=str(state).lower())
    for w in workers:
        beat.add(w.heartbeat_at.timestamp(), worker=w.id, host=w.host)
        busy.add(1 if w.job_id else 0, worker=w.id, host=w.host)
    return [alive, beat, busy]


def _conversion(engine: Engine) -> list[Metric]:
    progress, result = col(Job.progress), col(Job.result)
    with reading(engine) as session:
        docs, chars, shard_bytes = session.exec(
            select(
                func.coalesce(func.sum(progress["docs"].as_integer()), 0),
                func.coalesce(func.sum(progress["chars"].as_integer()), 0),
                func.coalesce(func.sum(result["bytes"].as_integer()), 0),
            ).where(Job.kind == "convert")
        ).one()
        running = session.exec(
            select(Job.id, progress["fraction"].as_float(), progress["rate"].as_float()).where(
                Job.kind == "convert", col(Job.state).in_(OWNED)
            )
        ).all()
    fraction = Metric("openseek_convert_progress_ratio", "gauge", "How far each running conversion is (0..1).")
    rate = Metric("openseek_convert_docs_per_second", "gauge", "Documents per second of each running conversion.")
    for job_id, job_fraction, job_rate in running:
        fraction.add(job_fraction, job=job_id)
        rate.add(job_rate, job=job_id)
    return [
        _single("openseek_convert_docs_total", "counter", "Documents written by convert jobs (running ones so far).", docs),
        _single("openseek_convert_chars_total", "counter", "Characters written by convert jobs (running ones so far).", chars),
        _single("openseek_convert_shard_bytes_total", "counter", "Bytes of parquet shards of finished convert jobs.", shard_bytes),
        fraction,
        rate,
    ]


def tokens_per_step(spec: dict) -> int:
    """Tokens in one optimizer step: the spec's total batch, or by default one micro-batch on each rank."""
    if spec.get("total_batch_size"):
        return int(spec["total_batch_size"])
    return int(spec.get("device_batch_size") or 0) * int(spec.get("max_seq_len") or 0) * int(spec.get("nproc_per_node") or 1)


def _training(engine: Engine) -> list[Metric]:
    with reading(engine) as session:
        rows = session.exec(select(Job.id, Job.state, Job.spec, Job.progress).where(Job.kind == "train")).all()
    steps = Metric("openseek_train_steps_total", "counter", "Optimizer steps done by train jobs (running ones so far).")
    tokens = Metric("openseek_train_tokens_total", "counter", "Tokens trained on by train jobs (steps x tokens per step).")
    speed = Metric("openseek_train_tokens_per_second", "gauge", "Training throughput of each running train job.")
    loss = Metric("openseek_train_loss", "gauge", "Latest training loss of each running train job.")
    val_bpb = Metric("openseek_train_val_bpb", "gauge", "Latest validation bits per byte of each running train job.")
    total_steps = total_tokens = 0
    for job_id, state, spec, progress in rows:
        progress = progress or {}
        step = progress.get("step") if isinstance(progress.get("step"), int) else 0
        total_steps += step
        total_tokens += step * tokens_per_step(spec or {})
        if state in OWNED:
            speed.add(progress.get("tok_per_sec"), job=job_id)
            loss.add(progress.get("loss"), job=job_id)
            val_bpb.add(progress.get("val_bpb"), job=job_id)
    steps.add(total_steps)
    tokens.add(total_tokens)
    return [steps, tokens, speed, loss, val_bpb]


def _single(name: str, kind: str, help: str, value: float) -> Metric:
    metric = Metric(name, kind, help)
    metric.add(value)
    return metric


@router.get(
    "/metrics",
    summary="Metrics for Prometheus",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition format 0.0.4."}},
)
def metrics(engine: EngineDep, settings: SettingsDep) -> PlainTextResponse:
    """Jobs by kind and state, workers and their last heartbeats, documents and bytes converted, steps and tokens
    trained. Scrape with the API token as a bearer token when the server has one."""
    collected = [
        *_job_counts(engine),
        *_workers(engine, settings.lease_seconds),
        *_conversion(engine),
        *_training(engine),
    ]
    return PlainTextResponse(render(collected), media_type=CONTENT_TYPE)
