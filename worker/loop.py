"""A worker: claim a job, run it, repeat, until told to stop (SIGTERM or SIGINT).

While idle it polls with a read that takes no lock (is anything queued, or any lease expired?) and only then opens a
write transaction to expire lost leases and claim. Stopping while a job runs stops the job's processes and puts the
job back in the queue for the next worker, where it resumes.

Its statements wait for a lock a sixth of the lease at most (`lock_wait`): a database that someone holds for longer
costs a heartbeat, tried again on the next tick, and the job keeps its lease for as long as the lease lasts.
"""

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openseek_nanochat import capacity
from openseek_nanochat.settings import Settings

from app.jobs import gang, queue
from app.jobs.db import make_engine
from app.jobs.migrate import check_schema

from worker import runner
from worker.gang import Gathering

log = logging.getLogger(__name__)

FORGET_WORKERS_AFTER_SECONDS = 3600  # dead workers stay listed (alive: false) this long
MAX_LOCK_WAIT_SECONDS = 5.0
SIGN_ON_SECONDS = 60  # how long a starting worker waits for a busy database before it gives up


def lock_wait(settings: Settings) -> float:
    """How long one of a worker's statements may wait for a lock: well under the lease, so that several heartbeats
    fit in it."""
    return min(MAX_LOCK_WAIT_SECONDS, settings.lease_seconds / 6)


class Worker:
    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or make_engine(settings.sqlalchemy_url, lock_wait=lock_wait(settings))
        self.host = socket.gethostname()
        self.id = f"{self.host}-{os.getpid()}-{secrets.token_hex(2)}"
        self.address = capacity.advertised_host(settings.worker_host)
        self.capacity: capacity.Capacity | None = None  # probed in run(): it may start a child process
        self.gathering: Gathering | None = None
        self.stopping = threading.Event()

    def stop(self, *_args) -> None:
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.capacity = capacity.probe()
        self.gathering = Gathering(self.id, self.address, self.capacity, self.settings, self.engine)
        # A busy database delays the start, it does not end it.
        deadline = time.monotonic() + SIGN_ON_SECONDS
        while not self._try(self._sign_on):
            if self.stopping.wait(self.settings.poll_seconds):
                return 0
            if time.monotonic() > deadline:
                return 1
        log.info(
            "worker %s started (database %s; %d CPU cores, %d CUDA devices, address %s)",
            self.id,
            self.engine.url.render_as_string(hide_password=True),
            self.capacity.cpus,
            len(self.capacity.cuda),
            self.address,
        )
        try:
            self._loop()
        finally:
            deadline = time.monotonic() + self.settings.lease_seconds
            while not self._try(lambda: queue.unregister_worker(self.engine, self.id)) and time.monotonic() < deadline:
                time.sleep(self.settings.poll_seconds)
            self.engine.dispose()
            log.info("worker %s stopped", self.id)
        return 0

    def _sign_on(self) -> None:
        check_schema(self.engine)
        queue.forget_dead_workers(self.engine, FORGET_WORKERS_AFTER_SECONDS)
        queue.register_worker(self.engine, self.id, self.host, os.getpid(), self.address, self.capacity)

    @staticmethod
    def _try(step: Callable[[], None]) -> bool:
        try:
            step()
            return True
        except SQLAlchemyError as error:
            log.warning("database error, retrying shortly: %s", error)
            return False

    def _loop(self) -> None:
        idle_beat_every = self.settings.lease_seconds / 3
        last_beat = time.monotonic()
        while not self.stopping.is_set():
            try:
                taken = self._next_claim()
                if taken is not None:
                    claim, slot = taken
                    log.info("job %s (%s): attempt %d", claim.job_id, claim.kind, claim.attempt)
                    runner.run(claim, self.settings, self.engine, self.stopping, slot)
                    last_beat = time.monotonic()
                    continue
                if time.monotonic() - last_beat >= idle_beat_every:
                    queue.worker_heartbeat(self.engine, self.id, job_id=None)
                    queue.note_unservable(self.engine, self.settings.lease_seconds)
                    last_beat = time.monotonic()
            except SQLAlchemyError as error:
                log.warning("database error, retrying shortly: %s", error)
                self.stopping.wait(5 * self.settings.poll_seconds)
                continue
            self.stopping.wait(self.settings.poll_seconds)

    def _next_claim(self) -> tuple[queue.Claim, gang.Slot | None] | None:
        """A one-node job's claim, or a multi-node job's once its gang is complete (with this worker's node)."""
        if not queue.work_waiting(self.engine, self.capacity):
            return None
        expired = queue.expire_leases(self.engine, self.settings.max_attempts)
        queue.note_expired(expired, self.settings)
        gang.expire(self.engine)
        claim = queue.claim(self.engine, self.id, self.settings.lease_seconds, self.capacity)
        if claim is not None:
            return claim, None
        return self.gathering.next(self.stopping)
