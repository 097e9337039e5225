"""Where the wave runner's main thread sleeps: task events from worker threads, and signals.

The kernel hands a process's signal to any thread that can take it, not always the main one, while Python
runs signal handlers only in the main thread, and only once it wakes. A main thread asleep in a lock (as
in ``queue.Queue.get``) would then sleep through Ctrl-C until the next task event. Here it sleeps in
``select`` on a pipe that both the worker threads and the C-level signal handler (``set_wakeup_fd``)
write to, so either wakes it at once: no polling, no missed Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import threading
import time
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A queue whose ``get`` also wakes for signals; open it (``with``) in the main thread to use it."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._pipe: tuple[int, int] | None = None
        self._lock = threading.Lock()  # a late put() must never write to a closed (maybe reused) fd
        self._previous_wakeup = -1

    def __enter__(self) -> Inbox[T]:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *_exc: Any) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        with self._lock:
            assert self._pipe is not None
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def put(self, item: T) -> None:
        """From any thread, also after the inbox was closed (then nothing wakes: nobody waits)."""
        self._items.put(item)
        with self._lock:
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):  # full of wake-ups already: enough
                    os.write(self._pipe[1], b"\0")

    def get(self, timeout: float | None = None) -> T:
        """The next item; ``queue.Empty`` after ``timeout``. A signal handler may raise from here."""
        assert self._pipe is not None, "open the inbox (with) before waiting on it"
        read = self._pipe[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._items.get_nowait()
            except queue.Empty:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            select.select([read], [], [], remaining)
            with contextlib.suppress(BlockingIOError):
                os.read(read, 4096)  # drained after waking; the items themselves are in the queue
