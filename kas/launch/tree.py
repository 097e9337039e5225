"""An agent's whole tree, as kas reaches it from outside: the guard's command line and rules, its first
word (the agent's pid), and signals and stops that reach every process below the guard.

The guard itself (``guard.py``) is a separate, standard-library-only program; this module is what the
launchers and ``kas instance`` use to start it and to talk to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from kas import platform as host
from kas.errors import LaunchError
from kas.launch.groups import MAX_GRACE, signal_group
from kas.resolver import ResolvedProfile, agent_cpus
from kas.statedir import private_dir, state_dir

GUARD_PROGRAM = Path(__file__).with_name("guard.py")
IOCLASS = {"best-effort": 2, "idle": 3}
SCHED_POLICY = {"batch": 3, "idle": 5}  # SCHED_BATCH, SCHED_IDLE (Linux); normal is SCHED_OTHER, 0
REPORT_TIMEOUT = 20.0  # a guard that has not started its agent by then is taken as broken
KILL_PATIENCE = 2.0  # after SIGUSR2 (kill everything), how long the guard gets to report the tree gone


class GuardRef(NamedTuple):
    """A running guard, identified as the kernel knows it (a recycled pid has another start time)."""

    pid: int
    create_time: float | None

    def alive(self) -> bool:
        from kas.probe import is_alive

        return is_alive(self.pid, self.create_time)


def guard_rules(resolved: ResolvedProfile, autogroup_nice: int, platform: str) -> dict[str, Any] | None:
    """What the guard keeps on every process of the tree; None where there is no guard (not Linux).

    Under ``normal`` the rules are empty: the guard still holds the tree (nothing escapes a stop), it only
    lowers nothing.
    """
    if not platform.startswith("linux"):
        return None
    s = resolved.settings
    rules: dict[str, Any] = {"autogroup": autogroup_nice}
    if resolved.active:
        rules["nice"] = s.nice
        if s.ionice_class in IOCLASS:
            rules.update(ioclass=IOCLASS[s.ionice_class], iolevel=s.ionice_level)
        rules["oom"] = s.oom_score_adj
        rules["affinity"] = agent_cpus(s.reserve_cpus, host.cpus())
        rules["policy"] = SCHED_POLICY.get(s.sched_policy)
    return rules


def guards_dir() -> Path:
    """Where guards keep their rules and figures (private: it is part of kas's state)."""
    return private_dir(state_dir() / "guards")


def rules_path(inst_id: str, folder: Path | None = None) -> Path:
    """The rules file of ``inst_id``'s guard. The guard writes it itself at its first look (a start waits
    for no file); ``kas profile apply`` rewrites it (``write_rules``)."""
    return (folder or guards_dir()) / f"{inst_id}.json"


def write_rules(inst_id: str, rules: Mapping[str, Any]) -> Path:
    """Write the rules whole (0600, then renamed into place), so the guard never reads half a file."""
    path = rules_path(inst_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(dict(rules), out)
    os.replace(tmp, path)
    return path


def guard_argv(
    rules_file: Path,
    rules: Mapping[str, Any],
    argv: list[str],
    *,
    report_fd: int,
    terminal: bool = False,
    die_with_parent: bool = False,
    adopt: int | None = None,
    log: Path | None = None,
    record: tuple[Path, str] | None = None,
) -> list[str]:
    """The command that runs ``argv`` under a guard: an isolated interpreter (``-I -S``: no site, no
    user paths), which keeps the per-agent process small and deaf to the agent's PYTHON* variables."""
    command = [*guard_prefix(rules_file, rules), "--report-fd", str(report_fd)]
    command += ["--terminal"] if terminal else []
    command += ["--die-with-parent"] if die_with_parent else []
    command += ["--adopt", str(adopt)] if adopt else []
    command += ["--log", str(log)] if log else []
    command += ["--record", str(record[0]), "--id", record[1]] if record else []
    return [*command, "--", *argv]


def guard_prefix(rules_file: Path, rules: Mapping[str, Any]) -> list[str]:
    """The guard's command up to its per-launch options (a tmux pane adds its own report pipe). The rules
    come on the command line too, so the guard starts the agent before it needs a JSON parser."""
    from kas.launch.guard import encode_rules

    return [
        sys.executable, "-I", "-S", str(GUARD_PROGRAM), "--rules", encode_rules(dict(rules)),
        "--rules-file", str(rules_file),
    ]  # fmt: skip


class StartUnheard(LaunchError):
    """No guard named the agent: the request timed out (``timed_out``), or its pipe closed unanswered
    (a zygote that died with it still queued, or a guard killed before it could answer)."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Report:
    """A guard's report pipe, read a line at a time: first ``pid AGENT GUARD`` (or ``error TEXT``), and,
    for a wave's task, ``exit N`` (or ``exit lost``) once the agent's tree is gone. A task's waiter and
    a thread that stops it may both ask for its end: one reads at a time, and both get the same answer."""

    def __init__(self, fd: int) -> None:
        import threading

        self.fd: int | None = fd
        self.buffer = b""
        self.lock = threading.RLock()
        self.status: tuple[int | None] | None = None  # the end, once read

    def line(self, timeout: float | None) -> str | None:
        """The next line; None at end of file (the guard ended without one). ``TimeoutError`` after
        ``timeout`` seconds (None: no limit)."""
        with self.lock:
            return self._line(timeout)

    def _line(self, timeout: float | None) -> str | None:
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.fd is None:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([self.fd], [], [], left)[0]):
                raise TimeoutError
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.close()
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()

    def ready(self) -> bool:
        """Whether ``line`` would answer at once (not while another thread waits on the pipe: then it
        has no line yet)."""
        import select

        if not self.lock.acquire(blocking=False):
            return False
        try:
            return b"\n" in self.buffer or self.fd is None or bool(select.select([self.fd], [], [], 0)[0])
        finally:
            self.lock.release()

    def started(self, timeout: float = REPORT_TIMEOUT) -> tuple[int, int]:
        """``(agent, guard)`` once the agent runs; a ``LaunchError`` with the guard's reason if not (and
        the pipe is closed: a guard that takes the request later sees nobody waits and starts nothing).
        ``StartUnheard`` if no guard said anything: it may never have had the request."""
        try:
            line = self.line(timeout)
        except TimeoutError:
            self.close()
            raise StartUnheard("the agent's guard did not start it in time", timed_out=True) from None
        if line is None:
            raise StartUnheard("the agent's guard ended before starting it", timed_out=False)
        words = line.split()
        if words[0:1] == ["pid"] and len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            return int(words[1]), int(words[2])
        self.close()
        raise LaunchError(line.removeprefix("error ") or "the agent's guard ended before starting it")

    def ended(self) -> int | None:
        """The agent's exit status (128 + N for a signal); None if it could not be seen (the guard was
        killed, or lost the agent)."""
        with self.lock:
            if self.status is None:
                line = self._line(None)
                self.close()
                word = (line or "").removeprefix("exit ")
                self.status = (int(word) if line and line.startswith("exit ") and word.isdigit() else None,)
            return self.status[0]

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = None


def read_report(fd: int, timeout: float = REPORT_TIMEOUT) -> tuple[int, int]:
    """The guard's first line, then the pipe is closed: ``(agent, guard)``, or a ``LaunchError``."""
    report = Report(fd)
    try:
        return report.started(timeout)
    finally:
        report.close()


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (the guard keeps orphans there, so this is the agent's whole tree)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def signal_tree(pid: int | None, guard: GuardRef | None, sig: int) -> bool:
    """Signal the agent's group and, with a live guard, every process in its tree; False if none was there.

    Used for SIGSTOP/SIGCONT (pause), which the guard could not pass on: a stopped process cannot be told.
    """
    reached = signal_group(pid, sig) if pid else False
    if guard is not None and guard.alive():
        for member in descendants(guard.pid):
            try:
                os.kill(member, sig)
                reached = True
            except OSError:
                pass
    return reached


def stop_tree(pid: int | None, guard: GuardRef | None, grace: float) -> None:
    """SIGTERM the whole tree (escaped sessions and daemons too), SIGKILL whatever is left after ``grace``.

    With a live guard it is the guard that passes SIGTERM to every process it holds; it exits once the
    agent and all it left are gone. Without one (an agent started before guards, or elsewhere than
    Linux) the agent's process group is what kas can reach.
    """
    from kas.launch.groups import stop_group
    from kas.probe import wait_gone

    if guard is None or not guard.alive():
        if pid:  # what is still below the agent, in its group or not (the guard that held it is gone)
            below = descendants(pid)
            for member in below:
                with contextlib.suppress(OSError):
                    os.kill(member, signal.SIGTERM)
                    os.kill(member, signal.SIGCONT)
            stop_group(pid, grace)
            for member in below:
                with contextlib.suppress(OSError):
                    os.kill(member, signal.SIGKILL)
        return
    with contextlib.suppress(OSError):  # the guard may end (and be reaped) at any moment from here
        os.kill(guard.pid, signal.SIGCONT)  # a frozen guard could pass nothing on
        os.kill(guard.pid, signal.SIGTERM)
    wait_gone(guard.pid, guard.create_time, timeout=min(max(grace, 0.0), MAX_GRACE))
    if guard.alive():
        with contextlib.suppress(OSError):
            os.kill(guard.pid, signal.SIGUSR2)
        wait_gone(guard.pid, guard.create_time, timeout=KILL_PATIENCE)
    if guard.alive():  # a guard that does not answer (stopped again, hung): kas ends the tree itself
        for member in descendants(guard.pid):
            with contextlib.suppress(OSError):
                os.kill(member, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(guard.pid, signal.SIGKILL)
    if pid:
        signal_group(pid, signal.SIGKILL)


def stop_keeping_daemons(pid: int, guard: GuardRef | None, grace: float) -> None:
    """Stop only the agent's own process group (``instance stop --keep-daemons``): its guard is told to
    let the rest go (SIGUSR1) and lives on only to copy their output into the log until they close it."""
    from kas.launch.groups import stop_group

    if guard is not None and guard.alive():
        with contextlib.suppress(OSError):  # it may have ended since
            os.kill(guard.pid, signal.SIGCONT)
            os.kill(guard.pid, signal.SIGUSR1)
    stop_group(pid, grace)


class Guarded(NamedTuple):
    """A command about to start under a guard, and the pipe on which the guard will name the agent."""

    argv: list[str]
    report_r: int
    report_w: int

    def close_parent_end(self) -> None:
        os.close(self.report_w)

    def abandon(self) -> None:
        for fd in (self.report_r, self.report_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def started(self, guard_pid: int) -> tuple[int, GuardRef]:
        """After the guard started: the agent's pid (read from the guard) and the guard's identity."""
        from kas.probe import create_time

        agent, _guard = read_report(self.report_r)
        return agent, GuardRef(guard_pid, create_time(guard_pid))


def guarded(
    inst_id: str,
    rules: Mapping[str, Any] | None,
    argv: list[str],
    *,
    terminal: bool = False,
    die_with_parent: bool = False,
    adopt: int | None = None,
    log: Path | None = None,
    record: Path | None = None,
) -> Guarded | None:
    """Put ``argv`` under a guard (None where there are no rules: no guard on this system); with ``adopt``,
    a guard that watches that running process's tree instead of starting one. A detached agent's guard
    also writes its output to ``log`` and its end to the registry at ``record``."""
    if rules is None:
        return None
    rules_file = rules_path(inst_id)
    report_r, report_w = os.pipe()
    os.set_inheritable(report_r, False)
    command = guard_argv(
        rules_file,
        rules,
        argv,
        report_fd=report_w,
        terminal=terminal,
        die_with_parent=die_with_parent,
        adopt=adopt,
        log=log,
        record=(record, inst_id) if record else None,
    )
    return Guarded(command, report_r, report_w)
