"""Showing an agent's log as it grows.

``tail -f`` does the watching (GNU tail uses inotify), so kas itself polls nothing. The log keeps being
written by whoever writes it (the agent, or tmux's pipe-pane), so a follower that stops loses no output.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from kas.launch.groups import STOP_SIGNALS


def tail_from_line(path: Path, lines: int | None) -> int:
    """The byte offset where the last ``lines`` lines of ``path`` start (0 for all); reads it once."""
    if lines is None:
        return 0
    starts: deque[int] = deque(maxlen=lines + 1)
    offset = 0
    with path.open("rb") as log:
        for raw in log:
            starts.append(offset)
            offset += len(raw)
    starts.append(offset)
    return starts[0]


class LogFollower:
    """Echo a log from an offset, live through ``tail -f`` until ``stop``; then echo what is left.

    The owner decides when the writer is done (a task's end is known from elsewhere); ``stop`` ends tail
    and reads what it had not shown yet from the file itself, so nothing is lost or shown twice. Not
    ``live`` (or without tail), ``stop`` alone echoes the file.
    """

    def __init__(
        self, path: Path, emit: Callable[[bytes], None], offset: int = 0, *, live: bool = True
    ) -> None:
        self.path = path
        self.emit = emit
        self.shown = offset
        self.tail: subprocess.Popen[bytes] | None = None
        tail = shutil.which("tail") if live else None
        if tail is not None:
            quiet = subprocess.DEVNULL
            argv = [tail, "-c", f"+{offset + 1}", "-f", "--", str(path)]
            self.tail = subprocess.Popen(argv, stdin=quiet, stdout=subprocess.PIPE, stderr=quiet)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def live(self) -> bool:
        return self.tail is not None

    def _read(self) -> None:
        # Signals are for the main thread, which decides when to stop: if the kernel gave one to this
        # thread instead, Python would run its handler only once the main thread happens to wake.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if self.tail is not None and self.tail.stdout is not None:
            for raw in self.tail.stdout:
                self._show(raw)

    def _show(self, raw: bytes) -> None:
        self.shown += len(raw)
        self.emit(raw)

    def stop(self) -> None:
        if self.tail is not None:
            self.tail.terminate()
            self.tail.wait()
        self.reader.join()
        with self.path.open("rb") as log:
            log.seek(self.shown)
            for raw in log:
                self._show(raw)
