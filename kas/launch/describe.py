"""What ``kas spawn --dry-run`` reports: exactly what a launch in a given mode would execute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kas.launch.prepare import prepare
from kas.resolver import ResolvedProfile


@dataclass(frozen=True)
class DryRun:
    """What ``kas spawn --dry-run`` reports: exactly what a launch in this mode would execute."""

    mode: str
    profile: str
    argv: list[str]
    env: dict[str, str]
    forced: tuple[str, ...]
    autogroup_nice: int
    guard: Mapping[str, Any] | None
    extra: Mapping[str, str]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "profile": self.profile,
            "argv": self.argv,
            "env": self.env,
            "forced": list(self.forced),
            # Not part of the argv: written to /proc/<pid>/autogroup right after launch (0 = left alone).
            "autogroup_nice": self.autogroup_nice,
            # What the agent's guard keeps on every process of its tree (None: no guard on this system).
            "guard": dict(self.guard) if self.guard is not None else None,
            **self.extra,
        }


def describe(
    resolved: ResolvedProfile, argv: Sequence[str], mode: str, caller_env: Mapping[str, str]
) -> DryRun:
    """The dry run of a launch: the same ``prepare`` a launch uses, plus what the mode adds."""
    from kas import platform as host
    from kas.launch.modes import launcher_for
    from kas.launch.session import autogroup_here
    from kas.launch.tree import guard_rules

    prepared = prepare(resolved, argv, caller_env)
    nice = autogroup_here(resolved)
    return DryRun(
        mode=mode,
        profile=resolved.name,
        argv=prepared.argv,
        env=prepared.env,
        forced=tuple(k for k in prepared.env if k in resolved.env),
        autogroup_nice=nice,
        guard=guard_rules(resolved, nice, host.system()),
        extra=launcher_for(mode).describe(prepared),
        warnings=prepared.warnings,
    )
