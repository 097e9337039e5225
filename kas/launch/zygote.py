"""A wave runner's guard factory: one lean guard process, started once, that forks a guard per task.

Starting a guard as a new interpreter costs about 18 ms, and a wave runner waits for each guard to name
its agent before it reports the task started: a wave of short tasks would pay it at every promotion. The
zygote (``guard.py --zygote``) keeps guards forked ahead, each waiting for a request, so a start costs
only the guard's own work. A request is sent and not waited for: the guard names itself and its agent on
the task's report pipe (``pid AGENT GUARD``), and later the agent's status (``exit N``), so nothing of a
task depends on the zygote once its guard runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from kas.errors import LaunchError
from kas.launch.tree import GUARD_PROGRAM

SEND_TIMEOUT = 5.0  # a zygote whose guards take no request for this long is taken as broken (and replaced)
INLINE = 32 * 1024  # a larger request travels in a memory file: a socket message holds about 200 KiB


class FactoryGone(LaunchError):
    """The zygote ended or stopped taking requests: the launcher starts another one."""


class Zygote:
    """The runner's end: ask for guards."""

    def __init__(self, rules: Mapping[str, Any] | None = None) -> None:
        """``rules``: the guards' (a wave's tasks share them). Each spare puts the session group and
        ``oom_score_adj`` ones on itself while it waits, and the zygote lowers its own session group
        with them: its spares work in the background and must not take the CPU from the runner that
        waits for a start."""
        from kas.launch.guard import encode_rules

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote = [str(GUARD_PROGRAM), "--zygote", str(theirs.fileno()), encode_rules(dict(rules or {}))]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", *zygote],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # nor a Ctrl-C meant for the runner: it stops the tasks itself
            )
        finally:
            theirs.close()
        ours.settimeout(SEND_TIMEOUT)
        self.sock = ours
        self.lock = threading.Lock()  # one request at a time

    def start(
        self, options: list[str], argv: list[str], env: Mapping[str, str], cwd: str, report: int
    ) -> None:
        """Ask for a guard of ``argv``, without waiting: ``report`` is the pipe on which the guard will
        name itself and the agent (``tree.Report``); the agent's output goes where ``options`` say
        (``--log``, or nowhere). ``FactoryGone`` if the zygote does not take it."""
        request = json.dumps({"options": options, "argv": argv, "env": dict(env), "cwd": cwd}).encode()
        fds = [report]
        memory = -1
        if len(request) > INLINE:
            memory = os.memfd_create("kas-request", os.MFD_CLOEXEC)
            os.write(memory, request)
            request, fds = b"memfd", [report, memory]
        try:
            with self.lock:
                socket.send_fds(self.sock, [request], fds)
        except TimeoutError:
            raise FactoryGone(f"the guard factory took no request for {SEND_TIMEOUT:g} s") from None
        except OSError as exc:
            raise FactoryGone(f"the guard factory is gone ({exc.strerror})") from None
        finally:
            if memory >= 0:
                os.close(memory)

    def alive(self, patience: float = 0.0) -> bool:
        """Whether the zygote still runs ``patience`` seconds from now (a killed process closes its
        files a moment before it ends)."""
        try:
            self.proc.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            return True
        return False

    def close(self) -> None:
        """Start nothing more; the zygote leaves once its guards have ended."""
        with self.lock, contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def discard(self) -> None:
        """Let a zygote that failed go: its guards and their agents run on."""
        with contextlib.suppress(OSError):
            self.sock.close()


def available() -> bool:
    return hasattr(socket, "send_fds") and hasattr(os, "memfd_create") and sys.platform.startswith("linux")
