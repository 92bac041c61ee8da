"""Running one claimed job: start its process, heartbeat while it runs, stop it when asked, record how it ended.

The job process is the unit of work; this module only supervises it (procs.py starts it and stops its tree). Each
tick (settings.poll_seconds) it extends the lease, stores the latest progress, and learns the job's state:
`cancelling` means stop the job, no row means the lease was lost (the job was requeued and may already run
elsewhere), so stop it and touch the job no more.
"""

import logging
import signal
import subprocess
import threading
import time
from enum import Enum

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openseek_nanochat import procs
from openseek_nanochat.settings import Settings

from app.jobs import files as jobfiles
from app.jobs import queue
from app.jobs.kinds import KINDS
from app.jobs.models import JobState

from worker.output import JobOutput

log = logging.getLogger(__name__)


class Ending(Enum):
    exited = "exited"  # the job process ended on its own
    cancelled = "cancelled"  # a user cancelled the job
    lost = "lost"  # this worker no longer holds the job's lease
    stopping = "stopping"  # this worker is shutting down


def run(claim: queue.Claim, settings: Settings, engine: Engine, stopping: threading.Event) -> None:
    folder = jobfiles.job_dir(settings, claim.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    output: JobOutput | None = None
    try:
        kind = KINDS.get(claim.kind)
        if kind is None:
            error = {"message": f"this worker cannot run {claim.kind!r} jobs"}
            queue.finish(engine, claim, JobState.failed, error=error)
            return
        leftovers = procs.stop_job(claim.job_id, grace=settings.kill_grace_seconds)
        try:
            argv = kind.command(jobfiles.write_spec(folder, claim.spec))
            process = procs.spawn(
                argv,
                env=procs.job_environment(claim.job_id),
                cwd=folder,
                stdout=subprocess.PIPE,
                nice=settings.job_nice,
            )
        except OSError as error:  # a full disk, no memory or processes left: this attempt fails, the worker goes on
            queue.finish(engine, claim, JobState.failed, error={"message": f"could not start the job process: {error}"})
            return
        output = JobOutput(process.stdout, folder / jobfiles.LOG, folder / jobfiles.METRICS)
        if leftovers:
            output.note(f"[worker {claim.worker_id}] stopped {leftovers} processes left by an earlier attempt")
        output.note(f"[worker {claim.worker_id}] attempt {claim.attempt} started (pid {process.pid}): {' '.join(argv)}")
        output.start()
        ending = _supervise(process, output, claim, settings, engine, stopping)
        if ending is not Ending.exited:
            stopped = procs.stop_job(claim.job_id, process, grace=settings.kill_grace_seconds)
            output.note(f"[worker {claim.worker_id}] {ending.value}: stopped {stopped} processes of the job")
        process.wait()
        output.join(timeout=10)
        _record(ending, process.returncode, output, claim, engine)
    finally:
        if output is not None:
            output.close()


def _supervise(
    process: subprocess.Popen,
    output: JobOutput,
    claim: queue.Claim,
    settings: Settings,
    engine: Engine,
    stopping: threading.Event,
) -> Ending:
    sent_version = 0
    last_heartbeat = time.monotonic()
    while True:
        try:
            process.wait(timeout=settings.poll_seconds)
            return Ending.exited
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set():
            return Ending.stopping
        progress, version = output.progress()
        try:
            state = queue.heartbeat(
                engine, claim, settings.lease_seconds, progress if version != sent_version else None
            )
        except SQLAlchemyError as error:
            # The database may come back; the lease tells how long this worker may keep going without it.
            log.warning("job %s: heartbeat failed: %s", claim.job_id, error)
            if time.monotonic() - last_heartbeat > settings.lease_seconds:
                return Ending.lost
            continue
        last_heartbeat = time.monotonic()
        sent_version = version
        if state is None:
            return Ending.lost
        if state == JobState.cancelling:
            return Ending.cancelled


def _record(ending: Ending, returncode: int, output: JobOutput, claim: queue.Claim, engine: Engine) -> None:
    progress, _ = output.progress()
    if ending is Ending.exited and returncode == 0:
        recorded = queue.finish(engine, claim, JobState.succeeded, result=output.result, progress=progress)
    elif ending is Ending.exited:
        error = output.error or _exit_error(returncode, output)
        recorded = queue.finish(engine, claim, JobState.failed, error=error, progress=progress)
    elif ending is Ending.cancelled:
        recorded = queue.finish(engine, claim, JobState.cancelled, progress=progress)
    elif ending is Ending.stopping:
        state = queue.release(engine, claim)
        output.note(f"[worker {claim.worker_id}] worker stopping: job {state or 'no longer ours'}")
        return
    else:
        queue.worker_heartbeat(engine, claim.worker_id, job_id=None)
        output.note(f"[worker {claim.worker_id}] lost the job's lease; another attempt will resume it")
        return
    if not recorded:
        output.note(f"[worker {claim.worker_id}] the job was taken from this worker before it could record the outcome")


def _exit_error(returncode: int, output: JobOutput) -> dict:
    if returncode < 0:
        how = f"was killed by {signal.Signals(-returncode).name}"
    else:
        how = f"exited with code {returncode}"
    last = output.tail[-1] if output.tail else None
    message = f"the job process {how}" + (f"; its last output: {last}" if last else "; see the job's log")
    return {"message": message, "where": None}
