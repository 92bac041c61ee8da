"""Bad input is a 4xx at submit that says what is wrong and where; auth; cancel and delete of a queued job."""

import os

import httpx
import pytest

from serverutil import SHARED_DATA, start_server

GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")


def files_source(*paths: str, **extra) -> dict:
    return {"type": "files", "paths": list(paths), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # No workers: submitted jobs stay queued.
    with start_server(tmp_path_factory.mktemp("validation") / "data", workers=0) as server:
        yield server


def detail(response: httpx.Response, status: int = 422) -> list[dict]:
    assert response.status_code == status, response.text
    return response.json()["detail"]


def test_missing_file(server):
    missing = str(server.data_dir.parent / "nope.jsonl")
    [error] = detail(server.client.post("/jobs/convert", json={"sources": [files_source(missing)]}))
    assert error["msg"] == f"no such file: {missing!r}"
    assert error["loc"][0] == "body"


def test_glob_that_matches_nothing(server):
    pattern = str(server.data_dir.parent / "*.nothing")
    [error] = detail(server.client.post("/jobs/convert", json={"sources": [files_source(pattern)]}))
    assert error["msg"] == f"no file matches {pattern!r}"


def test_input_outside_the_roots(server):
    [error] = detail(server.client.post("/jobs/convert", json={"sources": [files_source("/etc/hostname")]}))
    assert error["type"] == "path_policy"
    assert error["msg"].startswith("input path '/etc/hostname' is outside the allowed input roots")


def test_symlink_out_of_the_roots(server):
    link = server.data_dir.parent / "escape.jsonl"
    if not link.exists():
        os.symlink("/etc/hostname", link)
    [error] = detail(server.client.post("/jobs/convert", json={"sources": [files_source(str(link))]}))
    assert "is outside the allowed input roots" in error["msg"]


def test_dotdot_out_of_the_data_dir(server):
    escape = str(server.data_dir / ".." / ".." / "elsewhere")
    [error] = detail(server.client.post("/jobs/convert", json={"sources": [files_source(GSM8K)], "output_dir": escape}))
    assert error["msg"].startswith(f"output path {escape!r} is outside the data dir")


def test_unknown_field(server):
    body = {"sources": [files_source(GSM8K, text_colum="question")], "chars_per_shard": 1000}
    [error] = detail(server.client.post("/jobs/convert", json=body))
    assert error["type"] == "extra_forbidden" and error["loc"] == ["body", "sources", 0, "files", "text_colum"]


def test_empty_sources(server):
    [error] = detail(server.client.post("/jobs/convert", json={"sources": []}))
    assert error["type"] == "too_short" and error["loc"] == ["body", "sources"]


def test_missing_column(server):
    body = {"sources": [files_source(GSM8K, text_column="body")]}
    [error] = detail(server.client.post("/jobs/convert", json=body))
    assert "text_column is 'body', but the data has no such column" in error["msg"]
    assert "'question'" in error["msg"] and GSM8K in str(error)


def test_malformed_json(server):
    response = server.client.post(
        "/jobs/convert", content=b'{"sources": [}', headers={"Content-Type": "application/json"}
    )
    [error] = detail(response)
    assert error["type"] == "json_invalid" and error["msg"] == "malformed JSON at character 13: Expecting value"


def test_body_too_large(server):
    big = b'{"sources": [], "name": "' + b"x" * 2_000_000 + b'"}'
    expected = {"detail": "request body is larger than 1000000 bytes"}
    response = server.client.post("/jobs/convert", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json() == expected
    chunked = server.client.post(  # no Content-Length: counted as it arrives
        "/jobs/convert",
        content=(big[i : i + 65536] for i in range(0, len(big), 65536)),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413 and chunked.json() == expected


def test_unknown_train_field(server):
    body = {"dataset": "x", "num_iterations": 10, "tokenizer": {"vocab_size": 1024, "max_char": 10_000}}
    [error] = detail(server.client.post("/jobs/train", json=body))
    assert error["type"] == "extra_forbidden" and error["loc"] == ["body", "tokenizer", "train", "max_char"]
    [error] = detail(
        server.client.post("/jobs/train", json={"dataset": "x", "num_iterations": 10, "learning_rate": 0.1})
    )
    assert error["type"] == "extra_forbidden" and error["loc"] == ["body", "learning_rate"]


def test_unknown_job_and_bad_query(server):
    client = server.client
    assert client.get("/jobs/0123456789abcdef").json() == {"detail": "no job with id '0123456789abcdef'"}
    assert client.get("/jobs/not-an-id/logs").status_code == 404
    assert client.post("/jobs/0123456789abcdef/cancel").status_code == 404
    [error] = detail(client.get("/jobs", params={"limit": 0}))
    assert error["loc"] == ["query", "limit"]
    [error] = detail(client.get("/jobs", params={"state": "sleeping"}))
    assert error["loc"] == ["query", "state"]


def test_cancel_and_delete_a_queued_job(server):
    client = server.client
    job = client.post("/jobs/convert", json={"sources": [files_source(GSM8K, text_column="question")]}).json()
    assert job["state"] == "queued"
    assert client.delete(f"/jobs/{job['id']}").json() == {
        "detail": f"job {job['id']} is queued; only finished jobs can be deleted "
        f"(cancel it first: POST /jobs/{job['id']}/cancel)"
    }
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": f"job {job['id']} has already been cancelled; there is nothing to cancel"}
    assert client.delete(f"/jobs/{job['id']}").status_code == 200


def test_no_token_needed_when_none_is_set(server):
    assert httpx.get(f"{server.base_url}/jobs").status_code == 200


def test_token_required_when_set(tmp_path):
    with start_server(tmp_path / "data", token="s3cret") as server:
        anonymous = httpx.Client(base_url=server.base_url)
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        for method, path in [
            ("GET", "/jobs"),
            ("GET", "/workers"),
            ("POST", "/jobs/convert"),
            ("GET", "/jobs/0123456789abcdef/logs"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
                response = anonymous.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.get("/jobs").json()["detail"].startswith("missing or wrong API token")
        assert server.client.get("/jobs").status_code == 200  # the client sends the token
        assert server.client.get("/workers").json() == []
        # The docs and the schema are public, so the browser can load the page that asks for the token.
        assert anonymous.get("/docs").status_code == 200 and anonymous.get("/openapi.json").status_code == 200


def test_two_unfinished_jobs_cannot_write_one_folder(server):
    client = server.client
    spec = {"name": "shared-out", "sources": [files_source(GSM8K, text_column="question")]}
    first = client.post("/jobs/convert", json=spec).json()
    second = client.post("/jobs/convert", json={**spec, "seed": 1})
    assert second.status_code == 409
    assert second.json()["detail"] == (
        f"job {first['id']} (queued) already writes to {server.data_dir.resolve() / 'datasets' / 'shared-out'}; "
        "wait for it, cancel it, or choose another name or output_dir"
    )
    client.post(f"/jobs/{first['id']}/cancel")
    assert client.post("/jobs/convert", json={**spec, "seed": 1}).status_code == 202


def test_processes_below_one(server):
    body = {"sources": [files_source(GSM8K, text_column="question")], "processes": 0}
    [error] = detail(server.client.post("/jobs/convert", json=body))
    assert error["type"] == "greater_than_equal" and error["loc"] == ["body", "processes"]
    assert error["msg"] == "Input should be greater than or equal to 1"
