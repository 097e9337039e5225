"""Starting a worker thread without waiting for it to be scheduled.

``threading.Thread.start`` blocks until the new thread has run; on a busy 2-core machine that costs about
half a millisecond, and a wave starts two workers a task (its waiter and its log pump). These workers are
daemons that report through their own events, so kas starts them with the lower-level call instead.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from typing import Any


def background(work: Callable[..., Any], *args: Any) -> threading.Event:
    """Run ``work(*args)`` in a daemon thread; the returned event is set once it has returned (or failed)."""
    done = threading.Event()

    def run() -> None:
        try:
            work(*args)
        finally:
            done.set()

    _thread.start_new_thread(run, ())
    return done
