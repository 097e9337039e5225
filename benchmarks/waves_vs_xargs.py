"""200 tasks of `true` with a cap of 4: `kas wave run --yes` against `xargs -P 4`, and promotion latency.

Both run the same wrapped argv (nice + ionice, as the interactive profile launches it). Promotion
latency is the time from kas noticing a task's end to the next task having started, read from the
`--json` event stream. Usage: python benchmarks/waves_vs_xargs.py [TASKS] [CAP]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from common import KAS, private_env, temp_dir


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    cap = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    tmp = temp_dir()
    env = private_env(tmp)
    plan = tmp / "plan.toml"
    body = "".join(f'[[waves.tasks]]\nid = "t{i}"\ncommand = ["true"]\n' for i in range(tasks))
    plan.write_text(
        f'[resources]\nprofile = "interactive"\nmax_parallel_wave_tasks = {cap}\n[[waves]]\n{body}'
    )

    start = time.perf_counter()
    done = subprocess.run(
        [KAS, "wave", "run", "--yes", "--json", str(plan)], env=env, capture_output=True, text=True
    )
    kas_time = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"kas failed: {done.stderr}")
    events = [json.loads(line) for line in done.stdout.splitlines()]

    wrapped = ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "true"]  # `true N`: the N is ignored
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(cap), "-n", "1", *wrapped],
        input="\n".join(str(i) for i in range(tasks)),
        text=True,
        check=True,
    )
    xargs_time = time.perf_counter() - start

    latencies = []
    promoted = [e["at"] for e in events if e["event"] == "task_promoted"]
    for event in events:
        if event["event"] == "task_finished":
            later = [p for p in promoted if p >= event["at"]]
            if later:
                latencies.append(later[0] - event["at"])
    print(f"tasks: {tasks}, cap: {cap}")
    ratio = kas_time / xargs_time
    print(f"kas wave run: {kas_time:.2f} s   xargs -P {cap}: {xargs_time:.2f} s   ratio: {ratio:.1f}x")
    print(f"per task: kas {kas_time / tasks * 1000:.1f} ms, xargs {xargs_time / tasks * 1000:.1f} ms")
    median = statistics.median(latencies) * 1000
    p90 = sorted(latencies)[int(0.9 * (len(latencies) - 1))] * 1000
    print(f"promotion latency (end seen -> next started): median {median:.2f} ms, p90 {p90:.2f} ms")


if __name__ == "__main__":
    main()
