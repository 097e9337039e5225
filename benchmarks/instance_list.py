"""Time `kas instance list` against a registry of 1,000 rows, and with live agents among them.

Usage: python benchmarks/instance_list.py [ROWS] [LIVE]   (LIVE detached agents, default 20)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import KAS, private_env, temp_dir, wall


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = temp_dir()
    env = private_env(tmp)
    os.environ.update(KAS_STATE_DIR=env["KAS_STATE_DIR"])
    from kas.registry import Instance, Registry, new_id

    registry = Registry()
    now = time.time()
    for index in range(rows):
        # Mostly finished rows, plus some "running" ones whose pids are gone (they get settled as lost).
        running = index % 10 == 0
        registry.insert(
            Instance(
                id=new_id(),
                name=f"agent{index}",
                mode="sdk",
                status="running" if running else "exited",
                cwd="/tmp",
                argv=["claude", "-p", f"task {index}"],
                wrapped_argv=["nice", "-n", "10", "claude"],
                resource_profile="interactive",
                settings={"nice": 10},
                env={"MAKEFLAGS": "-j1"},
                created_at=now - index,
                pid=4_000_000 + index if running else None,
                pid_create_time=1.0 if running else None,
                exit_status=None if running else 0,
                ended_at=None if running else now - index + 1,
            )
        )
    registry.close()
    first = wall([KAS, "instance", "list", "--all"], env, runs=1)  # settles the 100 lost rows
    print(f"rows: {rows}")
    print(f"kas instance list --all (first run, settles {rows // 10} lost rows): {first * 1000:.0f} ms")
    for argv in (
        ["instance", "list", "--all"],
        ["instance", "list", "--all", "--json"],
        ["instance", "list"],
    ):
        print(f"kas {' '.join(argv)}: {wall([KAS, *argv], env, runs=7) * 1000:.0f} ms (median of 7)")
    live = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    project = tmp / "project"
    (project / ".kasmos").mkdir(parents=True)
    (project / ".kasmos" / "config.toml").write_text('[resources]\nprofile = "interactive"\n')
    ids = []
    try:
        for _ in range(live):
            argv = [KAS, "spawn", "--detach", "--json", "--", "sh", "-c", "sleep 600 & wait"]
            done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, check=True)
            ids.append(json.loads(done.stdout)["id"])
        time.sleep(1.5)  # every guard has written its first figures
        for argv in (
            ["instance", "list", "--all"],
            ["instance", "list", "--all", "--json"],
            ["instance", "list"],
        ):
            spent = wall([KAS, *argv], env, runs=7) * 1000
            print(f"with {live} live agents, kas {' '.join(argv)}: {spent:.0f} ms (median of 7)")
    finally:
        subprocess.run(
            [KAS, "instance", "stop", "--grace", "1", *ids], cwd=project, env=env, capture_output=True
        )


if __name__ == "__main__":
    main()
