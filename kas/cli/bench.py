"""``kas bench``: measure, on this machine, whether the profile keeps the desktop responsive."""

from __future__ import annotations

import os
import signal
import sys

import click

from kas.cli.app import App
from kas.cli.output import echo_json, table
from kas.profiles import EXECUTION_MODES


@click.group()
def bench() -> None:
    """Benchmarks that show whether the resource controls work here."""


@bench.command("responsiveness")
@click.option("--agents", type=click.IntRange(1, 256), help="CPU-bound agents per case [default: 2 x cores].")
@click.option("--frames", type=click.IntRange(10, 100000), default=600, show_default=True,
              help="60 Hz frames per case (600 = about 10 s).")  # fmt: skip
@click.option("--mode", type=click.Choice(EXECUTION_MODES), default="sdk", show_default=True,
              help="Launch the agents directly or in tmux windows.")  # fmt: skip
@click.option("--tmux-socket", envvar="KAS_TMUX_SOCKET", help="tmux socket name (tmux -L) for --mode tmux.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def responsiveness(
    app: App, agents: int | None, frames: int, mode: str, tmux_socket: str | None, as_json: bool
) -> None:
    """Frame times of a foreground loop alone and against N CPU-bound agents.

    The foreground does 4 ms of CPU work per 16.7 ms frame, like a light game. Cases: no load; agents
    with no controls (normal); nice/ionice only, as the spec describes; and the configured profile (or
    interactive, if the config says normal). A frame is missed when its work ends after its 16.7 ms slot.
    AGENT CPU is the CPU seconds the agents got: protecting the desktop should not starve them.
    """
    from kas.bench import run_bench

    resolved = app.resolve(quiet=as_json)
    count = agents or 2 * (os.cpu_count() or 1)

    def progress(label: str) -> None:
        if not as_json:
            click.echo(f"running: {label} ...", err=True)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        results = run_bench(resolved, agents=count, frames=frames, mode=mode, tmux_socket=tmux_socket,
                            progress=progress)  # fmt: skip
    except KeyboardInterrupt:
        click.echo("interrupted; every agent was stopped", err=True)
        sys.exit(130)
    if as_json:
        echo_json({"frames": frames, "agents": count, "mode": mode, "cases": [r.to_json() for r in results]})
        return
    normal_cpu = next((r.agent_cpu_s for r in results if r.case == "normal"), 0) or None
    rows = [
        (
            r.case,
            r.agents,
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.missed}/{r.frames}",
            _cpu(r.agent_cpu_s, normal_cpu if r.agents else None),
        )
        for r in results
    ]
    click.echo(table(rows, ("CASE", "AGENTS", "P50 ms", "P99 ms", "MISSED", "AGENT CPU s")))


def _cpu(seconds: float, normal: float | None) -> str:
    """CPU seconds, with the share of what the agents got under no controls."""
    return f"{seconds:.1f} ({seconds / normal:.0%})" if normal else f"{seconds:.1f}"
