"""Convert jobs through the running service: submit, poll, manifest, logs, listing, idempotency, delete."""

import json

import pytest

from serverutil import SHARED_DATA, start_server, wait_for_state

GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")


def gsm8k_spec(**extra) -> dict:
    return {
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}\n{answer}"}],
        "chars_per_shard": 100_000,
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("jobs") / "data", workers=1) as server:
        yield server


def test_submit_poll_succeeded_manifest(server):
    client = server.client
    response = client.post("/jobs/convert", json=gsm8k_spec(name="gsm8k"))
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["kind"] == "convert"
    assert job["spec"]["output_dir"] == str(server.data_dir.resolve() / "datasets" / "gsm8k")

    job = wait_for_state(client, job["id"], "succeeded")
    assert job["attempts"] == 1 and job["error"] is None and job["worker_id"]
    progress = job["progress"]
    assert progress["fraction"] == 1.0 and progress["docs"] == 1319 and progress["shards"] == job["result"]["shards"]
    assert {"chars", "rate", "eta_s", "message"} <= progress.keys()
    assert job["result"]["docs"] == 1319 and job["started_at"] <= job["finished_at"]

    manifest = client.get(f"/jobs/{job['id']}/manifest").json()
    assert manifest["output_dir"] == job["spec"]["output_dir"]
    assert manifest["complete"] is True
    on_disk = json.loads((server.data_dir / "datasets" / "gsm8k" / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == [s["file"] for s in on_disk["shards"]]
    for shard in manifest["shards"]:
        assert (server.data_dir / "datasets" / "gsm8k" / shard["file"]).is_file()

    assert client.get(f"/jobs/{job['id']}/metrics").json() == []
    listed = client.get("/jobs", params={"kind": "convert", "state": "succeeded"}).json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert client.get("/jobs", params={"state": "failed"}).json()["total"] == 0


def test_logs_are_incremental(server):
    client = server.client
    job = client.post("/jobs/convert", json=gsm8k_spec(max_docs=300)).json()
    wait_for_state(client, job["id"], "succeeded")
    whole = client.get(f"/jobs/{job['id']}/logs").json()
    assert whole["complete"] and whole["next_offset"] == whole["size"] > 0
    assert "attempt 1 started" in whole["text"] and '"type": "result"' in whole["text"]

    pieces, offset = [], 0
    while True:
        chunk = client.get(f"/jobs/{job['id']}/logs", params={"offset": offset, "limit": 100}).json()
        if not chunk["text"]:
            break
        assert chunk["offset"] == offset
        pieces.append(chunk["text"])
        offset = chunk["next_offset"]
    assert "".join(pieces) == whole["text"]
    past_end = client.get(f"/jobs/{job['id']}/logs", params={"offset": 10**9}).json()
    assert past_end["text"] == "" and past_end["next_offset"] == whole["size"]


def test_idempotency_key_returns_the_same_job(server):
    client = server.client
    spec = gsm8k_spec(max_docs=100)
    first = client.post("/jobs/convert", json=spec, headers={"Idempotency-Key": "retry-1"})
    again = client.post("/jobs/convert", json=spec, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]

    other = client.post("/jobs/convert", json=gsm8k_spec(max_docs=101), headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 409
    assert other.json()["detail"] == (
        f"Idempotency-Key 'retry-1' was already used for a different request (job {first.json()['id']}); use a new key"
    )
    fresh = client.post("/jobs/convert", json=spec, headers={"Idempotency-Key": "retry-2"})
    assert fresh.json()["id"] != first.json()["id"]
    for job in (first.json(), fresh.json()):
        wait_for_state(client, job["id"], "succeeded")


def test_delete_and_purge(server):
    client = server.client
    kept = wait_for_state(client, client.post("/jobs/convert", json=gsm8k_spec(name="kept", max_docs=200)).json()["id"])
    purged = wait_for_state(
        client, client.post("/jobs/convert", json=gsm8k_spec(name="gone", max_docs=200)).json()["id"]
    )
    datasets = server.data_dir / "datasets"
    assert (datasets / "kept" / "manifest.json").is_file() and (datasets / "gone" / "manifest.json").is_file()

    deleted = client.delete(f"/jobs/{kept['id']}").json()
    assert deleted == {"id": kept["id"], "removed": [str(server.data_dir.resolve() / "jobs" / kept["id"])], "kept": []}
    assert (datasets / "kept" / "manifest.json").is_file()  # outputs stay without purge

    deleted = client.delete(f"/jobs/{purged['id']}", params={"purge": "true"}).json()
    assert str(datasets.resolve() / "gone") in deleted["removed"] and not (datasets / "gone").exists()

    for job in (kept, purged):
        assert client.get(f"/jobs/{job['id']}").status_code == 404
        assert client.delete(f"/jobs/{job['id']}").json() == {"detail": f"no job with id {job['id']!r}"}


def test_docs_are_served_without_a_cdn(server):
    page = server.client.get("/docs")
    assert page.status_code == 200
    assert "http" not in page.text.split("<body>")[0].replace(server.base_url, "")
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static/swagger-ui/{asset}" in page.text
        assert server.client.get(f"/static/swagger-ui/{asset}").status_code == 200
    schema = server.client.get("/openapi.json").json()
    body = schema["paths"]["/jobs/convert"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["jsonl"]["value"]["sources"][0]["type"] == "files"
    for kind, example in (("sample", "latest"), ("eval", "own")):
        body = schema["paths"][f"/jobs/{kind}"]["post"]["requestBody"]["content"]["application/json"]
        assert body["examples"][example]["value"]["train_job"] == "<train job id>"
    dataset = schema["paths"]["/jobs/{job_id}/dataset"]["get"]["responses"]["200"]["content"]["application/json"]
    assert dataset["example"]["sources"][0]["share_chars"] > 0


def test_samples_are_what_the_provenance_sidecars_say(server):
    import pyarrow.parquet as pq

    client = server.client
    math500 = str(SHARED_DATA / "jsonl" / "math500.jsonl")
    spec = gsm8k_spec(name="sampled", row_group_size=64)
    spec["sources"].append({"type": "files", "paths": [math500], "text_template": "{problem}\n{solution}"})
    job = wait_for_state(client, client.post("/jobs/convert", json=spec).json()["id"], "succeeded")
    out = server.data_dir / "datasets" / "sampled"
    manifest = json.loads((out / "manifest.json").read_text())
    truth = {}
    for shard in manifest["shards"]:
        texts = pq.read_table(out / shard["file"]).column("text").to_pylist()
        origin = pq.read_table(out / "provenance" / shard["file"]).to_pylist()
        for row, (text, o) in enumerate(zip(texts, origin)):
            source = manifest["sources"][o["source"]]
            locator = {"file": source["items"][o["item"]]["file"], "line": o["pos"]}
            truth[(shard["file"], row)] = (text, shard["split"], source["name"], locator)

    samples = client.get(f"/jobs/{job['id']}/samples", params={"n": 25, "seed": 3, "max_chars": 40}).json()
    assert len(samples) == 25
    for doc in samples:
        text, split, source, locator = truth[(doc["shard"], doc["row"])]
        assert doc == {
            "text": text[:40],
            "chars": len(text),
            "split": split,
            "shard": doc["shard"],
            "row": doc["row"],
            "source": source,
            "locator": locator,
        }
        line = (SHARED_DATA / "jsonl" / locator["file"].rsplit("/", 1)[-1]).read_text().split("\n")[locator["line"] - 1]
        assert json.loads(line)  # the locator names a real record line
    again = client.get(f"/jobs/{job['id']}/samples", params={"n": 25, "seed": 3, "max_chars": 40}).json()
    assert again == samples
    math = client.get(f"/jobs/{job['id']}/samples", params={"n": 100, "source": math500, "split": "val"}).json()
    assert math and {d["source"] for d in math} == {math500} and {d["split"] for d in math} == {"val"}

    response = client.get(f"/jobs/{job['id']}/samples", params={"source": "nope"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith("the dataset has no source 'nope'; its sources are")
    response = client.get(f"/jobs/{job['id']}/samples", params={"n": 101})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "n"]
    response = client.get("/jobs/0123456789abcdef0123456789abcdef/samples")
    assert response.status_code == 404

    # A conversion that failed once it had read its input: its dataset is unfinished.
    failed = client.post("/jobs/convert", json=gsm8k_spec(name="too-few", val_docs=5000)).json()
    wait_for_state(client, failed["id"], "failed")
    response = client.get(f"/jobs/{failed['id']}/samples")
    assert response.status_code == 409 and "is not finished yet (it is failed)" in response.json()["detail"]

    # Finished by earlier formats: /2 had the same sidecars; /1 had none.
    for version, status in ((2, 200), (1, 409)):
        (out / "manifest.json").write_text(json.dumps({**manifest, "format": f"openseek-nanochat.convert/{version}"}))
        response = client.get(f"/jobs/{job['id']}/samples", params={"n": 25, "seed": 3, "max_chars": 40})
        assert response.status_code == status
        assert response.json() == samples if status == 200 else "without provenance" in response.json()["detail"]
    schema = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/samples"]["get"]
    assert schema["responses"]["200"]["content"]["application/json"]["example"][0]["locator"]["line"] == 1
