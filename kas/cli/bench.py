"""``kas bench``: measure, on this machine, whether the profile keeps the desktop responsive."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from kas.cli.app import App
from kas.cli.options import json_option, mode_option, tmux_socket_option
from kas.errors import KasError

if TYPE_CHECKING:
    from kas.cli.output import Output


@click.group()
def bench() -> None:
    """Benchmarks that show whether the resource controls work here."""


@bench.command("responsiveness", short_help="Time a foreground loop alone and against CPU-bound agents.")
@click.option("--agents", type=click.IntRange(1, 256), help="CPU-bound agents per case [default: 2 x cores].")
@click.option("--frames", type=click.IntRange(10, 100000), default=600, show_default=True,
              help="60 Hz frames per case (600 = about 10 s).")  # fmt: skip
@mode_option("Launch the agents directly or in tmux windows [default: sdk].")
@tmux_socket_option
@json_option()
@click.pass_obj
def responsiveness(
    app: App, agents: int | None, frames: int, mode: str | None, tmux_socket: str | None, as_json: bool
) -> None:
    """Frame lateness of a foreground loop alone and against N CPU-bound agents.

    The foreground does 4 ms of CPU work per 16.7 ms frame, like a light game. Cases: no load; agents
    with no controls (normal); nice/ionice only, as the spec describes; the configured profile (or
    interactive, if the config says normal); and that profile against agents whose CPU hogs escape
    into sessions of their own (setsid), which only kas's guard lowers. LATE is a frame's lateness: from
    its slot to the end of its work, wake-up delay included (what a player feels); WORK is the work
    alone. A frame is missed when its work ends after the next slot. AGENT CPU is the CPU seconds the
    agents got (and their share of what they got unthrottled); MACHINE is their share of the whole
    machine's CPU time: protecting the desktop should not starve them. The last cases add the levers
    that are in no preset: reserve_cpus (CPUs kept free of agents) and sched_policy = "idle".
    """
    from kas.bench import run_bench

    out = app.output(as_json)
    resolved = app.resolve(quiet=as_json)
    count = agents or 2 * (os.cpu_count() or 1)
    results = _interruptible(
        out,
        "every agent was stopped",
        lambda progress: run_bench(
            resolved,
            agents=count,
            frames=frames,
            mode=mode or "sdk",
            tmux_socket=tmux_socket,
            progress=progress,
            warn=out.warn,
        ),
    )
    if as_json:
        out.json(
            {
                "frames": frames,
                "agents": count,
                "mode": mode or "sdk",
                "cases": [r.to_json() for r in results],
            }
        )
        return
    normal_cpu = next((r.agent_cpu_s for r in results if r.case == "normal"), 0) or None
    rows = [
        (
            r.case,
            r.agents,
            f"{r.late_p50_ms:.2f}",
            f"{r.late_p99_ms:.2f}",
            f"{r.work_p99_ms:.2f}",
            f"{r.missed}/{r.frames}",
            _cpu(r.agent_cpu_s, normal_cpu if r.agents else None),
            f"{r.machine_share:.0%}" if r.agents else "-",
        )
        for r in results
    ]
    headers = (
        "CASE",
        "AGENTS",
        "LATE P50 ms",
        "LATE P99 ms",
        "WORK P99 ms",
        "MISSED",
        "AGENT CPU s",
        "MACHINE",
    )
    out.table(rows, headers)


T = TypeVar("T")


def _interruptible(out: Output, cleaned: str, bench: Callable[[Callable[[str], None]], T]) -> T:
    """Run a bench with progress on stderr (not with --json); SIGTERM and Ctrl-C stop it cleanly: the
    bench's own cleanup runs, kas says what it cleaned, and exits 130."""

    def progress(label: str) -> None:
        if not out.as_json:
            out.line(f"running: {label} ...", err=True)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return bench(progress)
    except KeyboardInterrupt:
        out.line(f"interrupted; {cleaned}", err=True)
        sys.exit(130)


def _cpu(seconds: float, normal: float | None) -> str:
    """CPU seconds, with the share of what the agents got under no controls."""
    return f"{seconds:.1f} ({seconds / normal:.0%})" if normal else f"{seconds:.1f}"


@bench.command("disk", short_help="Time small synced I/O alone and against agents writing large files.")
@click.option(
    "--agents", type=click.IntRange(1, 64), default=2, show_default=True, help="Writing agents per case."
)
@click.option("--samples", type=click.IntRange(10, 100000), default=100, show_default=True,
              help="Foreground writes and reads per case, one each 50 ms (100 = about 5 s).")  # fmt: skip
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    default=".",
    show_default=True,
    help="Where to write: a directory on the disk you care about (about 64 MiB, plus 256 MiB per agent).",
)
@mode_option("Launch the agents directly or in tmux windows [default: sdk].")
@tmux_socket_option
@json_option()
@click.pass_obj
def disk(
    app: App,
    agents: int,
    samples: int,
    directory: Path,
    mode: str | None,
    tmux_socket: str | None,
    as_json: bool,
) -> None:
    """Latency of a foreground's small synced I/O (a game saving, a call recording: a 4 KiB write and
    fsync, and a 4 KiB read past the page cache, every 50 ms) alone and against agents writing large
    files with O_DIRECT.

    Cases: no load; agents with no controls (normal); the configured profile (or interactive); and the
    profile with the idle I/O class. What I/O classes do depends on the disk's scheduler (kas check
    names it: bfq honours classes and levels, mq-deadline classes only, none and kyber neither). Every
    file the bench writes is removed afterwards.
    """
    from kas.diskbench import run_disk_bench

    out = app.output(as_json)
    resolved = app.resolve(quiet=as_json)
    try:
        results = _interruptible(
            out,
            "every agent was stopped and its files removed",
            lambda progress: run_disk_bench(
                resolved,
                agents=agents,
                samples=samples,
                directory=directory.resolve(),
                mode=mode or "sdk",
                tmux_socket=tmux_socket,
                progress=progress,
                warn=out.warn,
            ),
        )
    except OSError as exc:
        raise KasError(f"{directory}: cannot run the disk bench there ({exc.strerror})") from None
    if as_json:
        out.json(
            {
                "samples": samples,
                "agents": agents,
                "mode": mode or "sdk",
                "cases": [r.to_json() for r in results],
            }
        )
        return
    rows = [
        (r.case, r.agents, f"{r.write_p50_ms:.2f}", f"{r.write_p99_ms:.2f}", f"{r.read_p50_ms:.2f}",
         f"{r.read_p99_ms:.2f}", f"{r.agent_write_mb_s:.0f}" if r.agents else "-")
        for r in results
    ]  # fmt: skip
    out.table(
        rows, ("CASE", "AGENTS", "WRITE P50 ms", "WRITE P99 ms", "READ P50 ms", "READ P99 ms", "AGENT MB/s")
    )
