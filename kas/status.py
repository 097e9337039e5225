"""The one set of status names that every table, JSON document and registry row uses.

A registry row and a wave task share these words, so ``kas instance list``, ``kas wave run``'s summary and
its JSON events never call the same thing by two names.
"""

from __future__ import annotations

PENDING = "pending"  # a wave task waiting for a free slot: no process yet
STARTING = "starting"  # registered, its process is being started
RUNNING = "running"  # its process is alive
PAUSED = "paused"  # its process group is stopped (`kas instance pause`) until `kas instance resume`
EXITED = "exited"  # ended by itself, with an exit status (0 = success)
FAILED = "failed"  # could not be started (command not found, bad cwd, tmux missing...)
CANCELLED = "cancelled"  # was pending and will never start (interrupt, --fail-fast, its runner died)
STOPPED = "stopped"  # ended by kas: `kas instance stop`, Ctrl-C or SIGTERM of its wave
TIMED_OUT = "timed out"  # stopped by kas because it ran past its timeout
LOST = "lost"  # ended, but nobody saw its exit status
NOT_STARTED = "not started"  # a task of a wave the run never reached
UNKNOWN = "unknown"  # its state cannot be read now (an unresponsive tmux server)
ORPHANED = "orphaned"  # still running, but the kas process watching it (wave runner, supervisor) is gone

ACTIVE = (STARTING, RUNNING)
"""Statuses with a process that may still run."""
FINISHED = (EXITED, FAILED, CANCELLED, STOPPED, TIMED_OUT, LOST)
"""Statuses of rows with no process behind them any more (what ``prune`` may forget)."""

MEANING = {
    PENDING: "a wave task waiting for a free slot; no process yet",
    STARTING: "registered; its process is being started",
    RUNNING: "its process is alive",
    PAUSED: "frozen by `kas instance pause` (SIGSTOP to its group) until `kas instance resume`",
    EXITED: "ended by itself; shown with its exit status (exited 0 = success)",
    FAILED: "could not be started (the reason is shown)",
    CANCELLED: "was pending and will never start",
    STOPPED: "ended by kas (instance stop, Ctrl-C or SIGTERM)",
    TIMED_OUT: "stopped by kas after its timeout",
    LOST: "ended, but its exit status was never seen",
    NOT_STARTED: "a task of a later wave that the run never reached",
    UNKNOWN: "cannot be read now (tmux server not answering)",
    ORPHANED: "still running, but the kas process watching it (its wave runner or supervisor) was killed",
}


def label(status: str, exit_status: int | None) -> str:
    """What a person reads: ``exited 0``, ``stopped 143``, ``pending``."""
    if status in (EXITED, STOPPED, TIMED_OUT) and exit_status is not None:
        return f"{status} {exit_status}"
    return status


def succeeded(status: str, exit_status: int | None) -> bool:
    return status == EXITED and exit_status == 0
