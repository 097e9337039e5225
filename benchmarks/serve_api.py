"""`kas serve` under load: GET /api/v1/instances over 1,000 rows with 20 live agents, and how long an
agent's start takes to reach a client of the event stream with 50 agents running.

Usage: python benchmarks/serve_api.py [LIVE_FOR_EVENTS]   (default 50)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import KAS, private_env, temp_dir


def fill(rows: int) -> None:
    from kas.registry import Instance, Registry, new_id

    registry = Registry()
    now = time.time()
    for index in range(rows):
        registry.insert(
            Instance(id=new_id(), name=f"agent{index}", mode="sdk", status="exited", cwd="/tmp",
                     argv=["claude", "-p", f"task {index}"], wrapped_argv=["nice", "-n", "10", "claude"],
                     resource_profile="interactive", settings={"nice": 10}, env={}, created_at=now - index,
                     exit_status=0, ended_at=now - index + 1)
        )  # fmt: skip
    registry.close()


def spawn(project: Path, env: dict[str, str]) -> str:
    argv = [KAS, "spawn", "--detach", "--json", "--", "sleep", "600"]
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, check=True)
    return str(json.loads(done.stdout)["id"])


def main() -> None:
    live_for_events = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    tmp = temp_dir()
    env = private_env(tmp)
    os.environ.update(KAS_STATE_DIR=env["KAS_STATE_DIR"])
    project = tmp / "project"
    (project / ".kasmos").mkdir(parents=True)
    (project / ".kasmos" / "config.toml").write_text('[resources]\nprofile = "interactive"\n')
    fill(1000)
    server = subprocess.Popen(
        [KAS, "serve", "--port", "0"], cwd=project, env=env, stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    base = server.stderr.readline().split("listening on ", 1)[1].split()[0]
    token = subprocess.run(
        [KAS, "serve", "--print-token"], env=env, capture_output=True, text=True
    ).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    ids: list[str] = []
    try:
        ids += [spawn(project, env) for _ in range(20)]
        time.sleep(1.5)
        for query in ("", "?all=1"):
            times = []
            for _ in range(8):
                start = time.perf_counter()
                with urllib.request.urlopen(
                    urllib.request.Request(base + "/api/v1/instances" + query, headers=auth)
                ) as r:
                    r.read()
                times.append(time.perf_counter() - start)
            spent = statistics.median(times[1:]) * 1000
            print(f"GET /api/v1/instances{query} (1,000 rows, 20 live): {spent:.0f} ms (median of 7)")
        ids += [spawn(project, env) for _ in range(live_for_events - 20)]
        time.sleep(1.5)
        lags = []
        stream = urllib.request.urlopen(
            urllib.request.Request(base + "/api/v1/events", headers=auth), timeout=30
        )
        stream.readline()
        stream.readline()
        for _ in range(5):
            began = time.monotonic()
            new = spawn(project, env)
            ids.append(new)
            spawned = time.monotonic()
            while True:
                line = stream.readline().decode()
                if line.startswith("event: started"):
                    data = json.loads(stream.readline().decode().removeprefix("data: "))
                    if data["id"] == new:
                        lags.append((time.monotonic() - spawned, spawned - began))
                        break
        stream.close()
        seen = [lag for lag, _ in lags]
        median, worst = statistics.median(seen) * 1000, max(seen) * 1000
        print(f"with {live_for_events}+ agents running, a start reaches an event client after kas spawn "
              f"returned: median {median:.0f} ms, max {worst:.0f} ms")  # fmt: skip
    finally:
        subprocess.run(
            [KAS, "instance", "stop", "--grace", "1", *ids], cwd=project, env=env, capture_output=True
        )
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
