"""What each agent costs: CPU, memory and disk I/O summed over its whole tree (``/proc`` telemetry).

An agent's guard samples its tree every second and leaves the figures in a private file beside its rules
(``guards/ID.stats.json``), so ``kas instance list`` reads one small file per running agent instead of
walking every tree. An agent without a guard (started by a kas without guards) gets totals read through
psutil now, without rates. Field names are psutil's: ``cpu_percent``, ``rss``, ``read_bytes``,
``write_bytes``; rates are ``read_bytes_per_s`` and ``write_bytes_per_s``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kas.launch.tree import rules_path
from kas.registry import Instance

STALE = 5.0  # seconds after which a guard's figures are not shown as now


def stats_path(inst_id: str) -> Any:
    return rules_path(inst_id).with_name(f"{inst_id}.stats.json")


FIELDS = ("cpu_percent", "rss", "read_bytes", "write_bytes", "read_bytes_per_s", "write_bytes_per_s",
          "num_procs", "escaped_sessions")  # fmt: skip
PROC_FIELDS = ("cpu_percent", "rss", "read_bytes", "write_bytes")
MAX_BYTES = 1 << 20  # a figures file is a few KiB; anything bigger is not the guard's


def read(inst: Instance) -> dict[str, Any] | None:
    """The latest figures for a running agent, or None when there are none (yet) or they cannot be
    trusted: the file is the user's to damage, and a damaged one reads as a missing one."""
    if not inst.guard_pid:
        return _without_guard(inst)
    data = _load(stats_path(inst.id))
    if not isinstance(data, dict):
        return None
    at = _number(data.get("at"))
    if at is None or not 0 <= time.time() - at <= STALE:
        return None
    figures: dict[str, Any] = {"at": at, **{k: _number(data.get(k)) for k in FIELDS}}
    procs = data.get("procs")
    figures["procs"] = {
        str(pid): {k: _number(v.get(k)) for k in PROC_FIELDS}
        for pid, v in (procs.items() if isinstance(procs, dict) else ())
        if str(pid).isdigit() and isinstance(v, dict)
    }
    return figures


def _load(path: Any) -> Any:
    """JSON from a regular file of at most ``MAX_BYTES``, never blocking (a FIFO planted there)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, MAX_BYTES + 1)
        return None if len(raw) > MAX_BYTES else json.loads(raw)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _number(value: Any) -> float | None:
    """A finite, non-negative figure, or None."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) and 0 <= value < 1e18 else None


def _without_guard(inst: Instance) -> dict[str, Any] | None:
    import psutil

    if not inst.pid:
        return None
    try:
        root = psutil.Process(inst.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    totals = {"rss": 0, "read_bytes": 0, "write_bytes": 0}
    for proc in procs:
        try:
            with proc.oneshot():
                totals["rss"] += proc.memory_info().rss
                io = proc.io_counters()
                totals["read_bytes"] += io.read_bytes
                totals["write_bytes"] += io.write_bytes
        except (psutil.Error, AttributeError):
            continue
    return {"at": time.time(), "cpu_percent": None, "num_procs": len(procs), **totals}


def size(value: float | None) -> str:
    """Bytes for a narrow column: 812K, 35M, 1.2G."""
    if value is None:
        return "-"
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= scale:
            shown = value / scale
            return f"{shown:.1f}{unit}" if shown < 10 else f"{shown:.0f}{unit}"
    return f"{int(value)}B"
