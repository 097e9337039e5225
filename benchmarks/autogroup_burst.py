"""How long a burst of agents runs before its session groups are lowered, as a normal desktop user.

The kernel lets a process without CAP_SYS_ADMIN change an autogroup nice once per 100 ms, system-wide,
so kas queues those writes. Each task of an unlimited wave measures, from its own start, how long until
its /proc/self/autogroup reads the profile's nice. Run as root, the same wave is also measured under
``setpriv`` without CAP_SYS_ADMIN, which is what every real user has.
Usage: python benchmarks/autogroup_burst.py [N ...]   (default: 4 8)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

from common import KAS, private_env, temp_dir

# Nanoseconds from the task's start until its own session group reads nice 19 (gives up after 10 s).
PROBE = (
    'start=$(date +%s%N); i=0; until grep -q "nice 19" /proc/$$/autogroup || [ $i -ge 2000 ]; '
    'do i=$((i+1)); sleep 0.005; done; echo $(( $(date +%s%N) - start )) > "$0"'
)


def burst(n: int, prefix: list[str]) -> list[float]:
    tmp = temp_dir()
    tasks = "".join(
        f'[[waves.tasks]]\nid = "t{i}"\ncommand = {json.dumps(["sh", "-c", PROBE, str(tmp / f"t{i}.ns")])}\n'
        for i in range(n)
    )
    plan = tmp / "plan.toml"
    head = 'name = "burst"\n[resources]\nprofile = "interactive"\nmax_parallel_wave_tasks = 0\n'
    plan.write_text(f"{head}[[waves]]\n{tasks}")
    subprocess.run(
        [*prefix, KAS, "wave", "run", "--yes", str(plan)], env=private_env(tmp), capture_output=True
    )
    return sorted(int((tmp / f"t{i}.ns").read_text()) / 1e6 for i in range(n))


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [4, 8]
    users: list[tuple[str, list[str]]] = []
    if os.geteuid() == 0:
        users.append(("root (exempt)", []))
        if shutil.which("setpriv"):
            users.append(("desktop user", ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]))
    else:
        users.append(("this user", []))
    print(f"{'who':<15} {'agents':>6} {'median ms':>10} {'max ms':>8}   time until lowered, per agent")
    for who, prefix in users:
        for n in sizes:
            ms = burst(n, prefix)
            print(
                f"{who:<15} {n:>6} {statistics.median(ms):>10.1f} {ms[-1]:>8.1f}   {[round(m) for m in ms]}"
            )


if __name__ == "__main__":
    main()
