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

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kas.errors import KasError, LaunchError
from kas.launch.groups import exit_code, signal_group
from kas.launch.record import record_end
from kas.launch.sdk import DRAIN, popen
from kas.launch.tree import guarded, stop_tree
from kas.logwriter import RotatingLog, pump
from kas.threads import background


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
    guard = guarded(spec["id"], spec.get("guard"), spec["argv"])
    agent, guard_ref = 0, None
    try:
        proc = popen(
            guard.argv if guard else spec["argv"],
            spec["env"],
            Path(spec["cwd"]),
            stdout=writer,
            stderr=writer,
            pass_fds=(guard.report_w,) if guard else (),
        )
        agent = proc.pid
        if guard:
            guard.close_parent_end()
            try:
                agent, guard_ref = guard.started(proc.pid)
            except LaunchError:
                proc.wait()
                raise
    except LaunchError as exc:
        os.close(reader)
        if guard and not agent:
            guard.abandon()
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
            agent,
            log_path=spec["log"],
            owner_pid=me,
            owner_create_time=create_time(me),
            guard=guard_ref,
        )
    except KasError as exc:
        stop_tree(agent, guard_ref, 2.0)  # an agent kas cannot record is not left running
        proc.wait()
        print(f"error {exc}", flush=True)
        return 2
    print(f"pid {agent}", flush=True)
    sys.stdout.close()
    sys.stderr.close()
    os.close(1)
    os.close(2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ended = exit_code(proc.wait())
    status = _outlived(agent, ended) if guard_ref is not None else ended
    copier.wait(DRAIN)
    registry.close()
    return 0 if record_end(Path(spec["db"]), spec["id"], status) else 1


def pane(spec_file: Path) -> int:
    spec: dict[str, Any] = json.loads(spec_file.read_text())
    spec_file.unlink(missing_ok=True)  # it holds the agent's environment
    tmux = [*spec["tmux"]]
    copier = _copy_pane_output(spec["fifo"], spec["log"]) if spec.get("fifo") else None
    terminal = 0 if os.isatty(0) else None
    env = dict(spec["env"])
    for name in spec.get("from_pane", []):  # the pane's terminal, not the caller's: tmux's values or none
        env.pop(name, None)
        if name in os.environ:
            env[name] = os.environ[name]
    guard = guarded(spec["id"], spec.get("guard"), spec["argv"], terminal=terminal is not None)
    try:
        proc = popen(
            guard.argv if guard else spec["argv"],
            env,
            Path(spec["cwd"]),
            stdin=None,
            terminal=terminal,
            pass_fds=(guard.report_w,) if guard else (),
        )
        agent = proc.pid
        if guard:
            guard.close_parent_end()
            try:
                agent, _ = guard.started(proc.pid)
            except LaunchError:
                proc.wait()
                raise
    except LaunchError as exc:
        _say(spec["ready"], {"error": str(exc)}, tmux, spec["ready_channel"])
        print(f"kas: {exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: Any) -> None:
        if guard is None:
            signal_group(proc.pid, signum)
        else:  # the guard passes it to the agent's whole tree
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    if spec.get("owner"):
        _die_with(spec["owner"], proc.pid, guarded=guard is not None)
    _say(spec["ready"], {"pid": agent, "guard": proc.pid if guard else None}, tmux, spec["ready_channel"])
    status = exit_code(proc.wait())
    if guard is not None:
        status = _outlived(agent, status) or status
    pane_id = os.environ.get("TMUX_PANE")
    if pane_id:  # end the log pipe now: nothing of the agent's may linger once its status is known
        _tmux(tmux, "pipe-pane", "-t", pane_id)
    if copier is not None:
        copier.wait(DRAIN)
        Path(spec["fifo"]).unlink(missing_ok=True)
    _write(spec["status"], str(status))
    _tmux(tmux, "wait-for", "-S", spec["done_channel"])
    if pane_id and not spec.get("keep_window", True):
        _tmux(tmux, "kill-pane", "-t", pane_id)
    return status


def _outlived(agent: int, status: int) -> int | None:
    """The guard ended; if the agent did not (the guard was killed), wait for the agent itself, whose
    status nobody can see any more: None."""
    from kas.probe import create_time, wait_gone

    born = create_time(agent)
    if born is None:
        return status
    wait_gone(agent, born)
    return None


def _copy_pane_output(fifo: str, log: str) -> threading.Event:
    """Copy what tmux's pipe-pane sends through the FIFO into the bounded log, in a thread.

    Opening a FIFO waits for its writer (pipe-pane's cat), so the thread does it, not the runner.
    """
    return background(lambda: pump(os.open(fifo, os.O_RDONLY), Path(log)).wait())


def _die_with(owner: int, child: int, *, guarded: bool) -> None:
    """Kill the agent's tree when the kas process ``owner`` ends, however it ends (a pidfd wakes us).

    ``child`` is the guard (told to kill everything it holds) or, without one, the agent's group leader.
    """
    import select
    import threading

    def kill() -> None:
        if guarded:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGUSR2)
        else:
            signal_group(child, signal.SIGKILL)

    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):
        kill()  # the owner is already gone
        return

    def watch() -> None:
        select.select([fd], [], [])
        kill()

    threading.Thread(target=watch, daemon=True).start()


def _tmux(tmux: list[str], *args: str) -> None:
    """A tmux command that must never hang the runner: a stopped server gets 2 s, then is given up on."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run([*tmux, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=2)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _say(path: str, answer: dict[str, Any], tmux: list[str], channel: str) -> None:
    _write(path, json.dumps(answer))
    _tmux(tmux, "wait-for", "-S", channel)


def main() -> int:
    if sys.argv[1:2] == ["--pane"]:
        return pane(Path(sys.argv[2]))
    return detached()


if __name__ == "__main__":
    sys.exit(main())
