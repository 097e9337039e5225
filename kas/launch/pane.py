"""The command of a tmux agent's pane: it starts the agent (under its guard) with exactly the environment
and directory kas chose, and tells kas how it went.

It reads argv, environment and directory from a private spec file (so tmux never parses any of them),
gives the agent the pane's terminal (and tmux's variables that describe it), copies what tmux's
pipe-pane sends through a FIFO into the bounded log, records the exit status for whoever waits, and
closes the pane's log pipe. It lives as long as its agent, once per tmux agent, so like the guard it runs
as ``python -I -S pane.py SPEC`` on the standard library alone (plus ``kas.logfile``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading

TYPE_CHECKING = False  # typing itself costs 7 ms at start-up (it imports re); annotations need no import
if TYPE_CHECKING:
    from typing import Any

DRAIN = 1.0  # seconds to let the log catch up once the agent has ended
HANGUP_GRACE = 2.0  # after its window closed, seconds an agent gets per step (SIGTERM, then SIGKILL)


def kas_root() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def take_terminal(fd: int) -> Any:
    def setup() -> None:  # in the child between fork and exec: its own group, the terminal's foreground
        os.setpgid(0, 0)
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)

    return setup


def tmux(command: list[str], *args: str) -> None:
    """A tmux command that must never hang the runner: a stopped server gets 2 s, then is given up on."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=2)


def write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def say(spec: dict[str, Any], answer: dict[str, Any]) -> None:
    write(spec["ready"], json.dumps(answer))
    tmux(spec["tmux"], "wait-for", "-S", spec["ready_channel"])


def copy_output(fifo: str, log: str) -> threading.Event:
    """Copy the FIFO into the bounded log in a thread (opening a FIFO waits for its writer, pipe-pane's
    cat); the event is set once the writer closed it."""
    done = threading.Event()

    def run() -> None:
        kas_root()
        from kas.logfile import RotatingLog

        try:
            fd = os.open(fifo, os.O_RDONLY)
            out = RotatingLog(log)
            while data := os.read(fd, 65536):
                out.write(data)
            out.close()
            os.close(fd)
        except OSError:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def wait_for(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """True if ``proc`` ended within ``seconds`` (polled: the main thread is the one that reaps it)."""
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def read_report(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode(errors="replace").strip()


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def outlived(agent: int, born: int | None) -> bool:
    """After the guard ended: wait for the agent if it still runs (its guard was killed); True if so."""
    if born is None or start_time(agent) != born:
        return False
    try:
        fd = os.pidfd_open(agent)
    except OSError:
        return False
    if start_time(agent) == born:
        select.select([fd], [], [])
    os.close(fd)
    return True


def die_with(owner: int, child: int, guarded: bool) -> None:
    """Kill the agent's tree when the kas process ``owner`` ends, however it ends (a pidfd wakes us)."""

    def kill() -> None:
        try:
            if guarded:
                os.kill(child, signal.SIGUSR2)  # the guard kills everything it holds
            else:
                os.killpg(child, signal.SIGKILL)
        except OSError:
            pass

    try:
        fd = os.pidfd_open(owner)
    except OSError:
        kill()  # the owner is already gone
        return

    def watch() -> None:
        select.select([fd], [], [])
        kill()

    threading.Thread(target=watch, daemon=True).start()


def run(spec_file: str) -> int:
    with open(spec_file) as f:
        spec: dict[str, Any] = json.load(f)
    os.unlink(spec_file)  # it holds the agent's environment
    copier = copy_output(spec["fifo"], spec["log"]) if spec.get("fifo") else None
    terminal = os.isatty(0)
    env = dict(spec["env"])
    for name in spec.get("from_pane", []):  # the pane's terminal, not the caller's: tmux's values or none
        env.pop(name, None)
        if name in os.environ:
            env[name] = os.environ[name]
    if not os.path.isdir(spec["cwd"]):
        say(spec, {"error": f"the working directory {spec['cwd']} is gone"})
        return 127
    guard = spec.get("guard_command")
    report_r, report_w = os.pipe() if guard else (-1, -1)
    argv = spec["argv"]
    if guard:
        # --die-with-parent: a killed runner (its window closed under it) takes the agent's tree along.
        extra = ["--terminal"] if terminal else []
        argv = [*guard, *extra, "--die-with-parent", "--report-fd", str(report_w), "--", *argv]
    placement: dict[str, Any] = {"preexec_fn": take_terminal(0)} if terminal else {"start_new_session": True}
    try:
        proc = subprocess.Popen(
            argv, env=env, cwd=spec["cwd"], pass_fds=(report_w,) if guard else (), **placement
        )
    except OSError as exc:
        problem = "command not found" if isinstance(exc, FileNotFoundError) else exc.strerror
        say(spec, {"error": f"{problem}: {argv[0]}"})
        return 127
    agent = proc.pid
    if guard:
        os.close(report_w)
        line = read_report(report_r)
        if not line.startswith("pid "):
            proc.wait()
            say(spec, {"error": line.removeprefix("error ") or "the agent's guard ended before starting it"})
            print(f"kas: {line.removeprefix('error ')}", file=sys.stderr)
            return 127
        agent = int(line.split()[1])
    born = start_time(agent)

    def forward(signum: int, _frame: Any) -> None:
        try:
            if guard:
                os.kill(proc.pid, signum)  # the guard passes it to the agent's whole tree
            else:
                os.killpg(proc.pid, signum)
        except OSError:
            pass
        if signum == signal.SIGHUP:  # the window is gone: an agent that ignores the hangup is ended
            threading.Thread(target=escalate, daemon=True).start()

    def escalate() -> None:
        for sig, pause in ((signal.SIGTERM, HANGUP_GRACE), (signal.SIGKILL, HANGUP_GRACE)):
            if wait_for(proc, pause):
                return
            with contextlib.suppress(OSError):
                if guard:
                    os.kill(proc.pid, signal.SIGUSR2 if sig == signal.SIGKILL else sig)
                else:
                    os.killpg(proc.pid, sig)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    if spec.get("owner"):
        die_with(spec["owner"], proc.pid, bool(guard))
    say(spec, {"pid": agent, "guard": proc.pid if guard else None})
    status = exit_code(proc.wait())
    if guard:
        outlived(agent, born)  # its status is the guard's (killed: 137): the agent's own was not seen
    pane_id = os.environ.get("TMUX_PANE")
    if pane_id:  # end the log pipe now: nothing of the agent's may linger once its status is known
        tmux(spec["tmux"], "pipe-pane", "-t", pane_id)
    if copier is not None:
        copier.wait(DRAIN)
        with contextlib.suppress(OSError):
            os.unlink(spec["fifo"])
    write(spec["status"], str(status))
    tmux(spec["tmux"], "wait-for", "-S", spec["done_channel"])
    if pane_id and not spec.get("keep_window", True):
        tmux(spec["tmux"], "kill-pane", "-t", pane_id)
    return status


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
