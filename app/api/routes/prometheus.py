"""/metrics: the service in Prometheus' text format: jobs by kind and state, workers and their heartbeats, what
conversions and trainings have done.

The numbers come from app/jobs/stats.py and the workers table at scrape time; this module only names and renders
them. Totals falling (jobs deleted) is what Prometheus takes as a counter reset.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import Engine

from app.api.deps import EngineDep, SettingsDep
from app.api.schemas import WorkerRead
from app.jobs import queue, stats, store
from app.jobs.kinds import KINDS
from app.jobs.models import JobState

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
            lines.append(
                f"{metric.name}{{{label_text}}} {_number(value)}" if labels else f"{metric.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _job_counts(engine: Engine) -> list[Metric]:
    jobs = Metric("openseek_jobs", "gauge", "Jobs in the database, by kind and state.")
    counts = stats.job_counts(engine)
    kinds = sorted({*KINDS, *(kind for kind, _ in counts)})
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
    now = queue.database_now(engine)
    workers = [WorkerRead.of(w, lease_seconds, now) for w in store.list_workers(engine)]
    for state in (True, False):
        alive.add(sum(w.alive is state for w in workers), alive=str(state).lower())
    for w in workers:
        beat.add(w.heartbeat_at.timestamp(), worker=w.id, host=w.host)
        busy.add(1 if w.job_id else 0, worker=w.id, host=w.host)
    return [alive, beat, busy]


def _conversion(engine: Engine) -> list[Metric]:
    done = stats.conversions(engine)
    fraction = Metric("openseek_convert_progress_ratio", "gauge", "How far each running conversion is (0..1).")
    rate = Metric("openseek_convert_docs_per_second", "gauge", "Documents per second of each running conversion.")
    for job_id, job_fraction, job_rate in done.running:
        fraction.add(job_fraction, job=job_id)
        rate.add(job_rate, job=job_id)
    return [
        _single(
            "openseek_convert_docs_total",
            "counter",
            "Documents written by convert jobs (running ones so far).",
            done.docs,
        ),
        _single(
            "openseek_convert_chars_total",
            "counter",
            "Characters written by convert jobs (running ones so far).",
            done.chars,
        ),
        _single(
            "openseek_convert_shard_bytes_total",
            "counter",
            "Bytes of parquet shards of finished convert jobs.",
            done.shard_bytes,
        ),
        fraction,
        rate,
    ]


def _training(engine: Engine) -> list[Metric]:
    done = stats.trainings(engine)
    steps = Metric("openseek_train_steps_total", "counter", "Optimizer steps done by train jobs (running ones so far).")
    tokens = Metric(
        "openseek_train_tokens_total", "counter", "Tokens trained on by train jobs (steps x tokens per step)."
    )
    speed = Metric("openseek_train_tokens_per_second", "gauge", "Training throughput of each running train job.")
    loss = Metric("openseek_train_loss", "gauge", "Latest training loss of each running train job.")
    val_bpb = Metric("openseek_train_val_bpb", "gauge", "Latest validation bits per byte of each running train job.")
    for job_id, progress in done.running:
        speed.add(progress.get("tok_per_sec"), job=job_id)
        loss.add(progress.get("loss"), job=job_id)
        val_bpb.add(progress.get("val_bpb"), job=job_id)
    steps.add(done.steps)
    tokens.add(done.tokens)
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
