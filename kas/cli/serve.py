"""``kas serve``: the local API (with ``resource_profile`` per instance) and the admin page."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import sys

import click

from kas.cli.app import App
from kas.errors import KasError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes your agents.")  # fmt: skip
@click.option(
    "--port", type=click.IntRange(0, 65535), default=7433, show_default=True, help="0 picks a free port."
)
@click.option("--allow-host", "allowed", multiple=True, metavar="NAME",
              help="Another name this server may be reached by (its Host header); repeatable.")  # fmt: skip
@click.option("--print-token", is_flag=True, help="Print the token API clients send, and exit.")
@click.option(
    "--print-systemd-unit", is_flag=True, help="Print a systemd user unit for this server, and exit."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the admin page in a browser.")
@click.pass_obj
def serve(
    app: App, host: str, port: int, allowed: tuple[str, ...], print_token: bool, print_systemd_unit: bool,
    open_browser: bool,
) -> None:  # fmt: skip
    """Serve the API under /api/v1 (OpenAPI schema at /openapi.json) and the admin page at /admin/.

    Every request needs your token: API clients send `Authorization: Bearer TOKEN` (`kas serve
    --print-token`); a browser opens the login URL kas prints on a terminal, which swaps the token for
    an HttpOnly cookie. Requests must name this server's address, localhost or an --allow-host name
    (DNS rebinding); state-changing ones must come from the same origin. Stop it with Ctrl-C or SIGTERM.
    Run it as a service: `kas serve --print-systemd-unit > ~/.config/systemd/user/kas.service`, then
    `systemctl --user enable --now kas`.
    """
    from pathlib import Path

    from kas.server.auth import load_token

    out = app.out
    if print_systemd_unit:
        import os
        import shlex

        from kas.server.app import UNIT

        program = [shutil.which("kas") or sys.executable, *([] if shutil.which("kas") else ["-m", "kas"])]
        argv = [*program, "serve", "--host", host, "--port", str(port or 7433)]
        argv += [a for name in allowed for a in ("--allow-host", name)]
        # The service must find the same state (token, registry) as the shell that wrote the unit.
        kept = [v for v in ("KAS_STATE_DIR", "XDG_STATE_HOME", "KASMOS_CONFIG") if os.environ.get(v)]
        environment = "".join(f'Environment="{v}={os.environ[v]}"\n' for v in kept)
        unit = UNIT.format(environment=environment, command=shlex.join(argv))
        out.line(unit.rstrip("\n"))
        return
    token = load_token()
    if print_token:
        out.line(token)
        return
    if not _loopback(host):
        out.warn(
            f"listening on {host}: anyone who can reach it and has the token controls your agents; "
            "clients must name this machine as it is in --allow-host"
        )
    try:
        import uvicorn  # noqa: F401
        from starlette.applications import Starlette  # noqa: F401
    except ImportError:
        raise KasError("kas serve needs starlette and uvicorn: pip install 'kas-agents[serve]'") from None
    from kas.server.app import bind, build
    from kas.server.app import serve as run

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise KasError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    base = f"http://{shown}:{bound}"
    out.line(f"kas serve: listening on {base} (admin page {base}/admin/)", err=True)
    if sys.stdout.isatty():  # never into a service's journal
        out.line(f"login: {base}/admin/?token={token}")
    if open_browser:
        import webbrowser

        webbrowser.open(f"{base}/admin/?token={token}")
    names = {host.strip("[]"), shown, *allowed}
    # uvicorn shuts down cleanly, then passes the signal on: a stop, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        run(build(token, names, lambda: app.config, Path.cwd(), bound), sock)
    out.line("kas serve: stopped", err=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
