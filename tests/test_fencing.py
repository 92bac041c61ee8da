"""Fenced attempts: a busy database costs a worker heartbeats, not the lease; a lease lost to it says so in the job's
log; stopping one attempt never touches another; a superseded attempt renames nothing into the output; leases are kept
in the database's clock, whatever the worker's host clock says."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text, update

from openseek_nanochat import procs
from openseek_nanochat.atomic import write_json_atomic
from openseek_nanochat.capacity import Capacity
from openseek_nanochat.errors import InputError

from app.jobs import models, queue, store
from app.jobs.db import writing
from app.jobs.models import Job, JobState, new_job_id

from convertutil import run_spec
from serverutil import (
    REPO,
    SHARED_DATA,
    cli,
    lock_sqlite,
    start_server,
    wait_for_state,
    wait_until,
)

GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")

# A stand-in for a process of an earlier attempt: it holds a conversion's output (fence.py) until it is killed.
HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from openseek_nanochat.convert import fence
    with fence.hold(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)

CPU = Capacity(cpus=8)  # a CPU-only worker: the convert jobs here need one core


@contextmanager
def output_held(out: Path) -> Iterator[None]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def log_text(server, job_id: str) -> str:
    return server.client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"]


def start_waiting_job(server, name: str) -> dict:
    """A conversion whose job process is alive and waiting for its output (held by output_held) while the test
    takes the database away: however fast the machine, the attempt is under way for as long as the test needs."""
    spec = {
        "name": name,
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}\n{answer}"}],
        "chars_per_shard": 40_000,
    }
    job = server.client.post("/jobs/convert", json=spec).json()
    wait_until(
        lambda: "waiting for the output" in log_text(server, job["id"]),
        timeout=60,
        what="the job process waiting for its output",
    )
    return server.client.get(f"/jobs/{job['id']}").json()


# --- a busy database --------------------------------------------------------------------------------------------------


def test_a_write_lock_shorter_than_the_lease_costs_no_attempt(tmp_path):
    """12 s of someone else's write lock, the default 30 s lease: the heartbeats that meet the lock give up after a
    sixth of the lease and are tried again; the job keeps its lease, runs once and succeeds."""
    with start_server(tmp_path / "data", workers=1) as server:
        with output_held(server.data_dir / "datasets" / "busy"):
            job = start_waiting_job(server, "busy")
            lock_sqlite(server.data_dir / "jobs.db", 12).join()
        done = wait_for_state(server.client, job["id"], "succeeded", timeout=120)
        log, server_log = log_text(server, job["id"]), server.log()
    assert done["attempts"] == 1, log
    assert log.count("started (pid") == 1 and "could not reach" not in log and "expired" not in log, log
    # The worker did meet the lock, and waited well under the lease for it (5 s, not the 30 s it used to).
    assert f"job {job['id']}: heartbeat failed" in server_log, server_log[-3000:]


def test_a_lease_lost_to_a_slow_database_is_said_so_and_the_job_resumes(tmp_path):
    """A write lock longer than the lease: the worker stops its own attempt once the lease it last got has run out,
    and says why in the job's log; the next attempt finishes the job."""
    with start_server(tmp_path / "data", workers=1, env={"OPENSEEK_NANOCHAT_LEASE_SECONDS": "3"}) as server:
        with output_held(server.data_dir / "datasets" / "slow"):
            job = start_waiting_job(server, "slow")
            lock_sqlite(server.data_dir / "jobs.db", 7).join()
        done = wait_for_state(server.client, job["id"], "succeeded", timeout=120)
        log = log_text(server, job["id"])
    assert done["attempts"] == 2, log
    w = re.escape(job["worker_id"])
    expected = [
        rf"\[worker {w}\] attempt 1 started \(pid \d+\): .*",
        rf"\[worker {w}\] could not reach the database for [3-6] s, longer than the 3 s lease: stopping this attempt",
        rf"\[worker {w}\] lost: stopped [1-9]\d* processes of the job's attempt 1",
        rf"\[worker {w}\] attempt 1 ended: the job process was killed by SIGTERM",
        rf"\[worker {w}\] lost the job's lease; another attempt will resume it",
        rf"\[control\] the lease of worker {w} expired \(it stopped heartbeating\); job queued again \(attempt 1 of 3 "
        r"lost\)",
        rf"\[worker {w}\] attempt 2 started \(pid \d+\): .*",
        rf"\[worker {w}\] attempt 2 ended: the job process exited with code 0",
        rf"\[worker {w}\] attempt 2 recorded: succeeded",
    ]
    notes = [line for line in log.splitlines() if line.startswith(("[worker ", "[control]"))]
    assert len(notes) == len(expected) and all(map(re.fullmatch, expected, notes)), "\n".join(notes)


# --- stopping one attempt ---------------------------------------------------------------------------------------------

# A job process that starts a child in a session of its own, which starts a grandchild: three processes, all tagged.
TREE = textwrap.dedent(
    """
    import os, time
    if os.fork() == 0:
        os.setsid()
        os.fork()
    time.sleep(600)
    """
)


def start_attempt(job_id: str, attempt: int) -> subprocess.Popen:
    root = procs.spawn([sys.executable, "-c", TREE], env=procs.job_environment(job_id, attempt))
    wait_until(
        lambda: len(procs.job_processes(job_id, root.pid, range(attempt, attempt + 1))) == 3,
        timeout=20,
        what=f"3 processes of attempt {attempt}",
    )
    return root


def alive(pids: set[int]) -> bool:
    return all(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_stopping_a_stale_attempt_leaves_its_successor_alone():
    job_id = f"fenced-{os.getpid()}"
    first = start_attempt(job_id, 1)
    second = start_attempt(job_id, 2)
    try:
        successor = {p.pid for p in procs.job_processes(job_id, second.pid, range(2, 3))}
        assert len(successor) == 3 and len(procs.job_processes(job_id)) == 6
        # The worker of attempt 1 lost its lease and stops its attempt: its own three processes, nothing else.
        assert procs.stop_job(job_id, first, grace=3, attempts=range(1, 2)) == 3
        assert alive(successor) and {p.pid for p in procs.job_processes(job_id)} == successor
        # A worker starting attempt 3 stops what the attempts before it left on this machine.
        assert procs.stop_job(job_id, grace=3, attempts=range(3)) == 3
        assert procs.job_processes(job_id) == []
    finally:
        procs.stop_job(job_id, grace=0)
        first.wait()
        second.wait()


# --- a superseded attempt renames nothing -----------------------------------------------------------------------------


class Crash(Exception):
    pass


@pytest.fixture
def spec(datasets, shared_data) -> dict:
    return {
        "sources": [
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "output_dir": str(datasets / "fenced"),
        "chars_per_shard": 40_000,
        "row_group_size": 32,
        "val_docs": 40,
    }


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the folder, hidden ones included: its bytes and when it last changed."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def convert_process(spec: dict, spec_file: Path, job_id: str, attempt: int) -> subprocess.Popen:
    """The job process a worker starts for `attempt` of `job_id`."""
    spec_file.write_text(json.dumps(spec))
    return subprocess.Popen(
        cli("convert", str(spec_file), "--events"),
        env=procs.job_environment(job_id, attempt),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def error_event(output: str) -> dict:
    [error] = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if '"type": "error"' in line]
    return error


def test_an_older_attempt_than_the_manifests_renames_nothing(spec, tmp_path):
    out = Path(spec["output_dir"])

    def crash(progress):
        if progress["shards"] >= 2:
            raise Crash()

    with pytest.raises(Crash):  # attempt 2 wrote part of the output, then its machine went down
        run_spec(spec, job_id="j1", attempt=2, on_progress=crash)
    before = snapshot(out)
    assert json.loads((out / "manifest.json").read_text())["attempt"] == 2
    # Attempt 1's job process, still about (its worker lost the lease before attempt 2 was claimed), starts late.
    stale = convert_process(spec, tmp_path / "spec.json", "j1", 1)
    output, _ = stale.communicate(timeout=60)
    assert stale.returncode == 1, output
    assert error_event(output) == {
        "type": "error",
        "time": error_event(output)["time"],
        "where": str(out / "manifest.json"),
        "message": "attempt 1 of job j1 stops without renaming anything: attempt 2 of the job already took this "
        "output over",
    }
    assert snapshot(out) == before


def test_an_attempt_superseded_mid_run_stops_before_its_next_rename(spec):
    out = Path(spec["output_dir"])
    taken: dict = {}

    def successor_takes_over(progress):
        """After attempt 1's second shard, attempt 2 takes the folder (as if the lock had not kept it out)."""
        if progress["shards"] >= 2 and not taken:
            manifest = json.loads((out / "manifest.json").read_text())
            write_json_atomic(out / "manifest.json", {**manifest, "attempt": 2})
            # A shard still being written by a worker process is no part of the output: it goes when the run stops.
            taken.update({name: data for name, data in snapshot(out).items() if not name.endswith(".tmp")})

    with pytest.raises(InputError) as error:
        run_spec(spec, job_id="j1", attempt=1, on_progress=successor_takes_over)
    assert error.value.where == str(out / "manifest.json")
    assert error.value.message == (
        "attempt 1 of job j1 stops without renaming anything: the output now belongs to attempt 2 (this attempt's "
        "worker lost the job's lease, and the job went on without it)"
    )
    assert snapshot(out) == taken  # no shard, no manifest, no temp file left


def test_a_later_attempt_waits_until_the_earlier_ones_processes_are_gone(spec, tmp_path):
    out = Path(spec["output_dir"])
    with output_held(out):  # attempt 1's job process: it holds the output's lock (and would keep writing) until it dies
        successor = convert_process(spec, tmp_path / "spec.json", "j1", 2)
        waiting = successor.stdout.readline()
        assert (
            waiting == f"waiting for the output {out} to be free: the processes of an earlier attempt still hold "
            ".convert.lock\n"
        )
        time.sleep(1)
        assert [p.name for p in out.iterdir()] == [".convert.lock"]  # it wrote nothing meanwhile
    output, _ = successor.communicate(timeout=60)
    assert successor.returncode == 0, output
    assert re.search(rf"the output {re.escape(str(out))} is free after \d+\.\d s; going on", output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and (manifest["owner"], manifest["attempt"]) == ("j1", 2)


# --- leases in the database's clock -----------------------------------------------------------------------------------


def database_clock(engine) -> datetime:
    """The database's own time, asked in its own SQL."""
    sql = "SELECT clock_timestamp()" if engine.dialect.name == "postgresql" else "SELECT strftime('%Y-%m-%d %H:%M:%f')"
    with engine.connect() as connection:
        value = connection.execute(text(sql)).scalar_one()
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=value.tzinfo or UTC)


def skew_clock(monkeypatch, by: timedelta) -> None:
    """This process's clock, as the jobs' code reads it (models.utcnow), is `by` off."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + by

    monkeypatch.setattr(models, "datetime", Skewed)
    assert abs(models.utcnow() - datetime.now(UTC) - by) < timedelta(seconds=1)


@pytest.mark.parametrize("skew", [timedelta(hours=2), timedelta(hours=-2)], ids=["ahead", "behind"])
def test_leases_are_kept_in_the_databases_clock(engine, monkeypatch, skew):
    skew_clock(monkeypatch, skew)
    job = store.create_job(engine, Job(id=new_job_id(), kind="convert", state=JobState.queued, spec={}))

    def lease_left() -> float:
        return (store.get_job(engine, job.id).lease_expires_at - database_clock(engine)).total_seconds()

    claim = queue.claim(engine, "w1", lease_seconds=30, capacity=CPU)
    assert 25 < lease_left() <= 30
    assert not queue.work_waiting(engine, CPU) and queue.expire_leases(engine, max_attempts=3) == []
    assert queue.heartbeat(engine, claim, lease_seconds=30) == JobState.running
    assert 25 < lease_left() <= 30
    # A lease the database says has run out is expired, whatever this host's clock says.
    with writing(engine) as session:
        session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=queue.db_now(-1)))
    assert queue.work_waiting(engine, CPU)
    assert [e.job_id for e in queue.expire_leases(engine, max_attempts=3)] == [job.id]
    # The workers' heartbeats too: a worker that just spoke is not forgotten.
    queue.register_worker(engine, "w2", "host", 1, "host", CPU)
    [worker] = store.list_workers(engine)
    assert abs((worker.heartbeat_at - database_clock(engine)).total_seconds()) < 5
    assert queue.forget_dead_workers(engine, older_than_seconds=60) == 0
