"""Watching one job as it runs: what changed in its row, and what was appended to its log.

The API learns nothing from workers directly; it polls the job's row and its log file at a modest interval. Each
watcher reads at its own pace, one bounded chunk of log at a time, so a reader that falls behind (a slow client) only
delays itself: the worker writes its file and row regardless, and nothing is buffered on the reader's behalf.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from app.jobs import files as jobfiles
from app.jobs import store
from app.jobs.models import FINISHED, Job

LOG_CHUNK_BYTES = 64 << 10
MAX_POLL_INTERVAL = 2.0


@dataclass(frozen=True)
class Changed:
    """The job's row, when its state, progress, result or error differ from the last one seen."""

    job: Job
    state_changed: bool


@dataclass(frozen=True)
class Appended:
    """Log text from byte `start` to byte `end` (whole lines, but for a line that is still being written)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Gone:
    """The job was deleted while watched."""

    job_id: str


Update = Changed | Appended | Gone


def poll_interval(poll_seconds: float) -> float:
    """Workers report every `poll_seconds`; looking more often than that finds nothing new."""
    return min(max(poll_seconds, 0.1), MAX_POLL_INTERVAL)


async def watch(
    engine: Engine,
    job_id: str,
    folder: Path,
    log_offset: int = 0,
    interval: float = 0.5,
    stopping: Callable[[], bool] = lambda: False,
) -> AsyncIterator[Update]:
    """Yield the job's row first, then each change and each piece of log, until the job has finished and its log
    has been read to the end, the job is deleted, or `stopping()` says to give up (the server shuts down). `folder` is
    the job's own (files.job_dir), where its log is."""
    seen: tuple | None = None
    while not stopping():
        try:
            job = await asyncio.to_thread(store.get_job, engine, job_id)
        except store.NotFound:
            yield Gone(job_id)
            return
        # The row is read before the log: a job seen finished has written all its log by then.
        key = (job.state, job.progress, job.result, job.error)
        if key != seen:
            yield Changed(job, state_changed=seen is None or seen[0] != job.state)
            seen = key
        while True:
            text, end, size = await asyncio.to_thread(jobfiles.read_log, folder, log_offset, LOG_CHUNK_BYTES)
            if end <= log_offset:
                break
            yield Appended(text, log_offset, end)
            log_offset = end
            if end >= size:
                break
        if job.state in FINISHED:
            return
        await asyncio.sleep(interval)
