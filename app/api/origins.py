"""What keeps web pages out: a Host check against DNS rebinding, an Origin check against cross-site writes.

- Host: a page on `evil.example`, rebound to 127.0.0.1, reaches a server on the user's machine with
  `Host: evil.example`. On a loopback bind (the default) only loopback names are answered (`localhost`, `127.0.0.1`,
  `[::1]`, any port) plus `OPENSEEK_NANOCHAT_ALLOWED_HOSTS`; any other Host is a 400. A server bound elsewhere
  (`serve --host 0.0.0.0`) answers to any Host unless ALLOWED_HOSTS names them, and warns when it has no token either.
- Origin: with no API token, a request that changes state (POST, PUT, PATCH, DELETE) from a page of another origin
  is a 403. Browsers send `Origin` with every such request; clients that send none (curl, scripts) pass, and the
  dashboard's own requests are same-origin. With a token, the token is the check: a page cannot know it.

Starlette's TrustedHostMiddleware makes the same Host check but answers a bare "Invalid host header"; these answers
say what to set, in the API's `{"detail": ...}` shape.
"""

import ipaddress
import json
import logging
import re
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from openseek_nanochat.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CHANGES_STATE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# A Host header: a name or an IPv4 address, or an IPv6 address in brackets; then maybe a port. Nothing else (no
# userinfo, no path), so what is checked is what the client connected to.
_HOST = re.compile(r"(?:(?P<name>[A-Za-z0-9._-]+)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> list[str] | None:
    """The Host names (lower case, IPv6 without brackets) the API answers to; None: any."""
    extra = []
    for entry in (settings.allowed_hosts or "").split(","):
        if entry.strip():
            parsed = _parse_host(entry.strip())  # a port given with a name is dropped: any port is accepted
            extra.append(parsed[0] if parsed else entry.strip().lower().strip("[]"))
    if "*" in extra or (not extra and not is_loopback(settings.bind_host)):
        return None
    return list(dict.fromkeys([*LOOPBACK_HOSTS, *extra]))


def _parse_host(value: str | None) -> tuple[str, int | None] | None:
    """`Host` as (name in lower case, port or None); None when it is not a plain host[:port]."""
    match = _HOST.fullmatch(value or "")
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    return (match["name"] or match["ipv6"]).lower(), port


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme, name, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if not name or scheme not in DEFAULT_PORTS:
        return None
    return scheme, name, port or DEFAULT_PORTS[scheme]


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in patterns)


class HostAndOriginCheck:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None, check_origin: bool):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.check_origin = check_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        raw_host = hosts[0].decode("latin-1") if hosts else ""
        host = _parse_host(raw_host) if len(hosts) == 1 else None  # two Host headers: which one counts is unclear
        if self.allowed_hosts is not None and (host is None or not _matches(host[0], self.allowed_hosts)):
            shown = ", ".join(f"[{h}]" if ":" in h else h for h in self.allowed_hosts)
            await _answer(
                send,
                400,
                f"Host {raw_host[:200]!r} is not served here: this server answers to {shown} "
                "(any port); add names with OPENSEEK_NANOCHAT_ALLOWED_HOSTS",
            )
            return
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if self.check_origin and origin is not None and scope["method"] in CHANGES_STATE:
            scheme = scope.get("scheme", "http")
            own = (scheme, host[0], host[1] or DEFAULT_PORTS.get(scheme)) if host else None
            claimed = origin.decode("latin-1")
            if own is None or _origin_of(claimed) != own:
                await _answer(
                    send,
                    403,
                    f"{scope['method']} from another origin ({claimed[:200]!r}) is refused: "
                    "with no OPENSEEK_NANOCHAT_API_TOKEN, only pages of this server and clients that send "
                    "no Origin (curl, scripts) may change jobs",
                )
                return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, settings: Settings) -> None:
    hosts = allowed_hosts(settings)
    app.add_middleware(HostAndOriginCheck, allowed_hosts=hosts, check_origin=not settings.api_token)
    if hosts is None and not settings.api_token:
        log.warning(
            "listening on %s with no API token and any Host name accepted: any web page a browser on this network "
            "opens can reach the API (DNS rebinding). Set OPENSEEK_NANOCHAT_API_TOKEN, or name this server's host "
            "names in OPENSEEK_NANOCHAT_ALLOWED_HOSTS",
            settings.bind_host,
        )
