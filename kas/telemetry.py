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


def read(inst: Instance) -> dict[str, Any] | None:
    """The latest figures for a running agent, or None when there are none (yet)."""
    if inst.guard_pid:
        try:
            data = json.loads(stats_path(inst.id).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or time.time() - float(data.get("at", 0)) > STALE:
            return None
        return data
    return _without_guard(inst)


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
