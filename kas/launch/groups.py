"""Process groups: how kas signals an agent and everything it started, whatever its mode.

Every agent is its own process-group leader (and, but for a foreground spawn on a terminal, its own
session leader), so one signal to the group reaches its compilers and test runners too.
"""

from __future__ import annotations

import signal
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops kas (Ctrl-C, kill, a closed terminal): each command that runs agents handles all three."""

MAX_GRACE = 3600.0
"""The longest wait between SIGTERM and SIGKILL that kas accepts (an unbounded one overflows timers)."""


def exit_code(returncode: int) -> int:
    """Shell convention: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_group(pid: int, sig: int) -> bool:
    """Signal the agent's whole process group; False if it is already gone."""
    import os

    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pid: int, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever of it is left after ``grace`` seconds (grandchildren too)."""
    if not signal_group(pid, signal.SIGTERM):
        return
    signal_group(pid, signal.SIGCONT)  # a paused group would hold the SIGTERM until it is thawed
    deadline = time.monotonic() + min(max(grace, 0.0), MAX_GRACE)
    while time.monotonic() < deadline and signal_group(pid, 0):
        time.sleep(0.02)
    signal_group(pid, signal.SIGKILL)
