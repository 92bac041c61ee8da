"""Request dependencies: the settings and database of the app, the bearer-token check, and the job id parameter."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from openseek_nanochat.settings import Settings

# The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency on its thread pool,
# a hop that costs more than the dependency itself.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobId = Annotated[str, PathParam(max_length=64, description="The job's id, as returned on submit.")]

_bearer = HTTPBearer(
    auto_error=False, description="Needed when the server has OPENSEEK_NANOCHAT_API_TOKEN set: the same token."
)


async def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = settings.api_token
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API token: send 'Authorization: Bearer <token>' "
            "with the server's OPENSEEK_NANOCHAT_API_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
