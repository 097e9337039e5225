"""sdk mode: the wrapped argv started directly, in its own session (and so its own process group).

The one exception is a foreground spawn on a terminal kas itself holds: an interactive agent needs that
terminal, so it becomes the terminal's foreground process group inside kas's session instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kas import lifecycle
from kas import platform as host
from kas.errors import KasError, LaunchError
from kas.launch.base import LaunchSpec, Poll, SpawnOutcome
from kas.launch.groups import STOP_SIGNALS, exit_code, signal_group, stop_group
from kas.launch.session import lower_group
from kas.launch.tree import (
    GuardRef,
    Report,
    StartUnheard,
    guard_prefix,
    guarded,
    guards_dir,
    rules_path,
    signal_tree,
    stop_tree,
)
from kas.logwriter import pump

if TYPE_CHECKING:
    from kas.launch.prepare import Prepared
    from kas.launch.zygote import Zygote
    from kas.registry import Instance, Registry


def popen(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    stdin: Any = subprocess.DEVNULL,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    terminal: int | None = None,
    dies_with_parent: bool = False,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start argv as a new session leader (or, with ``terminal``, as that terminal's foreground group).

    With ``dies_with_parent`` (Linux) the kernel kills it when this process dies, even by SIGKILL.
    A command that cannot start is a ``LaunchError``.
    """
    placement: dict[str, Any] = (
        {"start_new_session": True} if terminal is None else {"preexec_fn": _take_terminal(terminal)}
    )
    if dies_with_parent and terminal is None and sys.platform.startswith("linux"):
        placement["preexec_fn"] = _die_with_parent
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            **placement,
        )
    except FileNotFoundError:
        raise LaunchError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise LaunchError(f"permission denied: {argv[0]}") from None
    except OSError as exc:
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror}") from None
    if terminal is not None:
        with contextlib.suppress(OSError):  # the child may already have done it and exec'd
            os.setpgid(proc.pid, proc.pid)
    return proc


def foreground_terminal() -> int | None:
    """fd 0 if stdin is a terminal whose foreground process group is kas's own, else None.

    A kas run in the background (``kas spawn ... &``) must not steal the terminal.
    """
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _take_terminal(fd: int) -> Any:
    def setup() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)

    return setup


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec; survives the exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def reclaim_terminal(fd: int, group: int | None = None) -> None:
    """Make kas's own group (or ``group``) the terminal's foreground again once the agent is done."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, os.getpgrp() if group is None else group)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)


def foreground_is(fd: int, group: int) -> bool:
    try:
        return os.tcgetpgrp(fd) == group
    except OSError:
        return False


def wait_as_job(proc: subprocess.Popen[bytes], fd: int) -> int:
    """Wait for an agent that holds kas's terminal with no guard between (macOS): kas is its parent and
    does what the guard does on Linux. Stopped from the keyboard (Ctrl-Z), it stops kas's own job, so
    the shell shows its prompt; continued (``fg``, ``bg``), kas continues it, with the terminal if the
    job has it."""
    while True:
        _, wstatus = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(wstatus):
            proc.returncode = os.waitstatus_to_exitcode(wstatus)
            return exit_code(proc.returncode)
        if not foreground_is(fd, os.getpgrp()):  # unless `fg` came first: then the agent just goes on
            if foreground_is(fd, proc.pid):
                reclaim_terminal(fd)
            os.killpg(os.getpgrp(), signal.SIGTSTP)  # kas stops here until the shell continues its job
        if foreground_is(fd, os.getpgrp()):
            reclaim_terminal(fd, proc.pid)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGCONT)


def _ask(factory: Zygote, request: tuple[list[str], list[str], Mapping[str, str], str]) -> Report:
    """Send one request (options, argv, env, cwd) with a new report pipe; the pipe's read end."""
    report_r, report_w = os.pipe()
    try:
        factory.start(*request, report_w)
    except BaseException:  # a LaunchError, or Ctrl-C while the request waited for the zygote
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    return Report(report_r)


DRAIN = 1.0  # seconds to let the log catch up with an agent that has ended


class SdkHandle:
    """An agent process: our own child (``proc``), or one found again by pid and kernel start time."""

    def __init__(
        self,
        pid: int | None,
        create_time: float | None = None,
        proc: subprocess.Popen[bytes] | None = None,
        guard: GuardRef | None = None,
        report: Report | None = None,
    ) -> None:
        self.pid: int | None = pid
        self.target: str | None = None
        self.create_time = create_time
        self.proc = proc  # our child: the guard, or the agent itself where there is no guard
        self.guard = guard
        # A guard from the zygote names the agent on this pipe, and later tells its status there.
        self.report = report
        # Asks again, once, for a start no guard answered (``SdkLauncher._retry``).
        self.retry: Callable[[StartUnheard], Report] | None = None
        self.pump: threading.Event | None = None  # set once its output is all in the log

    def ready(self) -> None:
        """Wait until the agent runs: a guard from the zygote names itself and the agent on its report
        pipe (until then ``pid`` is None). ``LaunchError`` if it could not start."""
        if self.report is None or self.pid is not None:
            return
        from kas.probe import create_time

        try:
            agent, guard = self.report.started()
        except StartUnheard as unheard:
            if self.retry is None:
                raise
            retry, self.retry = self.retry, None
            self.report = retry(unheard)  # once, through a new guard factory
            agent, guard = self.report.started()
        self.create_time = create_time(agent)
        self.guard = GuardRef(guard, create_time(guard))
        self.pid = agent

    def wait(self) -> int | None:
        if self.report is not None:
            return self._outlived_guard(self.report.ended())
        if self.proc is not None:
            status: int | None = exit_code(self.proc.wait())
            if self.guard is not None and self.pid:
                status = self._outlived_guard(status)
            if self.pump is not None:
                # Every byte is in the log before anyone reads it as complete; a process the agent left
                # behind that still holds its output is not waited for.
                self.pump.wait(DRAIN)
            return status
        from kas.probe import wait_gone

        if self.pid:
            wait_gone(self.pid, self.create_time)
        return None  # not our child: whoever is its parent records the status

    def _outlived_guard(self, status: int | None) -> int | None:
        """The guard ended: if the agent did not (the guard was killed), wait for the agent itself; its
        status can no longer be seen (None: lost)."""
        from kas.probe import create_time, wait_gone

        born = create_time(self.pid) if self.pid else None
        if not self.pid or born is None or (self.create_time and abs(born - self.create_time) > 0.05):
            return status
        wait_gone(self.pid, born)
        return None

    def poll(self) -> Poll:
        if self.report is not None:
            if self.report.status is None and not self.report.ready():
                return Poll(True)
            return Poll(False, self.report.ended())
        if self.proc is not None:
            code = self.proc.poll()
            return Poll(code is None, None if code is None else exit_code(code))
        from kas.probe import is_alive

        return Poll(is_alive(self.pid, self.create_time))

    def signal(self, sig: int) -> bool:
        """Our own child's group is signalled even after the leader ended (what it left behind); an
        agent found again by pid only while the kernel still shows that very process."""
        if not self.pid or (self.proc is None and self.report is None and not self.poll().running):
            return False
        if self.guard is not None:
            return signal_tree(self.pid, self.guard, sig)
        return signal_group(self.pid, sig)

    def stop(self, grace: float) -> int | None:
        if self.pid and self.poll().running:
            stop_tree(self.pid, self.guard, grace)
        if self.report is not None:
            return self.wait()
        if self.proc is not None:
            return exit_code(self.proc.wait())
        return None

    def discard(self) -> list[Path]:
        return []


class SdkLauncher:
    """Agents as direct children (waves, the bench, a foreground spawn) or under a detached supervisor."""

    mode = "sdk"
    tools: tuple[str, ...] = ()
    always_detached = False

    def __init__(self) -> None:
        self._zygote: Zygote | None = None
        self._no_zygote = False
        self._guards: Path | None = None  # the guards' directory, checked once per launcher
        self._factory_lock = threading.Lock()  # waiters may replace a failed factory too

    def start(self, spec: LaunchSpec) -> SdkHandle:
        """Output goes into the bounded log (see kas.logfile), or nowhere.

        An agent that need not die with this process (a wave's task) gets its guard from the zygote, a
        fork instead of a new interpreter, and this returns as soon as the guard is there: ``ready``
        waits for the agent itself, so a wave can go on while it starts. The bench's agents, which must
        die with this process, start their own guards.
        """
        if spec.guard is not None and not spec.dies_with_caller:
            factory = self._factory(spec.guard)
            if factory is not None:
                return self._start_forked(spec, factory)
        reader, writer = os.pipe() if spec.log else (-1, subprocess.DEVNULL)
        guard = guarded(spec.inst_id, spec.guard, spec.prepared.argv, die_with_parent=spec.dies_with_caller)
        try:
            proc = popen(
                guard.argv if guard else spec.prepared.argv,
                spec.env,
                spec.cwd,
                stdout=writer,
                stderr=writer,
                dies_with_parent=spec.dies_with_caller and guard is None,
                pass_fds=(guard.report_w,) if guard else (),
            )
        except LaunchError:
            if spec.log:
                os.close(reader)
            if guard:
                guard.abandon()
            raise
        finally:
            if spec.log:
                os.close(writer)
        handle = SdkHandle(proc.pid, proc=proc)
        if spec.log:
            handle.pump = pump(reader, spec.log)
        if guard:
            guard.close_parent_end()
            try:
                handle.pid, handle.guard = guard.started(proc.pid)
            except LaunchError:
                proc.wait()
                raise
            from kas.probe import create_time

            handle.create_time = create_time(handle.pid)
        return handle

    def spawn(self, spec: LaunchSpec, registry: Registry, *, foreground: bool) -> SpawnOutcome:
        if foreground:
            return self._foreground(spec, registry)
        return self._supervised(spec, registry)

    def attach(self, inst: Instance) -> SdkHandle:
        guard = GuardRef(inst.guard_pid, inst.guard_create_time) if inst.guard_pid else None
        return SdkHandle(inst.pid or 0, inst.pid_create_time, guard=guard)

    def describe(self, prepared: Prepared) -> dict[str, str]:
        return {}

    def release(self) -> None:
        """The zygote starts nothing more (and leaves once its guards have ended)."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def _factory(self, rules: Mapping[str, Any], replacing: Zygote | None = None) -> Zygote | None:
        """The wave's guard factory, started on first use; ``replacing`` one that failed starts another
        (once, whichever thread finds it failed first)."""
        from kas.launch import zygote

        with self._factory_lock:
            if replacing is not None and self._zygote is replacing:
                self._zygote = None
                replacing.discard()
            if self._zygote is None and not self._no_zygote and zygote.available():
                try:
                    self._zygote = zygote.Zygote(rules)
                except OSError:
                    self._no_zygote = True  # guards then start as their own interpreters
            return self._zygote

    def _start_forked(self, spec: LaunchSpec, factory: Zygote) -> SdkHandle:
        """Ask the zygote for a guard, which writes the agent's output to its log itself; ``ready`` on
        the handle waits for the agent. A zygote that is gone is replaced once."""
        from kas.launch.zygote import FactoryGone

        assert spec.guard is not None
        if self._guards is None:
            self._guards = guards_dir()
        options = guard_prefix(rules_path(spec.inst_id, self._guards), spec.guard)[4:]  # after the program
        options += ["--log", str(spec.log)] if spec.log else []
        request = (options, spec.prepared.argv, spec.env, str(spec.cwd))
        try:
            report = _ask(factory, request)
        except FactoryGone:
            replacement = self._factory(spec.guard, replacing=factory)
            if replacement is None:
                raise
            factory = replacement
            report = _ask(factory, request)
        handle = SdkHandle(None, report=report)
        rules = spec.guard

        def retry(unheard: StartUnheard) -> Report:
            """Ask a new factory, if the request cannot have started: it timed out (its pipe is closed,
            so a guard that takes it late starts nothing), or its zygote died with it still queued."""
            if not unheard.timed_out and factory.alive(patience=0.5):
                raise unheard  # a guard took it and ended unheard: asking again could start it twice
            replacement = self._factory(rules, replacing=factory)
            if replacement is None:
                raise unheard
            return _ask(replacement, request)

        handle.retry = retry
        return handle

    def row_fields(self) -> dict[str, str | None]:
        return {}

    def _foreground(self, spec: LaunchSpec, registry: Registry) -> SpawnOutcome:
        """Run attached to this terminal; stop signals are forwarded to the agent's whole tree.

        On a terminal kas holds, the agent gets it as its foreground group (Ctrl-C and keys go straight to
        it) and so shares this terminal's session: kas lowers that session's autogroup nice while the
        agent runs and puts it back afterwards. Otherwise the agent gets a session of its own. The guard
        between kas and the agent ends whatever the agent left behind (a shell's background job, a
        daemon): nothing kas started outlives it unseen.
        """
        terminal = foreground_terminal()
        stopped: list[int] = []
        started: list[int] = []  # the process kas started (the guard, or the agent where there is none)
        agents: list[int] = []  # the agent, once known: its group holds the terminal while it runs
        session_group = host.read_autogroup(os.getpid()) if terminal is not None else None
        guard = guarded(spec.inst_id, spec.guard, spec.prepared.argv, terminal=terminal is not None)

        def send(signum: int) -> None:
            if guard is None:
                signal_group(started[0], signum)
                return
            with contextlib.suppress(OSError):  # the guard passes it to the agent's whole tree
                os.kill(started[0], signum)

        def forward(signum: int, _frame: Any) -> None:
            stopped.append(signum)
            if started:  # a signal before the start is passed on right after it
                send(signum)

        def resumed(_signum: int, _frame: Any) -> None:
            if started and guard is not None:  # after Ctrl-Z, `fg` or `bg`: the guard continues the agent
                with contextlib.suppress(OSError):
                    os.kill(started[0], signal.SIGCONT)

        # In place before the agent starts: a stop signal can never find kas without its forwarder.
        previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
        previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, resumed)
        try:
            try:
                proc = popen(
                    guard.argv if guard else spec.prepared.argv,
                    spec.env,
                    spec.cwd,
                    stdin=None,
                    terminal=terminal,
                    pass_fds=(guard.report_w,) if guard else (),
                )
            except LaunchError:
                if guard:
                    guard.abandon()
                lifecycle.mark_failed(registry, spec.inst_id)
                raise
            started.append(proc.pid)
            for signum in stopped:
                send(signum)
            agent, guard_ref = proc.pid, None
            if guard:
                guard.close_parent_end()
                try:
                    agent, guard_ref = guard.started(proc.pid)
                    agents.append(agent)
                except LaunchError:
                    proc.wait()
                    lifecycle.mark_failed(registry, spec.inst_id)
                    raise
            from kas.probe import create_time

            handle = SdkHandle(agent, create_time(agent) if guard_ref else None, proc=proc, guard=guard_ref)
            outcome = SpawnOutcome(handle)
            problem = lower_group(agent, spec.autogroup_nice)
            outcome.warnings += [problem] if problem else []
            try:
                lifecycle.mark_running(registry, spec.inst_id, agent, guard=guard_ref)
            except BaseException:  # an agent kas cannot record is not left running
                stop_tree(agent, guard_ref, 2.0)
                proc.wait()
                raise
            status = wait_as_job(proc, terminal) if guard is None and terminal is not None else handle.wait()
            if stopped and guard is None:  # what the agent left of its group (a shell's background job)
                stop_group(proc.pid, 2.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if terminal is not None:
                # Only from the agent (or its guard): after `bg` or `kill %1` the shell holds the terminal,
                # and taking it from the shell would leave it reading end-of-file.
                if any(foreground_is(terminal, group) for group in (*started, *agents)):
                    reclaim_terminal(terminal)
                if session_group and session_group != host.ROOT_AUTOGROUP and spec.autogroup_nice:
                    problem = host.set_autogroup_nice(os.getpid(), session_group[1])
                    if problem:
                        outcome.warnings.append(
                            f"{problem} (this terminal's session stays lowered until it ends)"
                        )
        lifecycle.mark_exited(registry, spec.inst_id, status)  # None: lost (its guard was killed)
        outcome.exit_status = 1 if status is None else status
        return outcome

    def _guarded_detached(self, spec: LaunchSpec, registry: Registry, log: Path) -> SpawnOutcome:
        """One process per detached agent: its guard, which outlives kas, owns the row and records the end."""
        from kas.logfile import RotatingLog

        guard = guarded(spec.inst_id, spec.guard, spec.prepared.argv, log=log, record=registry.path)
        assert guard is not None
        try:
            proc = popen(
                guard.argv, spec.env, spec.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(guard.report_w,),
            )  # fmt: skip
        except LaunchError:
            guard.abandon()
            lifecycle.mark_failed(registry, spec.inst_id, log_path=str(log))
            raise
        guard.close_parent_end()
        try:
            agent, guard_ref = guard.started(proc.pid)
        except LaunchError as exc:
            proc.wait()
            lifecycle.mark_failed(registry, spec.inst_id, log_path=str(log))
            RotatingLog(log).write(f"kas: {exc}\n".encode())
            raise
        except BaseException:  # interrupted before the agent was named: the guard takes its tree with it
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGUSR2)
            proc.wait()
            raise
        try:
            lifecycle.mark_running(
                registry,
                spec.inst_id,
                agent,
                log_path=str(log),
                owner_pid=proc.pid,
                owner_create_time=guard_ref.create_time,
                guard=guard_ref,
            )
        except BaseException:  # a registry error, or Ctrl-C while it waited: nothing is left unrecorded
            stop_tree(agent, guard_ref, 2.0)
            proc.wait()
            with contextlib.suppress(KasError):
                lifecycle.mark_failed(registry, spec.inst_id, log_path=str(log))
            raise
        row = registry.get(spec.inst_id)
        return SpawnOutcome(SdkHandle(agent, row.pid_create_time if row else None, guard=guard_ref))

    def _supervised(self, spec: LaunchSpec, registry: Registry) -> SpawnOutcome:
        """Detached: the agent's guard (or, where there is none, a small supervisor process) starts it,
        writes its output to the log, and records its end."""
        log = spec.log
        assert log is not None, "a detached agent always has a log"
        if spec.guard is not None:
            return self._guarded_detached(spec, registry, log)
        payload = {
            "id": spec.inst_id,
            "db": str(registry.path),
            "argv": spec.prepared.argv,
            "env": dict(spec.env),
            "cwd": str(spec.cwd),
            "log": str(log),
            "autogroup_nice": spec.autogroup_nice,
            "guard": dict(spec.guard) if spec.guard is not None else None,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "kas.launch.supervisor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd="/",
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(payload).encode())
        proc.stdin.close()
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("pid "):
            proc.wait()
            message = line or proc.stderr.read().decode().strip() or "supervisor failed"
            lifecycle.mark_failed(registry, spec.inst_id, log_path=str(log))
            raise LaunchError(message.removeprefix("error "))
        warnings = [w.removeprefix("kas: ") for w in proc.stderr.read().decode().splitlines() if w]
        row = registry.get(spec.inst_id)
        pid = int(line.split()[1])
        handle = self.attach(row) if row is not None else SdkHandle(pid)
        return SpawnOutcome(handle, warnings=warnings)
