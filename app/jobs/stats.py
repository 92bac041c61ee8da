"""What the jobs have done, summed from the jobs table when asked (GET /metrics renders it for Prometheus).

Everything is read from the database, so any API process answers the same. Totals add up the jobs still in the
database: deleting jobs lowers them.
"""

from dataclasses import dataclass

from sqlalchemy import Engine, func
from sqlmodel import col, select

from openseek_nanochat.train.spec import TrainSpec

from app.jobs.db import reading
from app.jobs.models import OWNED, Job, JobState


@dataclass(frozen=True)
class Conversions:
    docs: int  # documents written by convert jobs (running ones so far)
    chars: int
    shard_bytes: int  # bytes of the shards of finished convert jobs
    running: list[tuple[str, float | None, float | None]]  # (job id, fraction, documents per second)


@dataclass(frozen=True)
class Trainings:
    steps: int  # optimizer steps done by train jobs (running ones so far)
    tokens: int  # steps x tokens per step
    running: list[tuple[str, dict]]  # (job id, its latest progress)


def job_counts(engine: Engine) -> dict[tuple[str, str], int]:
    """Jobs by (kind, state); pairs with no job are missing."""
    with reading(engine) as session:
        rows = session.exec(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
    return {(kind, str(JobState(state).value)): n for kind, state, n in rows}


def conversions(engine: Engine) -> Conversions:
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
    return Conversions(docs, chars, shard_bytes, [tuple(row) for row in running])


def trainings(engine: Engine) -> Trainings:
    with reading(engine) as session:
        rows = session.exec(select(Job.id, Job.state, Job.spec, Job.progress).where(Job.kind == "train")).all()
    steps = tokens = 0
    running = []
    for job_id, state, spec, progress in rows:
        progress = progress or {}
        step = progress.get("step") if isinstance(progress.get("step"), int) else 0
        steps += step
        tokens += step * tokens_per_step(spec or {})
        if state in OWNED:
            running.append((job_id, progress))
    return Trainings(steps, tokens, running)


def tokens_per_step(spec: dict) -> int:
    """Tokens in one optimizer step of a stored train spec. The spec was validated at submit; it is not again here,
    so a row from an older version still counts."""
    return TrainSpec.model_construct(**spec).total_tokens_per_step()
