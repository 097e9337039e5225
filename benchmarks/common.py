"""Helpers for the benchmark scripts: a private state dir and a wall-clock timer over repeated runs."""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_BESIDE = Path(sys.executable).with_name("kas")
KAS = str(_BESIDE) if _BESIDE.exists() else shutil.which("kas") or "kas"


def private_env(tmp: Path) -> dict[str, str]:
    """Benchmarks never touch the user's registry or tmux server; and they measure kas as installed, with
    its bytecode cached (a PYTHONDONTWRITEBYTECODE in the caller's environment would make every run
    compile kas from source while Click's cache was written at install)."""
    env = {**os.environ, "KAS_STATE_DIR": str(tmp / "state"), "HOME": str(tmp)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def temp_dir() -> Path:
    """A private scratch directory, removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix="kas-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


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
