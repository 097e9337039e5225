"""Start-up cost: `kas profile show --resolved`, `kas profile show` and `kas --help` against
`python -c "import click"`, as medians of interleaved runs (each round runs every command once, so a
machine that speeds up or slows down meanwhile affects all of them alike).

Goal: `kas profile show --resolved` <= 1.3x `import click`. Usage: python benchmarks/startup.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from common import KAS, private_env, temp_dir

COMMANDS = {
    'python -c "import click"': [sys.executable, "-c", "import click"],
    "kas profile show --resolved": [sys.executable, KAS, "profile", "show", "--resolved"],
    "kas profile show": [sys.executable, KAS, "profile", "show"],
    "kas --help": [sys.executable, KAS, "--help"],
}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    env = private_env(temp_dir())
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the page cache once
        subprocess.run(argv, env=env, capture_output=True, check=True)
    for _ in range(rounds):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times['python -c "import click"'])
    for name, taken in times.items():
        median = statistics.median(taken)
        print(f"{name:<30} {median * 1000:6.1f} ms  ratio {median / base:.2f}   (median of {rounds})")
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", KAS, "profile", "show", "--resolved"],
        env=env,
        capture_output=True,
        text=True,
    ).stderr.splitlines()
    rows = [line.split("|") for line in trace if line.startswith("import time:") and "self" not in line]
    own = sum(int(r[0].split(":")[1]) for r in rows if r[2].strip().startswith("kas"))
    print(f"import time of kas's own modules (self, without Click): {own / 1000:.1f} ms")


if __name__ == "__main__":
    main()
