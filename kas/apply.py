"""Runtime profile switching: put a resolved profile on running agents' whole trees, and record it.

The kernel decides how far a switch goes for an unprivileged user, and this module says so rather than
pretending: an autogroup's nice moves both ways, the I/O class moves within best-effort and idle, the
OOM score only up, and a process's nice only up (10 -> 0 is refused). A switch to a lighter profile
therefore restores the session groups and the I/O class and reports the nice that stays; with autogroup
scheduling that is what gives agents their full share against the desktop again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kas import platform as host
from kas.instances import refresh
from kas.launch.session import autogroup_here
from kas.launch.tree import IOCLASS, SCHED_POLICY, GuardRef, descendants, guard_rules, write_rules
from kas.registry import Instance, Registry
from kas.resolver import ResolvedProfile, agent_cpus
from kas.status import ORPHANED, PAUSED, RUNNING

NO_GUARD_NOTE = (
    "on {system} only a nice applies: there is no autogroup, I/O class, OOM score or guard to keep the "
    "profile on processes the agent starts from now"
)


@dataclass
class Applied:
    """What one switch did to one agent."""

    inst: Instance
    status: str
    previous: str
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what the kernel would not undo, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.inst.id,
            "status": self.status,
            "profile": self.inst.resource_profile,
            "previous": self.previous,
            "changed": self.changed,
            "kept": self.kept,
        }


class Targets:
    """What the profile asks of each process. The session group and I/O class are set both ways (a
    lighter profile restores them); nice and the OOM score are only ever raised."""

    def __init__(self, resolved: ResolvedProfile) -> None:
        s = resolved.settings
        self.nice = s.nice if resolved.active else 0
        active_io = resolved.active and host.system().startswith("linux") and s.ionice_class in IOCLASS
        level = s.ionice_level if s.ionice_class == "best-effort" else 0
        self.ioprio = (IOCLASS[s.ionice_class] << 13 | level) if active_io else 0
        self.autogroup = autogroup_here(resolved)
        self.oom = (s.oom_score_adj or 0) if resolved.active else 0
        linux = host.system().startswith("linux")
        everywhere = host.cpus() if linux else []
        reserved = agent_cpus(s.reserve_cpus, everywhere) if resolved.active and linux else None
        self.cpus = reserved or everywhere  # both ways: a lighter profile gives the CPUs back
        self.policy = SCHED_POLICY.get(s.sched_policy, 0) if resolved.active else 0


def tree_pids(inst: Instance) -> list[int]:
    """The agent and every process its guard holds (or, without a guard, the agent's descendants)."""
    import psutil

    if not inst.pid:
        return []
    guard = GuardRef(inst.guard_pid, inst.guard_create_time) if inst.guard_pid else None
    if guard is not None and guard.alive():
        return [inst.pid, *(p for p in descendants(guard.pid) if p != inst.pid)]
    try:
        return [inst.pid, *(p.pid for p in psutil.Process(inst.pid).children(recursive=True))]
    except psutil.Error:
        return []


def io_label(prio: int) -> str:
    """An I/O priority as ``ionice -p`` would put it: none, be/7, idle, rt/0."""
    klass, level = prio >> 13, prio & 0x1FFF
    return {0: "none", 1: f"rt/{level}", 2: f"be/{level}", 3: "idle"}.get(klass, str(prio))


def adopted(inst: Instance) -> bool:
    """An agent kas did not start (``kas instance adopt``): its guard is not its parent."""
    import psutil

    if not inst.pid or not inst.guard_pid:
        return False
    try:
        return psutil.Process(inst.pid).ppid() != inst.guard_pid
    except psutil.Error:
        return False


def put_on_tree(
    pids: list[int], targets: Targets, *, own_sessions: bool = True
) -> tuple[list[str], list[str]]:
    """Move every process (every thread) to the targets; return (what changed, what the kernel kept).

    A session's autogroup is shared by everything in it. kas created the sessions of the agents it
    started; an adopted agent may share one with your shell, so without ``own_sessions`` a session is
    moved only if its leader is in the tree, and left alone (with a note) otherwise.
    """
    from kas.launch.guard import Kernel, threads

    kernel = Kernel() if host.system().startswith("linux") else None
    changed: set[str] = set()
    kept: dict[str, str] = {}
    sessions: dict[int, int] = {}
    for pid in pids:
        for tid in threads(pid) or [pid]:
            try:
                have = os.getpriority(os.PRIO_PROCESS, tid)
                if have < targets.nice:
                    os.setpriority(os.PRIO_PROCESS, tid, targets.nice)
                    changed.add(f"nice {have} -> {targets.nice}")
                elif have > targets.nice:  # kas only lowers priority; the kernel would refuse a user anyway
                    kept["nice"] = (
                        f"nice stays {have} (kas never lowers a nice, and the kernel lets no unprivileged "
                        "process do it; with autogroup on, the session's restored share is what counts)"
                    )
            except PermissionError:
                kept["owner"] = f"pid {pid} cannot be changed: it is not yours"
                continue
            except OSError:
                continue
            if kernel is not None:
                _cpus_and_policy(tid, targets, changed, kept)
            if kernel is not None and kernel.io is not None:
                before = kernel.ioprio(tid)
                if before is not None and before != targets.ioprio:
                    if kernel.set_ioprio(tid, targets.ioprio):
                        changed.add(f"I/O {io_label(before)} -> {io_label(targets.ioprio)}")
                    else:
                        kept["io"] = "the I/O class stays (the kernel refused the change)"
        with contextlib.suppress(OSError):
            sessions.setdefault(os.getsid(pid), pid)
        if kernel is not None:
            _oom(pid, targets.oom, changed, kept)
    if targets.autogroup or host.autogroup_enabled():
        for sid, pid in sessions.items():
            if not own_sessions and sid not in pids:
                kept[f"shared {sid}"] = (
                    f"the session of pid {pid} is shared with processes outside this agent (its leader "
                    f"{sid}: your shell?), so its autogroup is left alone; nice and I/O class still apply"
                )
                continue
            group = host.read_autogroup(pid)
            if group is None or group == host.ROOT_AUTOGROUP or group[1] == targets.autogroup:
                continue
            problem = host.set_autogroup_nice(pid, targets.autogroup)
            if problem:
                kept[f"autogroup {sid}"] = problem
            else:
                changed.add(f"autogroup {group[1]} -> {targets.autogroup}")
    return sorted(changed), list(kept.values())


POLICY_NAMES = {0: "normal", 3: "batch", 5: "idle"}


def _cpus_and_policy(tid: int, targets: Targets, changed: set[str], kept: dict[str, str]) -> None:
    try:
        if targets.cpus and sorted(os.sched_getaffinity(tid)) != targets.cpus:
            os.sched_setaffinity(tid, targets.cpus)
            changed.add(f"CPUs {_span(targets.cpus)}")
    except OSError:
        pass
    try:
        have = os.sched_getscheduler(tid)
        if have != targets.policy and have in POLICY_NAMES:
            os.sched_setscheduler(tid, targets.policy, os.sched_param(0))
            changed.add(f"sched_policy {POLICY_NAMES[have]} -> {POLICY_NAMES[targets.policy]}")
    except PermissionError:
        kept["policy"] = (
            f"sched_policy stays {POLICY_NAMES[have]} (an unprivileged process cannot leave SCHED_IDLE "
            "unless RLIMIT_NICE allows its nice; it ends with the agent)"
        )
    except OSError:
        pass


def _span(cpus: list[int]) -> str:
    return (
        f"{cpus[0]}-{cpus[-1]}"
        if cpus == list(range(cpus[0], cpus[-1] + 1)) and len(cpus) > 1
        else ",".join(map(str, cpus))
    )


def _oom(pid: int, value: int, changed: set[str], kept: dict[str, str]) -> None:
    """Raise the OOM score to ``value``; a higher one stays (lowering it needs CAP_SYS_RESOURCE)."""
    path = f"/proc/{pid}/oom_score_adj"
    try:
        with open(path) as f:
            have = int(f.read())
        if have > value:
            kept["oom"] = f"oom_score_adj stays {have} (kas only raises it: lowering needs CAP_SYS_RESOURCE)"
        elif have < value:
            with open(path, "w") as f:
                f.write(str(value))
            changed.add(f"oom_score_adj {have} -> {value}")
    except (OSError, ValueError):
        pass


def apply_profile(registry: Registry, inst: Instance, resolved: ResolvedProfile) -> Applied:
    """Switch one running agent to ``resolved``: its guard first (so it keeps the new rules and does not
    put the old ones back), then every process of its tree now, then its row. Anything not running is
    left as it is and reported with its status."""
    view = refresh(registry, inst, probe_tree=False)
    previous = inst.resource_profile
    if view.status not in (RUNNING, PAUSED, ORPHANED):
        return Applied(view.inst, view.status, previous)
    targets = Targets(resolved)
    rules = guard_rules(resolved, targets.autogroup, host.system())
    guard = GuardRef(inst.guard_pid, inst.guard_create_time) if inst.guard_pid else None
    with _switching(inst.id):  # two switches at once would leave row, rules and tree disagreeing
        if rules is not None and guard is not None and guard.alive():
            write_rules(inst.id, rules)
        changed, kept = put_on_tree(tree_pids(inst), targets, own_sessions=not adopted(inst))
        return _record(registry, inst, resolved, view.status, previous, changed, kept)


@contextlib.contextmanager
def _switching(inst_id: str) -> Iterator[None]:
    """One profile switch of an agent at a time, across kas processes (an flock beside its rules)."""
    import fcntl

    from kas.launch.tree import rules_path

    fd = os.open(rules_path(inst_id).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record(
    registry: Registry,
    inst: Instance,
    resolved: ResolvedProfile,
    status: str,
    previous: str,
    changed: list[str],
    kept: list[str],
) -> Applied:
    """Write the switch into the row (profile, settings, when and from which) and report it."""
    if not host.system().startswith("linux"):
        kept.append(NO_GUARD_NOTE.format(system=host.system()))
    now = time.time()
    registry.update(
        inst.id,
        resource_profile=resolved.name,
        settings=resolved.settings.to_dict(),
        applied_at=now,
        applied_from=previous,
    )
    inst.resource_profile, inst.settings = resolved.name, resolved.settings.to_dict()
    inst.applied_at, inst.applied_from = now, previous
    return Applied(inst, status, previous, changed, kept)
