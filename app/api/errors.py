"""How errors become responses: a 4xx that says what is wrong and where, in FastAPI's usual shapes.

404/409 carry `{"detail": "message"}`; bad input carries `{"detail": [{"type", "loc", "msg"}]}` like any validation
error, with `loc` pointing into the request body when the error names a field.
"""

import math
import re
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError

from app.jobs.service import Rejected
from app.jobs.store import Conflict, NotFound

_FIELD_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*$")
_FIELD_PART = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


def where_to_loc(where: str | None) -> list[str | int] | None:
    """'sources[0].paths[1]' -> ['body', 'sources', 0, 'paths', 1]; None when `where` is not a field path."""
    if not where or not _FIELD_PATH.match(where):
        return None
    return ["body"] + [name if name else int(index) for name, index in _FIELD_PART.findall(where)]


def spec_error(error: Exception) -> RequestValidationError:
    """A submit-time check that failed, as a 422 like pydantic's own."""
    if isinstance(error, InputError):
        kind, message, where = "input_error", error.message, error.where
    elif isinstance(error, PathPolicyError):
        kind, message, where = "path_policy", str(error), error.where
    else:
        kind, message, where = "invalid_spec", str(error) or type(error).__name__, None
    loc = where_to_loc(where)
    if loc is None:
        loc = ["body"]
        message = f"{where}: {message}" if where else message
    return RequestValidationError([{"type": kind, "loc": loc, "msg": message}])


# How deep an echoed input is shown; deeper parts become "...". The echo only helps to find the field.
_ECHO_DEPTH = 32


def _jsonable(value, depth: int = 0):
    """`value` in a form JSON can carry, whatever the client sent: pydantic echoes the bad input in each error, and
    that may be infinity or NaN, an integer too long to print, bytes that are not UTF-8 or something nested deeper
    than the encoder recurses."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        limit = sys.get_int_max_str_digits()
        digits = int(value.bit_length() * math.log10(2)) + 1
        return value if not limit or digits < limit else f"<an integer of about {digits} digits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if depth >= _ECHO_DEPTH and isinstance(value, (dict, list, tuple)):
        return "..."
    if isinstance(value, dict):
        return {str(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value]
    return str(value)


def unprocessable(error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with every echoed input made encodable (its own handler answers 500 for `"seed": 1e400`)."""
    return JSONResponse({"detail": _jsonable(list(error.errors()))}, status_code=422)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        for item in error.errors():
            if item.get("type") == "json_invalid":  # say what pydantic's "JSON decode error" means, and where
                position = item["loc"][-1] if len(item.get("loc", ())) > 1 else "?"
                reason = (item.get("ctx") or {}).get("error", "")
                item["msg"] = f"malformed JSON at character {position}: {reason}".rstrip(": ")
        return unprocessable(error)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        return unprocessable(spec_error(error.error))

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_request: Request, error: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(OperationalError)
    async def database_unavailable(_request: Request, error: OperationalError) -> JSONResponse:
        # Locked past the busy timeout, or the database server is down: the request may well succeed later.
        return JSONResponse(
            {"detail": f"the database is unavailable: {error.orig}"}, status_code=503, headers={"Retry-After": "5"}
        )
