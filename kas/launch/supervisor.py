"""The small kas process behind ``kas spawn --detach`` where an agent has no guard (not Linux): it starts
the agent, waits for it, records its end. (Where there is a guard, the guard does all of this itself.)

``python -m kas.launch.supervisor`` reads a JSON spec on stdin and prints ``pid N`` (or ``error ...``) on
stdout once the agent runs, so the parent returns at once with a registered row; it writes the agent's
exit into the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from kas.errors import KasError, LaunchError
from kas.launch.groups import exit_code, stop_group
from kas.launch.record import record_end
from kas.launch.sdk import DRAIN, popen
from kas.logwriter import RotatingLog, pump


def detached() -> int:
    from kas import lifecycle
    from kas.registry import Registry

    spec = json.load(sys.stdin)
    try:
        registry = Registry(Path(spec["db"]))
    except KasError as exc:
        print(f"error {exc}", flush=True)
        return 2
    reader, writer = os.pipe()  # output goes through the bounded log writer (kas.logwriter)
    try:
        proc = popen(spec["argv"], spec["env"], Path(spec["cwd"]), stdout=writer, stderr=writer)
    except LaunchError as exc:
        os.close(reader)
        with contextlib.suppress(KasError):
            lifecycle.mark_failed(registry, spec["id"], log_path=spec["log"])
        RotatingLog(Path(spec["log"])).write(f"kas: {exc}\n".encode())
        print(f"error {exc}", flush=True)
        return 2
    finally:
        os.close(writer)
    copier = pump(reader, Path(spec["log"]))
    try:
        from kas.probe import create_time

        # This supervisor owns the row: while it lives, an ended agent's row waits for its record.
        me = os.getpid()
        lifecycle.mark_running(
            registry,
            spec["id"],
            proc.pid,
            log_path=spec["log"],
            owner_pid=me,
            owner_create_time=create_time(me),
        )
    except KasError as exc:
        stop_group(proc.pid, 2.0)  # an agent kas cannot record is not left running
        proc.wait()
        print(f"error {exc}", flush=True)
        return 2
    print(f"pid {proc.pid}", flush=True)
    sys.stdout.close()
    sys.stderr.close()
    os.close(1)
    os.close(2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status = exit_code(proc.wait())
    copier.wait(DRAIN)
    registry.close()
    return 0 if record_end(Path(spec["db"]), spec["id"], status) else 1


def main() -> int:
    return detached()


if __name__ == "__main__":
    sys.exit(main())
