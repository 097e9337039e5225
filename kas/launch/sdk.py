"""sdk mode: the wrapped argv started directly, in its own session (and so its own process group).

The one exception is a foreground spawn on a terminal kas itself holds: an interactive agent needs that
terminal, so it becomes the terminal's foreground process group inside kas's session instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kas.errors import LaunchError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops kas (Ctrl-C, kill, a closed terminal): each command that runs agents handles all three."""


def start(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    stdin: Any = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    terminal: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv as a new session leader (or, with ``terminal``, as that terminal's foreground group).

    A command that cannot start is a ``LaunchError``.
    """
    placement: dict[str, Any] = (
        {"start_new_session": True} if terminal is None else {"preexec_fn": _take_terminal(terminal)}
    )
    try:
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, **placement
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


def reclaim_terminal(fd: int) -> None:
    """Make kas's own group the terminal's foreground again once the agent is done."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)


def exit_code(returncode: int) -> int:
    """Shell convention: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_group(pid: int, sig: int) -> bool:
    """Signal the agent's whole process group (its session); False if it is already gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pid: int, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever of it is left after ``grace`` seconds (grandchildren too)."""
    if not signal_group(pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and signal_group(pid, 0):
        time.sleep(0.02)
    signal_group(pid, signal.SIGKILL)
