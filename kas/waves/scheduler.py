"""The wave state machine, pure: which tasks run now, and which one is promoted when another ends.

No processes, clocks or threads: the runner feeds it events and launches what it returns, so the rules
of the spec (cap, plan order, promotion on finish, wave ends only when all are terminal) are tested on
their own.
"""

from __future__ import annotations

from collections.abc import Sequence

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
TERMINAL = (DONE, FAILED, CANCELLED)


class WaveScheduler:
    """Tasks of one wave in plan order, at most ``cap`` running at once (0 = no limit)."""

    def __init__(self, task_ids: Sequence[str], cap: int) -> None:
        if len(set(task_ids)) != len(task_ids):
            raise ValueError("task ids must be unique")
        self.order = list(task_ids)
        self.cap = cap
        self.state = dict.fromkeys(self.order, PENDING)
        self.promoting = True

    def running(self) -> list[str]:
        return [t for t in self.order if self.state[t] == RUNNING]

    def pending(self) -> list[str]:
        return [t for t in self.order if self.state[t] == PENDING]

    def _fill(self) -> list[str]:
        if not self.promoting:
            return []
        room = len(self.order) if self.cap == 0 else self.cap - len(self.running())
        promoted = self.pending()[: max(room, 0)]
        for task in promoted:
            self.state[task] = RUNNING
        return promoted

    def start(self) -> list[str]:
        """The tasks to launch when the wave begins."""
        return self._fill()

    def finish(self, task: str, ok: bool) -> list[str]:
        """Record a running task's end; return the tasks promoted in its place."""
        if self.state.get(task) != RUNNING:
            raise ValueError(f"task {task!r} is not running")
        self.state[task] = DONE if ok else FAILED
        return self._fill()

    def stop_promoting(self) -> list[str]:
        """Fail-fast / interrupt: launch nothing more; pending tasks become cancelled (returned)."""
        self.promoting = False
        cancelled = self.pending()
        for task in cancelled:
            self.state[task] = CANCELLED
        return cancelled

    @property
    def finished(self) -> bool:
        """The wave ends only when every task, pending ones included, is terminal."""
        return all(s in TERMINAL for s in self.state.values())

    def failed(self) -> list[str]:
        return [t for t in self.order if self.state[t] == FAILED]
