"""openseek_nanochat.client against a real server: a convert job then a train job end to end, followed and waited for;
`follow` resumes with Last-Event-ID after a dropped connection (nothing lost, nothing repeated) and gives up on a server
that is gone; failures are typed and say what; the result types mirror the API's own."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from openseek_nanochat import client as api
from openseek_nanochat.client import Client
from openseek_nanochat.convert.spec import ConvertSpec

from app.api import schemas
from app.jobs.models import JobState

from serverutil import SHARED_DATA, free_port, long_conversion, shakespeare_jsonl, start_server, wait_until

TOKEN = "client-token"
GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")
# A model small enough to train a few steps in seconds on one CPU rank.
TINY_TRAIN = {
    "depth": 2,
    "head_dim": 64,
    "max_seq_len": 128,
    "device_batch_size": 4,
    "eval_tokens": 1024,
    "warmup_steps": 1,
    "nproc_per_node": 1,
    "device": "cpu",
    "num_iterations": 4,
    "eval_every": 2,
    "save_every": 2,
    "tokenizer": {"vocab_size": 512, "max_chars": 200_000},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": "3"}
    with start_server(tmp_path_factory.mktemp("client") / "data", workers=1, env=env, token=TOKEN) as server:
        yield server


@pytest.fixture
def client(server):
    with Client(server.base_url, token=TOKEN) as client:
        yield client


def running_with_shards(client: Client, job_id: str, shards: int) -> None:
    def written():
        job = client.status(job_id)
        assert not job.finished, job
        return job.progress is not None and (job.progress.shards or 0) >= shards

    wait_until(written, timeout=60, what=f"{shards} shards written")


def test_the_result_types_mirror_the_api():
    pairs = [
        (api.Job, schemas.JobRead),
        (api.JobList, schemas.JobList),
        (api.LogChunk, schemas.LogChunk),
        (api.Deleted, schemas.Deleted),
        (api.Kept, schemas.Kept),
        (api.Worker, schemas.WorkerRead),
        (api.Progress, schemas.Progress),
        (api.JobError, schemas.JobError),
        (api.Node, schemas.NodeRead),
    ]
    for ours, theirs in pairs:
        required = {name: field.is_required() for name, field in ours.model_fields.items()}
        assert required == {name: field.is_required() for name, field in theirs.model_fields.items()}, ours
    assert [s.value for s in api.JobState] == [s.value for s in JobState]


def test_the_client_needs_neither_the_service_nor_its_web_stack():
    probe = "import sys, openseek_nanochat.client; print(sorted({'app', 'fastapi', 'sqlalchemy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_convert_then_train_end_to_end(server, client):
    # convert: the library's own spec object, followed event by event
    corpus = shakespeare_jsonl(server.data_dir.parent / "shakespeare.jsonl", copies=6)
    spec = ConvertSpec(
        name="plays",
        sources=[{"type": "files", "paths": [str(corpus)]}],
        chars_per_shard=300_000,
        row_group_size=128,
        val_docs=600,
    )
    job = client.submit("convert", spec, idempotency_key="plays-1")
    assert job.kind == "convert" and job.state in (api.JobState.queued, api.JobState.running)
    assert client.submit("convert", spec, idempotency_key="plays-1").id == job.id  # a retried submit

    followed = list(client.follow(job.id))
    assert followed[0].type == "state" and followed[-1].type == "end" and all(e.type != "end" for e in followed[:-1])
    assert [e.job.state for e in followed if e.type == "state"][-1] == "succeeded"
    fractions = [e.job.progress.fraction for e in followed if e.job and e.job.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "".join(e.text for e in followed if e.type == "log") == client.log_text(job.id)
    done = followed[-1].job
    assert done.state == "succeeded" and done.error is None and isinstance(done.finished_at, type(done.created_at))
    manifest = client.manifest(job.id)
    assert manifest["output_dir"] == done.result["output_dir"] == str(server.data_dir.resolve() / "datasets" / "plays")
    assert len(manifest["shards"]) == done.result["shards"] >= 2
    assert job.id in [j.id for j in client.list(kind="convert", state="succeeded").jobs]

    # train on it, waited for
    train = client.submit("train", {**TINY_TRAIN, "dataset": job.id})
    trained = client.wait(train.id, timeout=240)
    assert trained.state == "succeeded", trained.error
    assert trained.result["world_size"] == 1 and trained.result["step"] == 4
    assert [m["step"] for m in client.metrics(train.id)] == [0, 1, 2, 3, 4]
    assert {"model_000004.pt", "meta_000004.json"} <= set(os.listdir(trained.result["checkpoint_dir"]))
    assert trained.progress.model_extra["step"] == 4  # a train job's own progress fields come through

    # and away: the run dir goes with the job, the dataset stays (the convert job owns it)
    deleted = client.delete(train.id, purge=True)
    assert trained.result["run_dir"] in deleted.removed and not os.path.exists(trained.result["run_dir"])
    with pytest.raises(api.NotFound, match=rf"^no job with id '{train.id}' \(HTTP 404\)$"):
        client.status(train.id)


class CuttingProxy:
    """A TCP proxy in front of the server that cuts its first connection `cut_after` seconds in, as a network failure
    or a restarting server would, and keeps each request's bytes. `refuse_after_cut`: nothing connects again."""

    def __init__(self, port: int, cut_after: float, refuse_after_cut: bool = False):
        self.target = port
        self.cut_after, self.refuse_after_cut = cut_after, refuse_after_cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.requests.append(b"")
            index = len(self.requests) - 1
            threading.Thread(target=self._pump, args=(downstream, upstream, index), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, None), daemon=True).start()
            if index == 0:
                threading.Timer(self.cut_after, self._cut, args=(downstream, upstream)).start()

    def _pump(self, source: socket.socket, sink: socket.socket, index: int | None) -> None:
        try:
            while data := source.recv(65536):
                if index is not None:
                    self.requests[index] += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(source, sink)

    def _cut(self, *sockets: socket.socket) -> None:
        if self.refuse_after_cut:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way; close() alone would not
            except OSError:
                pass
            self.listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_follow_resumes_with_last_event_id_after_a_dropped_connection(server, client):
    job = client.submit("convert", long_conversion(server))
    running_with_shards(client, job.id, 1)
    proxy = CuttingProxy(int(server.base_url.rsplit(":", 1)[1]), cut_after=0.5)
    followed, retries = [], []
    with Client(f"http://127.0.0.1:{proxy.port}", token=TOKEN) as through_proxy:
        for event in through_proxy.follow(job.id, on_retry=lambda reason, pause: retries.append(len(followed))):
            followed.append(event)

    assert len(retries) == 1 and len(proxy.requests) == 2  # one drop, one reconnection
    assert followed[-1].type == "end" and followed[-1].job.state == "succeeded"  # it was cut while the job ran
    before, after = followed[: retries[0]], followed[retries[0] :]
    last_seen = before[-1].id
    assert last_seen > 0 and after[0].type == "state"  # the state again, then the log from where it stopped
    assert f"\r\nlast-event-id: {last_seen}\r\n".encode() in proxy.requests[1].lower()
    assert b"last-event-id" not in proxy.requests[0].lower()
    # nothing lost, nothing repeated
    assert "".join(e.text for e in followed if e.type == "log") == client.log_text(job.id)


def test_follow_gives_up_on_a_server_that_is_gone(server, client):
    job = client.submit("convert", long_conversion(server))
    running_with_shards(client, job.id, 1)
    proxy = CuttingProxy(int(server.base_url.rsplit(":", 1)[1]), cut_after=0.5, refuse_after_cut=True)
    pauses = []
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{proxy.port}", token=TOKEN, give_up_after=2) as through_proxy:
        with pytest.raises(
            api.Unreachable,
            match=rf"^cannot reach the server at http://127\.0\.0\.1:{proxy.port}: "
            "connection refused$",
        ):
            for _ in through_proxy.follow(job.id, on_retry=lambda reason, pause: pauses.append(pause)):
                pass
    assert 2 <= time.monotonic() - started < 6
    assert pauses[:2] == [0.5, 1.0]  # growing pauses, the last one cut to the time left
    assert client.wait(job.id).state == "succeeded"  # the server was there all along


def test_failures_are_typed_and_say_what(server, client):
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead) as nowhere:
        with pytest.raises(api.Unreachable, match=rf"^cannot reach the server at {dead}: connection refused$"):
            nowhere.list()
        retries = []
        started = time.monotonic()
        with pytest.raises(api.Unreachable):  # never reached: no outage to wait out
            next(nowhere.follow("0123456789abcdef", on_retry=lambda *a: retries.append(a)))
        assert retries == [] and time.monotonic() - started < 5
        assert nowhere.health() is False

    with Client(server.base_url, token="wrong") as wrong:
        with pytest.raises(api.Unauthorized) as error:
            wrong.list()
        assert error.value.status == 401 and str(error.value) == (
            "missing or wrong API token: send 'Authorization: Bearer <token>' with the server's "
            "OPENSEEK_NANOCHAT_API_TOKEN (HTTP 401)"
        )
        with pytest.raises(api.Unauthorized):
            next(wrong.follow("0123456789abcdef"))
        assert wrong.health() is True  # /healthz needs no token

    with pytest.raises(api.NotFound, match=r"^no job with id '0123456789abcdef' \(HTTP 404\)$"):
        client.status("0123456789abcdef")
    with pytest.raises(api.NotFound, match=r"^the server has no job kind 'compile' \(HTTP 404\)$"):
        client.submit("compile", {})
    with pytest.raises(api.Invalid) as error:
        client.submit("convert", {"sources": [{"type": "files", "paths": [GSM8K]}], "chars_per_shard": -1})
    assert error.value.errors == [api.FieldError("chars_per_shard", "Input should be greater than 0")]
    job = client.wait(
        client.submit(
            "convert", {"sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}"}], "max_docs": 50}
        ).id
    )
    with pytest.raises(api.Conflict, match=rf"^job {job.id} has already succeeded; there is nothing to cancel"):
        client.cancel(job.id)
