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
from urllib.parse import parse_qs, quote

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


def _same(offered: str, secret: str) -> bool:
    """A constant-time comparison that any header can be put through (non-ASCII text included)."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), secret.encode())


SAFE_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


class Guard:
    """The ASGI middleware in front of every route.

    A browser that logged in holds a *session* cookie, not the token: a random id this server alone
    knows, for as long as it runs, named after its port. Browsers do not keep cookies apart by port, so
    another server on 127.0.0.1 may still be sent it; it dies with this server, and it never is the
    token. No page of this server can be framed (clickjacking).
    """

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str], port: int = 0) -> None:
        self.app = app
        self.token = token
        self.hosts = {h.lower() for h in (*LOOPBACK, *hosts)}
        self.cookie = f"{COOKIE}_{port}"
        self.sessions: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SAFE_HEADERS]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host).lower() not in self.hosts:
            await _json(
                guarded_send, 403, f"host {host!r} is not allowed (start kas serve with --allow-host NAME)"
            )
            return
        authorization = headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            cookie = SimpleCookie()
        session = cookie.get(self.cookie)
        by_header = bool(bearer) and _same(bearer, self.token)
        by_cookie = session is not None and any(_same(session.value, s) for s in self.sessions)
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = (query.get("token") or [""])[0]
        if (path == "/admin" or path.startswith("/admin/")) and offered and _same(offered, self.token):
            await self._login(guarded_send, scope)  # also with a session: the token leaves the address bar
            return
        if not (by_header or by_cookie):
            await _json(
                guarded_send, 401, "a token is needed: the URL kas serve printed, or Authorization: Bearer"
            )
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is None and not by_header:
                await _json(guarded_send, 403, "a browser request that changes state must say its origin")
                return
            if origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
                await _json(guarded_send, 403, f"cross-origin request from {origin!r} refused")
                return
        await self.app(scope, receive, guarded_send)

    async def _login(self, send: Send, scope: Scope) -> None:
        """Swap the token in the URL for a session cookie (HttpOnly, SameSite=Strict) and go to the same
        path without the query, so the token stays out of the address bar, the history and any Referer."""
        session = secrets.token_urlsafe(32)
        self.sessions.add(session)
        location = quote(scope.get("raw_path", b"").decode("latin-1") or scope["path"], safe="/%")
        cookie = f"{self.cookie}={session}; HttpOnly; SameSite=Strict; Path=/"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
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
