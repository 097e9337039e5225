"""sdk mode: the wrapped argv started directly, in its own session (and so its own process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kas.errors import LaunchError


def start(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    stdin: Any = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv as a new session leader; a command that cannot start is a ``LaunchError``."""
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise LaunchError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise LaunchError(f"permission denied: {argv[0]}") from None
    except OSError as exc:
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror}") from None


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
