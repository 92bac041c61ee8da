"""A worker's part in gathering a multi-node job: take a node, wait for the others, give the nodes back on a timeout.

The database side is app/jobs/gang.py. While waiting, the worker renews its node's lease each tick; once the last node
is taken it runs its node like any job (worker/runner.py). A gathering that is not complete within the job's
gang_timeout_s is given back whole, and this worker leaves that job alone for half that time, so that workers stuck
in two half-gathered jobs let one of them complete, and a lone worker holds no node meanwhile.
"""

import logging
import socket
import threading
import time

from sqlalchemy import Engine

from openseek_nanochat.capacity import Capacity
from openseek_nanochat.settings import Settings

from app.jobs import gang
from app.jobs.queue import Claim

log = logging.getLogger(__name__)


def free_port(host: str) -> int:
    """A port free now on this machine, for node 0's rendezvous store (it binds it when its torchrun starts)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Gathering:
    """The multi-node jobs this worker takes nodes of, and those it leaves alone for a while."""

    def __init__(self, worker_id: str, address: str, capacity: Capacity, settings: Settings, engine: Engine):
        self.worker_id, self.address, self.capacity = worker_id, address, capacity
        self.settings, self.engine = settings, engine
        self.backoff: dict[str, float] = {}  # job id -> monotonic time until which this worker leaves it alone

    def next(self, stopping: threading.Event) -> tuple[Claim, gang.Slot] | None:
        """Take a node of a multi-node job and wait for the gang; the attempt's claim and this node, once it starts."""
        now = time.monotonic()
        self.backoff = {job: until for job, until in self.backoff.items() if until > now}
        slot = gang.take(
            self.engine,
            self.worker_id,
            self.address,
            self.capacity,
            self.settings.lease_seconds,
            free_port(self.address),
            frozenset(self.backoff),
        )
        if slot is None:
            return None
        log.info("job %s: took node %d of %d (attempt %d)", slot.job_id, slot.node, slot.nnodes, slot.attempt)
        deadline = time.monotonic() + slot.gang_timeout_s
        while not stopping.is_set():
            asked_at = time.monotonic()
            status, joined, slot = gang.wait_beat(self.engine, slot, self.settings.lease_seconds)
            if status == gang.STARTED:
                return slot.claim(asked_at), slot
            if status == gang.GONE:
                return None
            if time.monotonic() > deadline:
                then = f"; gave the nodes back after gang_timeout_s {slot.gang_timeout_s:g} s, gathering again"
                gang.give_back(self.engine, slot, then)
                self.backoff[slot.job_id] = time.monotonic() + slot.gang_timeout_s / 2
                log.info("job %s: %d of %d nodes after %g s; gave them back", slot.job_id, joined, slot.nnodes,
                         slot.gang_timeout_s)  # fmt: skip
                return None
            stopping.wait(self.settings.poll_seconds)
        gang.give_back(self.engine, slot, "; a node's worker stopped, gathering again")
        return None
