"""Chaos: two workers, 20 mixed conversions, workers SIGKILLed and a 10 s database write lock at random (seeded)
moments. Every job succeeds exactly once, each output is byte-identical to a clean run of its spec by the library, and
no attempt is killed by a stop meant for another.

The lease (4 s) is shorter than the lock, so every job running when the lock comes loses its lease: its worker stops
that attempt, the next attempt takes over, and the fencing (attempt-tagged processes, the output's lock, the attempt in
the manifest) is what keeps the two apart.
"""

import hashlib
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from openseek_nanochat.convert.run import convert
from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.procs import job_processes
from openseek_nanochat.settings import Settings

from serverutil import SHARED_DATA, lock_sqlite, start_server, wait_until

SEED = 20261130
LEASE_SECONDS = 4
LOCK_SECONDS = 10
QWEN = {"type": "qwen", "path": str(SHARED_DATA / "qwen.tiktoken")}
JSONL = SHARED_DATA / "jsonl"
GSM8K = {"type": "files", "paths": [str(JSONL / "gsm8k.jsonl")], "text_template": "{question}\n{answer}"}


def chaos_specs(texts: Path) -> dict[str, dict]:
    """Five kinds of conversion: JSONL with a template, a JSONL column, Megatron parts, text files, a mixture."""
    return {
        "jsonl": {
            "sources": [GSM8K],
            "max_chars": 6_000_000,
            "chars_per_shard": 10_000,
            "row_group_size": 16,
            "val_docs": 40,
        },
        "column": {
            "sources": [{"type": "files", "paths": [str(JSONL / "mmlu_stem.jsonl")], "text_column": "question"}],
            "max_chars": 4_000_000,
            "chars_per_shard": 10_000,
            "row_group_size": 16,
            "val_docs": 40,
            "seed": 3,
        },
        "megatron": {
            "sources": [{"type": "megatron", "prefixes": [str(SHARED_DATA / "megatron" / "*")], "tokenizer": QWEN}],
            "max_chars": 12_000_000,
            "chars_per_shard": 10_000,
            "row_group_size": 16,
            "val_docs": 50,
        },
        "text": {
            "sources": [{"type": "files", "paths": [str(texts / "*.txt")]}],
            "max_chars": 6_000_000,
            "chars_per_shard": 10_000,
            "row_group_size": 16,
            "val_docs": 50,
        },
        "mixture": {
            "sources": [
                GSM8K,
                {"type": "files", "paths": [str(JSONL / "cmath.jsonl")], "text_column": "question", "weight": 0.5},
                {
                    "type": "megatron",
                    "tokenizer": QWEN,
                    "weight": 2,
                    "data_path": [1, str(SHARED_DATA / "megatron" / "math500_text_document")],
                },
            ],
            "max_chars": 12_000_000,
            "chars_per_shard": 10_000,
            "row_group_size": 16,
            "shuffle_buffer": 500,
            "seed": 7,
            "val_docs": 30,
        },
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The server's data dir is root/data, its inputs may come from root (and the shared data)."""
    root = tmp_path_factory.mktemp("chaos")
    texts = root / "texts"
    texts.mkdir()
    paragraphs = [p for p in (SHARED_DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    for i in range(0, len(paragraphs), 10):  # one document per file
        (texts / f"{i // 10:04d}.txt").write_text("\n\n".join(paragraphs[i : i + 10]))
    return root


@pytest.fixture(scope="module")
def specs(root) -> dict[str, dict]:
    return chaos_specs(root / "texts")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_of(folder: Path) -> list[dict]:
    """What a dataset holds: the manifest's shard list, each checked against the file's own bytes."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"]
    for shard in manifest["shards"]:
        assert sha256(folder / shard["file"]) == shard["sha256"], shard["file"]
    assert sorted(p.name for p in folder.glob("*.parquet")) == [shard["file"] for shard in manifest["shards"]]
    return manifest["shards"]


@pytest.fixture(scope="module")
def clean_outputs(root, specs) -> dict[str, list[dict]]:
    """Each spec converted by the library itself, undisturbed."""
    settings = Settings(data_dir=root / "clean", input_roots=os.pathsep.join([str(root), str(SHARED_DATA)]))
    outputs = {}
    for name, spec in specs.items():
        out = root / "clean" / "datasets" / name
        convert(ConvertSpec.model_validate({**spec, "output_dir": str(out)}), settings)
        outputs[name] = output_of(out)
    return outputs


def kill_a_busy_worker(server, rng: random.Random) -> str:
    """SIGKILL one of the server's worker processes, one running a job where there is one; returns its worker id."""
    running = set(server.worker_pids())
    workers = sorted((w for w in server.client.get("/workers").json() if w["pid"] in running), key=lambda w: w["id"])
    victim = rng.choice([w for w in workers if w["job_id"]] or workers)
    os.kill(victim["pid"], signal.SIGKILL)
    return victim["id"]


LONG = ("megatron", "mixture")


def lock_early_in_a_long_job(server, jobs: dict[str, str]):
    """Lock the database for LOCK_SECONDS once a long conversion is under way (or after 30 s without one), so that its
    lease runs out before it ends."""

    def early_in_a_long_job() -> bool:
        running = server.client.get("/jobs", params={"state": "running"}).json()["jobs"]
        return any(
            jobs.get(job["id"]) in LONG and 0 < ((job["progress"] or {}).get("fraction") or 0) < 0.3 for job in running
        )

    give_up = time.monotonic() + 30
    wait_until(lambda: early_in_a_long_job() or time.monotonic() > give_up, timeout=60, interval=0.05)
    return lock_sqlite(server.data_dir / "jobs.db", LOCK_SECONDS)


# The worker's lines about an attempt (worker/runner.py): started, ended, stopped by its own worker, or cleared away as
# a leftover by the worker of a later attempt.
STARTED = re.compile(r"\[worker (?P<worker>\S+)\] attempt (?P<attempt>\d+) started \(pid \d+\): ")
ENDED = re.compile(r"\[worker (?P<worker>\S+)\] attempt (?P<attempt>\d+) ended: (?P<how>.*)$")
STOPPED = re.compile(
    r"\[worker (?P<worker>\S+)\] (lost|cancelled|stopping): stopped \d+ processes of the job's "
    r"attempt (?P<attempt>\d+)$"
)
CLEARED = re.compile(r"\[worker (?P<worker>\S+)\] stopped \d+ processes left by attempts before (?P<attempt>\d+)$")


def check_attempts(log: str, victims: set[str]) -> None:
    """Every attempt ended, and one whose job process died of a signal was stopped by its own worker or cleared away by
    the worker of a later attempt: never by a stop meant for another attempt, and never by an earlier one. Attempts of
    a SIGKILLed worker end with it (their end is not logged)."""
    started: dict[int, str] = {}
    stopped_by_own: set[int] = set()
    cleared_before = 0  # attempts before this one were no longer the job's: a later attempt's worker may clear them
    ended: set[int] = set()
    for line in log.splitlines():
        if m := STARTED.match(line):
            started[int(m["attempt"])] = m["worker"]
        elif m := ENDED.match(line):
            attempt = int(m["attempt"])
            assert started.get(attempt) == m["worker"], line
            ended.add(attempt)
            if "killed by" in m["how"]:
                assert attempt in stopped_by_own or attempt < cleared_before, f"attempt {attempt} killed by another"
        elif m := STOPPED.match(line):
            assert started.get(int(m["attempt"])) == m["worker"], line
            stopped_by_own.add(int(m["attempt"]))
        elif m := CLEARED.match(line):
            cleared_before = max(cleared_before, int(m["attempt"]))
    for attempt, worker in started.items():
        assert attempt in ended or worker in victims, f"attempt {attempt} of worker {worker} never ended"


def test_chaos(root, specs, clean_outputs):
    rng = random.Random(SEED)
    env = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": str(LEASE_SECONDS), "OPENSEEK_NANOCHAT_MAX_ATTEMPTS": "10"}
    with start_server(root / "data", workers=2, env=env) as server:
        client = server.client
        names = [name for name in specs for _ in range(4)]
        rng.shuffle(names)
        jobs = {}
        for i, name in enumerate(names):
            response = client.post("/jobs/convert", json={**specs[name], "name": f"{name}-{i}"})
            assert response.status_code == 202, response.text
            jobs[response.json()["id"]] = name

        # The chaos, at seeded moments: a worker killed, the database locked, another worker killed.
        moments = sorted([(rng.uniform(2, 10), "kill"), (rng.uniform(10, 22), "lock"), (rng.uniform(34, 42), "kill")])
        started, victims, lock = time.monotonic(), set(), None
        for at, what in moments:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if what == "kill":
                victims.add(kill_a_busy_worker(server, rng))
            else:
                lock = lock_early_in_a_long_job(server, jobs)
        lock.join()

        def finished() -> list[dict] | None:
            states = [client.get(f"/jobs/{job_id}").json() for job_id in jobs]
            assert not [s for s in states if s["state"] in ("failed", "cancelled")], states
            return states if all(s["state"] == "succeeded" for s in states) else None

        states = wait_until(finished, timeout=150, interval=0.5, what="all 20 jobs succeeded")
        logs = {job_id: client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"] for job_id in jobs}

    assert sum(s["attempts"] > 1 for s in states) >= 1  # the chaos did cost attempts
    for state in states:
        job_id, log = state["id"], logs[state["id"]]
        # Succeeded exactly once: one attempt recorded an outcome, and it was success.
        notes = [line for line in log.splitlines() if line.startswith(("[worker ", "[control]"))]
        assert [re.sub(r".* attempt \d+ recorded: ", "", n) for n in notes if " recorded: " in n] == ["succeeded"], (
            "\n".join(notes)
        )
        check_attempts(log, victims)
        assert job_processes(job_id) == []
        # Byte-identical to the clean run of the same spec.
        assert output_of(Path(state["spec"]["output_dir"])) == clean_outputs[jobs[job_id]], job_id
