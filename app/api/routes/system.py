"""/healthz and /workers."""

from fastapi import APIRouter, Depends

from app.api.deps import EngineDep, SettingsDep, require_token
from app.api.schemas import ErrorDetail, Health, WorkerRead
from app.jobs import queue, store
from app.jobs.db import ping, read_for_async

router = APIRouter(tags=["system"])


@router.get(
    "/healthz",
    summary="Is the service up and its database reachable?",
    responses={503: {"model": ErrorDetail, "description": "The database does not answer."}},
)
async def healthz(engine: EngineDep) -> Health:
    """Needs no token, so load balancers and monitors can call it. A database that does not answer is a 503."""
    await read_for_async(engine, ping)
    return Health()


@router.get(
    "/workers",
    summary="The workers, what each runs, when each last heartbeated",
    dependencies=[Depends(require_token)],
)
async def list_workers(engine: EngineDep, settings: SettingsDep) -> list[WorkerRead]:
    workers = await read_for_async(engine, store.list_workers)
    now = await read_for_async(engine, queue.database_now)
    return [WorkerRead.of(worker, settings.lease_seconds, now) for worker in workers]
