"""tmux mode: one window per agent, on the user's server or a named socket.

The pane runs kas's small agent runner (``kas/launch/pane.py``), which starts the wrapped
command with exactly the environment and directory kas chose (the caller's environment, not the tmux
server's, with the variables tmux sets to describe the pane: ``PANE_ENV``), gives it the pane's
terminal, records its exit status and closes the pane's log pipe when it ends. tmux itself never sees a
user's directory, command or environment as a format or a command string: the runner reads them from a
private file. The window keeps its pane after the command exits (``remain-on-exit``) so its last screen
can be read. Every tmux command is an argv list with a bounded wait: a stopped server is reported, never
waited for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kas.errors import LaunchError
from kas.launch.base import LaunchSpec, Poll, SpawnOutcome
from kas.launch.groups import signal_group
from kas.launch.tree import GuardRef, guard_prefix, rules_path, signal_tree, stop_tree
from kas.statedir import private_dir, state_dir

if TYPE_CHECKING:
    from kas.launch.prepare import Prepared
    from kas.registry import Instance, Registry

PLACEHOLDER = "exec tail -f /dev/null"
# What tmux sets in a pane to describe it: the terminal an agent runs on is its pane, not the caller's
# terminal (a caller inside another tmux would otherwise hand the agent that server's TMUX and pane).
PANE_ENV = ("TERM", "TMUX", "TMUX_PANE", "TERM_PROGRAM", "TERM_PROGRAM_VERSION")
SESSION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
ANSWER_TIMEOUT = 2.0  # a tmux server that does not answer in this long is reported, not waited for
SILENT_FOR = 10.0  # and is then taken as not answering for this long, without asking
READY_TIMEOUT = 20.0
KEEP_WINDOWS_ENV = "KAS_TMUX_KEEP_WINDOWS"
_silent: dict[str | None, float] = {}  # socket -> until when it is taken as not answering


@dataclass(frozen=True)
class PaneInfo:
    """What tmux knows about an agent's pane."""

    pane_id: str
    pid: int | None
    dead: bool
    exit_status: int | None


class NoAnswer(Exception):
    """The tmux server did not answer in time (stopped, or hung)."""


def tmux_argv(socket: str | None) -> list[str]:
    binary = shutil.which("tmux")
    if binary is None:
        raise LaunchError("tmux is not installed or not on PATH; install tmux or use --mode sdk")
    return [binary, *(["-L", socket] if socket else [])]


def literal(text: str) -> str:
    """``text`` as tmux must be given it to keep it literal where it reads formats: ``#`` doubled."""
    return text.replace("#", "##")


def argument(text: str) -> str:
    """An argv element tmux will not take as a command separator (it splits at a trailing ``;``)."""
    return text[:-1] + "\\;" if text.endswith(";") else text


def window_name(name: str) -> str:
    """A window name tmux shows as typed: control characters (escapes, newlines) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in name)


def check_session_name(name: str) -> str:
    """Session names are typed by people and read by tmux as targets: keep them to a safe alphabet."""
    if not SESSION_NAME.match(name):
        raise LaunchError(f"tmux session name {name!r} is not allowed; use 1-64 letters, digits, '_' or '-'")
    return name


def check_socket_name(name: str | None) -> str | None:
    """``tmux -L NAME`` joins NAME onto tmux's socket directory: a ``/`` or ``..`` would leave it."""
    if name is not None and (not name or "/" in name or name in (".", "..") or not name.isprintable()):
        raise LaunchError(f"tmux socket name {name!r} is not allowed; use a plain name such as 'agents'")
    return name


def channel(inst_id: str, what: str = "done") -> str:
    return f"kas-{what}-{inst_id}"


def status_path(inst_id: str) -> Path:
    return private_dir(state_dir() / "status") / inst_id


def read_status(inst_id: str) -> int | None:
    try:
        return int(status_path(inst_id).read_text().strip())
    except (OSError, ValueError):
        return None


PANE_PROGRAM = Path(__file__).with_name("pane.py")


def runner_argv(spec_file: Path) -> list[str]:
    """The pane's command: kas's agent runner (``pane.py``, standard library only, in an isolated
    interpreter), reading everything else from the private spec file."""
    return [sys.executable, "-I", "-S", str(PANE_PROGRAM), str(spec_file)]


def _run(socket: str | None, *args: str, timeout: float = ANSWER_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run one tmux command; ``NoAnswer`` if the server does not answer in ``timeout``.

    A server that did not answer is not asked again for ``SILENT_FOR`` seconds: ``kas instance list`` on a
    stopped server pays one timeout, not one per row.
    """
    if time.monotonic() < _silent.get(socket, 0.0):
        raise NoAnswer
    try:
        done = subprocess.run(
            [*tmux_argv(socket), *map(argument, args)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        _silent[socket] = time.monotonic() + SILENT_FOR
        raise NoAnswer from None
    _silent.pop(socket, None)
    return done


def pane_info(socket: str | None, pane_id: str, inst_id: str | None = None) -> PaneInfo | None:
    """Read a pane's pid and death status, or None when the pane (or the server) is gone.

    With ``inst_id``, a dead pane's status comes from the runner's record first. Raises ``NoAnswer`` when
    the server does not answer.
    """
    try:
        done = _run(
            socket,
            "display-message",
            "-p",
            "-t",
            pane_id,
            "#{pane_id}|#{pane_pid}|#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}",
        )
    except LaunchError:
        return None
    parts = done.stdout.strip().split("|")
    if done.returncode != 0 or len(parts) != 5 or parts[0] != pane_id:
        return None
    dead = parts[2] == "1"
    status: int | None = None
    if dead:
        recorded = read_status(inst_id) if inst_id else None
        if recorded is not None:
            status = recorded
        elif parts[4].isdigit() and parts[4] != "0":
            status = 128 + int(parts[4])
        elif parts[3].lstrip("-").isdigit():
            status = int(parts[3])
    return PaneInfo(pane_id, int(parts[1]) if parts[1].isdigit() else None, dead, status)


def wait_channel(socket: str | None, name: str, timeout: float) -> bool:
    """Block on a ``wait-for`` channel for at most ``timeout``; True if it was signalled."""
    try:
        subprocess.run([*tmux_argv(socket), "wait-for", name], capture_output=True, timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def kill(socket: str | None, pane_id: str) -> bool:
    """Kill the agent's window; False if it was already gone (or the server does not answer)."""
    try:
        return _run(socket, "kill-pane", "-t", pane_id).returncode == 0
    except (NoAnswer, LaunchError):
        return False


class TmuxHandle:
    """An agent in a tmux pane: its pid is the agent's (the runner's child), its target the pane."""

    def __init__(
        self,
        socket: str | None,
        inst_id: str,
        pane_id: str | None,
        pid: int | None,
        create_time: float | None = None,
        guard: GuardRef | None = None,
    ) -> None:
        self.socket = socket
        self.inst_id = inst_id
        self.target = pane_id
        self.pid = pid
        self.create_time = create_time
        self.guard = guard

    def ready(self) -> None:
        """The pane's agent runs once ``start`` returns."""

    def wait(self, check_every: float = 0.5) -> int | None:
        """Block until the agent ends, then return its exit status.

        The runner signals a ``wait-for`` channel at the end (and tmux's pane-died hook does too), so the
        end is seen at once; the wait is cut into slices with a look at the pane between them, so a missed
        signal can delay but never hang a run.
        """
        while True:
            recorded = read_status(self.inst_id)
            if recorded is not None:
                return recorded
            try:
                info = pane_info(self.socket, self.target, self.inst_id) if self.target else None
            except NoAnswer:  # the server is stopped or hung: wait on (and so at the pace of) its channel
                wait_channel(self.socket, channel(self.inst_id), check_every)
                continue
            if info is None or info.dead:
                return read_status(self.inst_id) if info is None else info.exit_status
            wait_channel(self.socket, channel(self.inst_id), check_every)

    def poll(self) -> Poll:
        recorded = read_status(self.inst_id)
        if recorded is not None:
            return Poll(False, recorded)
        try:
            info = pane_info(self.socket, self.target, self.inst_id) if self.target else None
        except NoAnswer:
            return Poll(True, answered=False)
        if info is None or info.dead:
            if self._agent_alive():  # its window is gone but the agent is not: it is still kas's to stop
                return Poll(True)
            return Poll(False, read_status(self.inst_id) if info is None else info.exit_status)
        return Poll(True)

    def _agent_alive(self) -> bool:
        from kas.probe import is_alive

        return bool(self.pid) and is_alive(self.pid, self.create_time)

    def signal(self, sig: int) -> bool:
        from kas.probe import is_alive

        if not self.pid or not is_alive(self.pid, self.create_time):
            return False
        if self.guard is not None:
            return signal_tree(self.pid, self.guard, sig)
        return signal_group(self.pid, sig)

    def stop(self, grace: float) -> int | None:
        import signal

        if self.guard is not None and self.guard.alive():
            stop_tree(self.pid, self.guard, grace)
            end = time.monotonic() + 2
            while time.monotonic() < end and self.poll().running:
                wait_channel(self.socket, channel(self.inst_id), 0.1)
        elif self.signal(signal.SIGTERM):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.poll().running:
                wait_channel(
                    self.socket, channel(self.inst_id), min(0.25, max(0.01, deadline - time.monotonic()))
                )
            self.signal(signal.SIGKILL)
            end = time.monotonic() + 2
            while time.monotonic() < end and self.poll().running:
                wait_channel(self.socket, channel(self.inst_id), 0.1)
        return self.poll().exit_status

    def discard(self) -> list[Path]:
        if self.target:
            kill(self.socket, self.target)
        return [status_path(self.inst_id)]


class TmuxLauncher:
    """One window per agent in ``session`` on the server at ``socket`` (None: the user's default)."""

    mode = "tmux"
    tools: tuple[str, ...] = ("tmux",)
    always_detached = True

    def __init__(self, socket: str | None = None, session: str = "kas") -> None:
        self.socket = check_socket_name(socket)
        # Checked here, not at the first start: a wave must refuse a bad name before any task starts,
        # not fail every task with it.
        self.session = check_session_name(session)

    def start(self, spec: LaunchSpec) -> TmuxHandle:
        spec_file = private_dir(state_dir() / "status") / f"{spec.inst_id}.spec"
        status_path(spec.inst_id).unlink(missing_ok=True)
        ready = spec_file.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        fifo = spec_file.with_suffix(".pipe")
        fifo.unlink(missing_ok=True)
        if spec.log is not None:
            os.mkfifo(fifo, 0o600)
        _write_private(
            spec_file,
            {
                "argv": spec.prepared.argv,
                "env": dict(spec.env),
                "from_pane": [name for name in PANE_ENV if name not in spec.prepared.env],  # not forced
                "cwd": str(spec.cwd),
                "guard_command": (guard_prefix(rules_path(spec.inst_id), spec.guard) if spec.guard else None),
                "autogroup_nice": spec.autogroup_nice,
                "status": str(status_path(spec.inst_id)),
                "ready": str(ready),
                "done_channel": channel(spec.inst_id),
                "ready_channel": channel(spec.inst_id, "ready"),
                "tmux": tmux_argv(self.socket),
                "owner": os.getpid() if spec.dies_with_caller else None,
                "log": str(spec.log) if spec.log else None,
                "fifo": str(fifo) if spec.log else None,
                # The window stays once the agent ended, so its last screen can be read (prune removes it).
                "keep_window": os.environ.get(KEEP_WINDOWS_ENV, "1") != "0",
            },
        )
        server = _server(self.socket)
        pane_id: str | None = None
        try:
            session_id = _session(server, self.session)
            # A placeholder runs until the options, hook and log pipe are in place, so no output is lost.
            made = _check(
                server.cmd(
                    "new-window", "-d", "-P", "-F", "#{pane_id}", "-t", f"{session_id}:",
                    "-n", literal(window_name(spec.name)), PLACEHOLDER,
                )
            )  # fmt: skip
            pane_id = made.stdout[0].strip()
            # Keep the pane (and its last screen) after the command ends; on the pane (tmux >= 3.2) and
            # its window, so neither a scope mix-up nor an older tmux loses it.
            _check(server.cmd("set-option", "-w", "-t", pane_id, "remain-on-exit", "on"))
            server.cmd("set-option", "-p", "-t", pane_id, "remain-on-exit", "on")
            _check(
                server.cmd(
                    "set-hook", "-p", "-t", pane_id, "pane-died", f"wait-for -S {channel(spec.inst_id)}"
                )
            )
            if spec.log is not None:
                # The pane's output goes through a private FIFO to the runner, which writes the bounded log.
                pipe = "exec cat > " + shlex.quote(str(fifo))
                _check(server.cmd("pipe-pane", "-t", pane_id, literal(pipe)))
            command = "exec " + shlex.join(runner_argv(spec_file))
            _check(server.cmd("respawn-pane", "-k", "-t", pane_id, command))
        except BaseException as exc:
            # Nothing of a failed start stays: not the spec (it holds the environment), nor a window whose
            # placeholder would run on for ever.
            spec_file.unlink(missing_ok=True)
            fifo.unlink(missing_ok=True)
            if pane_id is not None:
                kill(self.socket, pane_id)
            if isinstance(exc, TmuxError):
                raise LaunchError(f"tmux: {exc}") from None
            raise
        pid, guard_pid = self._await_ready(pane_id, spec, ready)
        from kas.probe import create_time

        guard = GuardRef(guard_pid, create_time(guard_pid)) if guard_pid else None
        return TmuxHandle(self.socket, spec.inst_id, pane_id, pid, create_time(pid), guard)

    def _await_ready(self, pane_id: str, spec: LaunchSpec, ready: Path) -> tuple[int, int | None]:
        """The runner says it started the agent (or could not) through a file and a channel: the agent's
        pid and its guard's."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError, ValueError):
                answer = json.loads(ready.read_text())
                ready.unlink(missing_ok=True)
                if "error" in answer:
                    kill(self.socket, pane_id)
                    raise LaunchError(str(answer["error"]))
                return int(answer["pid"]), (int(answer["guard"]) if answer.get("guard") else None)
            try:
                info = pane_info(self.socket, pane_id)
            except NoAnswer:
                info = None
            if info is None or info.dead or time.monotonic() > deadline:
                kill(self.socket, pane_id)
                raise LaunchError(f"tmux: the window for {spec.name!r} ended before its agent started")
            wait_channel(self.socket, channel(spec.inst_id, "ready"), 0.5)

    def spawn(self, spec: LaunchSpec, registry: Registry, *, foreground: bool) -> SpawnOutcome:
        """A tmux agent always runs on in its window; its row is settled from the runner's record."""
        from kas import lifecycle

        try:
            handle = self.start(spec)
        except LaunchError:
            lifecycle.mark_failed(registry, spec.inst_id)
            raise
        try:
            lifecycle.mark_running(
                registry, spec.inst_id, handle.pid, tmux_target=handle.target, guard=handle.guard
            )
        except BaseException:  # a registry error or Ctrl-C: an agent kas cannot record is not left running
            handle.stop(2.0)
            raise
        return SpawnOutcome(handle)

    def attach(self, inst: Instance) -> TmuxHandle:
        guard = GuardRef(inst.guard_pid, inst.guard_create_time) if inst.guard_pid else None
        return TmuxHandle(inst.tmux_socket, inst.id, inst.tmux_target, inst.pid, inst.pid_create_time, guard)

    def row_fields(self) -> dict[str, str | None]:
        return {"tmux_socket": self.socket}

    def release(self) -> None:
        """Remove the session if no window of an agent is left in it (its first window is kas's own)."""
        with contextlib.suppress(NoAnswer, LaunchError):
            done = _run(
                self.socket, "list-panes", "-s", "-t", f"={self.session}", "-F", "#{pane_current_command}"
            )
            if done.returncode == 0 and len(done.stdout.split()) <= 1:
                _run(self.socket, "kill-session", "-t", f"={self.session}")

    def describe(self, prepared: Prepared) -> dict[str, str]:
        return {"tmux_command": shlex.join(runner_argv(Path("$KAS_STATE_DIR/status/<id>.spec")))}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write a 0600 file whole: the spec holds the agent's environment, which may hold secrets."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(tmp, path)


class _Result:
    """One tmux command's outcome: its exit status and output lines."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.returncode = done.returncode
        self.stdout = done.stdout.splitlines()
        self.stderr = [line for line in done.stderr.splitlines() if line]


class _Server:
    """The tmux server at a socket, asked with argv lists (each escaped by ``argument``) and a bounded wait.

    Not libtmux's Server: its commands wait for tmux without a timeout, so a stopped server hung
    `kas wave run` for good, even through SIGTERM. Every command here gives up after ANSWER_TIMEOUT.
    """

    def __init__(self, socket: str | None) -> None:
        self.socket = socket

    def cmd(self, *args: str) -> _Result:
        try:
            return _Result(_run(self.socket, *args))
        except NoAnswer:
            raise TmuxError("the tmux server does not answer (stopped?); kas gave up after 2 s") from None


class TmuxError(Exception):
    """A tmux command failed; the launcher reports it as a LaunchError."""


def _server(socket: str | None) -> _Server:
    tmux_argv(socket)
    return _Server(socket)


def _session(server: _Server, name: str) -> str:
    """The agents' session id, created on first use; another kas creating it at the same moment is fine.

    Asked for by its id alone: a session path with a newline in it (the directory kas was started from)
    would break a parse of every field of every session.
    """

    def find() -> str | None:
        found = server.cmd("display-message", "-p", "-t", f"={name}:", "#{session_id}")
        return str(found.stdout[0]) if found.returncode == 0 and found.stdout else None

    problem = f"cannot create the tmux session {name!r}"
    # Asked again when the server exited as it was asked: its last session had just been closed (by the
    # release of an earlier run); the next attempt starts a new server or finds one another kas started.
    for _attempt in range(3):
        session_id = find()
        if session_id is not None:
            return session_id
        made = server.cmd("new-session", "-d", "-P", "-F", "#{session_id}", "-s", name, "-n", "kas")
        if made.returncode == 0 and made.stdout:
            return str(made.stdout[0])
        problem = " ".join(made.stderr) or problem
    raise TmuxError(problem)


def _check(result: _Result) -> _Result:
    if result.stderr:
        raise TmuxError(" ".join(result.stderr))
    return result
