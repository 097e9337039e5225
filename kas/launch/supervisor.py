"""The process behind ``kas spawn --detach``: starts the agent, waits for it, records its exit.

Run as ``python -m kas.launch.supervisor`` with a JSON spec on stdin. It prints ``pid N`` (or
``error ...``) on stdout once the agent runs, so the parent can return at once with a registered row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kas import platform as host
from kas.errors import LaunchError
from kas.instances import mark_running
from kas.launch import sdk
from kas.registry import Registry


def main() -> int:
    spec = json.load(sys.stdin)
    registry = Registry(Path(spec["db"]))
    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = sdk.start(
            spec["argv"], spec["env"], Path(spec["cwd"]), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd
        )
    except LaunchError as exc:
        registry.update(spec["id"], status="failed", ended_at=time.time(), log_path=spec["log"])
        os.write(fd, f"kas: {exc}\n".encode())
        print(f"error {exc}", flush=True)
        return 2
    finally:
        os.close(fd)
    if spec["autogroup_nice"]:
        problem = host.set_autogroup_nice(proc.pid, spec["autogroup_nice"])
        if problem:
            print(f"kas: warning: {problem}", file=sys.stderr, flush=True)
    mark_running(registry, spec["id"], proc.pid, log_path=spec["log"])
    print(f"pid {proc.pid}", flush=True)
    sys.stdout.close()
    sys.stderr.close()
    os.close(1)
    os.close(2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status = sdk.exit_code(proc.wait())
    registry.update(spec["id"], exit_status=status, ended_at=time.time(), status="exited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
