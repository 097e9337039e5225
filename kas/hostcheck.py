"""``kas check``'s findings, as data: what this machine does to an agent's lowered priority.

Kept out of the CLI so the verdict logic (the part users most need to trust) is testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kas import platform as host
from kas.resolver import ResolvedProfile, uses_cgroup


@dataclass(frozen=True)
class Finding:
    """One row of ``kas check``: ok, warn, fail or info, and why."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostFacts:
    """The machine facts the verdict depends on, gathered once so the verdict itself is pure."""

    platform: str
    autogroup: bool | None
    cgroup_version: int | None
    own_cgroup: str | None
    user_manager: bool
    io_scheduler: str | None

    @classmethod
    def gather(cls, here: Path, probe_manager: bool = True) -> HostFacts:
        import os

        return cls(
            host.system(),
            host.autogroup_enabled(),
            host.cgroup_version(),
            host.read_cgroup(os.getpid()),
            host.user_manager_answers() if probe_manager else False,
            host.io_scheduler(here),
        )


def tool_findings(platform: str, which: Callable[[str], str | None], mode: str) -> list[Finding]:
    """nice, ionice and tmux on PATH."""
    found = []
    nice = which("nice")
    found.append(Finding("nice on PATH", "ok" if nice else "fail", nice or "not found: install coreutils"))
    if platform.startswith("linux"):
        ionice = which("ionice")
        found.append(
            Finding("ionice on PATH", "ok" if ionice else "warn", ionice or "not found: install util-linux")
        )
    else:
        found.append(Finding("ionice on PATH", "info", f"not used on {platform}"))
    tmux = which("tmux")
    missing = "fail" if mode == "tmux" else "warn"
    found.append(
        Finding("tmux on PATH", "ok" if tmux else missing, tmux or "not found: needed for tmux mode")
    )
    return found


def host_findings(facts: HostFacts, resolved: ResolvedProfile) -> list[Finding]:
    """Autogroup, cgroups and the I/O scheduler, then one verdict on whether the profile will hold."""
    found: list[Finding] = []
    if not facts.platform.startswith("linux"):
        found.append(Finding("scheduler", "info", f"{facts.platform}: nice only; no autogroup or cgroups"))
        verdict_ok = resolved.active and resolved["nice"] > 0
        found.append(
            Finding(
                "verdict",
                "ok" if verdict_ok else "warn",
                "agents' nice ranks them below the desktop"
                if verdict_ok
                else 'no nice is applied; set profile = "interactive"',
            )
        )
        return found
    if facts.autogroup is None:
        found.append(Finding("autogroup", "info", "not in this kernel"))
    else:
        found.append(
            Finding(
                "autogroup",
                "info",
                "on: CPU is shared per session first, so nice alone ranks only inside a session"
                if facts.autogroup
                else "off: nice ranks agents against every process",
            )
        )
    manager = "a systemd user manager answers" if facts.user_manager else "no systemd user manager answers"
    found.append(
        Finding("cgroup", "info", f"v{facts.cgroup_version}, {manager}" if facts.cgroup_version else "none")
    )
    sched = facts.io_scheduler
    if sched is None:
        found.append(Finding("I/O scheduler", "info", "unknown for this directory's filesystem"))
    elif sched == "none":
        found.append(Finding("I/O scheduler", "warn", "none: ionice classes have no effect on this disk"))
    else:
        found.append(Finding("I/O scheduler", "ok", sched))
    found.append(verdict(facts, resolved))
    return found


def verdict(facts: HostFacts, resolved: ResolvedProfile) -> Finding:
    """Will agents yield the CPU to processes of *other* sessions and apps (the desktop)?"""
    if not resolved.active or resolved["nice"] == 0:
        return Finding("verdict", "warn", 'no CPU priority is lowered; set profile = "interactive"')
    if uses_cgroup(resolved, facts.user_manager):
        return Finding("verdict", "ok", "agents run in a low-weight systemd scope: holds against other apps")
    in_app_cgroup = facts.cgroup_version == 2 and facts.own_cgroup not in (None, "/")
    if in_app_cgroup and facts.user_manager:
        return Finding(
            "verdict",
            "fail",
            f"agents share cgroup {facts.own_cgroup} and compete with other apps by cgroup weight, which "
            'nice does not change; set cgroup = "auto"',
        )
    if facts.autogroup and not resolved["autogroup"]:
        return Finding(
            "verdict",
            "fail",
            "autogroup is on, so nice only ranks agents inside their own session and the desktop still "
            "loses frames; set autogroup = true",
        )
    return Finding("verdict", "ok", "the profile will hold against other sessions")
