"""Run this checkout's kas (``python -m kas`` with the repo on PYTHONPATH), not whatever ``kas`` is installed.

The shared ``kas`` fixture runs the console script, which may point at another clone; tests of
hardening must exercise the code next to them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_kas(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kas ARGS`` from this checkout, in ``cwd`` (default: the test's cwd), with ``env`` added.

    ``prefix`` goes before the interpreter (e.g. ``setpriv`` to run as a user without some capability).
    """
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "kas", *args],
        cwd=cwd or Path.cwd(),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def without_dac_override() -> list[str]:
    """An argv prefix that makes root obey file modes, as any other user does.

    Root passes every permission check through CAP_DAC_OVERRIDE; without it (and without
    CAP_DAC_READ_SEARCH) a mode such as 0400 means read-only for root too, which is the situation a
    normal user meets. Skips the test when that cannot be arranged.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot make root obey file modes")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
