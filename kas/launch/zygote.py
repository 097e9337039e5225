"""A wave runner's guard factory: one lean guard process, started once, that forks a guard per task.

Starting a guard as a new interpreter costs about 18 ms, and a wave runner waits for each guard to name
its agent before it reports the task started: a wave of short tasks would pay it at every promotion. The
zygote (``guard.py --zygote``) keeps a forked guard waiting for the next request, so a start costs only
the guard's own work. A request is sent and not waited for: the guard names itself and its agent on the
report pipe (``pid AGENT GUARD``), and the zygote sends the guard's exit status when it ends, since the
guard is its child, not the runner's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from kas.errors import LaunchError
from kas.launch.tree import GUARD_PROGRAM


class Zygote:
    """The runner's end: start guards, wait for their ends."""

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
        self.sock = ours
        self.lock = threading.Lock()  # one request at a time
        self.changed = threading.Condition()
        self.exits: dict[int, int] = {}
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.sock.recv(256).decode()
            except OSError:
                message = ""
            with self.changed:
                if not message:
                    self.closed = True
                    self.changed.notify_all()
                    return
                kind, *numbers = message.split()
                if kind == "exit":
                    self.exits[int(numbers[0])] = int(numbers[1])
                self.changed.notify_all()

    def start(
        self, options: list[str], argv: list[str], env: Mapping[str, str], cwd: str, report: int
    ) -> None:
        """Ask for a guard of ``argv``, without waiting: ``report`` is the pipe on which the guard will
        name itself and the agent (``tree.read_report``); the agent's output goes where ``options`` say
        (``--log``, or nowhere)."""
        request = json.dumps({"options": options, "argv": argv, "env": dict(env), "cwd": cwd}).encode()
        with self.lock:
            if self.closed:
                raise LaunchError("the guard factory ended")
            try:
                socket.send_fds(self.sock, [request], [report])
            except OSError as exc:
                raise LaunchError(f"the guard factory is gone ({exc.strerror})") from None

    def poll(self, pid: int) -> int | None:
        with self.changed:
            return self.exits.get(pid)

    def wait(self, pid: int) -> int | None:
        """The guard's exit status (128 + N for a signal); None if the zygote ended before telling."""
        with self.changed:
            self.changed.wait_for(lambda: pid in self.exits or self.closed)
            return self.exits.pop(pid, None)

    def close(self) -> None:
        """Start nothing more; the zygote leaves once its guards have ended."""
        with self.lock:
            if not self.closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)


def available() -> bool:
    return hasattr(socket, "send_fds") and sys.platform.startswith("linux")
