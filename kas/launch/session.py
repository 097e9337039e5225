"""After-launch steps shared by both modes: the autogroup nice that makes nice hold across sessions."""

from __future__ import annotations

from kas import platform as host
from kas.resolver import ResolvedProfile


def apply_autogroup(resolved: ResolvedProfile, pid: int) -> str | None:
    """Lower the agent session's autogroup nice to the profile's nice; return a warning text on failure.

    With autogroup scheduling the kernel first splits CPU between sessions, so a niced agent in its own
    session would still get a full session's share against the desktop. Raising the group's nice fixes that.
    """
    if not (resolved.active and resolved["autogroup"] and resolved["nice"] > 0):
        return None
    if not host.system().startswith("linux") or not host.autogroup_enabled():
        return None
    return host.set_autogroup_nice(pid, resolved["nice"])
