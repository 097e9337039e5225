"""The small kas process that outlives ``kas spawn``: it starts the agent, waits for it, records its end.

Two forms, one job:

- ``python -m kas.launch.supervisor`` with a JSON spec on stdin: behind ``kas spawn --detach`` (sdk). It
  prints ``pid N`` (or ``error ...``) on stdout once the agent runs, so the parent returns at once with a
  registered row, and writes the agent's exit into the registry.
- ``python -m kas.launch.supervisor --pane SPEC_FILE``: the command of a tmux agent's pane. It reads argv,
  environment and directory from the private spec file (so tmux never parses any of them), gives the agent
  the pane's terminal (and tmux's variables that describe it), records its exit status for whoever waits,
  and closes the pane's log pipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kas.errors import LaunchError
from kas.launch.groups import exit_code, signal_group
from kas.launch.sdk import popen


def detached() -> int:
    from kas import lifecycle
    from kas.registry import Registry

    spec = json.load(sys.stdin)
    registry = Registry(Path(spec["db"]))
    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = popen(spec["argv"], spec["env"], Path(spec["cwd"]), stdout=fd, stderr=fd)
    except LaunchError as exc:
        lifecycle.mark_failed(registry, spec["id"], log_path=spec["log"])
        os.write(fd, f"kas: {exc}\n".encode())
        print(f"error {exc}", flush=True)
        return 2
    finally:
        os.close(fd)
    lifecycle.mark_running(registry, spec["id"], proc.pid, log_path=spec["log"])
    print(f"pid {proc.pid}", flush=True)
    sys.stdout.close()
    sys.stderr.close()
    os.close(1)
    os.close(2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status = exit_code(proc.wait())
    lifecycle.mark_exited(registry, spec["id"], status)
    return 0


def pane(spec_file: Path) -> int:
    spec: dict[str, Any] = json.loads(spec_file.read_text())
    spec_file.unlink(missing_ok=True)  # it holds the agent's environment
    tmux = [*spec["tmux"]]
    terminal = 0 if os.isatty(0) else None
    env = dict(spec["env"])
    for name in spec.get("from_pane", []):  # the pane's terminal, not the caller's: tmux's values or none
        env.pop(name, None)
        if name in os.environ:
            env[name] = os.environ[name]
    try:
        proc = popen(spec["argv"], env, Path(spec["cwd"]), stdin=None, terminal=terminal)
    except LaunchError as exc:
        _say(spec["ready"], {"error": str(exc)}, tmux, spec["ready_channel"])
        print(f"kas: {exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: Any) -> None:
        signal_group(proc.pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    _say(spec["ready"], {"pid": proc.pid}, tmux, spec["ready_channel"])
    status = exit_code(proc.wait())
    _write(spec["status"], str(status))
    pane_id = os.environ.get("TMUX_PANE")
    quiet = subprocess.DEVNULL
    if pane_id:  # end the log pipe now: nothing of the agent's may linger once its status is known
        subprocess.run([*tmux, "pipe-pane", "-t", pane_id], stdout=quiet, stderr=quiet, check=False)
    subprocess.run([*tmux, "wait-for", "-S", spec["done_channel"]], stdout=quiet, stderr=quiet, check=False)
    return status


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _say(path: str, answer: dict[str, Any], tmux: list[str], channel: str) -> None:
    _write(path, json.dumps(answer))
    quiet = subprocess.DEVNULL
    subprocess.run([*tmux, "wait-for", "-S", channel], stdout=quiet, stderr=quiet, check=False)


def main() -> int:
    if sys.argv[1:2] == ["--pane"]:
        return pane(Path(sys.argv[2]))
    return detached()


if __name__ == "__main__":
    sys.exit(main())
