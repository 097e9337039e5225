"""Test helpers that wait on events (a FIFO being written) rather than sleeping."""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

AGENT = str(Path(__file__).with_name("agent.py"))


def agent_argv(report: Path, seconds: float = 30, code: int = 0) -> list[str]:
    return [sys.executable, AGENT, str(report), str(seconds), str(code)]


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def read_report(fifo: Path, timeout: float = 20) -> dict[str, Any]:
    """Block until the agent writes its report into the FIFO (or fail after ``timeout``)."""
    box: dict[str, Any] = {}

    def reader() -> None:
        with open(fifo) as handle:
            box["text"] = handle.read()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if "text" not in box:
        # Unblock the reader so the thread can end, then fail loudly.
        with open(fifo, "w"):
            pass
        raise AssertionError(f"agent did not report within {timeout}s")
    return json.loads(box["text"])


def still_running(pids: Iterable[int], timeout: float = 5) -> list[int]:
    """The processes that have not ended within ``timeout``; a zombie has ended (only a wait is left).

    SIGKILL is delivered at once, but on a loaded machine a killed process takes a moment to exit, so a
    test asks "did it end" by waiting for it rather than by looking once.
    """
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    running = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return running


class Lines:
    """A process's output lines as they come, so a test can wait for one with a timeout instead of hanging."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=lambda: [self.queue.put(line) for line in stream], daemon=True)
        self.reader.start()

    def next(self, timeout: float = 15) -> str:
        """The next line; fails the test (queue.Empty) if none comes within ``timeout``."""
        return self.queue.get(timeout=timeout)

    def rest(self, timeout: float = 15) -> str:
        """Everything after the lines already taken, once the stream has ended."""
        self.reader.join(timeout)
        taken = []
        while not self.queue.empty():
            taken.append(self.queue.get())
        return "".join(taken)


def desktop_user_prefix() -> list[str]:
    """An argv prefix that runs kas as a desktop user would: without CAP_SYS_ADMIN.

    Root is exempt from the kernel's limit of one autogroup change per 100 ms, so a suite run as root
    (CI is) would never meet the limit every real user meets; ``setpriv`` drops just that capability.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot run kas as a normal user")
    return [setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]


def run_on_terminal(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, *, controlling: bool = False
) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as stdin, stdout and stderr; return its exit status and screen.

    ``controlling`` makes the terminal the child's controlling terminal in a session of its own, as a
    shell's would be (a foreground process group to hand on, Ctrl-C from the keyboard).
    """
    import fcntl
    import pty
    import subprocess
    import termios

    primary, secondary = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    extra: dict[str, Any] = {"start_new_session": True, "preexec_fn": controlling_tty} if controlling else {}
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=secondary, stdout=secondary, stderr=secondary, **extra
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return proc.wait(timeout=30), b"".join(chunks).decode()
