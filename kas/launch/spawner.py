"""Start one agent and record it in the registry: the code path behind ``kas spawn``, for every mode."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kas import platform as host
from kas.launch.base import Launcher, LaunchSpec
from kas.launch.modes import launcher_for
from kas.launch.prepare import Prepared, ensure_command
from kas.launch.session import autogroup_here, lower_group
from kas.launch.tree import guard_rules
from kas.logwriter import check_limit
from kas.registry import Instance, Registry, new_id
from kas.resolver import ResolvedProfile
from kas.statedir import log_path
from kas.status import STARTING


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


@dataclass
class SpawnResult:
    row: Instance
    detached: bool
    exit_status: int | None = None
    warnings: list[str] = field(default_factory=list)


def new_instance(
    request: SpawnRequest, resolved: ResolvedProfile, prepared: Prepared, launcher: Launcher
) -> Instance:
    """The registry row for an agent, before it has a process."""
    row = Instance(
        id=new_id(),
        name=request.name,
        mode=request.mode,
        status=STARTING,
        cwd=str(request.cwd),
        argv=list(request.argv),
        wrapped_argv=prepared.argv,
        resource_profile=resolved.name,
        settings=resolved.settings.to_dict(),
        env=prepared.env,
    )
    for column, value in launcher.row_fields().items():
        setattr(row, column, value)
    return row


def spawn_instance(
    request: SpawnRequest,
    resolved: ResolvedProfile,
    prepared: Prepared,
    caller_env: Mapping[str, str] | None = None,
) -> SpawnResult:
    """Register and start one agent; a command that cannot start is an error before anything runs.

    The agent runs in the foreground (waited for here) unless asked to detach or its mode always does
    (a tmux window outlives this process by nature).
    """
    env = prepared.full_env(os.environ if caller_env is None else caller_env)
    ensure_command(request.argv, request.cwd, env)
    check_limit()
    launcher = launcher_for(request.mode, tmux_socket=request.tmux_socket, tmux_session=request.tmux_session)
    registry = Registry()
    try:
        row = registry.insert(new_instance(request, resolved, prepared, launcher))
        foreground = not (request.detach or launcher.always_detached)
        log = None if foreground else log_path(row.id)
        nice = autogroup_here(resolved)
        rules = guard_rules(resolved, nice, host.system())
        spec = LaunchSpec(row.id, request.name, prepared, request.cwd, env, log, nice, guard=rules)
        if log is not None:
            registry.update(row.id, log_path=str(log))
        outcome = launcher.spawn(spec, registry, foreground=foreground)
        if outcome.exit_status is None:
            problem = lower_group(outcome.handle.pid, spec.autogroup_nice)
            outcome.warnings += [problem] if problem else []
        found = registry.get(row.id)
        assert found is not None
        return SpawnResult(found, outcome.exit_status is None, outcome.exit_status, outcome.warnings)
    finally:
        registry.close()
