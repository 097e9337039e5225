"""After-launch steps shared by every mode: the autogroup nice that makes nice hold across sessions."""

from __future__ import annotations

from kas import platform as host
from kas.resolver import ResolvedProfile, autogroup_target


def autogroup_here(resolved: ResolvedProfile) -> int:
    """The autogroup nice to write on this machine: the profile's target where autogroup exists, else 0."""
    target = autogroup_target(resolved)
    if not target or not host.system().startswith("linux") or not host.autogroup_enabled():
        return 0
    return target


def lower_group(pid: int | None, nice: int) -> str | None:
    """Lower the agent session's autogroup nice; return a warning text on failure, never raise.

    With autogroup scheduling the kernel first splits CPU between sessions, so a niced agent in its own
    session would still get a full session's share against the desktop. Raising the group's nice fixes
    that. The write may wait its turn (one per 100 ms for a normal user), so callers that must not block
    (the wave runner's event loop) call this from a worker thread.
    """
    if not pid or not nice:
        return None
    return host.set_autogroup_nice(pid, nice)
