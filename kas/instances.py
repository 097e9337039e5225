"""Live status of registered instances, and stopping them.

The registry says what kas started; the kernel and tmux say what is true now. A row whose process is gone
is settled here (exited N, or lost when nobody saw the exit), so a recycled pid never reads as running.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kas.launch import sdk
from kas.registry import FINISHED, Instance, Registry
from kas.statedir import state_dir

ACTIVE = ("starting", "running")


@dataclass
class LiveView:
    """An instance as the user should see it now."""

    inst: Instance
    status: str
    procs: list[Any] = field(default_factory=list)  # probe.ProcFacts, root first

    @property
    def label(self) -> str:
        if self.status == "exited" and self.inst.exit_status is not None:
            return f"exited {self.inst.exit_status}"
        return self.status

    def to_json(self) -> dict[str, Any]:
        data = self.inst.to_json()
        data["status"] = self.status
        data["live"] = [p.to_json() for p in self.procs]
        return data


def refresh(registry: Registry, inst: Instance, *, probe_tree: bool = True) -> LiveView:
    """Read the live state of one instance, settling rows whose process has ended."""
    from kas import probe

    if (
        inst.status == "pending"
        and inst.owner_pid
        and not probe.is_alive(inst.owner_pid, inst.owner_create_time)
    ):
        return cancel(registry, inst)  # the runner that would have promoted it is gone
    if inst.status not in ACTIVE:
        return LiveView(inst, inst.status)
    if inst.mode == "tmux" and inst.tmux_target:
        from kas.launch import tmux

        info = tmux.pane_info(inst.tmux_socket, inst.tmux_target, inst.id)
        if info is None:
            return settle(registry, inst, tmux.read_status(inst.id))
        if info.dead:
            return settle(registry, inst, info.exit_status)
    elif not probe.is_alive(inst.pid, inst.pid_create_time):
        # The supervisor (or foreground kas) may have written the exit a moment ago.
        latest = registry.get(inst.id)
        if latest is not None and latest.status not in ACTIVE:
            return LiveView(latest, latest.status)
        if inst.status == "starting" and time.time() - inst.created_at < 10:
            return LiveView(inst, "starting")
        return settle(registry, inst, None)
    procs = probe.process_tree(inst.pid, inst.pid_create_time) if (probe_tree and inst.pid) else []
    return LiveView(inst, "running", procs)


def mark_running(
    registry: Registry, inst_id: str, pid: int | None, **extra: Any
) -> tuple[float | None, float]:
    """Record that an instance's process started; keep its kernel start time against pid reuse.

    Returns ``(pid_create_time, started_at)``.
    """
    from kas.probe import create_time

    created, started = (create_time(pid) if pid else None), time.time()
    registry.update(inst_id, status="running", pid=pid, pid_create_time=created, started_at=started, **extra)
    return created, started


def settle(registry: Registry, inst: Instance, status: int | None) -> LiveView:
    """Record the end of an instance whose process is gone: exited with a status, or lost."""
    inst.status = "exited" if status is not None else "lost"
    inst.exit_status = status
    inst.ended_at = inst.ended_at or time.time()
    registry.update(inst.id, status=inst.status, exit_status=status, ended_at=inst.ended_at)
    return LiveView(inst, inst.status)


def cancel(registry: Registry, inst: Instance) -> LiveView:
    """A pending task that will never start."""
    inst.status, inst.ended_at = "cancelled", time.time()
    registry.update(inst.id, status="cancelled", ended_at=inst.ended_at)
    return LiveView(inst, "cancelled")


def stop(registry: Registry, inst: Instance, grace: float = 5.0) -> LiveView:
    """SIGTERM the agent's group (or its tmux pane's), SIGKILL after ``grace``; record how it ended."""
    from kas import probe

    if inst.status == "pending":
        return cancel(registry, inst)
    view = refresh(registry, inst, probe_tree=False)
    if view.status != "running" or inst.pid is None:
        return view
    sdk.stop_group(inst.pid, grace)
    if inst.mode == "tmux" and inst.tmux_target:
        from kas.launch import tmux

        deadline = time.monotonic() + 2
        info = tmux.pane_info(inst.tmux_socket, inst.tmux_target, inst.id)
        while info is not None and not info.dead and time.monotonic() < deadline:
            time.sleep(0.02)
            info = tmux.pane_info(inst.tmux_socket, inst.tmux_target, inst.id)
        status = info.exit_status if info else None
        tmux.kill(inst.tmux_socket, inst.tmux_target)
        return settle(registry, inst, status if status is not None else 143)
    deadline = time.monotonic() + 2
    while probe.is_alive(inst.pid, inst.pid_create_time) and time.monotonic() < deadline:
        time.sleep(0.02)
    latest = registry.get(inst.id)
    if latest is not None and latest.status in FINISHED:
        return LiveView(latest, latest.status)
    return settle(registry, inst, 143)


def wait_for_end(inst: Instance) -> None:
    """Block until a running instance ends: tmux's channel for a pane, the kernel's pidfd for a process."""
    from kas import probe

    if inst.mode == "tmux" and inst.tmux_target:
        from kas.launch import tmux

        tmux.wait(inst.tmux_socket, inst.id, inst.tmux_target)
    elif inst.pid:
        probe.wait_gone(inst.pid, inst.pid_create_time)


def prune(registry: Registry, older_than: float | None = None, *, keep_logs: bool = False) -> tuple[int, int]:
    """Forget finished instances and delete the files only they used; return (rows, files) removed.

    Rows of a wave run whose runner is still alive are spared: its summary still names their logs. Only
    files inside the state directory are ever deleted, whatever a row says.
    """
    from kas import probe
    from kas.launch import tmux

    def running_wave(inst: Instance) -> bool:
        return bool(inst.owner_pid) and probe.is_alive(inst.owner_pid, inst.owner_create_time)

    gone = registry.prune(older_than, spare=running_wave)
    root = state_dir().resolve()
    files = 0
    for inst in gone:
        paths = [tmux.status_path(inst.id)] if inst.mode == "tmux" else []
        if inst.log_path and not keep_logs:
            paths.append(Path(inst.log_path))
        for path in paths:
            if path.resolve().is_relative_to(root):
                with contextlib.suppress(FileNotFoundError):  # a concurrent prune may be first
                    path.unlink()
                    files += 1
    waves = {(Path(i.log_path).parent, i.wave_run) for i in gone if i.wave_run and i.log_path}
    for folder, run in waves if not keep_logs else ():
        if folder.resolve().is_relative_to(root) and not registry.instances(wave_run=run):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a log the user added stays, and so does its folder
    return len(gone), files
