"""The ``kas serve`` application: the routes behind the token guard, and the server that runs them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kas.config import Config


def build(token: str, hosts: Iterable[str], config: Callable[[], Config], cwd: Path, port: int = 0) -> Any:
    """The ASGI app: every route behind ``auth.Guard``; ``config`` gives the config that ``profile apply``
    resolves in (the directory kas serve runs in, as ``kas profile apply`` would)."""
    from starlette.applications import Starlette

    from kas.server.api import routes
    from kas.server.auth import Guard

    app = Starlette(routes=routes())
    app.state.config = config
    app.state.cwd = str(cwd)
    app.state.changed = asyncio.Event()  # set by the API when it changed something: events go out at once
    app.state.exiting = lambda: False  # replaced by serve(): event streams end when the server does
    return Guard(app, token, hosts, port)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Run until SIGTERM or SIGINT (uvicorn ends open streams and returns)."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    inner = getattr(app, "app", None)
    if inner is not None:  # open event streams see the shutdown and end, so it is prompt and quiet
        inner.state.exiting = lambda: server.should_exit
    server.run(sockets=[sock])


UNIT = """[Unit]
Description=kas: the local API and admin page for coding agents at reduced priority

[Service]
{environment}ExecStart={command}
Restart=on-failure

[Install]
WantedBy=default.target
"""
