"""Drive the pure scheduler with real launches: one waiter thread per task turns its start and its end
into events.

The main thread only blocks on its inbox (task events, and signals), so a finished task promotes the next
one at once (no polling delay). A launch returns as soon as the agent's guard exists; the waiter waits
for the agent itself to run, so the main thread goes on while tasks start. Ctrl-C / SIGTERM stop every
running group (SIGTERM, then SIGKILL after a grace period), cancel what is pending and leave the registry
consistent. The execution mode is the launcher's business: nothing here asks which one runs the tasks.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kas import lifecycle
from kas import platform as host
from kas.errors import LaunchError, RegistryError
from kas.launch.base import Handle, LaunchSpec
from kas.launch.groups import MAX_GRACE, STOP_SIGNALS
from kas.launch.modes import launcher_for
from kas.launch.prepare import Prepared, ensure_command, prepare
from kas.launch.session import autogroup_here, lower_group
from kas.launch.tree import guard_rules
from kas.logs import LogFollower
from kas.logwriter import check_limit
from kas.registry import Instance, Registry, new_id
from kas.resolver import ResolvedProfile
from kas.statedir import private_dir, private_file, state_dir
from kas.status import (
    CANCELLED,
    EXITED,
    FAILED,
    LOST,
    NOT_STARTED,
    PENDING,
    RUNNING,
    STOPPED,
    TIMED_OUT,
    label,
    succeeded,
)
from kas.threads import background
from kas.waves.inbox import Inbox
from kas.waves.plan import Plan, Task
from kas.waves.scheduler import WaveScheduler

Emit = Callable[[dict[str, Any]], None]
DECLINED, NO_TERMINAL = "declined", "no-terminal"
STARTED, LAUNCH_FAILED, FINISHED, WARNING = "started", "launch-failed", "finished", "warning"


@dataclass
class RunOptions:
    mode: str
    fail_fast: bool = False
    show_output: bool = False
    tmux_socket: str | None = None
    tmux_session: str = "kas"
    grace: float = 5.0


@dataclass
class TaskRun:
    """One task's life in this run, for the live view and the summary; ``state`` is a ``kas.status``."""

    task: Task
    wave: int
    inst_id: str
    log: Path
    state: str = PENDING
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    exit_status: int | None = None
    reason: str | None = None
    prepared: Prepared | None = None
    handle: Handle | None = None
    follower: LogFollower | None = None
    cancelled_late: bool = False  # cancelled by `kas instance stop` while its start was on its way
    timed_out: threading.Event = field(default_factory=threading.Event)

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.time()) - self.started

    @property
    def label(self) -> str:
        return label(self.state, self.exit_status)

    @property
    def ok(self) -> bool:
        return succeeded(self.state, self.exit_status)


@dataclass
class RunResult:
    run_id: str
    tasks: list[TaskRun] = field(default_factory=list)
    interrupted: bool = False
    stopped_before: int | None = None  # 1-based wave number not started (declined or no terminal)
    stop_reason: str | None = None  # DECLINED or NO_TERMINAL

    @property
    def failed(self) -> list[TaskRun]:
        """Tasks that ran or tried to and did not succeed (not those that never got the chance)."""
        return [t for t in self.tasks if t.state not in (PENDING, CANCELLED, NOT_STARTED) and not t.ok]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.failed:
            return 1
        return 2 if self.stop_reason == NO_TERMINAL else 0


class Interrupted(Exception):
    """Raised into the main thread's wait when Ctrl-C or SIGTERM arrives."""


class WaveRunner:
    def __init__(
        self,
        plan: Plan,
        resolved: ResolvedProfile,
        options: RunOptions,
        emit: Emit,
        confirm: Callable[[int], bool | None],
        output: Callable[[str, str], None] | None = None,
    ) -> None:
        check_limit()
        self.plan = plan
        self.resolved = resolved
        self.options = options
        self.emit_event = emit
        self.confirm = confirm
        self.output = output
        self.launcher = launcher_for(
            options.mode, tmux_socket=options.tmux_socket, tmux_session=options.tmux_session
        )
        self.autogroup_nice = autogroup_here(resolved)
        self.rules = guard_rules(resolved, self.autogroup_nice, host.system())
        # (STARTED, task, None), (LAUNCH_FAILED, task, reason), (FINISHED, task, exit status), (WARNING, text)
        self.events: Inbox[tuple[str, str, Any]] = Inbox()
        self.result = RunResult(new_id())
        self.runs: dict[str, TaskRun] = {}
        self.registry = Registry()
        self.log_dir = private_dir(private_dir(state_dir() / "logs") / f"run-{self.result.run_id}")
        self.scheduler = WaveScheduler([], 0)  # replaced as each wave starts
        self.grace = min(max(options.grace, 0.0), MAX_GRACE)
        self.warned: set[str] = set()
        from kas.probe import create_time

        self.owner = (os.getpid(), create_time(os.getpid()))
        self._waiting = False
        self._interrupt = False
        self.registry_broken = False
        self.environ = dict(os.environ)  # read once: every task starts from the caller's environment
        self.found: set[tuple[str, str | None, Path]] = set()
        # Starts are told in the order the tasks were launched (plan order), though agents may come up in
        # another: a task's events wait here until every task launched before it has started or failed.
        self.unannounced: collections.deque[str] = collections.deque()
        self.held: dict[str, list[tuple[str, str, Any]]] = {}
        self.released: collections.deque[tuple[str, str, Any]] = collections.deque()

    # -- events -----------------------------------------------------------------------------------------
    def emit(self, event: str, **data: Any) -> None:
        self.emit_event({"event": event, "run": self.result.run_id, "at": time.time(), **data})

    def warn(self, messages: tuple[str, ...] | list[str]) -> None:
        """Warnings are events too: the front end shows them, once each."""
        for message in messages:
            if message not in self.warned:
                self.warned.add(message)
                self.emit("warning", message=message)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.result.interrupted:
            # A second Ctrl-C while stopping: do not wait out the grace period.
            for run in self.runs.values():
                if run.state == RUNNING and run.handle is not None:
                    run.handle.signal(signal.SIGKILL)
            return
        self._interrupt = True
        if self._waiting:
            raise Interrupted

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        cap = self.resolved.settings.max_parallel_wave_tasks
        self.emit(
            "run_started",
            plan=self.plan.name,
            waves=len(self.plan.waves),
            tasks=self.plan.task_count,
            cap=cap,
            mode=self.options.mode,
            profile=self.resolved.name,
        )
        self.warn(self.resolved.warnings)
        try:
            with self.events:
                try:
                    self._run_waves(cap)
                except RegistryError as exc:
                    # The registry cannot be written (locked past its timeout, disk full): stop every
                    # task rather than leave it running unrecorded; rows left 'running' are settled by
                    # the next `kas instance list` that can read them.
                    self.registry_broken = True
                    self.emit("warning", message=f"stopping every task: {exc}")
                    self._shutdown()
                    raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.registry.close()
        self._not_started()
        self.emit(
            "run_done",
            exit_code=self.result.exit_code,
            failed=[t.task.id for t in self.result.failed],
            interrupted=self.result.interrupted,
            stopped_before=self.result.stopped_before,
            stop_reason=self.result.stop_reason,
        )
        return self.result

    def _run_waves(self, cap: int) -> None:
        try:
            for index in range(1, len(self.plan.waves) + 1):
                if index > 1:
                    answer = self._ask(index)
                    if not answer:
                        self.result.stopped_before = index
                        self.result.stop_reason = NO_TERMINAL if answer is None else DECLINED
                        break
                if self._interrupt:
                    raise Interrupted
                self._run_wave(index, cap)
                if self.options.fail_fast and self.result.failed:
                    break
        except Interrupted:
            self._shutdown()

    def _mark(self, change: Callable[..., Any], *args: Any, **values: Any) -> Any:
        """A registry state change, skipped once the registry is known to be unusable."""
        if self.registry_broken:
            return time.time()
        return change(self.registry, *args, **values)

    def _not_started(self) -> None:
        """Tasks of waves the run never reached appear in the summary too, as not started."""
        reached = {r.task.id for r in self.result.tasks}
        for index, wave in enumerate(self.plan.waves, 1):
            for task in wave.tasks:
                if task.id not in reached:
                    self.result.tasks.append(
                        TaskRun(task, index, "", self.log_dir / f"{task.id}.log", NOT_STARTED)
                    )

    def _ask(self, index: int) -> bool | None:
        """The confirmation prompt; Ctrl-C while it waits interrupts the run like any other wait."""
        self._waiting = True
        try:
            return self.confirm(index)
        finally:
            self._waiting = False

    def _run_wave(self, index: int, cap: int) -> None:
        wave = self.plan.waves[index - 1]
        runs = [TaskRun(t, index, new_id(), private_file(self.log_dir / f"{t.id}.log")) for t in wave.tasks]
        rows = self.registry.insert_many([self._pending_row(run) for run in runs])
        for run, row in zip(runs, rows, strict=True):
            run.inst_id = row.id  # the registry may have picked other ids on a collision
            self.runs[run.task.id] = run
            self.result.tasks.append(run)
        self.scheduler = WaveScheduler([t.id for t in wave.tasks], cap)
        self.emit("wave_started", wave=index, name=wave.name, tasks=[t.id for t in wave.tasks])
        self._launch_all(self.scheduler.start())
        while not self.scheduler.finished:
            if self._interrupt:
                raise Interrupted
            self._waiting = True
            try:
                kind, task_id, value = self._next_event()
            finally:
                self._waiting = False
            if kind == STARTED:
                self._started(task_id)
            elif kind == LAUNCH_FAILED:
                self._launch_failed(task_id, value)
            else:
                self._finished(task_id, value)
        failed = self.result.failed
        counts = {
            "ok": sum(1 for t in wave.tasks if self.runs[t.id].ok),
            "failed": sum(1 for t in wave.tasks if self.runs[t.id] in failed),
            "cancelled": sum(1 for t in wave.tasks if self.runs[t.id].state == CANCELLED),
        }
        self.emit("wave_done", wave=index, name=wave.name, **counts)

    def _started(self, task_id: str) -> None:
        """The agent runs: record it, say so, and echo its output from here on. A task that `kas instance
        stop` cancelled while its start was on its way is stopped at once, and stays cancelled."""
        run = self.runs[task_id]
        handle = run.handle
        assert handle is not None and handle.pid is not None
        run.pid, run.started = handle.pid, time.time()
        claimed = self._mark(
            lifecycle.claim_start, run.inst_id, run.pid, tmux_target=handle.target, guard=handle.guard,
            created=handle.create_time,
        )  # fmt: skip
        if not claimed:
            run.cancelled_late = True
            background(handle.stop, self.grace)
            return
        if self.result.interrupted:  # asked to start before the stop: its guard may not have had the signal
            handle.signal(signal.SIGTERM)
        self.emit("task_promoted", wave=run.wave, task=task_id, pid=run.pid, instance=run.inst_id)
        # Echoed from the log as it grows, after the task's start was reported, in every mode alike.
        if self._streams:
            run.follower = LogFollower(run.log, self._echo_to(task_id))

    def _was_cancelled(self, run: TaskRun) -> None:
        """A task cancelled while its start was on its way has ended: its row says cancelled, and so does
        the run (it never got to do its work)."""
        run.state, run.started = CANCELLED, None
        self.emit("task_cancelled", wave=run.wave, task=run.task.id)

    def _launch_failed(self, task_id: str, reason: str) -> None:
        """A task that could not start fails at once and promotes the next in turn."""
        self._failed_to_start(self.runs[task_id], reason)
        self._launch_all(self.scheduler.finish(task_id, False))

    def _failed_to_start(self, run: TaskRun, reason: str) -> None:
        run.state, run.reason = FAILED, reason
        run.ended = self._mark(lifecycle.mark_failed, run.inst_id)
        run.started = run.started or run.ended
        self.emit("task_failed", wave=run.wave, task=run.task.id, reason=reason)
        if self.options.fail_fast:
            self._cancel(self.scheduler.stop_promoting())

    def _finished(self, task_id: str, status: int | None) -> None:
        run = self.runs[task_id]
        run.exit_status, run.ended = status, time.time()
        if run.follower is not None:
            run.follower.stop()
        if run.cancelled_late:
            self._was_cancelled(run)
            self._launch_all(self.scheduler.finish(task_id, False))
            return
        if lifecycle.stop_requested(run.inst_id):  # `kas instance stop` ended it: say so, as the row does
            run.state, run.reason = STOPPED, "stopped by kas instance stop"
            self._emit_finished(run)
            try:
                self._launch_all(self.scheduler.finish(task_id, False))
            finally:
                self._mark(lifecycle.mark_ended, run.inst_id, STOPPED, status)
            return
        if run.timed_out.is_set():
            run.state, run.reason = TIMED_OUT, f"timed out after {run.task.timeout:g}s"
        else:
            run.state = EXITED if status is not None else LOST
            if status is None:
                run.reason = "exit status unknown"
        self._emit_finished(run)
        if not run.ok and self.options.fail_fast:
            self._cancel(self.scheduler.stop_promoting())
        # The next task starts before this one's end is written down: promotion waits for no disk.
        try:
            self._launch_all(self.scheduler.finish(task_id, run.ok))
        finally:  # an interrupt while promoting must not leave this row 'running'
            if run.state == TIMED_OUT:
                self._mark(lifecycle.mark_ended, run.inst_id, TIMED_OUT, status)
            else:
                self._mark(lifecycle.mark_exited, run.inst_id, status)

    def _launch_all(self, task_ids: list[str]) -> None:
        """Launch promoted tasks; one that cannot start fails at once and promotes the next in turn."""
        work = list(task_ids)
        while work:
            if self._interrupt:
                raise Interrupted
            task_id = work.pop(0)
            run = self.runs[task_id]
            if self._cancelled_elsewhere(run):  # `kas instance stop` on a pending task
                run.state, run.ended = CANCELLED, time.time()
                self.emit("task_cancelled", wave=run.wave, task=task_id)
                work += self.scheduler.finish(task_id, False)
                continue
            try:
                self._launch(run)
            except LaunchError as exc:
                self._failed_to_start(run, str(exc))
                work += self.scheduler.finish(task_id, False)

    def _cancelled_elsewhere(self, run: TaskRun) -> bool:
        if self.registry_broken:
            return False
        row = self.registry.get(run.inst_id)
        return row is not None and row.status == CANCELLED

    def _cancel(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            run = self.runs[task_id]
            run.state, run.ended = CANCELLED, self._mark(lifecycle.mark_cancelled, run.inst_id) or time.time()
            self.emit("task_cancelled", wave=run.wave, task=task_id)

    # -- launching --------------------------------------------------------------------------------------
    def _pending_row(self, run: TaskRun) -> Instance:
        """Prepare a task (argv and env, once) and describe it as a pending registry row."""
        task = run.task
        prepared = run.prepared = prepare(self.resolved, task.argv, {**self.environ, **task.env})
        self.warn(prepared.warnings)
        row = Instance(
            id=run.inst_id,
            name=task.name,
            mode=self.options.mode,
            status=PENDING,
            cwd=str(task.cwd),
            argv=task.argv,
            wrapped_argv=prepared.argv,
            resource_profile=self.resolved.name,
            settings=self.resolved.settings.to_dict(),
            env={**task.env, **prepared.env},
            log_path=str(run.log),
            wave_run=self.result.run_id,
            wave_index=run.wave,
            task_id=task.id,
            owner_pid=self.owner[0],
            owner_create_time=self.owner[1],
        )
        for column, value in self.launcher.row_fields().items():
            setattr(row, column, value)
        return row

    def _launch(self, run: TaskRun) -> None:
        task = run.task
        prepared = run.prepared
        assert prepared is not None, "tasks are prepared when their wave is registered"
        env = prepared.full_env({**self.environ, **task.env})
        if (task.argv[0], env.get("PATH"), task.cwd) not in self.found:  # one look per command and PATH
            ensure_command(task.argv, task.cwd, env)
            self.found.add((task.argv[0], env.get("PATH"), task.cwd))
        spec = LaunchSpec(
            run.inst_id,
            task.name,
            prepared,
            task.cwd,
            env,
            run.log,
            self.autogroup_nice,
            guard=self.rules,
        )
        run.handle = self.launcher.start(spec)
        self.unannounced.append(task.id)
        run.state = RUNNING  # it holds a slot, and is stopped on any error from here
        background(self._wait, run.task.id, run.handle)

    @property
    def _streams(self) -> bool:
        """--show-output with somewhere to show it."""
        return self.options.show_output and self.output is not None

    def _echo_to(self, task_id: str) -> Callable[[bytes], None]:
        def echo(raw: bytes) -> None:
            assert self.output is not None
            self.output(task_id, raw.decode(errors="replace").rstrip("\r\n"))

        return echo

    def _wait(self, task_id: str, handle: Handle) -> None:
        """Wait for the agent to run, then for its end, off the event loop. Where no guard lowered the
        agent's session before it ran, lower it here: the kernel may make that write wait its turn (one
        per 100 ms for a normal user) behind the other tasks'."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # signals are the main thread's to handle
        try:
            handle.ready()
        except LaunchError as exc:
            self.events.put((LAUNCH_FAILED, task_id, str(exc)))
            return
        except Exception as exc:  # the waiter must always report, or the wave would never end
            self.events.put((LAUNCH_FAILED, task_id, f"cannot start: {exc}"))
            return
        if handle.guard is None:
            problem = lower_group(handle.pid, self.autogroup_nice)
            if problem:
                self.events.put((WARNING, problem, None))
        self.events.put((STARTED, task_id, None))
        run = self.runs[task_id]
        done = threading.Event()
        if run.task.timeout:
            background(self._expire, run, done)
        try:
            status = handle.wait()
        except Exception:  # the waiter must always report, or the wave would never end
            status = None
        done.set()
        self.events.put((FINISHED, task_id, status))

    def _expire(self, run: TaskRun, done: threading.Event) -> None:
        """A task past its timeout is stopped as an interrupted one is: its whole group, TERM then KILL."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        assert run.task.timeout is not None and run.handle is not None
        if done.wait(run.task.timeout):
            return
        run.timed_out.set()
        run.handle.signal(signal.SIGTERM)
        if not done.wait(self.grace):
            run.handle.signal(signal.SIGKILL)

    # -- interrupt --------------------------------------------------------------------------------------
    def _next_event(self, timeout: float | None = None) -> tuple[str, str, Any]:
        """The next task start or end, starts in launch order; warnings that arrive meanwhile are passed
        on. ``queue.Empty`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.released:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.events.get(timeout=left)
            if event[0] == WARNING:
                self.warn([event[1]])
            elif event[1] in self.held or event[1] in self.unannounced:
                self.held.setdefault(event[1], []).append(event)
                while self.unannounced and self.held.get(self.unannounced[0]):
                    self.released.extend(self.held.pop(self.unannounced.popleft()))
            else:
                self.released.append(event)
        return self.released.popleft()

    def _shutdown(self) -> None:
        """SIGTERM every running group, SIGKILL after the grace period, cancel pending; record it all.

        A task still starting gets the signal through its guard, which passes it on once the agent runs.
        """
        self.result.interrupted = True
        self.emit("run_interrupted")
        running = [r for r in self.runs.values() if r.state == RUNNING]
        for run in running:
            if run.handle is not None:
                run.handle.signal(signal.SIGTERM)
        remaining = {r.task.id for r in running}
        self._settle(remaining, time.monotonic() + self.grace)
        for task_id in remaining:
            handle = self.runs[task_id].handle
            if handle is not None:
                handle.signal(signal.SIGKILL)
        self._settle(remaining, None)
        for task_id in remaining:
            self._record_stopped(task_id, None)
        for run in self.runs.values():
            if run.handle is not None and run.state != PENDING:
                run.handle.signal(signal.SIGKILL)  # stragglers that left the leader behind
        self._cancel([r.task.id for r in self.runs.values() if r.state == PENDING])

    def _settle(self, remaining: set[str], deadline: float | None) -> None:
        """Record the ends of ``remaining`` tasks as they come, until ``deadline`` (None: 5 s between two
        ends); a start that comes meanwhile is recorded too, and a start that failed is an end."""
        while remaining:
            left = 5.0 if deadline is None else deadline - time.monotonic()
            try:
                kind, task_id, value = self._next_event(timeout=max(0.0, left))
            except queue.Empty:
                return
            if kind == STARTED:
                self._started(task_id)
                continue
            if kind == LAUNCH_FAILED:
                self._failed_to_start(self.runs[task_id], value)
            elif self.runs[task_id].cancelled_late:
                self._was_cancelled(self.runs[task_id])
            else:
                self._record_stopped(task_id, value)
            remaining.discard(task_id)

    def _record_stopped(self, task_id: str, status: int | None) -> None:
        run = self.runs[task_id]
        if run.pid is None:  # its start never came (a stalled guard factory): it never ran
            self._cancel([task_id])
            return
        if run.follower is not None:
            run.follower.stop()
        run.exit_status = status
        run.state, run.reason = STOPPED, "interrupted"
        run.ended = self._mark(lifecycle.mark_ended, run.inst_id, STOPPED, status)
        self._emit_finished(run)

    def _emit_finished(self, run: TaskRun) -> None:
        self.emit(
            "task_finished",
            wave=run.wave,
            task=run.task.id,
            status=run.state,
            label=run.label,
            exit_status=run.exit_status,
            ok=run.ok,
            elapsed=run.elapsed,
        )
