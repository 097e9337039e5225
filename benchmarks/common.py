"""Helpers for the benchmark scripts: a private state dir and a wall-clock timer over repeated runs."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

KAS = shutil.which("kas") or str(Path(sys.executable).with_name("kas"))


def private_env(tmp: Path) -> dict[str, str]:
    """Benchmarks never touch the user's registry or tmux server."""
    return {**os.environ, "KAS_STATE_DIR": str(tmp / "state"), "HOME": str(tmp)}


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kas-bench-"))


def wall(
    argv: Sequence[str], env: dict[str, str] | None = None, runs: int = 10, cwd: Path | None = None
) -> float:
    """Median wall time in seconds of running argv ``runs`` times (after one warm-up)."""
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
