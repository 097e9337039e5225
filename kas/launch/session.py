"""After-launch steps shared by both modes: the autogroup nice that makes nice hold across sessions."""

from __future__ import annotations

from kas import platform as host
from kas.launch.prepare import warn_once
from kas.resolver import ResolvedProfile


def autogroup_target(resolved: ResolvedProfile) -> int:
    """The autogroup nice the profile asks for (0 = leave the session group alone)."""
    if not (resolved.active and resolved["autogroup"]):
        return 0
    return resolved["autogroup_nice"] or resolved["nice"]


def autogroup_here(resolved: ResolvedProfile) -> int:
    """The autogroup nice to write on this machine: the profile's target where autogroup exists, else 0."""
    target = autogroup_target(resolved)
    if not target or not host.system().startswith("linux") or not host.autogroup_enabled():
        return 0
    return target


def apply_autogroup(resolved: ResolvedProfile, pid: int) -> str | None:
    """Lower the agent session's autogroup nice; return a warning text on failure, never raise.

    With autogroup scheduling the kernel first splits CPU between sessions, so a niced agent in its own
    session would still get a full session's share against the desktop. Raising the group's nice fixes that.
    """
    target = autogroup_here(resolved)
    return host.set_autogroup_nice(pid, target) if target else None


def lower_agent_group(resolved: ResolvedProfile, pid: int) -> None:
    """``apply_autogroup`` for launch paths: a failure is one warning and the agent runs on."""
    problem = apply_autogroup(resolved, pid)
    if problem:
        warn_once([problem])
