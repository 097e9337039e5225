"""Live status of registered instances, and stopping, waiting for and forgetting them.

The registry says what kas started; the kernel and tmux say what is true now. A row whose process is gone
is settled here (exited N, or lost when nobody saw the exit), so a recycled pid never reads as running.
Every mode is reached through its launcher's handle: nothing here asks which mode an agent runs in.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from kas import lifecycle
from kas import platform as host
from kas.launch.base import Handle
from kas.launch.modes import launcher_for
from kas.logwriter import rotated
from kas.registry import Instance, Registry
from kas.resolver import ResolvedProfile, Settings, autogroup_target
from kas.statedir import state_dir
from kas.status import (
    ACTIVE,
    CANCELLED,
    EXITED,
    FINISHED,
    LOST,
    ORPHANED,
    PAUSED,
    PENDING,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    label,
)

if TYPE_CHECKING:
    from kas.launch.tree import GuardRef

STARTING_PATIENCE = 10.0  # seconds a row may stay "starting" before it is taken for lost


@dataclass
class LiveView:
    """An instance as the user should see it now."""

    inst: Instance
    status: str
    procs: list[Any] = field(default_factory=list)  # probe.ProcFacts, root first
    telemetry: dict[str, Any] | None = None  # what its tree costs (kas.telemetry), where it was read

    @property
    def label(self) -> str:
        return label(self.status, self.inst.exit_status)

    def to_json(self) -> dict[str, Any]:
        data = self.inst.to_json()
        data["status"] = self.status
        data["live"] = [p.to_json() for p in self.procs]
        data["telemetry"] = self.telemetry
        return data


class Recorded(NamedTuple):
    """What a row's recorded profile asks of its tree."""

    resolved: ResolvedProfile
    autogroup: int  # the autogroup nice it asks for (0: none)


def recorded(inst: Instance) -> Recorded:
    """The profile an instance runs under, rebuilt from its row (after ``profile apply``, the new one)."""
    resolved = ResolvedProfile(inst.resource_profile, Settings.from_dict(inst.settings), {})
    return Recorded(resolved, autogroup_target(resolved))


def handle(inst: Instance) -> Handle:
    """The launcher's handle on a registered agent."""
    return launcher_for(inst.mode, tmux_socket=inst.tmux_socket).attach(inst)


def refresh(registry: Registry, inst: Instance, *, probe_tree: bool | Literal["root"] = True) -> LiveView:
    """Read the live state of one instance, settling rows whose process has ended.

    ``probe_tree`` reads the priorities of its whole tree (``True``), of its root process only
    (``"root"``: what a list shows, without a walk of every tree), or nothing.
    """
    from kas import probe

    if inst.status == PENDING:
        if inst.owner_pid and not probe.is_alive(inst.owner_pid, inst.owner_create_time):
            # The runner that would have promoted it is gone; it may have died while the task's guard
            # started it, before it could record that: the guard left its pids beside its rules.
            started = recover_start(registry, inst)
            if started is None:
                return cancel(registry, inst)
            inst = started
        else:
            return LiveView(inst, PENDING)
    if inst.status not in ACTIVE:
        return LiveView(inst, inst.status)
    if inst.status == STARTING and inst.pid is None:
        if time.time() - inst.created_at < STARTING_PATIENCE:
            return LiveView(inst, STARTING)
        return settle(registry, inst, None)
    poll = handle(inst).poll()
    if not poll.answered:
        return LiveView(inst, UNKNOWN)
    if not poll.running:
        # Whoever watched the agent (a supervisor, a foreground kas) may have written its end a moment ago.
        latest = registry.get(inst.id)
        if latest is not None and latest.status not in ACTIVE:
            return LiveView(latest, latest.status)
        if inst.owner_pid and probe.is_alive(inst.owner_pid, inst.owner_create_time):
            return LiveView(inst, RUNNING)  # ending: its owner (supervisor, wave runner) records how
        return settle(registry, inst, poll.exit_status)
    procs = []
    if probe_tree and inst.pid:
        wanted = recorded(inst)
        if probe_tree == "root":
            procs = probe.process_root(inst.pid, inst.pid_create_time)
        else:
            procs = probe.agent_tree(
                inst.pid, inst.pid_create_time, inst.guard_pid, inst.guard_create_time, wanted.autogroup
            )
        # Each process against the profile it runs under: problems (above it) and notes (kept lower).
        groups = wanted.autogroup if host.autogroup_enabled() else 0
        probe.compare(procs, probe.expected_facts(wanted.resolved, host.system(), groups))
    if inst.pid and probe.is_stopped(inst.pid):
        return LiveView(inst, PAUSED, procs)
    orphaned = inst.owner_pid and not probe.is_alive(inst.owner_pid, inst.owner_create_time)
    return LiveView(inst, ORPHANED if orphaned else RUNNING, procs)


def listing(registry: Registry, *, show_all: bool = False) -> list[LiveView]:
    """What ``kas instance list`` shows and ``GET /api/v1/instances`` returns: each agent's live state,
    the priority of its root process, and what its tree costs (from its guard's figures)."""
    from kas import telemetry

    views = [
        refresh(registry, inst, probe_tree="root") for inst in registry.instances(include_finished=show_all)
    ]
    if not show_all:
        views = [v for v in views if v.status not in FINISHED]
    for view in views:
        if view.status not in FINISHED and view.status != PENDING:
            view.telemetry = telemetry.read(view.inst)
    return views


def showing(registry: Registry, inst: Instance) -> LiveView:
    """What ``kas instance show`` and ``GET /api/v1/instances/ID`` return: the whole tree and its cost."""
    from kas import telemetry

    view = refresh(registry, inst)
    if view.procs:
        view.telemetry = telemetry.read(view.inst)
    return view


def settle(registry: Registry, inst: Instance, status: int | None) -> LiveView:
    """Record the end of an instance whose process is gone: exited with a status, or lost."""
    inst.exit_status = status
    inst.ended_at = inst.ended_at or lifecycle.mark_exited(registry, inst.id, status)
    inst.status = EXITED if status is not None else LOST
    return LiveView(inst, inst.status)


def cancel(registry: Registry, inst: Instance) -> LiveView:
    """A pending task that will never start; if its runner started it meanwhile, the row as it is now."""
    ended = lifecycle.mark_cancelled(registry, inst.id)
    if ended is None:
        latest = registry.get(inst.id) or inst
        return LiveView(latest, latest.status)
    inst.status, inst.ended_at = CANCELLED, ended
    return LiveView(inst, CANCELLED)


def guarded_start(inst_id: str) -> tuple[int, float, GuardRef] | None:
    """The agent a guard started for a row that still says pending (``guards/ID.pid``: the agent's and
    the guard's pids), as ``(agent, its start time, guard)``; None if there is none. The guard must still
    run and be the agent's parent: pids are reused."""
    import psutil

    from kas import probe
    from kas.launch.tree import GuardRef, rules_path

    try:
        agent, guard = map(int, rules_path(inst_id).with_suffix(".pid").read_text().split())
        if psutil.Process(agent).ppid() != guard:
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    ref = GuardRef(guard, probe.create_time(guard))
    created = probe.create_time(agent)
    if ref.create_time is None or created is None:
        return None
    return agent, created, ref


def recover_start(registry: Registry, inst: Instance) -> Instance | None:
    """A pending task whose guard started it though its runner never recorded it: recorded now, so that it
    can be seen and stopped; None if there is none."""
    found = guarded_start(inst.id)
    if found is None:
        return None
    agent, created, guard = found
    if not lifecycle.claim_start(registry, inst.id, agent, guard=guard, created=created):
        return None
    return registry.get(inst.id)


def stop(registry: Registry, inst: Instance, grace: float = 5.0, *, keep_daemons: bool = False) -> LiveView:
    """SIGTERM the agent's whole tree (through its guard: escaped sessions and daemons too), SIGKILL after
    ``grace``; record how it ended. With ``keep_daemons`` only the agent's own process group is stopped and
    what it started outside it (a build server, a gpg-agent) is let go, unguarded.

    A pending wave task is cancelled instead: it has no process, and its runner must not start it.
    """
    if inst.status == PENDING:
        view = cancel(registry, inst)
        if view.status == CANCELLED:
            # Its guard may have started it already, unseen by a runner that has not recorded it yet (or
            # never will: it may die first): whatever it started goes, and the row stays cancelled.
            found = guarded_start(inst.id)
            if found is not None:
                from kas.launch.tree import stop_tree

                stop_tree(found[0], found[2], grace)
            return view
        if view.status != RUNNING:
            return view
        inst = view.inst  # its runner started it meanwhile: stopped as a running one
    view = refresh(registry, inst, probe_tree=False)
    if view.status not in (RUNNING, ORPHANED, PAUSED):
        return view
    lifecycle.request_stop(inst.id)
    if keep_daemons and inst.guard_pid and inst.pid:
        from kas.launch.tree import GuardRef, stop_keeping_daemons

        stop_keeping_daemons(inst.pid, GuardRef(inst.guard_pid, inst.guard_create_time), grace)
        status = None
    else:
        status = handle(inst).stop(grace)
    if status is None and inst.owner_pid:  # its owner saw the real status: give it a moment to write it
        from kas import probe

        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and probe.is_alive(inst.owner_pid, inst.owner_create_time):
            latest = registry.get(inst.id)
            if latest is not None and latest.status in FINISHED:
                break
            probe.wait_gone(inst.owner_pid, inst.owner_create_time, timeout=0.1)
    latest = registry.get(inst.id)
    if latest is not None and latest.status in FINISHED:
        # The agent's watcher recorded its end first: keep that, and say that kas ended it.
        if latest.status != STOPPED and latest.exit_status is not None:
            lifecycle.mark_ended(registry, inst.id, STOPPED, latest.exit_status)
            latest.status = STOPPED
        return LiveView(latest, latest.status)
    inst.exit_status = status if status is not None else 143
    inst.ended_at = lifecycle.mark_ended(registry, inst.id, STOPPED, inst.exit_status)
    inst.status = STOPPED
    return LiveView(inst, STOPPED)


def pause(registry: Registry, inst: Instance, *, resume: bool = False) -> LiveView:
    """Freeze (SIGSTOP) or thaw (SIGCONT) an agent's whole process group: a match or a call gets the
    CPU back at once, and the agents go on where they were afterwards. Anything not running is left."""
    import signal

    view = refresh(registry, inst, probe_tree=False)
    if view.status not in (RUNNING, ORPHANED, PAUSED):
        return view
    from kas import probe

    if handle(inst).signal(signal.SIGCONT if resume else signal.SIGSTOP) and inst.pid:
        # A signal is delivered when the process is next scheduled: let the kernel catch up (no event
        # tells a non-parent when another process has stopped), briefly.
        deadline = time.monotonic() + 1.0
        while probe.is_stopped(inst.pid) == resume and time.monotonic() < deadline:
            time.sleep(0.005)
    return refresh(registry, inst, probe_tree=False)


def wait_for_end(inst: Instance) -> None:
    """Block until a running instance ends (tmux's channel for a pane, the kernel's pidfd for a process)."""
    handle(inst).wait()


def prune_cutoff(older_than_hours: float | None, now: float | None = None) -> float | None:
    """``--older-than HOURS`` as a timestamp: rows that ended before it are old enough to forget."""
    if older_than_hours is None:
        return None
    return (time.time() if now is None else now) - older_than_hours * 3600


def prune(
    registry: Registry, older_than_hours: float | None = None, *, keep_logs: bool = False
) -> tuple[int, int]:
    """Forget finished instances and delete the files only they used; return (rows, files) removed.

    Live rows are refreshed first, so an agent that ended unseen is settled and pruned too. Rows of a wave
    run whose runner is still alive are spared: its summary still names their logs. Only files inside the
    state directory are ever deleted, whatever a row says.
    """
    from kas import probe

    for inst in registry.instances(include_finished=False):
        refresh(registry, inst, probe_tree=False)

    def running_wave(inst: Instance) -> bool:
        return bool(inst.owner_pid) and probe.is_alive(inst.owner_pid, inst.owner_create_time)

    gone = registry.prune(prune_cutoff(older_than_hours), spare=running_wave)
    root = state_dir().resolve()
    files = 0
    from kas.launch.tree import guards_dir

    guards = guards_dir()
    for inst in gone:
        paths = handle(inst).discard()  # what the mode kept (a tmux window, its status record)
        paths += [guards / f"{inst.id}.lock", guards / f"{inst.id}.stop"]  # `profile apply`'s, `stop`'s
        if inst.log_path and not keep_logs:
            paths += [Path(inst.log_path), rotated(Path(inst.log_path))]
        for path in paths:
            if path.resolve().is_relative_to(root):
                with contextlib.suppress(FileNotFoundError):  # a concurrent prune may be first
                    path.unlink()
                    files += 1
    waves = {(Path(i.log_path).parent, i.wave_run) for i in gone if i.wave_run and i.log_path}
    for folder, run in waves if not keep_logs else ():
        if folder.resolve().is_relative_to(root) and not registry.instances(wave_run=run):
            from kas.waves.runs import RECORD

            (folder / RECORD).unlink(missing_ok=True)  # nothing left of the run to resume
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a log the user added stays, and so does its folder
    return len(gone), files
