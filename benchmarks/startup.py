"""Start-up cost: `kas profile show --resolved` and `kas --help` against `python -c "import click"`.

Goal: ratio <= 1.5 for `kas profile show --resolved`. Usage: python benchmarks/startup.py
"""

from __future__ import annotations

import subprocess
import sys

from common import KAS, private_env, temp_dir, wall


def main() -> None:
    env = private_env(temp_dir())
    base = wall([sys.executable, "-c", "import click"], env, runs=15)
    print(f'python -c "import click": {base * 1000:.0f} ms (median of 15)')
    for argv in (["profile", "show", "--resolved"], ["--help"], ["profile", "show"]):
        took = wall([sys.executable, KAS, *argv], env, runs=15)
        print(f"kas {' '.join(argv)}: {took * 1000:.0f} ms  ratio {took / base:.2f}")
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", KAS, "--help"], env=env, capture_output=True, text=True
    ).stderr.splitlines()
    total = [line for line in trace if line.rstrip().endswith("| kas.cli")]
    if total:
        print("import time of kas.cli (cumulative, us):", total[-1].split("|")[1].strip())


if __name__ == "__main__":
    main()
