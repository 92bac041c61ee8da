"""Train jobs over HTTP, run by real workers: a 2-rank CPU torchrun on a convert job's shards learns, reports its
steps and its result; a SIGKILLed worker's training is resumed by another from its last checkpoint; a cancel leaves
no process behind; bad specs are refused at submit. Then its checkpoints are used: sample jobs continue prompts (the
same seed, the same text), eval jobs measure bits per byte (on its own validation shard, its training's val_bpb)."""

import os
import re
import signal

import psutil
import pytest
import torch

from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.builtin import trainer as train

from app.jobs.models import JobState

from serverutil import SHARED_DATA, shakespeare_jsonl, start_server, wait_for_state, wait_until
from storedjobs import add_train_job

LEASE_SECONDS = 3
METRIC_KEYS = {"step", "loss", "lr", "dt_ms", "tok_per_sec", "mfu", "val_bpb"}

# Tiny and quick on 2 CPU ranks: 2 layers of width 128, 128-token rows, 1,024 tokens a step.
TINY = {
    "depth": 2,
    "head_dim": 64,
    "max_seq_len": 128,
    "device_batch_size": 4,
    "eval_tokens": 2048,
    "warmup_steps": 2,
    "nproc_per_node": 2,
    "device": "cpu",
}
STEPS, EVAL_EVERY, SAVE_EVERY = 20, 5, 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": str(LEASE_SECONDS)}
    with start_server(tmp_path_factory.mktemp("train") / "data", workers=2, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def dataset(server) -> str:
    return shakespeare_dataset(server)


def shakespeare_dataset(server) -> str:
    """A finished convert job over tinyshakespeare, one paragraph a document: its id."""
    corpus = shakespeare_jsonl(server.data_dir.parent / "shakespeare.jsonl", copies=1)
    spec = {
        "name": "shakespeare",
        "sources": [{"type": "files", "paths": [str(corpus)]}],
        "chars_per_shard": 300_000,
        "row_group_size": 128,
        "val_docs": 600,
    }
    job = server.client.post("/jobs/convert", json=spec).raise_for_status().json()
    return wait_for_state(server.client, job["id"], "succeeded", timeout=60)["id"]


@pytest.fixture(scope="module")
def trained(server, dataset) -> dict:
    """A whole train job, tokenizer training included: the finished job."""
    spec = {
        **TINY,
        "dataset": dataset,
        "tokenizer": {"vocab_size": 1024, "max_chars": 600_000},
        "num_iterations": STEPS,
        "eval_every": EVAL_EVERY,
        "save_every": SAVE_EVERY,
    }
    response = server.client.post("/jobs/train", json=spec)
    assert response.status_code == 202, response.text
    return wait_for_state(server.client, response.json()["id"], "succeeded", timeout=150)


def log_text(server, job_id: str) -> str:
    return server.client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"]


def processes_of(job_id: str) -> list[psutil.Process]:
    """Every live process whose environment names the job (the job process, torchrun, its ranks)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("OPENSEEK_NANOCHAT_JOB_ID") == job_id and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def ranks(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The trainer processes torchrun started (not their tokenizing helpers)."""

    def is_rank(process):
        try:
            return "torch.distributed.run" in process.parent().cmdline()
        except (psutil.Error, AttributeError):  # gone, or no parent
            return False

    return [p for p in processes if is_rank(p)]


def survivors(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def test_a_two_rank_job_learns_and_reports_every_step(server, trained):
    job = trained
    assert job["kind"] == "train" and job["attempts"] == 1
    metrics = server.client.get(f"/jobs/{job['id']}/metrics").raise_for_status().json()

    # one record per logged step: step 0 is the evaluation before training, then every step
    assert [m["step"] for m in metrics] == list(range(STEPS + 1))
    assert all(set(m) == METRIC_KEYS for m in metrics)
    assert metrics[0]["loss"] is None and metrics[0]["val_bpb"] > 0
    for m in metrics[1:]:
        assert m["loss"] > 0 and m["lr"] > 0 and m["dt_ms"] > 0 and m["tok_per_sec"] > 0, m
        assert m["mfu"] is None, m  # no peak FLOP/s to compare with on a CPU
    evaluated = [m["step"] for m in metrics if m["val_bpb"] is not None]
    assert evaluated == list(range(0, STEPS + 1, EVAL_EVERY))

    # it learns: the loss falls by more than a nat, the validation bits per byte with it
    losses = [m["loss"] for m in metrics[1:]]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses
    assert metrics[-1]["val_bpb"] < metrics[0]["val_bpb"] - 0.3

    progress = job["progress"]
    assert {"step", "num_iterations", "loss", "tok_per_sec", "val_bpb", "eta_s"} <= set(progress)
    assert progress["step"] == progress["num_iterations"] == STEPS
    assert progress["loss"] == pytest.approx(metrics[-1]["loss"]) and progress["tok_per_sec"] > 0
    assert progress["val_bpb"] == pytest.approx(metrics[-1]["val_bpb"]) and progress["eta_s"] == pytest.approx(0)

    result = job["result"]
    assert result["world_size"] == 2 and result["val_bpb"] == pytest.approx(metrics[-1]["val_bpb"])
    assert tok.load(result["tokenizer_dir"]).get_vocab_size() == 1024
    checkpoints = {p.name for p in os.scandir(result["checkpoint_dir"])}
    assert {
        f"model_{STEPS:06d}.pt",
        f"meta_{STEPS:06d}.json",
        f"optim_{STEPS:06d}_rank0.pt",
        f"optim_{STEPS:06d}_rank1.pt",
    } <= checkpoints

    log = log_text(server, job["id"])
    assert "2 rank(s) on cpu" in log and f"step {STEPS:05d}/{STEPS:05d} (100.00%)" in log
    assert processes_of(job["id"]) == []


def test_a_killed_workers_training_resumes_from_its_last_checkpoint(server, dataset, trained):
    client = server.client
    steps = 3 * SAVE_EVERY
    spec = {
        **TINY,
        "dataset": dataset,
        "tokenizer": {"path": trained["result"]["tokenizer_dir"]},
        "num_iterations": steps,
        "eval_every": EVAL_EVERY,
        "save_every": SAVE_EVERY,
    }
    job = client.post("/jobs/train", json=spec).raise_for_status().json()
    victim = wait_for_state(client, job["id"], "running")["worker_id"]
    [pid] = [w["pid"] for w in client.get("/workers").json() if w["id"] == victim]
    checkpoints = server.data_dir / "runs" / job["id"] / "checkpoints"
    wait_until(
        (checkpoints / f"meta_{SAVE_EVERY:06d}.json").exists, timeout=90, interval=0.05, what="the first checkpoint"
    )
    first_attempt = processes_of(job["id"])
    os.kill(pid, signal.SIGKILL)
    assert len(ranks(first_attempt)) == 2
    # the job process, torchrun and both ranks go down with their worker, before the lease lets another take over
    wait_until(lambda: not survivors(first_attempt), timeout=LEASE_SECONDS + 5, what="the first attempt gone")
    last_checkpoint = train.last_complete_step(checkpoints, world_size=2)
    assert SAVE_EVERY <= last_checkpoint < steps  # killed half-way

    done = wait_for_state(client, job["id"], "succeeded", timeout=120)
    assert done["attempts"] == 2 and done["worker_id"] != victim
    assert done["result"]["world_size"] == 2 and done["progress"]["step"] == steps
    log = log_text(server, job["id"])
    assert f"the lease of worker {victim} expired (it stopped heartbeating); job queued again" in log
    rerun = log.split(f"[worker {done['worker_id']}] attempt 2 started")[1]
    # the rerun loaded the last checkpoint and went on from there: no fresh start, no evaluation of an untrained model
    assert f"resuming from step {last_checkpoint} " in rerun
    steps_run = [int(s) for s in re.findall(r"^step (\d+)/", rerun, re.MULTILINE)]
    assert steps_run == list(range(last_checkpoint + 1, steps + 1))
    assert "Step 00000 | Validation bpb" not in rerun
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert [m["step"] for m in metrics] == list(range(steps + 1))  # one record per step, the redone ones once
    assert survivors(first_attempt) == [] and processes_of(job["id"]) == []


def test_cancel_stops_the_job_torchrun_and_every_rank(server, dataset, trained):
    client = server.client
    spec = {
        **TINY,
        "dataset": dataset,
        "tokenizer": {"path": trained["result"]["tokenizer_dir"]},
        "num_iterations": 100_000,
        "eval_every": -1,
    }
    job = client.post("/jobs/train", json=spec).raise_for_status().json()
    wait_until(
        lambda: (client.get(f"/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) >= 1,
        timeout=60,
        what="the first step logged",
    )
    running = processes_of(job["id"])
    assert len(ranks(running)) == 2 and len(running) >= 4  # the job process, torchrun and its two ranks

    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    cancelled = wait_for_state(client, job["id"], "cancelled", timeout=10)
    assert survivors(running) == [] and processes_of(job["id"]) == []
    assert re.search(
        rf"\[worker {cancelled['worker_id']}\] cancelled: stopped [1-9]\d* processes of the job",
        log_text(server, job["id"]),
    )


def refusal(server, spec: dict) -> dict:
    response = server.client.post("/jobs/train", json=spec)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error


@pytest.fixture
def small(dataset) -> dict:
    return {**TINY, "dataset": dataset, "tokenizer": {"vocab_size": 1024}, "num_iterations": 10}


def test_unknown_dataset_is_refused(server, small):
    error = refusal(server, {**small, "dataset": "0123456789abcdef"})
    assert error["loc"] == ["body", "dataset"]
    assert error["msg"].startswith("unknown dataset '0123456789abcdef': not a finished convert job")


def test_unfinished_convert_job_is_refused(server, small):
    corpus = shakespeare_jsonl(server.data_dir.parent / "shakespeare.jsonl", copies=1)
    convert = (
        server.client.post(
            "/jobs/convert", json={"name": "unfinished", "sources": [{"type": "files", "paths": [str(corpus)]}]}
        )
        .raise_for_status()
        .json()
    )
    try:
        error = refusal(server, {**small, "dataset": convert["id"]})
    finally:
        server.client.post(f"/jobs/{convert['id']}/cancel")
    assert error["loc"] == ["body", "dataset"]
    assert re.fullmatch(
        rf"convert job {convert['id']} is (queued|running); a job can use its shards once it has "
        "succeeded",
        error["msg"],
    ), error["msg"]
    wait_for_state(server.client, convert["id"], ("cancelled", "succeeded"), timeout=30)


def test_a_job_of_another_kind_is_refused(server, small, trained):
    error = refusal(server, {**small, "dataset": trained["id"]})
    assert error["loc"] == ["body", "dataset"]
    assert error["msg"] == f"job {trained['id']} is a train job, not a convert job"


def test_batch_sizes_that_do_not_divide_are_refused(server, small):
    error = refusal(server, {**small, "total_batch_size": 1500})
    assert error["loc"] == ["body"]
    assert (
        "total_batch_size 1,500 is not a multiple of device_batch_size x max_seq_len x nproc_per_node = "
        "4 x 128 x 2 = 1,024; use e.g. 1,024 or 2,048" in error["msg"]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_job_waits_for_a_cuda_worker_saying_why(server, small):
    client = server.client
    response = client.post("/jobs/train", json={**small, "device": "cuda"})
    assert response.status_code == 202, response.text  # the API's machine need not have the GPUs: workers do
    job_id = response.json()["id"]

    def explained() -> str | None:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["state"] == "queued" and job["attempts"] == 0
        return ((job["progress"] or {}).get("message") or "").startswith("no live worker can run it") and job

    job = wait_until(explained, timeout=30, what="the reason the job waits")
    listed = client.get("/workers").json()  # earlier tests' killed workers are listed too, not alive
    workers = sorted(w["id"] for w in listed if w["alive"])
    assert all(w["cuda"] == [] and w["cpus"] >= 1 for w in listed)
    have = "; ".join(f"{w} has 0 CUDA device(s)" for w in workers)
    assert job["progress"]["message"] == f"no live worker can run it: it needs 2 CUDA device(s), and {have}"

    # a CPU job submitted after it is claimed as before
    corpus = shakespeare_jsonl(server.data_dir.parent / "shakespeare.jsonl", copies=1)
    convert = {"name": "after-cuda", "sources": [{"type": "files", "paths": [str(corpus)]}], "max_docs": 100}
    later = client.post("/jobs/convert", json=convert).raise_for_status().json()
    wait_for_state(client, later["id"], "succeeded", timeout=60)
    assert client.get(f"/jobs/{job_id}").json()["state"] == "queued"
    assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"


def test_refused_specs_leave_no_job(server, small):
    def train_jobs():
        return server.client.get("/jobs", params={"kind": "train"}).json()["total"]

    before = train_jobs()
    refusal(server, {**small, "dataset": "0123456789abcdef"})
    refusal(server, {**small, "num_iterations": 0})
    assert train_jobs() == before


# --- samples and evals of the trained checkpoint -----------------------------------------------------------------


def finished(server, kind: str, body: dict, timeout: float = 120) -> dict:
    response = server.client.post(f"/jobs/{kind}", json=body)
    assert response.status_code == 202, response.text
    return wait_for_state(server.client, response.json()["id"], "succeeded", timeout=timeout)


def test_a_sample_job_adds_the_asked_tokens_and_the_same_seed_gives_the_same_text(server, trained):
    body = {"train_job": trained["id"], "prompts": ["ROMEO:", "To be or not"], "max_tokens": 24, "top_k": 50, "seed": 7}
    jobs = [server.client.post("/jobs/sample", json=b).json() for b in (body, body, {**body, "seed": 8})]
    first, again, other = (wait_for_state(server.client, job["id"], "succeeded", timeout=120) for job in jobs)

    completions = first["result"]["completions"]
    assert [c["prompt"] for c in completions] == body["prompts"]
    assert all(c["tokens"] == 24 and c["text"].strip() for c in completions), completions
    assert first["result"]["step"] == STEPS and first["spec"]["step"] == STEPS  # the latest complete checkpoint
    assert again["result"]["completions"] == completions
    assert [c["text"] for c in other["result"]["completions"]] != [c["text"] for c in completions]
    tokenizer = tok.load(trained["result"]["tokenizer_dir"])
    assert all(20 <= len(tokenizer.encode(c["text"])) <= 28 for c in completions)  # re-encoding may merge differently


def test_an_eval_on_the_trainings_own_validation_shard_gives_its_val_bpb(server, trained):
    metrics = server.client.get(f"/jobs/{trained['id']}/metrics").json()
    latest = finished(server, "eval", {"train_job": trained["id"]})
    assert latest["result"]["step"] == STEPS and latest["result"]["tokens"] == TINY["eval_tokens"]
    assert abs(latest["result"]["val_bpb"] - trained["result"]["val_bpb"]) < 5e-4, (latest["result"], trained["result"])

    halfway = finished(server, "eval", {"train_job": trained["id"], "step": 2 * SAVE_EVERY})
    assert abs(halfway["result"]["val_bpb"] - metrics[2 * SAVE_EVERY]["val_bpb"]) < 5e-4


def test_an_eval_on_another_datasets_validation_shard(server, trained):
    convert = {
        "name": "gsm8k-for-eval",
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "row_group_size": 16,
        "val_docs": 200,
    }
    other = finished(server, "convert", convert, timeout=60)
    job = finished(server, "eval", {"train_job": trained["id"], "dataset": other["id"], "tokens": 4096})
    assert job["result"]["dataset"] == other["spec"]["output_dir"] and job["result"]["tokens"] == 4096
    assert 0 < job["result"]["val_bpb"] != pytest.approx(trained["result"]["val_bpb"], abs=1e-3)


def refused(server, kind: str, body: dict) -> dict:
    response = server.client.post(f"/jobs/{kind}", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error


def test_bad_sample_and_eval_requests_are_refused_with_the_reason(server, dataset, trained, tmp_path):
    prompt = {"prompts": ["ROMEO:"]}
    for kind in ("sample", "eval"):
        body = {"train_job": "0123456789abcdef", **(prompt if kind == "sample" else {})}
        error = refused(server, kind, body)
        assert error["loc"] == ["body", "train_job"] and error["msg"] == "no job with id '0123456789abcdef'"
        error = refused(server, kind, {**body, "train_job": dataset})
        assert error["loc"] == ["body", "train_job"]
        assert error["msg"] == f"job {dataset} is a convert job, not a train job"
        error = refused(server, kind, {**body, "train_job": trained["id"], "step": 3})
        assert error["loc"] == ["body", "step"]
        assert (
            error["msg"]
            == f"train job {trained['id']} has no complete checkpoint of step 3; it has steps 5, 10, 15, 20"
        )

    running, _ = add_train_job(server.data_dir, tmp_path, state=JobState.running)  # no checkpoint written yet
    error = refused(server, "sample", {"train_job": running, **prompt})
    assert error["loc"] == ["body", "train_job"]
    assert (
        error["msg"] == f"train job {running} (running) has no complete checkpoint yet: its first is written at step 20"
    )

    sample = {"train_job": trained["id"], **prompt}
    error = refused(server, "sample", {**sample, "max_tokens": 1025})
    assert error["loc"] == ["body", "max_tokens"] and "less than or equal to 1024" in error["msg"]
    error = refused(server, "sample", {**sample, "prompts": ["x" * 9000]})
    assert error["loc"] == ["body", "prompts", 0] and "at most 8192 characters" in error["msg"]
    long_prompt = " ".join(f"word{i}" for i in range(400))  # far more tokens than the model's 128
    error = refused(server, "sample", {**sample, "prompts": ["ROMEO:", long_prompt]})
    assert error["loc"] == ["body", "prompts", 1]
    assert re.fullmatch(
        r"the prompt is [\d,]+ tokens long; the model reads at most 127 \(its context is 128 .*", error["msg"]
    )
    error = refused(server, "sample", {**sample, "prompts": []})
    assert error["loc"] == ["body", "prompts"]

    error = refused(server, "eval", {"train_job": trained["id"], "dataset": "0123456789abcdef"})
    assert error["loc"] == ["body", "dataset"] and error["msg"].startswith("unknown dataset '0123456789abcdef'")
    error = refused(server, "eval", {"train_job": trained["id"], "tokens": 100})
    assert error["loc"] == ["body", "tokens"] and "less than one batch on all ranks (1,024 tokens" in error["msg"]


def test_a_train_jobs_dataset_is_the_manifest_of_the_conversion_it_read(server, dataset, trained):
    found = server.client.get(f"/jobs/{trained['id']}/dataset").raise_for_status().json()
    assert found == {**server.client.get(f"/jobs/{dataset}/manifest").json(), "output_dir": trained["spec"]["dataset"]}
    [source] = found["sources"]
    assert source["share_chars"] == 1.0 and source["weight"] == 1.0
    response = server.client.get(f"/jobs/{dataset}/dataset")
    assert response.status_code == 404 and response.json() == {"detail": "convert jobs read no dataset"}
    response = server.client.get(f"/jobs/{trained['id']}/samples")
    assert response.status_code == 404
    assert response.json() == {"detail": "train jobs write no dataset to sample; a convert job does"}
