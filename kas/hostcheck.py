"""``kas check``'s findings, as data: what this machine does to an agent's lowered priority.

Kept out of the CLI so the verdict logic (the part users most need to trust) is testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kas import platform as host
from kas.resolver import ResolvedProfile, uses_cgroup
from kas.text import processes

if TYPE_CHECKING:
    from kas.probe import ProcFacts


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


def tool_findings(
    platform: str, which: Callable[[str], str | None], needed: tuple[str, ...] = ()
) -> list[Finding]:
    """nice, ionice and tmux on PATH; a tool the configured launcher needs (``needed``) must be there."""
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
    missing = "fail" if "tmux" in needed else "warn"
    found.append(
        Finding("tmux on PATH", "ok" if tmux else missing, tmux or "not found: needed for tmux mode")
    )
    return found


def host_findings(
    facts: HostFacts, resolved: ResolvedProfile | None, tools: list[Finding] | None = None
) -> list[Finding]:
    """Autogroup, cgroups and the I/O scheduler, then one verdict on whether the profile will hold.

    The machine's rows are shown whatever the config says; with no usable config (``resolved`` None) or a
    missing ``nice`` (a failed row in ``tools``) the verdict fails and says why.
    """
    found: list[Finding] = []
    if not facts.platform.startswith("linux"):
        found.append(Finding("scheduler", "info", f"{facts.platform}: nice only; no autogroup or cgroups"))
        found.append(
            Finding(
                "guard",
                "info",
                f"none on {facts.platform} (no subreaper, no /proc): a process an agent detaches or moves to "
                "a session of its own is not followed; stops reach the agent's process group",
            )
        )
        found.append(_verdict(facts, resolved, tools or []))
        return found
    found.append(
        Finding(
            "guard",
            "ok",
            "each agent runs under a guard that keeps its profile on everything it starts (new sessions "
            "lowered within 0.5 s, daemons kept in its tree and stopped with it)",
        )
    )
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
    found.append(io_finding(facts.io_scheduler))
    if resolved is not None and resolved.active:
        found += lever_findings(resolved, sorted(host.cpus()))
    found.append(_verdict(facts, resolved, tools or []))
    return found


IO_SCHEDULERS = {
    "bfq": ("ok", "bfq: honours I/O classes and best-effort levels"),
    "mq-deadline": (
        "ok",
        "mq-deadline: honours the idle and best-effort classes, not levels within best-effort "
        '(ionice_level has no effect; ionice_class = "idle" does)',
    ),
    "kyber": ("warn", "kyber: ignores I/O priority; ionice has no effect on this disk"),
    "none": ("warn", "none: ignores I/O priority; ionice has no effect on this disk"),
}


def io_finding(scheduler: str | None) -> Finding:
    """What the disk under this directory does with the I/O classes kas sets."""
    if scheduler is None:
        return Finding("I/O scheduler", "info", "unknown for this directory's filesystem")
    status, detail = IO_SCHEDULERS.get(scheduler, ("info", f"{scheduler}: not known to kas"))
    return Finding("I/O scheduler", status, detail)


def lever_findings(resolved: ResolvedProfile, available: list[int]) -> list[Finding]:
    """What ``reserve_cpus`` and ``sched_policy`` cost on this machine."""
    from kas.resolver import agent_cpus

    s = resolved.settings
    found = []
    cpus = agent_cpus(s.reserve_cpus, available)
    if cpus is None:
        found.append(Finding("agent CPUs", "info", f"all {len(available)} (reserve_cpus = {s.reserve_cpus})"))
    else:
        kept = sorted(set(available) - set(cpus))
        share = len(cpus) / len(available)
        asked = s.reserve_cpus
        capped = (
            f"; {asked} asked, but agents always keep one CPU"
            if isinstance(asked, int) and asked > len(kept)
            else ""
        )
        found.append(
            Finding(
                "agent CPUs",
                "info",
                f"{len(cpus)} of {len(available)} (reserve_cpus = {s.reserve_cpus}): agents get at most "
                f"{share:.0%} of the machine; CPU {', '.join(map(str, kept))} kept for the desktop, idle "
                f"when no game runs{capped}",
            )
        )
    if s.sched_policy == "idle":
        found.append(
            Finding(
                "sched_policy",
                "warn",
                "idle: agents run only on otherwise idle CPUs; a normal user cannot switch them back, and an "
                "agent holding a lock the desktop waits on (.git/index.lock) can be starved",
            )
        )
    elif s.sched_policy == "batch":
        found.append(
            Finding("sched_policy", "info", "batch: agents are treated as CPU-bound (fewer wake-ups)")
        )
    return found


def _verdict(facts: HostFacts, resolved: ResolvedProfile | None, tools: list[Finding]) -> Finding:
    if resolved is None:
        return Finding("verdict", "fail", "the config cannot be used; fix the error in the config row")
    missing = [t.name.split()[0] for t in tools if t.status == "fail"]
    if missing:
        return Finding("verdict", "fail", f"{', '.join(missing)} is missing; install it (see above)")
    return verdict(facts, resolved)


def verdict(facts: HostFacts, resolved: ResolvedProfile) -> Finding:
    """Will agents yield the CPU to processes of *other* sessions and apps (the desktop)?"""
    if not facts.platform.startswith("linux"):
        if resolved.active and resolved.settings.nice > 0:
            return Finding("verdict", "ok", "agents' nice ranks them below the desktop")
        return Finding("verdict", "warn", 'no nice is applied; set profile = "interactive"')
    if not resolved.active or resolved.settings.nice == 0:
        return Finding(
            "verdict",
            "warn",
            'no CPU priority is lowered; put profile = "interactive" under [resources] in '
            ".kasmos/config.toml",
        )
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
    if facts.autogroup and not resolved.settings.autogroup:
        return Finding(
            "verdict",
            "fail",
            "autogroup is on, so nice only ranks agents inside their own session and the desktop still "
            "loses frames; set autogroup = true",
        )
    return Finding("verdict", "ok", "the profile will hold against other sessions")


def process_finding(pid: int, resolved: ResolvedProfile) -> tuple[Finding, list[ProcFacts]]:
    """Compare a live process tree with what the profile promises on this machine (``check --pid``)."""
    from kas.launch.session import autogroup_here
    from kas.probe import compare, expected_facts, process_tree

    procs = process_tree(pid)
    if not procs:
        return Finding(f"pid {pid}", "fail", "no such process"), []
    expected = expected_facts(resolved, host.system(), autogroup_here(resolved))
    bad = compare(procs, expected)
    detail = "; ".join(f"pid {p.pid} ({p.name}): {', '.join(p.problems)}" for p in bad)
    summary = detail or f"{processes(len(procs))} match the {resolved.name} profile"
    return Finding(f"pid {pid}", "fail" if bad else "ok", summary), procs
