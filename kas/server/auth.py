"""Who may talk to ``kas serve``: this server stops processes and changes priorities, and instance data
holds argv and environments, which often carry secrets.

Every request, pages and API alike, needs the per-user token (``Authorization: Bearer TOKEN``, or the
cookie a browser gets in exchange for ``/admin/?token=TOKEN``). Its ``Host`` must be the bound address,
``localhost`` or a name given with ``--allow-host`` (DNS rebinding), and a request that changes state
must come from the same origin (or, from a non-browser client with the header token, from none). No
CORS. Jupyter's server checks the same things.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from kas.statedir import private_dir, state_dir

COOKIE = "kas_token"
TOKEN_FILE = "serve-token"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def token_path() -> Path:
    return private_dir(state_dir()) / TOKEN_FILE


def load_token() -> str:
    """The user's token, created once (0600, written whole) and kept for the next ``kas serve``."""
    path = token_path()
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.replace(tmp, path)
    return token


def host_name(value: str) -> str:
    """The name part of a Host header: ``127.0.0.1:7433`` -> ``127.0.0.1``, ``[::1]:7433`` -> ``[::1]``."""
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """The ASGI middleware in front of every route."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str]) -> None:
        self.app = app
        self.token = token
        self.hosts = {h.lower() for h in (*LOOPBACK, *hosts)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host).lower() not in self.hosts:
            await _json(send, 403, f"host {host!r} is not allowed (start kas serve with --allow-host NAME)")
            return
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        by_header = bool(bearer) and hmac.compare_digest(bearer, self.token)
        by_cookie = cookie is not None and hmac.compare_digest(cookie.value, self.token)
        if not (by_header or by_cookie):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            offered = (query.get("token") or [""])[0]
            if scope["path"].startswith("/admin") and offered and hmac.compare_digest(offered, self.token):
                await _login(send, scope["path"], self.token)
                return
            await _json(
                send, 401, "a token is needed: use the URL kas serve printed, or Authorization: Bearer"
            )
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is None and not by_header:
                await _json(send, 403, "a browser request that changes state must say its origin")
                return
            if origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
                await _json(send, 403, f"cross-origin request from {origin!r} refused")
                return
        await self.app(scope, receive, send)


async def _login(send: Send, path: str, token: str) -> None:
    """Swap the token in the URL for an HttpOnly, SameSite=Strict cookie and go to the clean URL, so the
    token stays out of the address bar, the history and any Referer."""
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", path.encode("latin-1")),
                (b"set-cookie", cookie.encode("latin-1")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
