"""The step every launch (and every dry run) shares: resolved profile + argv -> exact argv and env.

Dry runs and real launches call the same function, so ``kas spawn --dry-run`` cannot drift from what runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from kas import platform as host
from kas.errors import LaunchError
from kas.resolver import ResolvedProfile, build_env, wrap_argv


class Prepared(NamedTuple):
    """What will be executed: the wrapped argv, the env it adds or forces, and the wrapper alone."""

    argv: list[str]
    env: dict[str, str]
    prefix: list[str]
    warnings: tuple[str, ...] = ()

    def full_env(self, caller_env: Mapping[str, str]) -> dict[str, str]:
        """The agent's whole environment: the caller's, plus hints for unset names and forced values."""
        return {**caller_env, **self.env}


def prepare(resolved: ResolvedProfile, argv: Sequence[str], caller_env: Mapping[str, str]) -> Prepared:
    """Wrap argv and build the env for this machine; probe systemd only when the profile may use it."""
    manager = resolved.active and resolved.settings.cgroup != "off" and host.user_manager_answers()
    wrapped = wrap_argv(resolved, argv, host.system(), host.which, user_manager=manager)
    return Prepared(wrapped.argv, build_env(resolved, caller_env), wrapped.prefix, wrapped.warnings)


def ensure_command(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
    """Fail before launch when the command cannot run: behind nice it would only show up as exit 127."""
    if not argv:
        raise LaunchError("no command given")
    name = argv[0]
    if "/" in name:
        target = cwd / name
        if target.is_dir():
            raise LaunchError(f"cannot run {name}: it is a directory")
        if not target.is_file():
            raise LaunchError(f"command not found: {name} (in {cwd})")
        if not os.access(target, os.X_OK):
            raise LaunchError(f"permission denied: {name} is not executable")
    elif host.which_on(name, env.get("PATH", os.defpath)) is None:
        raise LaunchError(f"command not found: {name} (not on PATH)")
