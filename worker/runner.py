"""Running one claimed job: start its process, heartbeat while it runs, stop it when asked, record how it ended.

The job process is the unit of work; this module only supervises it (procs.py starts it and stops its tree). Each
tick (settings.poll_seconds) it extends the lease, stores the latest progress, and learns the job's state:
`cancelling` means stop the job, no row means the lease was lost (the job was requeued and may already run
elsewhere), so stop it and touch the job no more.

Only the database says the lease is lost: the row is no longer ours, or the deadline it last granted has passed. A
heartbeat that fails (the database is busy or away) waits a fraction of the lease (the worker's lock_wait) and is tried
again on the next tick; only once the lease has run out unrenewed does the attempt stop, and its log says why. The
deadline is kept in this machine's monotonic clock, counted from when the heartbeat that renewed it was sent: never
later than the database's own. Every stop names the attempt: a worker stops only its own attempt's processes, and, when
it starts attempt N, what attempts before N left on this machine.

A node of a multi-node job (`slot`, app/jobs/gang.py) runs the same way, with its place in the gang in the job
process's environment (train/nodes.py) and its own log beside the job's (node 0's is the job's log). Each tick it also
renews its node's lease and learns whether the gang stands: a lost node stops the attempt on every node, and node 0's
worker, which owns the job's row, requeues the job. Node 0's process ending is not the end of the attempt until every
other node has ended too (or its lease ran out): only then does node 0's worker record the outcome.
"""

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openseek_nanochat import procs
from openseek_nanochat.settings import Settings
from openseek_nanochat.train import nodes

from app.jobs import files as jobfiles
from app.jobs import gang, queue
from app.jobs.kinds import KINDS
from app.jobs.models import JobState

from worker.output import JobOutput

log = logging.getLogger(__name__)
T = TypeVar("T")


class Ending(Enum):
    exited = "exited"  # the job process ended on its own
    cancelled = "cancelled"  # a user cancelled the job
    lost = "lost"  # this worker no longer holds the job's lease
    stopping = "stopping"  # this worker is shutting down
    broken = "broken"  # another node of the attempt was lost


def run(
    claim: queue.Claim, settings: Settings, engine: Engine, stopping: threading.Event, slot: gang.Slot | None = None
) -> None:
    """Run one attempt of a job (of one node of it, with `slot`) to its end, and record how it ended."""
    folder = jobfiles.job_dir(settings, claim.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    output: JobOutput | None = None
    try:
        kind = KINDS.get(claim.kind)
        if kind is None:
            error = {"message": f"this worker cannot run {claim.kind!r} jobs"}
            queue.finish(engine, claim, JobState.failed, error=error)
            return
        attempt, mine = claim.attempt, range(claim.attempt, claim.attempt + 1)
        node = slot.node if slot is not None else None
        leftovers = procs.stop_job(claim.job_id, grace=settings.kill_grace_seconds, attempts=range(attempt))
        beat = _beat_for(claim, slot, settings, engine)
        if slot is not None:
            # The leases were last renewed before that scan of this machine's processes, which a busy machine can
            # make last seconds; the other nodes would take a node silent for a lease as lost. What this first beat
            # learns, the first tick learns again.
            beat(None)
        env = procs.job_environment(claim.job_id, attempt)
        if slot is not None:
            env |= nodes.environment(nodes.Place(slot.node, slot.nnodes, slot.endpoint, slot.rdzv_id, slot.host))
        try:
            argv = kind.command(jobfiles.write_spec(folder, claim.spec))
            process = procs.spawn(
                argv,
                env=env,
                cwd=folder,
                stdout=subprocess.PIPE,
                nice=settings.job_nice,
            )
        except OSError as error:  # a full disk, no memory or processes left: this attempt fails, the worker goes on
            if slot is not None:
                gang.end_node(engine, slot, gang.LOST)  # the other nodes stop; node 0's worker requeues the job
            else:
                error = {"message": f"could not start the job process: {error}"}
                queue.finish(engine, claim, JobState.failed, error=error)
            return
        output = JobOutput(
            process.stdout, folder / jobfiles.node_log(node or 0), folder / jobfiles.node_metrics(node or 0)
        )
        me = f"[worker {claim.worker_id}]" if slot is None else f"[worker {claim.worker_id} node {node}]"
        if leftovers:
            output.note(f"{me} stopped {leftovers} processes left by attempts before {attempt}")
        output.note(f"{me} attempt {attempt} started (pid {process.pid}): {' '.join(argv)}")
        output.start()
        lease = Lease(claim, settings.lease_seconds)
        ending = _supervise(process, output, claim, settings, stopping, lease, beat)
        if ending is not Ending.exited:
            stopped = procs.stop_job(claim.job_id, process, grace=settings.kill_grace_seconds, attempts=mine, node=node)
            output.note(f"{me} {ending.value}: stopped {stopped} processes of the job's attempt {attempt}")
        process.wait()
        output.join(timeout=10)
        output.note(f"{me} attempt {attempt} ended: the job process {_how_it_ended(process.returncode)}")
        if slot is None:
            _record(ending, process.returncode, output, claim, engine, lease, settings)
        else:
            _record_node(ending, process.returncode, output, claim, slot, engine, lease, settings)
    finally:
        if output is not None:
            output.close()


class Lease:
    """The lease as this worker knows it, in its monotonic clock: renewed when the request that renewed it was sent,
    so it never runs out later here than in the database."""

    def __init__(self, claim: queue.Claim, seconds: float):
        self.seconds = seconds
        self.renewed_at = claim.asked_at

    def without_database(self) -> float:
        """Seconds since the last renewal was asked for."""
        return time.monotonic() - self.renewed_at

    def lost_note(self, worker_id: str, then: str) -> str:
        return (
            f"[worker {worker_id}] could not reach the database for {self.without_database():.0f} s, longer than "
            f"the {self.seconds:g} s lease: {then}"
        )


Beat = Callable[[dict | None], "Ending | None"]  # one tick's writes (progress, when new); an Ending stops the attempt


def _beat_for(claim: queue.Claim, slot: gang.Slot | None, settings: Settings, engine: Engine) -> Beat:
    """What a tick writes and learns: the job's lease (its owner: a one-node job's worker, or node 0's), and, for a
    node of a multi-node job, its node's lease and whether the gang stands."""
    verdicts = {gang.LOST: Ending.lost, gang.CANCELLED: Ending.cancelled, gang.BROKEN: Ending.broken}

    def job(progress: dict | None) -> Ending | None:
        state = queue.heartbeat(engine, claim, settings.lease_seconds, progress)
        if state is None:
            return Ending.lost
        return Ending.cancelled if state == JobState.cancelling else None

    def node(progress: dict | None) -> Ending | None:
        if slot.node == 0 and (ending := job(progress)) is not None:
            return ending
        return verdicts.get(gang.beat(engine, slot, settings.lease_seconds))

    return job if slot is None else node


def _supervise(
    process: subprocess.Popen,
    output: JobOutput,
    claim: queue.Claim,
    settings: Settings,
    stopping: threading.Event,
    lease: Lease,
    beat: Beat,
) -> Ending:
    sent_version = 0
    while True:
        try:
            process.wait(timeout=settings.poll_seconds)
            return Ending.exited
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set():
            return Ending.stopping
        progress, version = output.progress()
        asked_at = time.monotonic()
        try:
            ending = beat(progress if version != sent_version else None)
        except SQLAlchemyError as error:
            # Busy or away: try again next tick, for as long as the lease the database last granted lasts.
            log.warning(
                "job %s: heartbeat failed, %.0f s without the database: %s",
                claim.job_id,
                lease.without_database(),
                error,
            )
            if lease.without_database() > lease.seconds:
                output.note(lease.lost_note(claim.worker_id, "stopping this attempt"))
                return Ending.lost
            continue
        lease.renewed_at = asked_at
        sent_version = version
        if ending is not None:
            return ending


def _while_leased(write: Callable[[], T], claim: queue.Claim, lease: Lease, settings: Settings) -> T:
    """A write of the attempt's outcome, tried again each tick while the database is busy or away, until the lease
    runs out (then the error goes on: the job will be requeued and its next attempt redoes what is left)."""
    while True:
        try:
            return write()
        except SQLAlchemyError as error:
            if lease.without_database() > lease.seconds:
                raise
            log.warning("job %s: recording the outcome failed, trying again: %s", claim.job_id, error)
            time.sleep(settings.poll_seconds)


def _record(
    ending: Ending,
    returncode: int,
    output: JobOutput,
    claim: queue.Claim,
    engine: Engine,
    lease: Lease,
    settings: Settings,
) -> None:
    progress, _ = output.progress()
    me = f"[worker {claim.worker_id}]"
    if ending is Ending.lost:
        output.note(f"{me} lost the job's lease; another attempt will resume it")
        try:
            queue.worker_heartbeat(engine, claim.worker_id, job_id=None)
        except SQLAlchemyError:
            pass  # the idle loop says it again
        return
    if ending is Ending.exited and returncode == 0:
        outcome, values = JobState.succeeded, {"result": output.result}
    elif ending is Ending.exited:
        outcome, values = JobState.failed, {"error": output.error or _exit_error(returncode, output)}
    elif ending is Ending.cancelled:
        outcome, values = JobState.cancelled, {}
    else:
        outcome = None
    try:
        if outcome is None:
            state = _while_leased(lambda: queue.release(engine, claim), claim, lease, settings)
            output.note(f"{me} worker stopping: job {state or 'no longer ours'}")
            return
        recorded = _while_leased(
            lambda: queue.finish(engine, claim, outcome, progress=progress, **values), claim, lease, settings
        )
    except SQLAlchemyError:
        output.note(
            lease.lost_note(
                claim.worker_id,
                f"could not record that the job {outcome or 'was released'}; another attempt will take it over",
            )
        )
        raise
    if recorded:
        output.note(f"{me} attempt {claim.attempt} recorded: {outcome}")
    else:
        output.note(f"{me} the job was taken from this worker before it could record the outcome")


def _record_node(
    ending: Ending,
    returncode: int,
    output: JobOutput,
    claim: queue.Claim,
    slot: gang.Slot,
    engine: Engine,
    lease: Lease,
    settings: Settings,
) -> None:
    """How a node's part ended; node 0's worker, once every node has ended, records the job's outcome."""
    me = f"[worker {claim.worker_id} node {slot.node}]"
    node_state = {
        Ending.exited: gang.EXITED,
        Ending.cancelled: gang.STOPPED,
        Ending.broken: gang.STOPPED,
        Ending.lost: gang.LOST,
        Ending.stopping: gang.LOST,  # its worker stops: the gang is broken, the job must start again without it
    }[ending]
    code = returncode if ending is Ending.exited else None
    _while_leased(lambda: gang.end_node(engine, slot, node_state, code), claim, lease, settings)
    if slot.node != 0 or ending is Ending.lost:
        output.note(f"{me} node {slot.node} of attempt {claim.attempt}: {node_state}")
        return
    others: list = []
    if ending in (Ending.exited, Ending.broken):
        others = gang.settle(
            engine,
            slot,
            timeout=settings.lease_seconds + settings.poll_seconds,
            poll=settings.poll_seconds,
            keep=lambda: queue.heartbeat(engine, claim, settings.lease_seconds),
        )
    lost = [row for row in others if row.state in (gang.LOST, gang.RUNNING, gang.STOPPED)]
    values: dict = {}
    if ending is Ending.cancelled:
        outcome = JobState.cancelled
    elif ending is Ending.stopping or lost or ending is Ending.broken:
        who = ", ".join(f"node {row.node} (worker {row.worker_id})" for row in lost)
        why = "node 0's worker stopped" if ending is Ending.stopping else f"{who or 'a node'} was lost"
        state = _while_leased(lambda: gang.requeue(engine, claim, settings.max_attempts, why), claim, lease, settings)
        output.note(f"{me} {why}: attempt {claim.attempt} stopped on every node; job {state or 'no longer ours'}")
        return
    elif returncode == 0 and all(row.returncode == 0 for row in others):
        outcome, values = JobState.succeeded, {"result": output.result}
    else:
        failed = [row for row in others if row.returncode != 0]
        if returncode != 0:
            error = output.error or _exit_error(returncode, output)
        else:
            row = failed[0]
            log_name = jobfiles.node_log(row.node)
            error = {"message": f"node {row.node} (worker {row.worker_id}) exited with code {row.returncode}; see "
                     f"its log, {log_name} in the job's folder", "where": None}  # fmt: skip
        outcome, values = JobState.failed, {"error": error}
    progress, _ = output.progress()
    recorded = _while_leased(
        lambda: queue.finish(engine, claim, outcome, progress=progress, **values), claim, lease, settings
    )
    if recorded:
        output.note(f"{me} attempt {claim.attempt} recorded: {outcome}")
    else:
        output.note(f"{me} the job was taken from this worker before it could record the outcome")


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a signal without a name (a real-time one)
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _exit_error(returncode: int, output: JobOutput) -> dict:
    last = output.tail[-1] if output.tail else None
    message = f"the job process {_how_it_ended(returncode)}" + (
        f"; its last output: {last}" if last else "; see the job's log"
    )
    return {"message": message, "where": None}
