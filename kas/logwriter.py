"""Writing an agent's output to its log, bounded: an agent that prints forever must not fill the disk.

When a log would grow past its limit it is renamed to ``NAME.1`` (replacing an older one) and a new log
starts, so one agent never holds more than about twice the limit. The limit comes from
``$KAS_LOG_MAX`` (bytes, or with a K/M/G suffix; 0 = no limit); the default is 64M.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

from kas.threads import background

LIMIT_ENV = "KAS_LOG_MAX"
DEFAULT_LIMIT = 64 * 1024 * 1024
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
CHUNK = 65536


def log_limit() -> int:
    """The configured limit in bytes (unset: the default); ``check_limit`` has refused a bad value by the
    time an agent's output is written, so a writer never fails on it."""
    text = os.environ.get(LIMIT_ENV, "").strip().lower()
    found = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", text)
    return int(found[1]) * _UNITS[found[2]] if found else DEFAULT_LIMIT


def check_limit() -> None:
    """Refuse an unreadable ``$KAS_LOG_MAX`` before anything starts, instead of quietly using 64M."""
    text = os.environ.get(LIMIT_ENV, "").strip().lower()
    if text and not re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", text):
        from kas.errors import KasError

        raise KasError(
            f"${LIMIT_ENV}={text!r} is not a size; use bytes or a K, M or G suffix, e.g. 64M (0 = no limit)"
        )


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class RotatingLog:
    """An append-only, private log file that rotates at ``limit`` bytes."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.path = path
        self.limit = log_limit() if limit is None else limit
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, data: bytes) -> None:
        if self.limit and self.size and self.size + len(data) > self.limit:
            os.close(self.fd)
            os.replace(self.path, rotated(self.path))
            self.fd, self.size = self._open(), 0
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


def pump(fd: int, path: Path) -> threading.Event:
    """Copy everything from the pipe ``fd`` into the log at ``path`` in a thread, until end of file; the
    thread owns ``fd`` and closes it. The event is set once everything is copied."""

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
        log = RotatingLog(path)
        try:
            while data := os.read(fd, CHUNK):
                log.write(data)
        finally:
            log.close()
            os.close(fd)

    return background(run)
