"""Workers under the running service: many jobs each run exactly once, cancel stops a job's every process, and a
SIGKILLed worker's conversion is finished by another worker, byte-identical to an uninterrupted run."""

import json
import os
import re
import signal

import pytest

from openseek_nanochat.procs import job_processes

from serverutil import (
    SHARED_DATA,
    long_conversion,
    start_server,
    start_worker,
    stop_process,
    wait_for_state,
    wait_until,
)

LEASE_SECONDS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": str(LEASE_SECONDS)}
    with start_server(tmp_path_factory.mktemp("workers") / "data", workers=2, env=env) as server:
        yield server


def log_text(server, job_id: str) -> str:
    return server.client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"]


def test_two_workers_run_twenty_jobs_each_exactly_once(server):
    client = server.client
    spec = {
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "max_docs": 100,
        "chars_per_shard": 10_000,
    }
    ids = [client.post("/jobs/convert", json=spec).json()["id"] for _ in range(20)]
    jobs = [wait_for_state(client, job_id, "succeeded", timeout=120) for job_id in ids]
    assert all(job["attempts"] == 1 for job in jobs)
    used = {job["worker_id"] for job in jobs}
    assert len(used) == 2 and used <= {w["id"] for w in client.get("/workers").json()}  # both took part
    for job in jobs:
        log = log_text(server, job["id"])
        assert log.count("started (pid") == 1 and log.count('"type": "result"') == 1, log


def test_cancel_stops_every_process_of_a_running_job(server):
    client = server.client
    long_spec = long_conversion(server)
    job = client.post("/jobs/convert", json={**long_spec, "name": "cancelled"}).json()
    wait_until(
        lambda: (client.get(f"/jobs/{job['id']}").json()["progress"] or {}).get("shards", 0) >= 2,
        timeout=60,
        what="two shards written",
    )
    running = job_processes(job["id"])
    assert running and all(p.nice() >= 10 for p in running)  # running, below the API's CPU priority
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["state"] in ("cancelling", "cancelled")
    job = wait_for_state(client, job["id"], "cancelled", timeout=5)
    assert job_processes(job["id"]) == []
    manifest = json.loads((server.data_dir / "datasets" / "cancelled" / "manifest.json").read_text())
    assert not manifest["complete"]  # it really was stopped half-way
    assert re.search(
        rf"\[worker {job['worker_id']}\] cancelled: stopped [1-9]\d* processes of the job", log_text(server, job["id"])
    )


def test_killed_worker_job_is_finished_by_another_byte_identical(server):
    client = server.client
    long_spec = long_conversion(server)
    clean = client.post("/jobs/convert", json={**long_spec, "name": "clean"}).json()
    crashed = client.post("/jobs/convert", json={**long_spec, "name": "crashed"}).json()

    def running_with_shards():
        job = client.get(f"/jobs/{crashed['id']}").json()
        return job if job["state"] == "running" and (job["progress"] or {}).get("shards", 0) >= 3 else None

    victim = wait_until(running_with_shards, timeout=60, what="crashed job 3 shards in")["worker_id"]
    [pid] = [w["pid"] for w in client.get("/workers").json() if w["id"] == victim]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not job_processes(crashed["id"]), timeout=10, what="the job process gone with its worker")
    manifest = json.loads((server.data_dir / "datasets" / "crashed" / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 3

    finished = wait_for_state(client, crashed["id"], "succeeded", timeout=120)
    assert finished["attempts"] == 2 and finished["worker_id"] != victim
    log = log_text(server, crashed["id"])
    assert f"the lease of worker {victim} expired (it stopped heartbeating); job queued again" in log
    assert f"[worker {finished['worker_id']}] attempt 2 started" in log

    wait_for_state(client, clean["id"], "succeeded", timeout=120)
    datasets = server.data_dir / "datasets"
    shards = sorted(p.name for p in (datasets / "clean").glob("shard_*.parquet"))
    assert len(shards) > 100
    assert sorted(p.name for p in (datasets / "crashed").glob("shard_*.parquet")) == shards
    for name in shards:
        assert (datasets / "crashed" / name).read_bytes() == (datasets / "clean" / name).read_bytes(), name
    assert job_processes(crashed["id"]) == [] and job_processes(clean["id"]) == []


def test_stopping_worker_requeues_its_job_for_another(tmp_path):
    with start_server(tmp_path / "data", workers=0) as server:
        client = server.client
        job = client.post("/jobs/convert", json={**long_conversion(server), "name": "handed-over"}).json()
        first = start_worker(server.data_dir)
        try:
            wait_for_state(client, job["id"], "running", timeout=60)
        finally:
            stop_process(first)  # SIGTERM: stop the job, give it back
        assert first.returncode == 0
        queued = client.get(f"/jobs/{job['id']}").json()
        assert (queued["state"], queued["attempts"], queued["worker_id"]) == ("queued", 0, None)
        assert job_processes(job["id"]) == []
        assert client.get("/workers").json() == []  # it signed off

        second = start_worker(server.data_dir)
        try:
            done = wait_for_state(client, job["id"], "succeeded", timeout=120)
        finally:
            stop_process(second)
        assert done["attempts"] == 1
        assert "worker stopping: job queued" in log_text(server, job["id"])
