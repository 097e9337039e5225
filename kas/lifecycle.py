"""Every change of an instance's status, in one place beside the registry.

Launchers, the wave runner, the detached supervisor and ``kas instance`` all record starts and ends through
these functions, so a status is always written with the fields that go with it (a start with the kernel's
start time of the pid, an end with its time), and no module needs another's private helper to do it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kas.registry import Registry
from kas.status import CANCELLED, EXITED, FAILED, LOST, PENDING, RUNNING, STOPPED

if TYPE_CHECKING:
    from kas.launch.tree import GuardRef


def mark_running(
    registry: Registry,
    inst_id: str,
    pid: int | None,
    *,
    guard: GuardRef | None = None,
    created: float | None = None,
    **extra: Any,
) -> tuple[float | None, float]:
    """Record that an instance's process started; keep its kernel start time against pid reuse (looked up
    unless the caller has it: ``created``).

    Returns ``(pid_create_time, started_at)``.
    """
    from kas.probe import create_time

    if guard is not None:
        extra.update(guard_pid=guard.pid, guard_create_time=guard.create_time)
    if created is None and pid:
        created = create_time(pid)
    started = time.time()
    registry.update(inst_id, status=RUNNING, pid=pid, pid_create_time=created, started_at=started, **extra)
    return created, started


def claim_start(
    registry: Registry, inst_id: str, pid: int, *, guard: GuardRef | None, created: float | None, **extra: Any
) -> bool:
    """Record that a pending task's process started, unless the task was cancelled meanwhile (``kas
    instance stop`` on a task whose start was on its way): False then, and the caller stops it."""
    if guard is not None:
        extra.update(guard_pid=guard.pid, guard_create_time=guard.create_time)
    return registry.update(
        inst_id, if_status=PENDING, status=RUNNING, pid=pid, pid_create_time=created, started_at=time.time(),
        **extra,
    )  # fmt: skip


def request_stop(inst_id: str) -> None:
    """Say, before the signal goes, that ``kas instance stop`` ends this agent: whoever watches it (a
    wave's runner, a foreground kas) then records a stop, not an exit with the signal's status. A
    private marker beside the guard's rules (``guards/ID.stop``)."""
    from kas.launch.tree import rules_path
    from kas.statedir import private_file

    private_file(rules_path(inst_id).with_suffix(".stop"))


def stop_requested(inst_id: str) -> bool:
    from kas.launch.tree import rules_path

    return rules_path(inst_id).with_suffix(".stop").exists()


def mark_ended(registry: Registry, inst_id: str, status: str, exit_status: int | None = None) -> float:
    """Record how an instance ended (one of ``status.FINISHED``); returns the time it was recorded."""
    ended = time.time()
    registry.update(inst_id, status=status, exit_status=exit_status, ended_at=ended)
    return ended


def mark_exited(registry: Registry, inst_id: str, exit_status: int | None) -> float:
    """It ended: ``exited`` with its status, ``lost`` when nobody saw the status, or ``stopped`` when
    ``kas instance stop`` ended it (``request_stop``)."""
    if stop_requested(inst_id):
        return mark_ended(registry, inst_id, STOPPED, exit_status)
    return mark_ended(registry, inst_id, EXITED if exit_status is not None else LOST, exit_status)


def mark_failed(registry: Registry, inst_id: str, **extra: Any) -> float:
    """It could not be started."""
    ended = time.time()
    registry.update(inst_id, status=FAILED, ended_at=ended, **extra)
    return ended


def mark_cancelled(registry: Registry, inst_id: str) -> float | None:
    """A pending task that will never start; None if it is not pending any more (its runner started it
    meanwhile: it is then stopped as a running one)."""
    ended = time.time()
    done = registry.update(inst_id, if_status=PENDING, status=CANCELLED, ended_at=ended)
    return ended if done else None
