"""A Python client for the service: the verbs of `openseek-nanochat jobs`, with typed results.

    from openseek_nanochat.client import Client

    with Client("http://127.0.0.1:8000") as client:      # token: OPENSEEK_NANOCHAT_API_TOKEN, or token=...
        job = client.submit("convert", spec)
        for event in client.follow(job.id):               # state, progress, log, end (Server-Sent Events)
            ...
        job = client.wait(job.id)                         # the finished job

Notable:
- The result types mirror the API's own (app/api/schemas.py) without importing the service, so the library installs
  and runs without it; fields a newer server adds are kept (extra="allow"), so `model_dump(mode="json")` gives back
  what the server sent. tests/test_client.py checks the mirror against the API's models.
- `follow` survives a server restart: a dropped stream is reopened with `Last-Event-ID`, after a growing pause, and
  resumes where it stopped (nothing lost, nothing repeated); it gives up after `give_up_after` seconds without a server.
  `wait` polls with the same patience. Every other call fails at once.
- Every failure is a `ClientError` whose message is one line a person can act on: an unreachable server, a 401, a 404,
  a 422 with the field at fault.
"""

from __future__ import annotations  # the method `list` would otherwise shadow the builtin in later annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import openseek_nanochat
from openseek_nanochat.jobstates import FINISHED, JobState

SERVER_ENV = "OPENSEEK_NANOCHAT_SERVER"
TOKEN_ENV = "OPENSEEK_NANOCHAT_API_TOKEN"  # the server's own setting: on its machine the client finds it as it is
DEFAULT_SERVER = "http://127.0.0.1:8000"

TIMEOUT_SECONDS = 30.0
STREAM_READ_SECONDS = 60.0  # the server pings a quiet stream every 15 s; this much silence means it is gone
RETRY_STATUSES = (502, 503, 504)  # a proxy without its server, or a database that does not answer: try again later
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 0.5, 10.0
GIVE_UP_SECONDS = 300.0


# --- what the API returns (mirrors app/api/schemas.py) -----------------------------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Shape):
    """How far a job is: convert jobs fill these; other kinds add their own fields (step, loss, ...)."""

    fraction: float | None = None
    docs: int | None = None
    chars: int | None = None
    shards: int | None = None
    rate: float | None = None
    eta_s: float | None = None
    message: str | None = None


class JobError(_Shape):
    message: str
    where: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class Node(_Shape):
    """One node of a multi-node job's latest attempt."""

    node: int
    attempt: int
    host: str
    worker_id: str
    state: str
    returncode: int | None = None
    endpoint: str | None = None


class Job(_Shape):
    id: str
    kind: str
    state: JobState
    spec: dict[str, Any]
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int
    worker_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    nnodes: int = 1
    nodes: list[Node] = []

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobList(_Shape):
    jobs: list[Job]
    total: int
    limit: int
    offset: int


class LogChunk(_Shape):
    offset: int
    next_offset: int
    size: int
    text: str
    complete: bool


class Kept(_Shape):
    path: str
    reason: str


class Deleted(_Shape):
    id: str
    removed: list[str]
    kept: list[Kept] = Field(default_factory=list)


class Worker(_Shape):
    id: str
    host: str
    pid: int
    job_id: str | None = None
    address: str | None = None
    cpus: int
    cuda: list[str]
    started_at: datetime
    heartbeat_at: datetime
    alive: bool


@dataclass(frozen=True)
class Event:
    """One event of `GET /jobs/{id}/events`.

    - `state`, `progress`: `job` as it is now (its state changed, or only its progress, result or error)
    - `log`: `text` appended to the job's log (whole lines, but for a line still being written)
    - `end`: `job` as it finished, or `deleted` when the job was deleted; nothing follows
    `id` is the byte offset of the log reached so far."""

    type: str
    id: int
    job: Job | None = None
    text: str = ""
    deleted: bool = False


# --- errors -------------------------------------------------------------------------------------------------------


class ClientError(Exception):
    """A call that did not succeed; `str()` is one line that says why."""


class Unreachable(ClientError):
    """No answer from the server: not running, a wrong address, a network failure, or a timeout."""


class ServerError(ClientError):
    """The server answered with an error status; `detail` is its message."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail


class Unauthorized(ServerError):
    """401: a missing or wrong API token."""


class NotFound(ServerError):
    """404: no such job (or no manifest yet), or an endpoint this server does not have."""


class Conflict(ServerError):
    """409: the job is not in a state that allows this, or another job writes the same folder."""


@dataclass(frozen=True)
class FieldError:
    field: str  # "sources[0].paths", or "" for the request as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Invalid(ServerError):
    """422: the request is wrong; `errors` says where and what."""

    def __init__(self, status: int, errors: list[FieldError]):
        super().__init__(status, "; ".join(map(str, errors)) or "invalid request")
        self.errors = errors


_ERRORS = {401: Unauthorized, 404: NotFound, 409: Conflict}


def _field(loc: list) -> str:
    """['body', 'sources', 0, 'paths'] -> 'sources[0].paths'; the first element says where (body, query, header)."""
    text = ""
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _error(response: httpx.Response) -> ServerError:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):  # not the API's {"detail": ...}: a proxy's page, say
        detail = " ".join(response.text.split())[:200] or response.reason_phrase
    if response.status_code == 422 and isinstance(detail, list):
        errors = [FieldError(_field(e.get("loc") or []), str(e.get("msg", ""))) for e in detail if isinstance(e, dict)]
        return Invalid(response.status_code, errors)
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return _ERRORS.get(response.status_code, ServerError)(response.status_code, detail)


Shape = TypeVar("Shape", bound=BaseModel)


def _parse(model: type[Shape], data: Any) -> Shape:
    """`data` as `model`; an answer of another shape (another service, another version) is a ClientError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ClientError(
            f"the server's answer is not a {model.__name__} as this client knows it: "
            f"{_field(['', *first['loc']]) or 'the whole'}: {first['msg']}"
        ) from None


def _reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "no answer in time"
    text = str(error).strip() or type(error).__name__
    return text.split("] ", 1)[-1].lower() if text.startswith("[Errno") else text  # "[Errno 111] Connection refused"


def _as_body(spec: Mapping[str, Any] | BaseModel) -> Any:
    if isinstance(spec, BaseModel):  # e.g. the library's own ConvertSpec or TrainSpec
        return spec.model_dump(mode="json", exclude_unset=True)
    return spec


# --- the client ---------------------------------------------------------------------------------------------------


class Client:
    """The service at `server` (default: $OPENSEEK_NANOCHAT_SERVER, else http://127.0.0.1:8000), with `token` (default:
    $OPENSEEK_NANOCHAT_API_TOKEN) sent as `Authorization: Bearer`."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout: float = TIMEOUT_SECONDS,
        give_up_after: float = GIVE_UP_SECONDS,
    ):
        server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).strip().rstrip("/")
        self.server = server if "://" in server else f"http://{server}"
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"User-Agent": f"openseek-nanochat/{openseek_nanochat.__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.give_up_after = give_up_after
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, error: httpx.TransportError) -> Unreachable:
        return Unreachable(f"cannot reach the server at {self.server}: {_reason(error)}")

    def _request(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if response.is_error:
            raise _error(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.server} answered {method} {path} with something other than JSON: is it this service?"
            ) from None

    # --- the verbs --------------------------------------------------------------------------------------------------

    def submit(self, kind: str, spec: Mapping[str, Any] | BaseModel, idempotency_key: str | None = None) -> Job:
        """Queue a `kind` job (convert, train) running `spec` (a dict, or the library's ConvertSpec/TrainSpec). With
        an idempotency key, submitting again returns the job the first submit created."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            return _parse(Job, self._request("POST", f"/jobs/{kind}", json=_as_body(spec), headers=headers))
        except ServerError as e:
            if e.status == 405 or (e.status == 404 and not isinstance(e, Invalid)):  # /jobs/{id} takes no POST
                raise NotFound(404, f"the server has no job kind {kind!r}") from None
            raise

    def list(self, kind: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
        """Jobs, newest first; `total` counts every match, over all pages."""
        params = {"kind": kind, "state": state, "limit": limit, "offset": offset}
        params = {k: v for k, v in params.items() if v is not None}
        return _parse(JobList, self._request("GET", "/jobs", params=params))

    def status(self, job_id: str) -> Job:
        return _parse(Job, self._request("GET", f"/jobs/{job_id}"))

    def logs(self, job_id: str, offset: int = 0, limit: int | None = None) -> LogChunk:
        """The log from byte `offset` (at most `limit` bytes, the server's default if None); pass `next_offset` on."""
        params = {"offset": offset} if limit is None else {"offset": offset, "limit": limit}
        return _parse(LogChunk, self._request("GET", f"/jobs/{job_id}/logs", params=params))

    def log_text(self, job_id: str, offset: int = 0) -> str:
        """The whole log as it is now, from byte `offset`."""
        pieces = []
        while True:
            chunk = self.logs(job_id, offset)
            if chunk.next_offset <= offset:
                return "".join(pieces)
            pieces.append(chunk.text)
            offset = chunk.next_offset

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one turns `cancelling` until its processes are stopped."""
        return _parse(Job, self._request("POST", f"/jobs/{job_id}/cancel"))

    def manifest(self, job_id: str) -> dict[str, Any]:
        """The manifest of a job's outputs (a convert job's shards with sha256, per-source counts, output_dir)."""
        return self._request("GET", f"/jobs/{job_id}/manifest")

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """A train job's metrics, one record per step."""
        return self._request("GET", f"/jobs/{job_id}/metrics")

    def delete(self, job_id: str, purge: bool = False) -> Deleted:
        """Delete a finished job; `purge` also removes the outputs it owns."""
        return _parse(Deleted, self._request("DELETE", f"/jobs/{job_id}", params={"purge": purge}))

    def workers(self) -> list[Worker]:
        return [_parse(Worker, w) for w in self._request("GET", "/workers")]

    def health(self) -> bool:
        """Whether the server is up and its database answers (no token needed)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    # --- following --------------------------------------------------------------------------------------------------

    def follow(self, job_id: str, on_retry: Callable[[str, float], None] | None = None) -> Iterator[Event]:
        """The job's events until it has finished: its state first, then each change and each piece of its log, then
        `end`. A dropped connection (the server restarted, the network failed) is reopened with `Last-Event-ID`
        after a pause that grows from 0.5 s to 10 s; `on_retry(reason, pause)` hears of each. After `give_up_after`
        seconds without the server, or at once if it never answered, `Unreachable`."""
        last_id = ""
        retry = _Retry(self.give_up_after)
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_SECONDS)
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(self._http, "GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as sse:
                    response = sse.response
                    retry.reached = True
                    if response.status_code in RETRY_STATUSES:
                        reason = f"HTTP {response.status_code}"
                    elif response.is_error:
                        response.read()
                        raise _error(response)
                    else:
                        for message in sse.iter_sse():
                            event = _event(message)
                            if event is None:
                                continue
                            retry.ok()
                            last_id = message.id or last_id
                            yield event
                            if event.type == "end":
                                return
                        reason = "the server closed the stream"
            except httpx.TransportError as e:
                reason = _reason(e)
            pause = retry.next(Unreachable(f"cannot reach the server at {self.server}: {reason}"))
            if on_retry:
                on_retry(reason, pause)
            time.sleep(pause)

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 1.0) -> Job:
        """Poll until the job has finished; return it. A server that goes away meanwhile is waited for as in `follow`.
        `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = _Retry(self.give_up_after)
        while True:
            try:
                job = self.status(job_id)
                retry.ok()
                if job.finished:
                    return job
                pause = interval
            except (Unreachable, ServerError) as e:
                if isinstance(e, ServerError):
                    if e.status not in RETRY_STATUSES:
                        raise
                    retry.reached = True
                pause = retry.next(e)
            if deadline is not None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)


class _Retry:
    """Pauses between attempts to reach a server again: growing, and given up after `give_up_after` seconds of
    failures. A server never reached is no outage to wait out (a wrong address, a server not started): no retry."""

    def __init__(self, give_up_after: float):
        self.give_up_after = give_up_after
        self.reached = False  # the server answered once
        self.since: float | None = None  # the first failure since the last success
        self.pause = FIRST_RETRY_SECONDS

    def ok(self) -> None:
        self.reached, self.since, self.pause = True, None, FIRST_RETRY_SECONDS

    def next(self, error: Exception) -> float:
        """The pause before the next attempt; `error` if the server was never reached or the failures have lasted
        `give_up_after` seconds."""
        now = time.monotonic()
        self.since = self.since or now
        if not self.reached or now - self.since >= self.give_up_after:
            raise error
        pause, self.pause = self.pause, min(self.pause * 2, MAX_RETRY_SECONDS)
        return min(pause, max(0.1, self.since + self.give_up_after - now))  # the last try when the time is up


def _event(message) -> Event | None:
    """An SSE message as an Event; None for a type this client does not know (a newer server's)."""
    offset = int(message.id) if message.id.isascii() and message.id.isdigit() else 0
    data = json.loads(message.data) if message.data else {}
    if message.event == "log":
        return Event("log", offset, text=data.get("text", ""))
    if message.event == "end" and data.get("deleted"):
        return Event("end", offset, deleted=True)
    if message.event in ("state", "progress", "end"):
        return Event(message.event, offset, job=_parse(Job, data))
    return None
