"""How a detached agent's end is written to the registry, by whoever outlived ``kas spawn`` to see it (the
agent's guard; without one, the detached supervisor).

Nobody is left to tell when a write fails, so it is tried again before giving up; a row that
``kas instance stop`` marked stopped keeps that, with the status the agent really had; and a row still
``starting`` (the ``kas spawn`` that registers it has not written it yet: the agent ended at once) is
given a moment, so its end is not overwritten by its start.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from kas import lifecycle
from kas.errors import KasError
from kas.registry import Registry
from kas.status import STARTING, STOPPED

RETRIES = (0.0, 1.0, 5.0, 30.0)
START_PATIENCE = 5.0


def record_end(db: Path, inst_id: str, status: int | None) -> bool:
    """Write how the agent ended; False if the registry could not be written at all."""
    for pause in RETRIES:
        time.sleep(pause)
        with contextlib.suppress(KasError):
            registry = Registry(db)
            try:
                row = registry.get(inst_id)
                deadline = time.monotonic() + START_PATIENCE
                while row is not None and row.status == STARTING and time.monotonic() < deadline:
                    time.sleep(0.05)
                    row = registry.get(inst_id)
                if row is not None and row.status == STOPPED:  # `kas instance stop` ended it: keep that
                    lifecycle.mark_ended(registry, inst_id, STOPPED, status)
                else:
                    lifecycle.mark_exited(registry, inst_id, status)
                return True
            finally:
                registry.close()
    return False
