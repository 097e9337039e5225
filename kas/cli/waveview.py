"""What ``kas wave run`` shows while it runs: JSON lines, plain event lines (piped), or a live block
redrawn in place on a terminal. Display only: nothing here drives the run."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

from kas.cli.output import Output, safe
from kas.status import CANCELLED, FINISHED, NOT_STARTED, STOPPED

if TYPE_CHECKING:
    from kas.waves.runner import RunResult, WaveRunner

LIVE_EVENTS = ("wave_started", "task_promoted", "task_finished", "task_failed", "task_cancelled", "tick")


class View:
    """Turns the runner's events into output; ``live`` redraws the current wave's tasks in place."""

    def __init__(self, out: Output, live: bool) -> None:
        self.out = out
        self.live = live and not out.as_json
        self.runner: WaveRunner | None = None
        self.drawn = 0
        self.wave = 0
        self.stopped = threading.Event()

    def event(self, data: dict[str, Any]) -> None:
        out = self.out
        with out.lock:
            kind = data["event"]
            if kind == "warning":
                if self.drawn:
                    sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
                    self.drawn = 0
                out.warn(data["message"])
                if self.live and self.wave:
                    self._redraw()
                return
            if out.as_json:
                out.json_line(data)
                return
            if kind == "wave_started":
                assert self.runner is not None
                self.wave, self.drawn = data["wave"], 0
                out.line(f"wave {data['wave']}/{len(self.runner.plan.waves)}: {safe(data['name'])}")
            if self.live and kind in LIVE_EVENTS:
                self._redraw()
            elif not self.live:
                self._line(data)
            if kind in ("wave_done", "run_interrupted") and self.live:
                self._redraw()
                self.drawn = 0
                if kind == "run_interrupted":
                    out.line("interrupted: stopping running tasks")

    def start_ticker(self) -> None:
        """Redraw once a second so elapsed times move."""

        def tick() -> None:
            while not self.stopped.wait(1.0):
                if self.drawn:
                    self.event({"event": "tick"})

        threading.Thread(target=tick, daemon=True).start()

    def _line(self, data: dict[str, Any]) -> None:
        kind, out = data["event"], self.out
        task = safe(data.get("task", ""))
        if kind == "task_promoted":
            out.line(f"  {out.status('started', 8)} {task} (pid {data['pid']})")
        elif kind == "task_finished":
            out.line(f"  {out.status(data['label'], 8)} {task} ({data['elapsed']:.1f}s)")
        elif kind == "task_failed":
            out.line(f"  {out.status('failed', 8)} {task}: {safe(data['reason'])}")
        elif kind == "task_cancelled":
            out.line(f"  {out.status('cancelled', 8)} {task}")
        elif kind == "wave_done":
            out.line(f"  wave {data['wave']} done: {data['ok']} ok, {data['failed']} failed")
        elif kind == "run_interrupted":
            out.line("interrupted: stopping running tasks")

    def _redraw(self) -> None:
        assert self.runner is not None
        runs = [r for r in self.runner.result.tasks if r.wave == self.wave]
        finished = sum(1 for r in runs if r.state in FINISHED)
        lines = [f"  {safe(r.task.id):<20} {self.out.status(r.label, 12)} {r.elapsed:6.1f}s" for r in runs]
        lines.append(f"  [{finished}/{len(runs)} finished]")
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F")
        sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in lines))
        sys.stdout.flush()
        self.drawn = len(lines)

    def output(self, task_id: str, line: str) -> None:
        """A line of a task's output (--show-output), above the live block."""
        with self.out.lock:
            if self.out.as_json:  # one JSON object per line, output included
                self.out.json_line({"event": "output", "task": task_id, "line": line})
                return
            if self.live and self.drawn:
                sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
                self.drawn = 0
            self.out.line(f"[{safe(task_id)}] {safe(line)}")
            if self.live:
                self._redraw()


def summary(out: Output, result: RunResult) -> None:
    """The table after the run: every task of the plan, those never reached included."""
    rows = [
        (
            r.task.id,
            r.wave,
            out.status(r.label),
            f"{r.elapsed:.1f}s" if r.started is not None else "",  # a task that never ran took no time
            r.reason or "",
            r.log if r.started is not None else "",
        )
        for r in result.tasks
    ]
    out.line()
    out.table(rows, ("TASK", "WAVE", "STATUS", "TIME", "NOTE", "LOG"))
    count = len(result.tasks)
    # Stopped (an interrupt, `kas instance stop`) is not failed: the task did not get to finish.
    for word, runs in (
        ("failed", [r for r in result.failed if r.state != STOPPED]),
        ("stopped", [r for r in result.failed if r.state == STOPPED]),
    ):
        if runs:
            out.line(f"\n{word}: {', '.join(safe(r.task.id) for r in runs)}")
    if not result.failed and not result.interrupted and result.stopped_before is None:
        cancelled = sum(1 for r in result.tasks if r.state == CANCELLED)  # by `kas instance stop`
        if cancelled:
            out.line(f"\n{count - cancelled} of {count} tasks succeeded, {cancelled} cancelled")
        else:
            out.line(f"\nall {count} task{'s' if count != 1 else ''} succeeded")
    skipped = sum(1 for r in result.tasks if r.state == NOT_STARTED)
    if skipped and result.stopped_before is not None:
        plural = "s" if skipped != 1 else ""
        out.line(f"not started: {skipped} task{plural} of wave {result.stopped_before} and later")
