"""Node claims of multi-node jobs and capacity-aware claims, on SQLite and (when installed) PostgreSQL: a gang starts
when its last node is taken, a lost node breaks the attempt and the job is requeued for a fresh gathering, a gathering
is given back whole, and a worker claims only what its machine can serve."""

from sqlalchemy import update

from openseek_nanochat.capacity import Capacity

from app.jobs import gang, queue, store
from app.jobs.db import writing
from app.jobs.models import Job, JobNode, JobState, new_job_id

CPU = Capacity(cpus=4)
GPUS = Capacity(cpus=4, cuda=["NVIDIA H200", "NVIDIA H200"])


def add_job(engine, nnodes: int = 2, nproc: int = 1, device: str = "cpu") -> str:
    job = Job(
        id=new_job_id(),
        kind="train",
        state=JobState.queued,
        spec={"gang_timeout_s": 60},
        nnodes=nnodes,
        nproc_per_node=nproc,
        device=device,
    )
    return store.create_job(engine, job).id


def take(engine, worker_id: str, capacity: Capacity = CPU) -> gang.Slot | None:
    return gang.take(engine, worker_id, f"{worker_id}.local", capacity, lease_seconds=60, port=29500)


def test_a_gang_starts_when_its_last_node_is_taken(engine):
    job_id = add_job(engine)
    assert queue.claim(engine, "w1", 60, CPU) is None  # not a one-node job
    first = take(engine, "w1")
    assert (first.node, first.attempt, first.endpoint) == (0, 1, "w1.local:29500")
    job = store.get_job(engine, job_id)
    assert job.state == JobState.queued and job.progress["message"] == "waiting for nodes: 1 of 2"
    assert gang.wait_beat(engine, first, 60)[:2] == (gang.WAITING, 1)

    second = take(engine, "w2")
    assert (second.node, second.attempt) == (1, 1)
    job = store.get_job(engine, job_id)
    assert (job.state, job.worker_id, job.attempts) == (JobState.running, "w1", 1)
    status, _, started = gang.wait_beat(engine, second, 60)
    assert status == gang.STARTED and started.endpoint == "w1.local:29500"
    assert take(engine, "w3") is None  # nothing left to take
    assert gang.beat(engine, first, 60) == gang.beat(engine, second, 60) == gang.OK
    assert [(n.node, n.worker_id, n.state) for n in gang.nodes_of(engine, job_id)] == [
        (0, "w1", gang.RUNNING),
        (1, "w2", gang.RUNNING),
    ]


def test_a_lost_node_breaks_the_attempt_and_the_job_gathers_again(engine):
    job_id = add_job(engine)
    first, second = take(engine, "w1"), take(engine, "w2")
    with writing(engine) as session:  # w2 stops heartbeating
        session.execute(update(JobNode).where(JobNode.node == 1).values(lease_expires_at=queue.db_now(-1)))
    assert queue.work_waiting(engine, CPU)
    assert gang.beat(engine, first, 60) == gang.BROKEN
    assert gang.requeue(engine, first.claim(0.0), max_attempts=3, why="node 1 was lost") == JobState.queued
    assert gang.beat(engine, second, 60) == gang.LOST
    job = store.get_job(engine, job_id)
    assert (job.state, job.attempts, job.worker_id) == (JobState.queued, 1, None)
    again = take(engine, "w3")
    assert (again.attempt, again.node) == (2, 0)
    assert [n.attempt for n in gang.nodes_of(engine, job_id)] == [2]


def test_a_gathering_is_given_back_whole(engine):
    job_id = add_job(engine, nnodes=3)
    first, second = take(engine, "w1"), take(engine, "w2")
    assert gang.give_back(engine, first, "; gave the nodes back") == 2
    assert gang.wait_beat(engine, second, 60)[0] == gang.GONE
    job = store.get_job(engine, job_id)
    assert job.state == JobState.queued and job.progress["message"] == "waiting for nodes: 2 of 3; gave the nodes back"
    assert gang.nodes_of(engine, job_id) == []
    # a waiting node whose worker died takes its gathering with it
    first, second = take(engine, "w1"), take(engine, "w2")
    with writing(engine) as session:
        session.execute(update(JobNode).where(JobNode.node == 0).values(lease_expires_at=queue.db_now(-1)))
    assert gang.expire(engine) == 1
    assert gang.wait_beat(engine, second, 60)[0] == gang.GONE


def test_workers_claim_only_what_they_can_serve(engine):
    cuda_job = add_job(engine, nnodes=1, nproc=2, device="cuda")
    wide_cpu_job = add_job(engine, nnodes=1, nproc=8, device="cpu")
    auto_job = add_job(engine, nnodes=1, nproc=2, device="auto")
    assert queue.work_waiting(engine, CPU)  # the auto job fits 4 cores
    assert queue.claim(engine, "cpu-worker", 60, CPU).job_id == auto_job
    assert not queue.work_waiting(engine, CPU)
    assert queue.claim(engine, "cpu-worker", 60, CPU) is None
    assert queue.claim(engine, "gpu-worker", 60, GPUS).job_id == cuda_job
    assert queue.claim(engine, "gpu-worker", 60, GPUS) is None  # 8 CPU ranks: not on 4 cores
    assert store.get_job(engine, wide_cpu_job).state == JobState.queued

    queue.register_worker(engine, "cpu-worker", "h", 1, "h", CPU)
    assert queue.note_unservable(engine, lease_seconds=60) == 1
    message = store.get_job(engine, wide_cpu_job).progress["message"]
    assert message == "no live worker can run it: it needs 8 CPU core(s), and cpu-worker has 4 CPU core(s)"
    assert queue.note_unservable(engine, lease_seconds=60) == 0  # said once
