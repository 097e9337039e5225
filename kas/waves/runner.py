"""Drive the pure scheduler with real launches: one waiter thread per task turns its end into an event.

The main thread only blocks on its inbox (task events, and signals), so a finished task promotes the next
one at once (no polling delay). Ctrl-C / SIGTERM stop every running group (SIGTERM, then SIGKILL after a
grace period), cancel what is pending and leave the registry consistent.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kas.errors import LaunchError
from kas.instances import mark_running
from kas.launch import sdk, tmux
from kas.launch.prepare import Prepared, ensure_command, prepare, warn_once
from kas.launch.session import lower_agent_group
from kas.logs import LogFollower
from kas.registry import Instance, Registry, new_id
from kas.resolver import ResolvedProfile
from kas.statedir import private_dir, private_file, state_dir
from kas.waves.inbox import Inbox
from kas.waves.plan import Plan, Task
from kas.waves.scheduler import CANCELLED, DONE, FAILED, PENDING, RUNNING, WaveScheduler

Emit = Callable[[dict[str, Any]], None]


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
    """One task's life in this run, for the live view and the summary."""

    task: Task
    wave: int
    inst_id: str
    log: Path
    state: str = PENDING
    pid: int | None = None
    pane: str | None = None
    started: float | None = None
    ended: float | None = None
    exit_status: int | None = None
    reason: str | None = None
    prepared: Prepared | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.time()) - self.started

    @property
    def label(self) -> str:
        if self.state == FAILED:
            return f"failed {self.exit_status}" if self.exit_status is not None else "failed"
        return self.state


@dataclass
class RunResult:
    run_id: str
    tasks: list[TaskRun] = field(default_factory=list)
    interrupted: bool = False
    stopped_before: int | None = None  # 1-based wave number not started (declined or no terminal)

    @property
    def failed(self) -> list[TaskRun]:
        return [t for t in self.tasks if t.state == FAILED]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


class Interrupted(Exception):
    """Raised into the main thread's wait when Ctrl-C or SIGTERM arrives."""


class WaveRunner:
    def __init__(
        self,
        plan: Plan,
        resolved: ResolvedProfile,
        options: RunOptions,
        emit: Emit,
        confirm: Callable[[int], bool],
        output: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.resolved = resolved
        self.options = options
        self.emit_event = emit
        self.confirm = confirm
        self.output = output
        self.events: Inbox[tuple[str, str, int | None]] = Inbox()
        self.result = RunResult(new_id())
        self.runs: dict[str, TaskRun] = {}
        self.registry = Registry()
        self.log_dir = private_dir(private_dir(state_dir() / "logs") / f"run-{self.result.run_id}")
        self.scheduler = WaveScheduler([], 0)  # replaced as each wave starts
        from kas.probe import create_time

        self.owner = (os.getpid(), create_time(os.getpid()))
        self._waiting = False
        self._interrupt = False

    # -- events -----------------------------------------------------------------------------------------
    def emit(self, event: str, **data: Any) -> None:
        self.emit_event({"event": event, "run": self.result.run_id, "at": time.time(), **data})

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.result.interrupted:
            # A second Ctrl-C while stopping: do not wait out the grace period.
            for run in self.runs.values():
                if run.state == RUNNING and run.pid:
                    sdk.signal_group(run.pid, signal.SIGKILL)
            return
        self._interrupt = True
        if self._waiting:
            raise Interrupted

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        previous = {s: signal.signal(s, self._on_signal) for s in sdk.STOP_SIGNALS}
        cap = self.resolved["max_parallel_wave_tasks"]
        self.emit(
            "run_started",
            plan=self.plan.name,
            waves=len(self.plan.waves),
            tasks=self.plan.task_count,
            cap=cap,
            mode=self.options.mode,
            profile=self.resolved.name,
        )
        try:
            with self.events:
                self._run_waves(cap)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.registry.close()
        self.emit(
            "run_done",
            exit_code=self.result.exit_code,
            failed=[t.task.id for t in self.result.failed],
            interrupted=self.result.interrupted,
        )
        return self.result

    def _run_waves(self, cap: int) -> None:
        try:
            for index in range(1, len(self.plan.waves) + 1):
                if index > 1 and not self._ask(index):
                    self.result.stopped_before = index
                    break
                if self._interrupt:
                    raise Interrupted
                self._run_wave(index, cap)
                if self.options.fail_fast and self.result.failed:
                    break
        except Interrupted:
            self._shutdown()

    def _ask(self, index: int) -> bool:
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
                _kind, task_id, status = self.events.get()
            finally:
                self._waiting = False
            self._finished(task_id, status)
        counts = {
            s: sum(1 for t in wave.tasks if self.runs[t.id].state == s) for s in (DONE, FAILED, CANCELLED)
        }
        self.emit("wave_done", wave=index, name=wave.name, **counts)

    def _finished(self, task_id: str, status: int | None) -> None:
        run = self.runs[task_id]
        run.ended, run.exit_status = time.time(), status
        ok = status == 0
        run.state = DONE if ok else FAILED
        if status is None:
            run.reason = "lost: exit status unknown"
        self.registry.update(run.inst_id, status="exited", exit_status=status, ended_at=run.ended)
        self.emit(
            "task_finished", wave=run.wave, task=task_id, exit_status=status, ok=ok, elapsed=run.elapsed
        )
        if not ok and self.options.fail_fast:
            self._cancel(self.scheduler.stop_promoting())
        self._launch_all(self.scheduler.finish(task_id, ok))

    def _launch_all(self, task_ids: list[str]) -> None:
        """Launch promoted tasks; one that cannot start fails at once and promotes the next in turn."""
        work = list(task_ids)
        while work:
            if self._interrupt:
                raise Interrupted
            task_id = work.pop(0)
            run = self.runs[task_id]
            try:
                self._launch(run)
            except LaunchError as exc:
                run.state, run.reason, run.ended = FAILED, str(exc), time.time()
                run.started = run.started or run.ended
                self.registry.update(run.inst_id, status="failed", ended_at=run.ended)
                self.emit("task_failed", wave=run.wave, task=task_id, reason=str(exc))
                if self.options.fail_fast:
                    self._cancel(self.scheduler.stop_promoting())
                work += self.scheduler.finish(task_id, False)

    def _cancel(self, task_ids: list[str]) -> None:
        now = time.time()
        for task_id in task_ids:
            run = self.runs[task_id]
            run.state, run.ended = CANCELLED, now
            self.registry.update(run.inst_id, status="cancelled", ended_at=now)
            self.emit("task_cancelled", wave=run.wave, task=task_id)

    # -- launching --------------------------------------------------------------------------------------
    def _pending_row(self, run: TaskRun) -> Instance:
        """Prepare a task (argv and env, once) and describe it as a pending registry row."""
        task = run.task
        prepared = run.prepared = prepare(self.resolved, task.argv, {**os.environ, **task.env})
        warn_once(prepared.warnings)
        return Instance(
            id=run.inst_id,
            name=task.name,
            mode=self.options.mode,
            status="pending",
            cwd=str(task.cwd),
            argv=task.argv,
            wrapped_argv=prepared.argv,
            resource_profile=self.resolved.name,
            settings=dict(self.resolved.settings),
            env={**task.env, **prepared.env},
            log_path=str(run.log),
            tmux_socket=self.options.tmux_socket if self.options.mode == "tmux" else None,
            wave_run=self.result.run_id,
            wave_index=run.wave,
            task_id=task.id,
            owner_pid=self.owner[0],
            owner_create_time=self.owner[1],
        )

    def _launch(self, run: TaskRun) -> None:
        task = run.task
        caller_env = {**os.environ, **task.env}
        prepared = run.prepared
        assert prepared is not None, "tasks are prepared when their wave is registered"
        ensure_command(task.argv, task.cwd, prepared.full_env(caller_env))
        if self.options.mode == "tmux":
            info = tmux.start(
                run.inst_id,
                prepared.argv,
                {**task.env, **prepared.env},
                task.cwd,
                socket=self.options.tmux_socket,
                session_name=self.options.tmux_session,
                window_name=task.name,
                log_path=run.log,
                prefix_len=len(prepared.prefix),
            )
            run.pid, run.pane = info.pid, info.pane_id
            pane_id = info.pane_id
            # The pane's output reaches the log through pipe-pane; echo it from there as it comes.
            follower = LogFollower(run.log, self._echo_to(task.id)) if self._streams else None

            def waiter() -> int | None:
                status = tmux.wait(self.options.tmux_socket, run.inst_id, pane_id)
                if follower is not None:
                    follower.stop()
                return status

        else:
            run.pid, waiter = self._start_sdk(run, prepared.argv, prepared.full_env(caller_env))
        _, run.started = mark_running(self.registry, run.inst_id, run.pid, tmux_target=run.pane)
        run.state = RUNNING
        threading.Thread(target=self._wait, args=(run.task.id, run.pid, waiter), daemon=True).start()
        self.emit("task_promoted", wave=run.wave, task=task.id, pid=run.pid, instance=run.inst_id)

    def _start_sdk(
        self, run: TaskRun, argv: list[str], env: dict[str, str]
    ) -> tuple[int, Callable[[], int | None]]:
        log = open(run.log, "ab")  # noqa: SIM115 - closed by the waiter when the task ends
        stream = self._streams
        try:
            proc = sdk.start(
                argv,
                env,
                run.task.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stream else log,
                stderr=subprocess.STDOUT if stream else log,
            )
        except LaunchError:
            log.close()
            raise
        reader = None
        if stream:
            reader = threading.Thread(target=self._pump, args=(run.task.id, proc, log), daemon=True)
            reader.start()

        def wait() -> int | None:
            code = sdk.exit_code(proc.wait())
            if reader is not None:
                reader.join()
            log.close()
            return code

        return proc.pid, wait

    @property
    def _streams(self) -> bool:
        """--show-output with somewhere to show it."""
        return self.options.show_output and self.output is not None

    def _echo_to(self, task_id: str) -> Callable[[bytes], None]:
        def echo(raw: bytes) -> None:
            assert self.output is not None
            self.output(task_id, raw.decode(errors="replace").rstrip("\r\n"))

        return echo

    def _pump(self, task_id: str, proc: subprocess.Popen[bytes], log: Any) -> None:
        assert proc.stdout is not None
        echo = self._echo_to(task_id)
        for raw in proc.stdout:
            log.write(raw)
            log.flush()
            echo(raw)

    def _wait(self, task_id: str, pid: int | None, waiter: Callable[[], int | None]) -> None:
        """Lower the task's autogroup, then wait for it: both off the event loop, since the kernel may make
        the autogroup write wait its turn (one per 100 ms for a normal user) behind the other tasks'."""
        if pid:
            lower_agent_group(self.resolved, pid)
        try:
            status = waiter()
        except Exception:  # the waiter must always report, or the wave would never end
            status = None
        self.events.put(("finished", task_id, status))

    # -- interrupt --------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """SIGTERM every running group, SIGKILL after the grace period, cancel pending; record it all."""
        self.result.interrupted = True
        self.emit("run_interrupted")
        running = [r for r in self.runs.values() if r.state == RUNNING]
        for run in running:
            if run.pid:
                sdk.signal_group(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace
        remaining = {r.task.id for r in running}
        while remaining and time.monotonic() < deadline:
            try:
                _, task_id, status = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._record_stopped(task_id, status)
            remaining.discard(task_id)
        for task_id in remaining:
            run = self.runs[task_id]
            if run.pid:
                sdk.signal_group(run.pid, signal.SIGKILL)
        for _ in list(remaining):
            try:
                _, done_id, status = self.events.get(timeout=5)
            except queue.Empty:
                break
            self._record_stopped(done_id, status)
            remaining.discard(done_id)
        for task_id in remaining:
            self._record_stopped(task_id, None)
        for run in self.runs.values():
            if run.pid and run.state != PENDING:
                sdk.signal_group(run.pid, signal.SIGKILL)  # stragglers that left the leader behind
        self._cancel([r.task.id for r in self.runs.values() if r.state == PENDING])

    def _record_stopped(self, task_id: str, status: int | None) -> None:
        run = self.runs[task_id]
        run.ended, run.exit_status = time.time(), status
        run.state, run.reason = FAILED, "interrupted"
        self.registry.update(run.inst_id, status="exited", exit_status=status, ended_at=run.ended)
        self.emit(
            "task_finished", wave=run.wave, task=task_id, exit_status=status, ok=False, elapsed=run.elapsed
        )
