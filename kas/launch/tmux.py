"""tmux mode: one window per agent, through libtmux, on the user's server or a named socket.

The window keeps its pane after the command exits (``remain-on-exit``), so the exit status can be read
later, and a ``pane-died`` hook signals a ``wait-for`` channel so a waiter learns of the end without
polling the screen. libtmux is imported inside the functions that need it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kas.errors import LaunchError
from kas.statedir import private_dir, state_dir

PLACEHOLDER = "exec tail -f /dev/null"
# tmux (3.3a, seen here) loses about half of its panes' exit statuses (pane_dead=1 but
# pane_dead_status empty, and then no pane-died hook). So the pane runs the command under a tiny fixed
# sh script that records the status in a private file named for the instance and signals the
# instance's wait-for channel itself ($TMUX in the pane names the server). User data only ever
# travels as the script's positional arguments.
STATUS_SCRIPT = '"$@"; s=$?; echo "$s" > "$0"; tmux wait-for -S "kas-done-${0##*/}" 2>/dev/null; exit "$s"'


@dataclass(frozen=True)
class PaneInfo:
    """What tmux knows about an agent's pane."""

    pane_id: str
    pid: int | None
    dead: bool
    exit_status: int | None


def tmux_argv(socket: str | None) -> list[str]:
    binary = shutil.which("tmux")
    if binary is None:
        raise LaunchError("tmux is not installed or not on PATH; install tmux or use --mode sdk")
    return [binary, *(["-L", socket] if socket else [])]


def _server(socket: str | None) -> Any:
    import libtmux

    tmux_argv(socket)
    return libtmux.Server(socket_name=socket) if socket else libtmux.Server()


def channel(inst_id: str) -> str:
    return f"kas-done-{inst_id}"


def status_path(inst_id: str) -> Path:
    return private_dir(state_dir() / "status") / inst_id


def pane_argv(status_file: str, argv: Sequence[str], prefix_len: int) -> list[str]:
    """Put the status recorder after the nice/ionice wrapper, so it and the agent both inherit them."""
    argv = list(argv)
    return [*argv[:prefix_len], "sh", "-c", STATUS_SCRIPT, status_file, *argv[prefix_len:]]


def read_status(inst_id: str) -> int | None:
    try:
        return int(status_path(inst_id).read_text().strip())
    except (OSError, ValueError):
        return None


def start(
    inst_id: str,
    argv: Sequence[str],
    env_add: Mapping[str, str],
    cwd: Path,
    *,
    socket: str | None,
    session_name: str,
    window_name: str,
    log_path: Path | None = None,
    prefix_len: int = 0,
) -> PaneInfo:
    """Open a window that runs argv; return its pane.

    The pane's pid is the wrapper (``exec`` leaves no shell in between), which execs the status recorder,
    so it carries the profile's niceness; the agent is the recorder's child.
    """
    from libtmux.exc import LibTmuxException

    server = _server(socket)
    try:
        session = _session(server, session_name)
        # A placeholder runs until the options and hook are in place, so even `true` cannot end unseen.
        window = session.new_window(window_name=window_name, attach=False, window_shell=PLACEHOLDER)
        pane = window.active_pane
        assert pane is not None
        pane_id = pane.pane_id
        # Keep the pane (and its exit status) after the command ends; set on the pane itself (tmux >= 3.2)
        # and on its window, so neither a scope mix-up nor an older tmux loses it.
        _check(server.cmd("set-option", "-w", "-t", window.window_id, "remain-on-exit", "on"))
        server.cmd("set-option", "-p", "-t", pane_id, "remain-on-exit", "on")
        _check(server.cmd("set-hook", "-p", "-t", pane_id, "pane-died", f"wait-for -S {channel(inst_id)}"))
        if log_path is not None:
            _check(server.cmd("pipe-pane", "-t", pane_id, f"cat >> {shlex.quote(str(log_path))}"))
        env_flags = [f"-e{k}={v}" for k, v in env_add.items()]
        command = "exec " + shlex.join(pane_argv(str(status_path(inst_id)), argv, prefix_len))
        _check(server.cmd("respawn-pane", "-k", "-t", pane_id, "-c", str(cwd), *env_flags, command))
    except LibTmuxException as exc:
        raise LaunchError(f"tmux: {exc}") from None
    info = pane_info(socket, pane_id, inst_id)
    if info is None:
        raise LaunchError(f"tmux: the window for {window_name} vanished at once")
    return info


def _session(server: Any, name: str) -> Any:
    """The agents' session, created on first use; another kas creating it at the same moment is fine."""
    from libtmux.exc import LibTmuxException

    session = server.sessions.get(session_name=name, default=None)
    if session is not None:
        return session
    try:
        return server.new_session(session_name=name, window_name="kas", attach=False)
    except LibTmuxException:
        session = server.sessions.get(session_name=name, default=None)
        if session is None:
            raise
        return session


def _check(result: Any) -> Any:
    if result.stderr:
        from libtmux.exc import LibTmuxException

        raise LibTmuxException(" ".join(result.stderr))
    return result


def pane_info(socket: str | None, pane_id: str, inst_id: str | None = None) -> PaneInfo | None:
    """Read a pane's pid and death status, or None when the pane (or the server) is gone.

    With ``inst_id``, a dead pane's status comes from the recorder's file first (see STATUS_SCRIPT).
    """
    try:
        done = subprocess.run(
            [
                *tmux_argv(socket),
                "display-message",
                "-p",
                "-t",
                pane_id,
                "#{pane_id}|#{pane_pid}|#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
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


def wait(socket: str | None, inst_id: str, pane_id: str, check_every: float = 0.5) -> int | None:
    """Block until the pane dies, then return its exit status.

    The pane-died hook signals a wait-for channel, so the end is seen at once; the channel wait is cut
    into slices with a look at the pane between them, so a missed signal can delay but never hang a run.
    """
    while True:
        recorded = read_status(inst_id)
        if recorded is not None:
            return recorded
        info = pane_info(socket, pane_id, inst_id)
        if info is None or info.dead:
            return info.exit_status if info else None
        try:
            subprocess.run(
                [*tmux_argv(socket), "wait-for", channel(inst_id)], capture_output=True, timeout=check_every
            )
        except subprocess.TimeoutExpired:
            continue


def release(socket: str | None, inst_id: str) -> None:
    """Wake a waiter blocked on the channel (used when the pane was killed and never died normally)."""
    subprocess.run([*tmux_argv(socket), "wait-for", "-S", channel(inst_id)], capture_output=True)


def kill(socket: str | None, pane_id: str) -> bool:
    """Kill the agent's window; False if it was already gone."""
    done = subprocess.run(
        [*tmux_argv(socket), "kill-pane", "-t", pane_id], capture_output=True, text=True, timeout=10
    )
    return done.returncode == 0
