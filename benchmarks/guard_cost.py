"""What a guard costs per agent: CPU (share of one core) and memory (PSS), idle and with a busy tree.

Starts N detached agents under the interactive profile (each: a shell whose tree holds `fanout` sleepers,
plus a process that forks a short-lived child every 50 ms, as a build does), samples the guards' CPU time
over a window, and reads the PSS of each guard and of the rest of kas's per-agent processes (the detached
supervisor) from /proc/PID/smaps_rollup. Prints numbers; asserts nothing.

    python benchmarks/guard_cost.py [--agents 5] [--seconds 10] [--fanout 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from common import KAS, private_env, temp_dir


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fanout", type=int, default=20, help="sleepers in each agent's tree")
    args = parser.parse_args()
    tmp = temp_dir()
    env = private_env(tmp)
    project = tmp / "project"
    (project / ".kasmos").mkdir(parents=True)
    (project / ".kasmos" / "config.toml").write_text('[resources]\nprofile = "interactive"\n')
    script = (
        f"for i in $(seq {args.fanout}); do sleep 600 & done; "
        "while true; do sleep 0.05; done"  # a fork every 50 ms: the tree keeps changing
    )
    rows = []
    try:
        for _ in range(args.agents):
            out = subprocess.run(
                [KAS, "spawn", "--detach", "--json", "--", "sh", "-c", script],
                cwd=project, env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(out.stdout))
        time.sleep(1.0)  # let the trees fill
        guards = [r["guard_pid"] for r in rows]
        # A detached agent's guard is also the process that records its end; any other owner is extra.
        owners = [r["owner_pid"] for r in rows if r.get("owner_pid") and r["owner_pid"] != r["guard_pid"]]
        before = {g: cpu(g) for g in guards}
        start = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - start
        shares = [(cpu(g) - before[g]) / elapsed for g in guards]
        guard_pss = [pss_kb(g) for g in guards]
        owner_pss = [pss_kb(o) for o in owners]
        procs = sum(len(psutil.Process(g).children(recursive=True)) for g in guards)
        print(f"agents: {args.agents}, processes under their guards: {procs}, window: {elapsed:.1f} s")
        mean_share, mean_pss = 100 * sum(shares) / len(shares), sum(guard_pss) / len(guard_pss) / 1024
        print(f"guard CPU, share of one core: mean {mean_share:.3f}%, max {100 * max(shares):.3f}%")
        print(f"guard PSS: mean {mean_pss:.1f} MB, max {max(guard_pss) / 1024:.1f} MB")
        total = (sum(guard_pss) + sum(owner_pss)) / len(rows) / 1024
        print(f"other kas processes per agent: {len(owners) / len(rows):.0f}")
        print(f"kas per detached agent, all its processes: {total:.1f} MB PSS")
    finally:
        for row in rows:
            subprocess.run([KAS, "instance", "stop", "--grace", "1", row["id"]], cwd=project, env=env,
                           capture_output=True)  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
