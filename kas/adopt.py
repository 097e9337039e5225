"""``kas instance adopt``: take an agent that was started without kas under its control.

The process gets a registry row, the current profile on its whole tree, and a guard from then on. kas is
not its ancestor, so the guard cannot be its subreaper: it follows the tree through /proc (every process
born to a member is a member), which catches a ``setsid`` but can miss a daemon that double-forks within
one look (0.5 s), and the agent's exit status can never be seen (its row ends as ``lost``).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from kas import lifecycle
from kas import platform as host
from kas.apply import NO_GUARD_NOTE, Targets, put_on_tree, tree_pids
from kas.errors import KasError
from kas.launch.tree import guard_rules, guarded
from kas.registry import Instance, Registry, new_id
from kas.resolver import ResolvedProfile
from kas.status import ACTIVE, STARTING

GUARD_SUFFIX = "/kas/launch/guard.py"
PF_KTHREAD = 0x00200000


def _kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            flags = int(stat.read().rsplit(b")", 1)[1].split()[6])
    except (OSError, ValueError, IndexError):
        return False
    return bool(flags & PF_KTHREAD)


LIMITS = (
    "kas is not its parent: a daemon it double-forks within one look of the guard (0.5 s) can leave its "
    "tree, and its exit status cannot be seen"
)


@dataclass
class Adopted:
    inst: Instance
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    limits: str = LIMITS


def adopt(registry: Registry, pid: int, name: str | None, resolved: ResolvedProfile) -> Adopted:
    """Register ``pid``, put ``resolved`` on its tree now, and start its guard."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            born, cmdline, owner, proc_name = (
                proc.create_time(),
                proc.cmdline(),
                proc.uids().real,
                proc.name(),
            )
    except psutil.NoSuchProcess:
        raise KasError(f"no process {pid}; see `ps` for the agent's pid") from None
    except psutil.AccessDenied:
        raise KasError(f"pid {pid} belongs to another user: kas adopts only your own processes") from None
    if owner != os.getuid() and os.geteuid() != 0:
        raise KasError(f"pid {pid} belongs to another user: kas adopts only your own processes")
    if pid == 1:
        raise KasError("pid 1 is the init process: adopt the agent, not what runs the system")
    if _kernel_thread(pid):
        raise KasError(f"pid {pid} is a kernel thread: only processes an agent runs can be adopted")
    try:
        line = [proc, *proc.parents()]
        held = next((p for p in line if any(a.endswith(GUARD_SUFFIX) for a in p.cmdline())), None)
    except psutil.Error:
        held = None
    if held is not None:
        raise KasError(
            f"pid {pid} is already guarded by kas (its guard is pid {held.pid}); see `kas instance list`"
        )
    if pid in {p.pid for p in psutil.Process().parents()} or pid == os.getpid():
        raise KasError(f"pid {pid} is this kas or one of its parents (your shell?): adopt the agent instead")
    for inst in registry.instances(include_finished=False):
        if inst.status in ACTIVE and inst.pid == pid and inst.pid_create_time == born:
            raise KasError(f"pid {pid} is already instance {inst.id}")
    try:
        cwd = proc.cwd()
    except psutil.Error:
        cwd = "?"
    row = registry.insert(
        Instance(
            id=new_id(),
            name=name or proc_name,
            mode="sdk",
            status=STARTING,
            cwd=cwd,
            argv=cmdline,
            wrapped_argv=cmdline,
            resource_profile=resolved.name,
            settings=resolved.settings.to_dict(),
            env={},  # its environment is not kas's to store: it may hold secrets
        )
    )
    targets = Targets(resolved)
    row.pid, row.pid_create_time = pid, born
    changed, kept = put_on_tree(tree_pids(row), targets, own_sessions=False)
    if not host.system().startswith("linux"):
        kept.append(NO_GUARD_NOTE.format(system=host.system()))
    guard_ref = None
    spec = guarded(row.id, guard_rules(resolved, targets.autogroup, host.system()), [], adopt=pid)
    if spec is not None:
        guard = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(spec.report_w,),
            start_new_session=True,
            cwd="/",
        )
        spec.close_parent_end()
        _, guard_ref = spec.started(guard.pid)
    lifecycle.mark_running(registry, row.id, pid, guard=guard_ref)
    found = registry.get(row.id)
    assert found is not None
    return Adopted(found, changed, kept)
