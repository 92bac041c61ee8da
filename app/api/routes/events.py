"""/jobs/{id}/events: a job's changes as Server-Sent Events; and the streaming form of /jobs/{id}/logs (follow).

Both poll the job's row and log (app/jobs/watch.py) for as long as the client listens and the job runs. With an API
token they need the `Authorization: Bearer` header like every endpoint, never a token in the URL, where access logs
would keep it: browsers' EventSource cannot send headers, so the dashboard reads the stream with fetch.
"""

import json
import re
import signal
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus

from openseek_nanochat.settings import Settings

from app.api.deps import EngineDep, JobId, SettingsDep
from app.api.schemas import ErrorDetail, JobRead
from app.jobs import files as jobfiles
from app.jobs import store
from app.jobs import watch as jobwatch
from app.jobs.models import FINISHED

router = APIRouter(prefix="/jobs", tags=["jobs"])

PING_SECONDS = 15  # keeps proxies from closing a quiet stream
SEND_TIMEOUT_SECONDS = 60  # a client that takes nothing for this long is dropped
RETRY_MS = 2000

EVENTS_DOC = {
    200: {
        "description": "`text/event-stream`: `state`, `progress`, `log` and `end` events.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    400: {"model": ErrorDetail, "description": "`Last-Event-ID` is not an event id of this stream."},
    404: {"model": ErrorDetail, "description": "No such job."},
}


def _job_json(job) -> str:
    return JobRead.of(job).model_dump_json()


# An event id is a byte offset of the log: ASCII digits that fit a signed 64-bit integer (`isdigit` would also take
# '²', which `int` refuses).
_EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1


def _start_offset(last_event_id: str | None, offset: int) -> int:
    """Resume after the last event the client saw; an empty id counts as none (EventSource sends none then)."""
    if not last_event_id:
        return offset
    if not _EVENT_ID.fullmatch(last_event_id) or int(last_event_id) > MAX_EVENT_ID:
        raise HTTPException(
            400, f"Last-Event-ID must be the id of an event of this stream: a byte offset, 0 to {MAX_EVENT_ID}"
        )
    return int(last_event_id)


def _server_stopping() -> bool:
    """Whether uvicorn was told to shut down. It then waits for open responses to finish, so a stream that follows a
    running job must end by itself. (uvicorn's SIGTERM handler is a method of its Server, which has `should_exit`.)"""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return AppStatus.should_exit or bool(getattr(server, "should_exit", False))


def _watch(engine: Engine, settings: Settings, job_id: str, offset: int) -> AsyncIterator[jobwatch.Update]:
    interval = jobwatch.poll_interval(settings.poll_seconds)
    folder = jobfiles.job_dir(settings, job_id)
    return jobwatch.watch(engine, job_id, folder, offset, interval, _server_stopping)


async def _job_events(engine: Engine, settings: Settings, job_id: str, offset: int) -> AsyncIterator[ServerSentEvent]:
    position = str(offset)
    last = None
    async for update in _watch(engine, settings, job_id, offset):
        if isinstance(update, jobwatch.Changed):
            last = update.job
            kind = "state" if update.state_changed else "progress"
            yield ServerSentEvent(_job_json(update.job), event=kind, id=position, retry=RETRY_MS)
        elif isinstance(update, jobwatch.Appended):
            position = str(update.end)
            data = json.dumps({"text": update.text, "offset": update.start, "next_offset": update.end})
            yield ServerSentEvent(data, event="log", id=position)
        else:
            yield ServerSentEvent(json.dumps({"id": job_id, "deleted": True}), event="end", id=position)
            return
    if last is not None and last.state in FINISHED:
        yield ServerSentEvent(_job_json(last), event="end", id=position)


@router.get(
    "/{job_id}/events", summary="Follow a job: state, progress and log as Server-Sent Events", responses=EVENTS_DOC
)
async def job_events(
    job_id: JobId,
    engine: EngineDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event: the `id` of the last event received.")
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=2**62, description="Start the log at this byte (default: its beginning).")
    ] = 0,
) -> EventSourceResponse:
    """Events, each with `id` = the byte offset of the log sent so far:

    - `state`: the job, as `GET /jobs/{id}` returns it; first on connecting, then whenever its state changes
    - `progress`: the job again, when only its progress, result or error changed
    - `log`: `{"text", "offset", "next_offset"}`, lines appended to the job's log
    - `end`: the job as it finished (`{"id", "deleted": true}` if it was deleted); the stream closes after it

    A client that reconnects with `Last-Event-ID` (EventSource does so by itself) gets the job's current state, then
    the log from where it left off: nothing lost, nothing repeated. Connecting to a finished job gives its state, its
    log and `end` at once."""
    job = store.get_job(engine, job_id)  # a 404 now, rather than a stream that says nothing
    return EventSourceResponse(
        _job_events(engine, settings, job.id, _start_offset(last_event_id, offset)),
        ping=PING_SECONDS,
        send_timeout=SEND_TIMEOUT_SECONDS,
        # On shutdown the watch ends at its next poll (see _server_stopping); meanwhile the stream is left to close.
        shutdown_grace_period=jobwatch.MAX_POLL_INTERVAL + 1,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _log_bytes(engine: Engine, settings: Settings, job_id: str, offset: int) -> AsyncIterator[bytes]:
    async for update in _watch(engine, settings, job_id, offset):
        if isinstance(update, jobwatch.Appended):
            yield update.text.encode("utf-8")


def follow_log(engine: Engine, settings: Settings, job_id: str, offset: int) -> StreamingResponse:
    """The log from `offset` as plain text, kept open until the job has finished and its log was sent."""
    return StreamingResponse(
        _log_bytes(engine, settings, job_id, offset),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
