"""Start one agent in either mode and record it in the registry; the code path behind ``kas spawn``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kas import platform as host
from kas.errors import LaunchError
from kas.instances import mark_running
from kas.launch import sdk, tmux
from kas.launch.prepare import Prepared, ensure_command, warn_once
from kas.launch.session import autogroup_here, lower_agent_group
from kas.registry import Instance, Registry, new_id
from kas.resolver import ResolvedProfile
from kas.statedir import log_path


@dataclass(frozen=True)
class SpawnRequest:
    """What the user asked for, independent of the profile."""

    argv: list[str]
    mode: str
    name: str
    cwd: Path
    detach: bool = False
    tmux_socket: str | None = None
    tmux_session: str = "kas"


@dataclass(frozen=True)
class SpawnResult:
    row: Instance
    detached: bool
    exit_status: int | None = None


def new_instance(request: SpawnRequest, resolved: ResolvedProfile, prepared: Prepared) -> Instance:
    """The registry row for an agent, before it has a process."""
    return Instance(
        id=new_id(),
        name=request.name,
        mode=request.mode,
        status="starting",
        cwd=str(request.cwd),
        argv=list(request.argv),
        wrapped_argv=prepared.argv,
        resource_profile=resolved.name,
        settings=dict(resolved.settings),
        env=prepared.env,
        tmux_socket=request.tmux_socket if request.mode == "tmux" else None,
    )


def spawn_instance(request: SpawnRequest, resolved: ResolvedProfile, prepared: Prepared) -> SpawnResult:
    """Register and start one agent; a command that cannot start is an error before anything runs."""
    ensure_command(request.argv, request.cwd, prepared.full_env(os.environ))
    registry = Registry()
    try:
        row = registry.insert(new_instance(request, resolved, prepared))
        if request.mode == "tmux":
            start_tmux(registry, row, request, resolved, prepared, log_path(row.id))
            return SpawnResult(row, detached=True)
        if request.detach:
            return SpawnResult(start_supervised(registry, row, resolved, prepared), detached=True)
        return run_foreground(registry, row, request, resolved, prepared)
    finally:
        registry.close()


def start_tmux(
    registry: Registry,
    row: Instance,
    request: SpawnRequest,
    resolved: ResolvedProfile,
    prepared: Prepared,
    log: Path | None = None,
) -> tmux.PaneInfo:
    """Open the agent's tmux window and record its pane; a failure marks the row failed."""
    try:
        info = tmux.start(
            row.id,
            prepared.argv,
            prepared.env,
            request.cwd,
            socket=request.tmux_socket,
            session_name=request.tmux_session,
            window_name=request.name,
            log_path=log,
            prefix_len=len(prepared.prefix),
        )
    except LaunchError:
        registry.update(row.id, status="failed", ended_at=time.time())
        raise
    if info.pid:
        lower_agent_group(resolved, info.pid)
    record_start(registry, row, info.pid, tmux_target=info.pane_id, log_path=str(log) if log else None)
    return info


def record_start(registry: Registry, row: Instance, pid: int | None, **extra: Any) -> None:
    row.pid, row.status = pid, "running"
    row.pid_create_time, row.started_at = mark_running(registry, row.id, pid, **extra)
    for key, value in extra.items():
        setattr(row, key, value)


def record_exit(registry: Registry, row: Instance, status: int | None) -> None:
    row.exit_status, row.ended_at = status, time.time()
    row.status = "exited" if status is not None else "lost"
    registry.update(row.id, exit_status=status, ended_at=row.ended_at, status=row.status)


def run_foreground(
    registry: Registry, row: Instance, request: SpawnRequest, resolved: ResolvedProfile, prepared: Prepared
) -> SpawnResult:
    """Run attached to this terminal; SIGTERM and SIGHUP are forwarded to the agent's whole group.

    On a terminal kas holds, the agent gets it as its foreground group (Ctrl-C and keys go straight to
    it) and so shares this terminal's session: kas lowers that session's autogroup nice while the agent
    runs and puts it back afterwards. Otherwise the agent gets a session of its own.
    """
    terminal = sdk.foreground_terminal()
    try:
        proc = sdk.start(prepared.argv, prepared.full_env(os.environ), request.cwd, terminal=terminal)
    except LaunchError:
        registry.update(row.id, status="failed", ended_at=time.time())
        raise
    session_group = host.read_autogroup(os.getpid()) if terminal is not None else None
    lower_agent_group(resolved, proc.pid)
    record_start(registry, row, proc.pid)

    def forward(signum: int, _frame: Any) -> None:
        sdk.signal_group(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in sdk.STOP_SIGNALS}
    try:
        status = sdk.exit_code(proc.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if terminal is not None:
            sdk.reclaim_terminal(terminal)
            if session_group and session_group != host.ROOT_AUTOGROUP and autogroup_here(resolved):
                problem = host.set_autogroup_nice(os.getpid(), session_group[1])
                if problem:
                    warn_once([f"{problem} (this terminal's session stays lowered until it ends)"])
    record_exit(registry, row, status)
    return SpawnResult(row, detached=False, exit_status=status)


def start_supervised(
    registry: Registry, row: Instance, resolved: ResolvedProfile, prepared: Prepared
) -> Instance:
    """Detached sdk: a small supervisor process starts the agent, waits for it and records its exit."""
    log = log_path(row.id)
    spec = {
        "id": row.id,
        "db": str(registry.path),
        "argv": prepared.argv,
        "env": prepared.full_env(os.environ),
        "cwd": row.cwd,
        "log": str(log),
        "autogroup_nice": autogroup_here(resolved),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kas.launch.supervisor"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd="/",
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("pid "):
        proc.wait()
        message = line or proc.stderr.read().decode().strip() or "supervisor failed"
        registry.update(row.id, status="failed", ended_at=time.time(), log_path=str(log))
        raise LaunchError(message.removeprefix("error "))
    warn_once([w.removeprefix("kas: ") for w in proc.stderr.read().decode().splitlines() if w])
    found = registry.get(row.id)
    assert found is not None
    return found
