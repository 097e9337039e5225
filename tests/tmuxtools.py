"""Helpers for tests that run this checkout's kas against a private tmux server and look for leftovers."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout: its kas is the one under test
MARK = "KAS_TEST_MARK"  # every process a test starts inherits this variable with the test's own value


def kas_env(**extra: str) -> dict[str, str]:
    """The environment for a kas run: the test's, with this checkout's package first on the path."""
    return {**os.environ, "PYTHONPATH": ROOT, **extra}


def run_kas(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kas", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_kas(*args: str, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kas", *args],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10)


def server_pid(socket: str) -> int | None:
    done = tmux(socket, "display-message", "-p", "#{pid}")
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def marked(mark: str, spare: set[int]) -> list[psutil.Process]:
    """Live processes (not zombies) whose environment carries ``MARK=mark``, except ``spare`` and us."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in spare or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def leftovers(
    mark: str, spare: set[int], timeout: float = 10, also: list[psutil.Process] | None = None
) -> list[str]:
    """What is still running of the test after ``timeout`` (a watcher may take a moment to finish).

    ``also``: processes to wait for besides the marked ones (whose environment may not be readable at
    the moment they are looked at, between a fork and an exec).

    A process has ended once it is a zombie: tmux 3.3a sometimes reaps its panes' processes only when
    something else wakes it. So this waits on pidfds, which the kernel makes readable at the exit itself,
    where ``psutil.wait_procs`` would wait out the whole timeout for a zombie.
    """
    fds: dict[int, psutil.Process] = {}
    for proc in {*marked(mark, spare), *(p for p in also or [] if p.pid not in spare)}:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(proc.pid)] = proc
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    try:
        while len(fds) > 0 and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
    finally:
        for fd in fds:
            os.close(fd)
    left = []
    for proc in fds.values():
        with contextlib.suppress(psutil.Error):
            left.append(f"{proc.pid} {proc.cmdline()}")
    return left
