"""The FastAPI app: `create_app()` builds it from the settings (uvicorn calls it as a factory).

The API only stores specs and states and serves what workers wrote; it never runs a job. Besides answering requests it
sweeps expired leases now and then, so a job whose worker died shows it even when no other worker is there to notice.
"""

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.exc import SQLAlchemyError

import openseek_nanochat
from openseek_nanochat.settings import Settings, get_settings

from app.api import errors, origins
from app.api.deps import require_token
from app.api.limits import BodySizeLimit
from app.api.routes import dashboard, docs, events, jobs, prometheus, system
from app.jobs import queue
from app.jobs.db import make_engine

log = logging.getLogger(__name__)

DESCRIPTION = """
Turn OpenSeek's pretraining data into nanochat-ready parquet shards, and train on them.

Submit a job (`POST /jobs/convert`), poll it (`GET /jobs/{id}`), read its log (`GET /jobs/{id}/logs`) and, once it
succeeded, its manifest (`GET /jobs/{id}/manifest`). When the server has an API token, press **Authorize** and give it.
"""


async def _sweep_expired_leases(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    interval = max(1.0, settings.lease_seconds / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            if await asyncio.to_thread(queue.work_waiting, app.state.engine):
                expired = await asyncio.to_thread(queue.expire_leases, app.state.engine, settings.max_attempts)
                queue.note_expired(expired, settings)
        except SQLAlchemyError:
            log.exception("sweeping expired leases failed; trying again in %.0f s", interval)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # What exists now (modules, the app, its routes) lives as long as the process. Frozen, the garbage collector no
    # longer scans it on every full collection, a pause of tens of milliseconds for the requests in flight.
    gc.collect()
    gc.freeze()
    sweeper = asyncio.create_task(_sweep_expired_leases(app))
    try:
        yield
    finally:
        sweeper.cancel()
        app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="openseek-nanochat",
        version=openseek_nanochat.__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.sqlalchemy_url)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    origins.install(app, settings)  # outermost: a request from the wrong Host or origin goes no further
    errors.install(app)
    app.include_router(system.router)
    app.include_router(jobs.router, dependencies=[Depends(require_token)])
    app.include_router(events.router, dependencies=[Depends(require_token)])
    app.include_router(prometheus.router, dependencies=[Depends(require_token)])
    app.include_router(dashboard.router)
    docs.install(app)
    return app
