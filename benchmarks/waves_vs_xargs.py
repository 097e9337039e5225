"""200 tasks of `true` with a cap of 4: `kas wave run --yes` against `xargs -P 4`, and promotion latency.

Both run the same wrapped argv (nice + ionice, as the interactive profile launches it). Promotion
latency is the time from kas noticing a task's end to the next task having started (its agent running),
read from the `--json` event stream. It is measured twice: in the 200-task wave, where the machine is
saturated (both cores busy with the tasks' own execs), and in a wave of 40 tasks of `sleep 0.05` with a
cap of 1, where it is not. The CPU figures are the whole machine's busy time during each run (/proc/stat),
so run this on an otherwise idle machine. Usage: python benchmarks/waves_vs_xargs.py [TASKS] [CAP]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import KAS, private_env, temp_dir


def busy_seconds() -> float:
    """CPU time the whole machine spent not idle, in seconds."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wave(plan: Path, env: dict[str, str]) -> tuple[float, float, list[dict]]:
    """Wall seconds, busy CPU seconds and the events of one `kas wave run`."""
    cpu, start = busy_seconds(), time.perf_counter()
    done = subprocess.run(
        [KAS, "wave", "run", "--yes", "--json", str(plan)], env=env, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - start, busy_seconds() - cpu
    if done.returncode != 0:
        sys.exit(f"kas failed: {done.stderr}")
    return wall, cpu, [json.loads(line) for line in done.stdout.splitlines()]


def promotions(events: list[dict]) -> list[float]:
    latencies = []
    promoted = [e["at"] for e in events if e["event"] == "task_promoted"]
    for event in events:
        if event["event"] == "task_finished":
            later = [p for p in promoted if p >= event["at"]]
            if later:
                latencies.append(later[0] - event["at"])
    return latencies


def plan_of(path: Path, command: list[str], tasks: int, cap: int) -> Path:
    body = "".join(f'[[waves.tasks]]\nid = "t{i}"\ncommand = {json.dumps(command)}\n' for i in range(tasks))
    path.write_text(
        f'[resources]\nprofile = "interactive"\nmax_parallel_wave_tasks = {cap}\n[[waves]]\n{body}'
    )
    return path


def describe(name: str, latencies: list[float]) -> str:
    median = statistics.median(latencies) * 1000
    p90 = sorted(latencies)[int(0.9 * (len(latencies) - 1))] * 1000
    return f"promotion latency, {name}: median {median:.2f} ms, p90 {p90:.2f} ms"


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    tmp = temp_dir()
    env = private_env(tmp)
    kas_time, kas_cpu, events = wave(plan_of(tmp / "plan.toml", ["true"], tasks, cap), env)

    wrapped = ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "true"]  # `true N`: the N is ignored
    xargs_cpu, start = busy_seconds(), time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(cap), "-n", "1", *wrapped],
        input="\n".join(str(i) for i in range(tasks)),
        text=True,
        check=True,
    )
    xargs_time, xargs_cpu = time.perf_counter() - start, busy_seconds() - xargs_cpu

    _, _, quiet = wave(plan_of(tmp / "quiet.toml", ["sleep", "0.05"], 40, 1), env)
    print(f"tasks: {tasks}, cap: {cap}")
    ratio = kas_time / xargs_time
    print(f"kas wave run: {kas_time:.2f} s   xargs -P {cap}: {xargs_time:.2f} s   ratio: {ratio:.1f}x")
    print(f"per task: kas {kas_time / tasks * 1000:.1f} ms, xargs {xargs_time / tasks * 1000:.1f} ms")
    print(
        f"machine CPU busy: kas {kas_cpu:.2f} s ({kas_cpu / tasks * 1000:.1f} ms a task), "
        f"xargs {xargs_cpu:.2f} s ({xargs_cpu / tasks * 1000:.1f} ms a task)"
    )
    print(describe(f"{tasks} tasks, cap {cap} (machine saturated)", promotions(events)))
    print(describe("40 tasks of sleep 0.05, cap 1", promotions(quiet)))


if __name__ == "__main__":
    main()
