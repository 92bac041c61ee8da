"""Which worker can serve which job: what one node of a job needs against what a worker advertised.

A job needs, per node, `nproc_per_node` ranks on its `device`: "cuda" one CUDA device per rank, "cpu" one core per
rank, "auto" CUDA devices where the worker has any, cores elsewhere (what the trainer itself picks). Convert jobs need
one core. The same rule is written twice, once as SQL (a worker's claim filters the queue with it) and once in Python
(to explain, in a job's progress, why no live worker takes it); `why_not` and `servable` must agree.
"""

from dataclasses import dataclass

from sqlalchemy import and_, or_
from sqlmodel import col

from openseek_nanochat.capacity import Capacity

from app.jobs.models import Job, Worker


@dataclass(frozen=True)
class Needs:
    nnodes: int = 1
    nproc_per_node: int = 1
    device: str = "cpu"


def servable(capacity: Capacity):
    """SQL: the jobs whose every node a worker with `capacity` can run."""
    cores, gpus = capacity.cpus, len(capacity.cuda)
    fits_cpu = col(Job.nproc_per_node) <= cores
    fits_cuda = col(Job.nproc_per_node) <= gpus
    if gpus:
        return or_(and_(col(Job.device) == "cpu", fits_cpu), and_(col(Job.device) != "cpu", fits_cuda))
    return and_(col(Job.device) != "cuda", fits_cpu)


def why_not(needs: Needs, capacity: Capacity) -> str | None:
    """None when a worker with `capacity` can run a node of the job; else what it lacks."""
    gpus = len(capacity.cuda)
    if needs.device == "cuda" or (needs.device == "auto" and gpus):
        if needs.nproc_per_node > gpus:
            return f"{gpus} CUDA device(s)"
        return None
    if needs.nproc_per_node > capacity.cpus:
        return f"{capacity.cpus} CPU core(s)"
    return None


def describe(needs: Needs) -> str:
    device = {"cuda": "CUDA device", "cpu": "CPU core", "auto": "CUDA device (or CPU core)"}[needs.device]
    per_node = f"{needs.nproc_per_node} {device}(s)"
    return f"{needs.nnodes} nodes of {per_node} each" if needs.nnodes > 1 else per_node


def unservable_reason(needs: Needs, workers: list[Worker]) -> str | None:
    """Why none of the live `workers` can run the job (a message for its progress), or None when one can."""
    lacks = {}
    for worker in workers:
        reason = why_not(needs, Capacity(cpus=worker.cpus, cuda=list(worker.cuda or [])))
        if reason is None:
            return None
        lacks[worker.id] = reason
    if not workers:
        return f"no live worker to run it (it needs {describe(needs)})"
    have = "; ".join(f"{worker_id} has {reason}" for worker_id, reason in lacks.items())
    return f"no live worker can run it: it needs {describe(needs)}, and {have}"
