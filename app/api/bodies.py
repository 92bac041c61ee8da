"""JSON request bodies where an over-long integer is a bad value of its field, not an unreadable body.

Python refuses to parse an integer of more than `sys.get_int_max_str_digits()` digits (4,300), a guard against
quadratic parsing; FastAPI then answers "There was an error parsing the body" without saying where. Read as infinity
instead, as `1e400` is, such a number fails the field it was given for with a 422 that names it.
"""

import json
import math
import sys

from fastapi import Request
from fastapi.routing import APIRoute


def _int_or_infinity(text: str) -> int | float:
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


class JSONBodyRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_int=_int_or_infinity)
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose handler reads the body as JSONBodyRequest does (FastAPI's way to change how a body is read)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def read_with_long_integers(request: Request):
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return read_with_long_integers
