"""An agent's log file, bounded: the part every writer shares, in the standard library's ``os`` alone.

It is imported by the guard too (one per agent, alive as long as its agent), so it stays this small: no
``re``, no ``pathlib``. When a log would grow past its limit it is renamed to ``NAME.1`` (replacing an
older one) and a new log starts, so one agent never holds more than about twice the limit. The limit
comes from ``$KAS_LOG_MAX`` (bytes, or with a K/M/G suffix; 0 = no limit); the default is 64M.
"""

from __future__ import annotations

import os

LIMIT_ENV = "KAS_LOG_MAX"
DEFAULT_LIMIT = 64 * 1024 * 1024
UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int | None:
    """``64M``, ``512k``, ``1GiB``, ``1000`` as bytes; None if it is not a size."""
    rest = text.strip().lower()
    rest = rest.removesuffix("b")
    rest = rest.removesuffix("i")
    unit = 1
    if rest[-1:] in UNITS:
        unit, rest = UNITS[rest[-1]], rest[:-1].rstrip()
    return int(rest) * unit if rest.isascii() and rest.isdigit() else None


def log_limit() -> int:
    """The configured limit in bytes (unset or unreadable: the default; ``logwriter.check_limit`` refuses
    an unreadable one before any agent starts)."""
    size = parse_size(os.environ.get(LIMIT_ENV, ""))
    return DEFAULT_LIMIT if size is None else size


def rotated_name(path: str) -> str:
    return path + ".1"


class RotatingLog:
    """An append-only, private (0600) log file that rotates at ``limit`` bytes."""

    def __init__(self, path: str | os.PathLike[str], limit: int | None = None) -> None:
        self.path = os.fspath(path)
        self.limit = log_limit() if limit is None else limit
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, data: bytes) -> None:
        if self.limit and self.size and self.size + len(data) > self.limit:
            os.close(self.fd)
            os.replace(self.path, rotated_name(self.path))
            self.fd, self.size = self._open(), 0
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)
