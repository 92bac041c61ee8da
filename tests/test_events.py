"""Following a job through the running service: Server-Sent Events, resuming with Last-Event-ID, the streamed log,
and clients that read slowly or not at all."""

import json
import socket
import threading
import time

import httpx
import pytest

from serverutil import (
    SHARED_DATA,
    long_conversion,
    start_server,
    stop_process,
    wait_for_state,
    wait_until,
)

TOKEN = "events-token"
GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("events") / "data", workers=1, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def long_spec(server) -> dict:
    """A conversion of a few seconds whose fraction grows with the documents written (max_docs sets the total)."""
    return long_conversion(server, max_docs=40_000)


def quick_spec(**extra) -> dict:
    return {
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}\n{answer}"}],
        "max_docs": 300,
        "chars_per_shard": 20_000,
        **extra,
    }


def read_events(client: httpx.Client, job_id: str, headers: dict | None = None, timeout: float = 60) -> list[dict]:
    """Every event of the stream as {"event", "id", "data"}, until the server closes it."""
    events, current = [], {}
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"the stream did not end within {timeout} s: {events[-3:]}"
            if not line:
                if "data" in current:
                    events.append({**current, "data": json.loads(current["data"])})
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = current[field] + "\n" + value if field == "data" and field in current else value
    return events


def whole_log(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"]


def test_events_bring_state_progress_and_log_lines_as_they_happen_and_end_with_the_job(server, long_spec):
    client = server.client
    job = client.post("/jobs/convert", json=long_spec).json()
    events = read_events(client, job["id"])

    kinds = [e["event"] for e in events]
    assert kinds[0] == "state" and kinds[-1] == "end" and kinds.count("end") == 1
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states[-1] == "succeeded" and "running" in states
    assert len(states) == len(set(states))  # a state event only when the state changes
    assert events[-1]["data"]["state"] == "succeeded" and events[-1]["data"]["result"]["docs"] == 40_000

    # progress arrived while the job ran, and moved
    running = [e["data"]["progress"] for e in events if e["event"] == "progress" and e["data"]["state"] == "running"]
    fractions = [p["fraction"] for p in running]
    assert len(set(fractions)) >= 3 and fractions == sorted(fractions), fractions
    assert [p["docs"] for p in running] == sorted(p["docs"] for p in running)

    # the log, piece by piece, is the whole log; each event's id is the log offset reached
    pieces = [e for e in events if e["event"] == "log"]
    assert "".join(p["data"]["text"] for p in pieces) == whole_log(client, job["id"])
    assert [p["data"]["offset"] for p in pieces] == [0] + [p["data"]["next_offset"] for p in pieces[:-1]]
    assert all(p["id"] == str(p["data"]["next_offset"]) for p in pieces)
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    assert len(pieces) >= 2  # lines came as they were written, not all at the end


def test_last_event_id_resumes_the_log_where_the_client_stopped(server):
    client = server.client
    job = wait_for_state(client, client.post("/jobs/convert", json=quick_spec()).json()["id"], "succeeded")
    log = whole_log(client, job["id"]).encode()
    first_line = log.index(b"\n") + 1

    resumed = read_events(client, job["id"], headers={"Last-Event-ID": str(first_line)})
    assert resumed[0]["event"] == "state" and resumed[0]["data"]["state"] == "succeeded"
    text = "".join(e["data"]["text"] for e in resumed if e["event"] == "log")
    assert text.encode() == log[first_line:]
    assert resumed[-1]["event"] == "end" and resumed[-1]["id"] == str(len(log))

    at_end = read_events(client, job["id"], headers={"Last-Event-ID": str(len(log))})
    assert [e["event"] for e in at_end] == ["state", "end"]  # nothing repeated
    garbled = client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "not-an-offset"})
    assert garbled.status_code == 400  # more in test_api_hardening.py


def test_follow_streams_the_log_of_a_running_job_until_it_finishes(server, long_spec):
    client = server.client
    job = client.post("/jobs/convert", json=long_spec).json()
    wait_for_state(client, job["id"], "running")
    arrivals = []
    with client.stream("GET", f"/jobs/{job['id']}/logs", params={"follow": "true"}, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        for chunk in response.iter_text():
            arrivals.append((time.monotonic(), chunk))
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "succeeded"  # it ended because the job did
    assert "".join(chunk for _, chunk in arrivals) == whole_log(client, job["id"])
    assert arrivals[-1][0] - arrivals[0][0] > 0.5  # streamed while the job ran, not read once at the end

    plain = client.get(f"/jobs/{job['id']}/logs", params={"offset": 10}).json()  # without follow: JSON as before
    assert plain["offset"] == 10 and plain["complete"] is True


def open_stalled_stream(server, job_id: str) -> socket.socket:
    """An event stream whose client never reads: a tiny receive buffer, so the server's sends soon block."""
    host, port = server.base_url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect((host, int(port)))
    s.sendall(
        f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return s


def test_clients_that_read_nothing_stall_neither_the_server_nor_the_worker(server, long_spec):
    client = server.client
    job = client.post("/jobs/convert", json=long_spec).json()
    wait_for_state(client, job["id"], "running")
    # A chatty job: 16 MB of log lines, far more than the socket buffers between the server and a client hold.
    with open(server.data_dir / "jobs" / job["id"] / "output.log", "a") as log:
        for i in range(16 << 10):
            log.write(f"chatty line {i:08d} " + "x" * 1000 + "\n")
    stalled = [open_stalled_stream(server, job["id"]) for _ in range(3)]
    try:
        slowest = 0.0

        def finished():
            nonlocal slowest
            started = time.monotonic()
            state = client.get(f"/jobs/{job['id']}").json()["state"]
            slowest = max(slowest, time.monotonic() - started)
            return state == "succeeded"

        wait_until(finished, timeout=60, interval=0.2, what="the job to succeed")
        assert slowest < 2.0, f"the API took {slowest:.2f} s to answer while clients stalled"

        # the stalled clients lost nothing: reading at last, one gets the whole stream, through to its end
        received = bytearray()
        stalled[0].settimeout(30)
        while data := stalled[0].recv(1 << 20):
            received += data
        assert b"event: end" in received[-100_000:]
        assert received.count(b"chatty line ") == 16 << 10
    finally:
        for s in stalled:
            s.close()


def test_events_need_the_token_and_an_existing_job(server):
    anonymous = httpx.get(f"{server.base_url}/jobs/0123456789abcdef/events", timeout=10)
    assert anonymous.status_code == 401
    assert server.client.get("/jobs/0123456789abcdef/events").status_code == 404
    assert server.client.get("/jobs/0123456789abcdef/logs", params={"follow": "true"}).status_code == 404


def test_open_streams_end_when_the_server_shuts_down(tmp_path):
    with start_server(tmp_path / "data", workers=0, token=TOKEN) as server:  # no worker: the job stays queued
        job = server.client.post("/jobs/convert", json=quick_spec()).json()
        connected, ended = threading.Semaphore(0), []

        def follow(path: str) -> None:
            with server.client.stream("GET", f"/jobs/{job['id']}/{path}", timeout=30) as response:
                assert response.status_code == 200
                connected.release()
                for _ in response.iter_bytes():
                    pass
            ended.append(path)

        readers = [threading.Thread(target=follow, args=(path,)) for path in ("events", "logs?follow=true")]
        for reader in readers:
            reader.start()
        assert connected.acquire(timeout=10) and connected.acquire(timeout=10)
        started = time.monotonic()
        stop_process(server.process)
        assert server.process.returncode == 0 and time.monotonic() - started < 8
        for reader in readers:
            reader.join(10)
        assert sorted(ended) == ["events", "logs?follow=true"]  # both closed cleanly, not cut off
        assert "ERROR" not in server.log()
