"""Multi-node train jobs over HTTP, each node a real worker (two on this machine, gloo on CPU, c10d rendezvous on
127.0.0.1): a 2-node job trains one model over both; a SIGKILLed node's attempt stops on every node and the next
resumes from the last checkpoint; a lone worker waits for the second node, gives its node back after gang_timeout_s,
and starts the job as soon as a second worker joins; a cancel stops every node's processes."""

import os
import re
import signal

import pytest

from openseek_nanochat.train import checkpoints as ckpt

from serverutil import (
    start_server,
    start_worker,
    stop_process,
    wait_for_state,
    wait_until,
)
from test_api_train import METRIC_KEYS, log_text, processes_of, ranks, shakespeare_dataset, survivors

LEASE_SECONDS = 5  # a node silent this long is lost: room for a busy machine, two nodes on two shared cores
NODE_ENV = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": str(LEASE_SECONDS), "OPENSEEK_NANOCHAT_WORKER_HOST": "127.0.0.1"}

# The tiny model of test_api_train, its two ranks on two nodes of one rank each.
TWO_NODES = {
    "depth": 2,
    "head_dim": 64,
    "max_seq_len": 128,
    "device_batch_size": 4,
    "eval_tokens": 2048,
    "warmup_steps": 2,
    "nproc_per_node": 1,
    "nnodes": 2,
    "device": "cpu",
}
STEPS, EVAL_EVERY, SAVE_EVERY = 20, 5, 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("nodes") / "data", workers=2, env=NODE_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def dataset(server) -> str:
    return shakespeare_dataset(server)


@pytest.fixture(scope="module")
def trained(server, dataset) -> dict:
    """A whole 2-node job, its tokenizer trained by node 0 while node 1 waits for it."""
    spec = {
        **TWO_NODES,
        "dataset": dataset,
        "tokenizer": {"vocab_size": 1024, "max_chars": 600_000},
        "num_iterations": STEPS,
        "eval_every": EVAL_EVERY,
        "save_every": SAVE_EVERY,
    }
    response = server.client.post("/jobs/train", json=spec)
    assert response.status_code == 202, response.text
    return wait_for_state(server.client, response.json()["id"], "succeeded", timeout=240)


def node_workers(job: dict) -> dict[int, str]:
    return {node["node"]: node["worker_id"] for node in job["nodes"]}


def test_two_nodes_train_one_model(server, trained):
    job = trained
    assert job["attempts"] == 1 and job["nnodes"] == 2
    result = job["result"]
    assert result["world_size"] == 2 and result["nnodes"] == 2

    # each node its own worker, both run to their end
    assert [(n["node"], n["state"], n["returncode"], n["host"]) for n in job["nodes"]] == [
        (0, "exited", 0, "127.0.0.1"),
        (1, "exited", 0, "127.0.0.1"),
    ]
    workers = node_workers(job)
    assert workers[0] != workers[1] and job["worker_id"] == workers[0]
    advertised = server.client.get("/workers").json()
    assert {w["address"] for w in advertised} == {"127.0.0.1"} and all(w["cpus"] >= 1 for w in advertised)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", job["nodes"][0]["endpoint"])

    # metrics as on one node: every step, the loss falling by more than a nat
    metrics = server.client.get(f"/jobs/{job['id']}/metrics").raise_for_status().json()
    assert [m["step"] for m in metrics] == list(range(STEPS + 1))
    assert all(set(m) == METRIC_KEYS for m in metrics)
    losses = [m["loss"] for m in metrics[1:]]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    assert metrics[-1]["val_bpb"] < metrics[0]["val_bpb"] - 0.3
    assert job["progress"]["step"] == STEPS

    # one checkpoint for the world of 2 ranks; node 0's log is the job's, node 1's lies beside it
    assert ckpt.last_complete_step(ckpt_dir := server.data_dir / "runs" / job["id"] / "checkpoints", 2) == STEPS
    assert {ckpt.optim_file(STEPS, 0), ckpt.optim_file(STEPS, 1)} <= set(os.listdir(ckpt_dir))
    log = log_text(server, job["id"])
    assert "2 rank(s) on cpu" in log and f"step {STEPS:05d}/{STEPS:05d} (100.00%)" in log
    node1_log = (server.data_dir / "jobs" / job["id"] / "output.node1.log").read_text()
    assert f"[worker {workers[1]} node 1] attempt 1 started" in node1_log
    assert "node 0's tokenizer" in node1_log
    assert processes_of(job["id"]) == []


def test_a_lost_node_stops_the_attempt_and_the_next_resumes(server, dataset, trained):
    client = server.client
    steps = 3 * SAVE_EVERY
    spec = {
        **TWO_NODES,
        "dataset": dataset,
        "tokenizer": {"path": trained["result"]["tokenizer_dir"]},
        "num_iterations": steps,
        "eval_every": EVAL_EVERY,
        "save_every": SAVE_EVERY,
    }
    job = client.post("/jobs/train", json=spec).raise_for_status().json()
    running = wait_for_state(client, job["id"], "running", timeout=60)
    victim = node_workers(client.get(f"/jobs/{job['id']}").json())[1]
    [pid] = [w["pid"] for w in client.get("/workers").json() if w["id"] == victim]
    checkpoints = server.data_dir / "runs" / job["id"] / "checkpoints"
    wait_until(
        (checkpoints / f"meta_{SAVE_EVERY:06d}.json").exists, timeout=120, interval=0.05, what="the first checkpoint"
    )
    first_attempt = processes_of(job["id"])
    assert len(ranks(first_attempt)) == 2  # one per node
    os.kill(pid, signal.SIGKILL)
    # node 1's processes go with their worker; node 0's worker stops its own once node 1's lease runs out
    wait_until(lambda: not survivors(first_attempt), timeout=LEASE_SECONDS + 20, what="attempt 1 gone on both nodes")
    last_checkpoint = ckpt.last_complete_step(checkpoints, 2)
    assert SAVE_EVERY <= last_checkpoint < steps

    done = wait_for_state(client, job["id"], "succeeded", timeout=240)
    assert done["attempts"] == 2 and done["result"]["world_size"] == 2 and done["progress"]["step"] == steps
    assert victim not in node_workers(done).values()
    log = log_text(server, job["id"])
    assert f"node 1 (worker {victim}) was lost: attempt 1 stopped on every node; job queued" in log
    rerun = log.split(f"[worker {done['worker_id']} node 0] attempt 2 started")[1]
    assert f"resuming from step {last_checkpoint} " in rerun
    steps_run = [int(s) for s in re.findall(r"^step (\d+)/", rerun, re.MULTILINE)]
    assert steps_run == list(range(last_checkpoint + 1, steps + 1))
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert [m["step"] for m in metrics] == list(range(steps + 1))
    assert survivors(first_attempt) == [] and processes_of(job["id"]) == []
    assert running["attempts"] == 1


def test_cancel_stops_every_node(server, dataset, trained):
    client = server.client
    spec = {
        **TWO_NODES,
        "dataset": dataset,
        "tokenizer": {"path": trained["result"]["tokenizer_dir"]},
        "num_iterations": 100_000,
        "eval_every": -1,
    }
    job = client.post("/jobs/train", json=spec).raise_for_status().json()
    wait_until(
        lambda: (client.get(f"/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) >= 1,
        timeout=120,
        what="the first step logged",
    )
    running = processes_of(job["id"])
    assert len(ranks(running)) == 2 and len(running) >= 6  # per node: the job process, torchrun, a rank

    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
    wait_until(lambda: not processes_of(job["id"]), timeout=10, what="no process of the job on any node")
    wait_for_state(client, job["id"], "cancelled", timeout=10)
    assert survivors(running) == []
    # node 0's worker records the cancel once its own node stopped; node 1's says so on its next tick
    wait_until(
        lambda: {n["state"] for n in client.get(f"/jobs/{job['id']}").json()["nodes"]} == {"stopped"},
        timeout=10,
        what="both nodes stopped",
    )


def test_a_lone_worker_waits_for_the_second_node(tmp_path):
    with start_server(tmp_path / "data", workers=1, env=NODE_ENV) as server:
        client = server.client
        dataset = shakespeare_dataset(server)
        spec = {
            **TWO_NODES,
            "dataset": dataset,
            "tokenizer": {"vocab_size": 512, "max_chars": 200_000},
            "num_iterations": 4,
            "eval_every": -1,
        }

        # with nobody to join it, the gathering is given back after gang_timeout_s: nothing runs, half or whole
        lonely = client.post("/jobs/train", json={**spec, "gang_timeout_s": 2}).raise_for_status().json()

        def gave_back():
            job = client.get(f"/jobs/{lonely['id']}").json()
            assert job["state"] == "queued" and job["attempts"] == 0
            assert all(n["state"] == "waiting" for n in job["nodes"])
            assert processes_of(lonely["id"]) == []
            return "gave the nodes back after gang_timeout_s 2 s" in ((job["progress"] or {}).get("message") or "")

        wait_until(gave_back, timeout=30, interval=0.2, what="the nodes given back")
        assert client.post(f"/jobs/{lonely['id']}/cancel").json()["state"] == "cancelled"

        # one worker holds node 0 and waits, saying so; a second worker joins and the job runs at once
        job = client.post("/jobs/train", json=spec).raise_for_status().json()

        def waiting():
            seen = client.get(f"/jobs/{job['id']}").json()
            return seen["state"] == "queued" and (seen["progress"] or {}).get("message") == "waiting for nodes: 1 of 2"

        wait_until(waiting, timeout=30, what="waiting for nodes")
        seen = client.get(f"/jobs/{job['id']}").json()
        assert [(n["node"], n["state"]) for n in seen["nodes"]] == [(0, "waiting")]
        assert processes_of(job["id"]) == []
        second = start_worker(server.data_dir, NODE_ENV)
        try:
            wait_for_state(client, job["id"], "running", timeout=30)
            done = wait_for_state(client, job["id"], "succeeded", timeout=180)
        finally:
            stop_process(second)
        assert done["attempts"] == 1 and done["result"]["nnodes"] == 2
        assert len(set(node_workers(done).values())) == 2
