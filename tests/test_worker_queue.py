"""The queue's guarantees, on SQLite and (when installed) PostgreSQL: a job is claimed once, however many workers race
for it; a lost lease requeues the job, then fails it after max_attempts; a worker that lost a job cannot touch it."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from openseek_nanochat.capacity import Capacity

from app.jobs import queue, store
from app.jobs.db import make_engine, writing
from app.jobs.models import Job, JobState, new_job_id, utcnow

CPU = Capacity(cpus=8)  # a CPU-only worker: the convert jobs here need one core


def add_jobs(engine, count: int) -> list[str]:
    ids = []
    for i in range(count):
        job = store.create_job(engine, Job(id=new_job_id(), kind="convert", state=JobState.queued, spec={"i": i}))
        ids.append(job.id)
    return ids


def claim_until_empty(url: str, worker_id: str) -> list[str]:
    engine = make_engine(url)
    claimed = []
    while (claim := queue.claim(engine, worker_id, lease_seconds=60, capacity=CPU)) is not None:
        claimed.append(claim.job_id)
        assert queue.finish(engine, claim, JobState.succeeded, result={"by": worker_id})
    engine.dispose()
    return claimed


def test_racing_workers_claim_each_job_once(engine):
    ids = add_jobs(engine, 120)
    url = engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(claim_until_empty, [url] * 4, [f"w{i}" for i in range(4)]))
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(ids)  # every job, none twice
    assert sum(1 for result in results if result) >= 2  # they did race
    jobs, total = store.list_jobs(engine, None, "succeeded", 1000, 0)
    assert total == 120 and all(job.attempts == 1 for job in jobs)
    assert all(job.result == {"by": job.worker_id} for job in jobs)


def expire_now(engine, job_id: str) -> None:
    with writing(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_lost_lease_requeues_then_fails_after_max_attempts(engine):
    [job_id] = add_jobs(engine, 1)
    first = queue.claim(engine, "w1", lease_seconds=60, capacity=CPU)
    expire_now(engine, job_id)
    assert queue.work_waiting(engine, CPU)
    [expired] = queue.expire_leases(engine, max_attempts=2)
    assert (expired.job_id, expired.new_state, expired.worker_id) == (job_id, JobState.queued, "w1")
    # The first worker's lease is gone: it can neither heartbeat nor record an outcome.
    assert queue.heartbeat(engine, first, 60) is None
    assert not queue.finish(engine, first, JobState.succeeded)

    second = queue.claim(engine, "w2", lease_seconds=60, capacity=CPU)
    assert (second.job_id, second.attempt) == (job_id, 2)
    assert queue.heartbeat(engine, first, 60) is None  # same job, but not this attempt
    assert queue.heartbeat(engine, second, 60, {"fraction": 0.5}) == JobState.running
    expire_now(engine, job_id)
    [expired] = queue.expire_leases(engine, max_attempts=2)
    assert expired.new_state == JobState.failed
    job = store.get_job(engine, job_id)
    assert job.state == JobState.failed and job.progress == {"fraction": 0.5}
    assert job.error == {
        "message": "the job's worker stopped heartbeating (lease expired) on each of its 2 attempts; "
        "not retried again (max_attempts=2)",
        "where": "worker w2",
    }
    assert queue.claim(engine, "w3", lease_seconds=60, capacity=CPU) is None


def test_cancel_under_way_completes_when_the_worker_is_gone(engine):
    [job_id] = add_jobs(engine, 1)
    queue.claim(engine, "w1", lease_seconds=60, capacity=CPU)
    assert store.request_cancel(engine, job_id).state == JobState.cancelling
    expire_now(engine, job_id)
    [expired] = queue.expire_leases(engine, max_attempts=3)
    assert expired.new_state == JobState.cancelled
    assert store.get_job(engine, job_id).state == JobState.cancelled


def test_release_requeues_without_counting_the_attempt(engine):
    [job_id] = add_jobs(engine, 1)
    claim = queue.claim(engine, "w1", lease_seconds=60, capacity=CPU)
    assert queue.release(engine, claim) == JobState.queued
    job = store.get_job(engine, job_id)
    assert (job.state, job.attempts, job.worker_id) == (JobState.queued, 0, None)
    claim = queue.claim(engine, "w2", lease_seconds=60, capacity=CPU)
    store.request_cancel(engine, job_id)
    assert queue.release(engine, claim) == JobState.cancelled
