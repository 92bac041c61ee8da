"""Outputs are owned, over HTTP against a real server: a conversion writes only to a folder of its own inside
<data dir>/datasets/; of concurrent submits into one folder (or nested folders) exactly one is accepted; a dataset's
manifest names the job that owns it, and a purge removes only what the job owns and never what an unfinished job
writes or reads."""

import json
import re
import secrets
import signal
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from openseek_nanochat import procs

from app.jobs import store
from app.jobs.db import make_engine
from app.jobs.models import Job, JobState, new_job_id

from serverutil import (
    SHARED_DATA,
    shakespeare_jsonl,
    start_postgres,
    start_server,
    start_worker,
    stop_process,
    wait_for_state,
    wait_until,
)
from storedjobs import small_train_spec

GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")


def tiny_spec(**extra) -> dict:
    """A conversion of a few seconds at most: 200 documents in a handful of shards."""
    return {
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}\n{answer}"}],
        "max_docs": 200,
        "chars_per_shard": 20_000,
        "row_group_size": 16,
        "val_docs": 10,
        **extra,
    }


def files_of(folder: Path) -> dict[str, bytes]:
    """The files directly in `folder` (shards and manifest), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def purge(client: httpx.Client, job_id: str) -> dict:
    response = client.delete(f"/jobs/{job_id}", params={"purge": "true"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("ownership") / "data", workers=2) as server:
        yield server


def test_output_dir_must_be_a_folder_inside_datasets(server):
    data = server.data_dir.resolve()
    datasets = data / "datasets"
    inside = f"is not inside {datasets}: a conversion writes to a folder of its own there (e.g. {datasets}/<name>)"
    refused = {
        str(data): inside,
        str(datasets): inside,
        str(datasets / ".." / "jobs"): inside,
        str(data / "jobs"): inside,
        str(data / "runs"): inside,
        str(data / "runs" / "x"): inside,
        str(server.data_dir.parent / "elsewhere"): f"is outside the data dir {data}; set OPENSEEK_NANOCHAT_DATA_DIR "
        "to allow it",
    }
    for output_dir, why in refused.items():
        response = server.client.post("/jobs/convert", json=tiny_spec(output_dir=output_dir))
        assert response.status_code == 422, (output_dir, response.text)
        assert response.json()["detail"] == [
            {"type": "path_policy", "loc": ["body", "output_dir"], "msg": f"output path {output_dir!r} {why}"}
        ]
    assert (data / "jobs.db").is_file() and server.client.get("/healthz").json() == {"status": "ok"}


def test_purge_keeps_the_data_dir_and_its_folders_whatever_an_old_job_wrote(server):
    """Jobs an earlier version accepted, with output_dir the data dir, datasets/, jobs/ or runs/, even with a manifest
    naming them as owner: their purge removes their log folder and nothing else."""
    data = server.data_dir.resolve()
    folders = [data, data / "datasets", data / "jobs", data / "runs"]
    engine = make_engine(f"sqlite:///{data / 'jobs.db'}")
    ids = [new_job_id() for _ in folders]
    try:
        for job_id, folder in zip(ids, folders):
            spec = {**tiny_spec(), "output_dir": str(folder)}
            store.create_job(engine, Job(id=job_id, kind="convert", state=JobState.succeeded, spec=spec))
    finally:
        engine.dispose()
    for job_id, folder in zip(ids, folders):
        folder.mkdir(exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps({"owner": job_id}))
        deleted = purge(server.client, job_id)
        assert folder.is_dir() and (folder / "manifest.json").is_file() and (data / "jobs.db").is_file()
        assert deleted["kept"] == [
            {"path": str(folder), "reason": f"it is not a dataset folder of its own inside {folders[1]}"}
        ]
        (folder / "manifest.json").unlink()
    assert (data / "jobs.db").is_file() and server.client.get("/healthz").json() == {"status": "ok"}


def submit_all(base_url: str, specs: list[dict]) -> list[httpx.Response]:
    """POST every spec at the same moment, one thread and one connection each."""
    clients = [httpx.Client(base_url=base_url, timeout=60) for _ in specs]
    barrier = threading.Barrier(len(specs))
    responses: list[httpx.Response | None] = [None] * len(specs)

    def send(i: int) -> None:
        clients[i].get("/healthz")  # connected before the barrier, so the submits themselves start together
        barrier.wait()
        responses[i] = clients[i].post("/jobs/convert", json=specs[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return responses


BUSY = re.compile(
    r"job ([0-9a-f]{16}) \((?:queued|running)\) already writes to (\S+?)(?:, which (?:lies inside|holds) "
    r"(\S+))?; wait for it, cancel it, or choose another name or output_dir"
)


def race_then_purge(server) -> None:
    client, datasets = server.client, server.data_dir.resolve() / "datasets"

    # 20 submits into one name, each with a spec of its own: one is accepted, the others are told who writes there.
    responses = submit_all(server.base_url, [tiny_spec(name="same", seed=i) for i in range(20)])
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    assert len(accepted) == 1, [(r.status_code, r.text) for r in responses]
    [winner] = accepted
    for response in responses:
        if response.status_code != 202:
            assert response.status_code == 409, response.text
            busy = BUSY.fullmatch(response.json()["detail"])
            assert busy and busy.groups() == (winner, str(datasets / "same"), None), response.text

    # 20 submits into nested folders: p, p/q and p/q/r overlap, p2 and p2/s overlap, but p and p2 do not.
    group_p = [datasets / "p", datasets / "p" / "q", datasets / "p" / "q" / "r"]
    group_p2 = [datasets / "p2", datasets / "p2" / "s"]
    outputs = [(group_p + group_p2)[i % 5] for i in range(20)]
    specs = [
        tiny_spec(name="p", seed=i) if out == datasets / "p" else tiny_spec(output_dir=str(out), seed=i)
        for i, out in enumerate(outputs)
    ]
    responses = submit_all(server.base_url, specs)
    winners = {}
    for out, response in zip(outputs, responses):
        if response.status_code == 202:
            winners.setdefault("p2" if out in group_p2 else "p", []).append((response.json()["id"], out))
    assert sorted(winners) == ["p", "p2"] and all(len(w) == 1 for w in winners.values()), winners
    for out, response in zip(outputs, responses):
        if response.status_code != 202:
            assert response.status_code == 409, response.text
            busy = BUSY.fullmatch(response.json()["detail"])
            [(group_winner, winner_out)] = winners["p2" if out in group_p2 else "p"]
            assert busy and busy.group(1, 2) == (group_winner, str(winner_out)), response.text

    owners = {winner: datasets / "same", **{job_id: out for [(job_id, out)] in winners.values()}}
    for job_id in owners:
        wait_for_state(client, job_id, "succeeded")
    before = {job_id: files_of(out) for job_id, out in owners.items()}

    # Later jobs into the winners' folders: a different spec fails, a folder inside gets a dataset of its own. Purging
    # any of them leaves every winner's dataset as it was, byte for byte.
    later = []
    for i, (owner, out) in enumerate(owners.items()):
        failed = client.post("/jobs/convert", json=tiny_spec(output_dir=str(out), seed=100 + i)).json()["id"]
        later.append((wait_for_state(client, failed, "failed")["id"], owner, out))
        inner = client.post("/jobs/convert", json=tiny_spec(output_dir=str(out / "inner"))).json()["id"]
        wait_for_state(client, inner, "succeeded")
        assert purge(client, inner)["removed"] == [str(server.data_dir.resolve() / "jobs" / inner), str(out / "inner")]
    for job_id, owner, out in later:
        kept = purge(client, job_id)["kept"]
        assert kept == [{"path": str(out), "reason": f"its manifest names job {owner} as its owner, not job {job_id}"}]
    for owner, out in owners.items():
        assert files_of(out) == before[owner] and not (out / "inner").exists()
        assert json.loads((out / "manifest.json").read_text())["owner"] == owner
        assert str(out) in purge(client, owner)["removed"] and not out.exists()
    assert datasets.is_dir()


def test_concurrent_submits_into_one_folder_one_wins(server):
    race_then_purge(server)


@pytest.mark.needs("postgresql")
def test_concurrent_submits_into_one_folder_one_wins_on_postgresql(tmp_path):
    with (
        start_postgres() as url,
        start_server(tmp_path / "data", workers=2, env={"OPENSEEK_NANOCHAT_DATABASE_URL": url}) as server,
    ):
        race_then_purge(server)


def test_a_job_that_finds_a_dataset_finished_does_not_own_it(server):
    client, out = server.client, server.data_dir.resolve() / "datasets" / "finished"
    first = wait_for_state(client, client.post("/jobs/convert", json=tiny_spec(name="finished")).json()["id"])
    again = wait_for_state(client, client.post("/jobs/convert", json=tiny_spec(name="finished")).json()["id"])
    other = wait_for_state(client, client.post("/jobs/convert", json=tiny_spec(name="finished", seed=7)).json()["id"])
    assert (first["state"], again["state"], other["state"]) == ("succeeded", "succeeded", "failed")
    assert again["progress"]["message"] == "already complete"
    assert "holds a conversion of a different spec" in other["error"]["message"]
    before = files_of(out)
    for job in (again, other):
        assert purge(client, job["id"])["kept"] == [
            {"path": str(out), "reason": f"its manifest names job {first['id']} as its owner, not job {job['id']}"}
        ]
        assert files_of(out) == before
    assert str(out) in purge(client, first["id"])["removed"] and not out.exists()


def job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(procs.JOB_ID_ENV) == job_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_a_resubmit_that_finishes_an_interrupted_dataset_owns_it(server):
    client, out = server.client, server.data_dir.resolve() / "datasets" / "interrupted"
    corpus = shakespeare_jsonl(server.data_dir.parent / "shakespeare8.jsonl", copies=8)
    spec = {
        "name": "interrupted",
        "sources": [{"type": "files", "paths": [str(corpus)]}],
        "chars_per_shard": 100_000,
        "row_group_size": 16,
        "shuffle_buffer": 2000,
    }
    first = client.post("/jobs/convert", json=spec).json()["id"]

    def partial():
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return manifest if len(manifest["shards"]) >= 2 else None

    manifest = wait_until(partial, timeout=60, interval=0.002, what="two shards written")
    for process in job_processes(first):  # the first attempt dies mid-way
        process.send_signal(signal.SIGKILL)
    assert not manifest["complete"] and manifest["owner"] == first
    assert wait_for_state(client, first, "failed")["error"]["message"]
    assert json.loads((out / "manifest.json").read_text())["owner"] == first

    second = wait_for_state(client, client.post("/jobs/convert", json=spec).json()["id"], "succeeded", timeout=120)
    finished = json.loads((out / "manifest.json").read_text())
    assert finished["complete"] and finished["owner"] == second["id"]
    assert finished["shards"][: len(manifest["shards"])] == manifest["shards"]  # resumed, not started over
    assert purge(client, first)["kept"] == [
        {"path": str(out), "reason": f"its manifest names job {second['id']} as its owner, not job {first}"}
    ]
    assert (out / "manifest.json").is_file()
    assert str(out) in purge(client, second["id"])["removed"] and not out.exists()


def test_purge_is_refused_while_an_unfinished_job_uses_the_dataset(tmp_path):
    with start_server(tmp_path / "data", workers=0) as server:
        client, out = server.client, server.data_dir.resolve() / "datasets" / "read"
        convert = client.post("/jobs/convert", json=tiny_spec(name="read")).json()["id"]
        worker = start_worker(server.data_dir)
        try:
            wait_for_state(client, convert, "succeeded")
        finally:
            stop_process(worker)
        before = files_of(out)

        # No worker runs now: these stay queued.
        train = client.post("/jobs/train", json={"dataset": convert, "num_iterations": 1, "device": "cpu"})
        assert train.status_code == 202, train.text
        train = train.json()["id"]
        refused = client.delete(f"/jobs/{convert}", params={"purge": "true"})
        assert refused.status_code == 409
        assert refused.json() == {"detail": f"job {train} (queued) reads {out}; not purging job {convert}'s {out}"}
        client.post(f"/jobs/{train}/cancel").raise_for_status()

        inner = client.post("/jobs/convert", json=tiny_spec(output_dir=str(out / "inner"))).json()["id"]
        refused = client.delete(f"/jobs/{convert}", params={"purge": "true"})
        assert refused.status_code == 409
        assert refused.json() == {
            "detail": f"job {inner} (queued) already writes to {out / 'inner'}, which lies "
            f"inside {out}; not purging job {convert}'s {out}"
        }
        assert client.get(f"/jobs/{convert}").json()["state"] == "succeeded" and files_of(out) == before
        client.post(f"/jobs/{inner}/cancel").raise_for_status()

        assert purge(client, convert) == {
            "id": convert,
            "removed": [str(server.data_dir.resolve() / "jobs" / convert), str(out)],
            "kept": [],
        }
        assert not out.exists() and (server.data_dir / "jobs.db").is_file()


def refuses_folders_too_long_to_record(server) -> None:
    """A folder is a key in the jobs database: past what PostgreSQL can index, a 422 at the door, not a 503 from it."""
    long = server.data_dir / "datasets" / "/".join(secrets.token_hex(100) for _ in range(15))  # 3,000+ bytes
    response = server.client.post("/jobs/convert", json=tiny_spec(output_dir=str(long)))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "output_dir"]
    assert error["msg"].endswith(f"is {len(str(long)):,} bytes long resolved; a job's folders may be at most 2,048")
    long.mkdir(parents=True)  # a folder of shards there would be read by a train job: refused the same way
    response = server.client.post("/jobs/train", json=small_train_spec(long))
    assert response.status_code == 422 and "a job's folders may be at most 2,048" in response.text
    short = server.client.post("/jobs/convert", json=tiny_spec(output_dir=str(long)[:2000]))
    assert short.status_code == 202, short.text


def test_folders_too_long_to_record_are_422(server):
    refuses_folders_too_long_to_record(server)


@pytest.mark.needs("postgresql")
def test_folders_too_long_to_record_are_422_on_postgresql(tmp_path):
    with (
        start_postgres() as url,
        start_server(tmp_path / "data", workers=0, env={"OPENSEEK_NANOCHAT_DATABASE_URL": url}) as server,
    ):
        refuses_folders_too_long_to_record(server)
