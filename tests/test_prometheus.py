"""GET /metrics through the running service: valid Prometheus text, and numbers that match the jobs and workers."""

import re
import time

import httpx
import pytest

from app.jobs.kinds import KINDS
from app.jobs.models import JobState

from serverutil import SHARED_DATA, start_server, wait_for_state, wait_until
from storedjobs import add_train_job

TOKEN = "metrics-token"
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{metric: {sorted label pairs: value}}, checking the exposition format on the way: each family is declared
    once, with HELP and TYPE before its samples, and every sample line is well formed."""
    assert text.endswith("\n")
    families: dict[str, dict[tuple, float]] = {}
    declared: dict[str, set] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE") and re.fullmatch(NAME, name), line
            assert kind not in declared.setdefault(name, set()), f"{kind} of {name} twice"
            declared[name].add(kind)
            if kind == "TYPE":
                assert rest in ("gauge", "counter"), line
                assert (rest == "counter") == name.endswith("_total"), line
                families[name] = {}
            continue
        match = SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name, labels, value = match.groups()
        assert declared.get(name) == {"HELP", "TYPE"}, f"{name} sampled before its HELP and TYPE"
        found = LABEL.findall(labels or "")
        assert ",".join(f'{k}="{v}"' for k, v in found) == (labels or ""), f"malformed labels: {line!r}"
        pairs = tuple(sorted(found))
        assert pairs not in families[name], f"{line!r} repeats a series"
        families[name][pairs] = float(value)
    return families


def labels(**pairs: str) -> tuple:
    return tuple(sorted(pairs.items()))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": "3"}  # an idle worker heartbeats every lease/3 seconds
    with start_server(tmp_path_factory.mktemp("prometheus") / "data", workers=1, token=TOKEN, env=env) as server:
        yield server


def scrape(server) -> dict[str, dict[tuple, float]]:
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_count_jobs_workers_conversions_and_training(server):
    client = server.client
    before = scrape(server)
    assert before["openseek_jobs"][labels(kind="convert", state="succeeded")] == 0
    assert before["openseek_convert_docs_total"][()] == 0

    spec = {
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "chars_per_shard": 100_000,
    }
    job = wait_for_state(client, client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    manifest = client.get(f"/jobs/{job['id']}/manifest").json()
    dataset = manifest["output_dir"]
    add_train_job(server.data_dir, dataset, num_iterations=20)
    running_id, _ = add_train_job(server.data_dir, dataset, num_iterations=7, state=JobState.running)

    metrics = scrape(server)
    jobs = metrics["openseek_jobs"]
    assert jobs[labels(kind="convert", state="succeeded")] == 1
    assert jobs[labels(kind="train", state="succeeded")] == 1 and jobs[labels(kind="train", state="running")] == 1
    assert sum(jobs.values()) == 3 and len(jobs) == len(KINDS) * len(JobState)  # every kind x state, zeros included

    assert metrics["openseek_convert_docs_total"][()] == manifest["totals"]["docs"] == 1319
    assert metrics["openseek_convert_chars_total"][()] == manifest["totals"]["chars"]
    assert metrics["openseek_convert_shard_bytes_total"][()] == sum(s["bytes"] for s in manifest["shards"])

    tokens_per_step = 8 * 256 * 2  # device_batch_size x max_seq_len x ranks: the default total batch
    assert metrics["openseek_train_steps_total"][()] == 20 + 7
    assert metrics["openseek_train_tokens_total"][()] == (20 + 7) * tokens_per_step
    assert set(metrics["openseek_train_tokens_per_second"]) == {labels(job=running_id)}  # running jobs only
    assert metrics["openseek_train_loss"][labels(job=running_id)] > 0

    [worker] = client.get("/workers").json()
    assert metrics["openseek_workers"] == {labels(alive="true"): 1, labels(alive="false"): 0}
    series = labels(worker=worker["id"], host=worker["host"])
    assert metrics["openseek_worker_busy"][series] == 0
    assert abs(metrics["openseek_worker_last_heartbeat_timestamp_seconds"][series] - time.time()) < 30

    # heartbeats move on while the worker idles
    first = metrics["openseek_worker_last_heartbeat_timestamp_seconds"][series]
    wait_until(
        lambda: scrape(server)["openseek_worker_last_heartbeat_timestamp_seconds"][series] > first,
        timeout=30,
        interval=0.5,
        what="a newer heartbeat",
    )


def test_metrics_need_the_token(server):
    assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 401
    assert (
        httpx.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code
        == 401
    )
