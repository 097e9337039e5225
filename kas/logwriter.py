"""Writing an agent's output to its log, bounded (see ``kas.logfile``): an agent that prints forever must
not fill the disk. This module adds the pump thread and the up-front check of ``$KAS_LOG_MAX``.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from kas.logfile import LIMIT_ENV, RotatingLog, parse_size, rotated_name
from kas.threads import background

__all__ = ["CHUNK", "RotatingLog", "check_limit", "pump", "rotated"]

CHUNK = 65536


def check_limit() -> None:
    """Refuse an unreadable ``$KAS_LOG_MAX`` before anything starts, instead of quietly using 64M."""
    text = os.environ.get(LIMIT_ENV, "")
    if text.strip() and parse_size(text) is None:
        from kas.errors import KasError

        raise KasError(
            f"${LIMIT_ENV}={text.strip().lower()!r} is not a size; use bytes or a K, M or G suffix, e.g. 64M "
            "(0 = no limit)"
        )


def rotated(path: Path) -> Path:
    return Path(rotated_name(str(path)))


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
