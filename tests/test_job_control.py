"""A foreground agent under a job-control shell: Ctrl-Z stops kas's job, ``bg`` and ``fg`` continue it.

A real ``bash -i`` on a pseudo-terminal, driven as a person would type; the agent's state is read from
the kernel.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import KAS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None, reason="needs bash and Linux"
)


class Shell:
    """An interactive bash on a terminal of its own; ``expect`` reads until a text shows."""

    def __init__(self, cwd: Path) -> None:
        import pty

        self.primary, secondary = pty.openpty()
        env = {
            **os.environ,
            "PS1": "PROMPT> ",
            "TERM": "dumb",
            "PATH": f"{Path(KAS).parent}:{os.environ['PATH']}",
        }
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            stdin=secondary, stdout=secondary, stderr=secondary, cwd=cwd, env=env,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(secondary)
        self.seen = b""

    def expect(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} did not show; the screen ends with {self.seen[-400:]!r}"
            if select.select([self.primary], [], [], left)[0]:
                self.seen += os.read(self.primary, 4096)
        upto = self.seen.index(text.encode()) + len(text)
        shown, self.seen = self.seen[:upto], self.seen[upto:]
        return shown.decode(errors="replace")

    def job_stopped(self) -> bool:
        self.type("jobs\n")
        return "Stopped" in self.expect("PROMPT> ").split("jobs", 1)[-1]

    def type(self, keys: str) -> None:
        os.write(self.primary, keys.encode())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.primary)


def state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text())


def wait_for(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


# macOS has no guard: kas is the agent's parent there, and does the guard's part itself.
AS_ON_MACOS = (
    f'{sys.executable} -c \'import sys, kas.platform; kas.platform.system = lambda: "darwin"; '
    'from kas.cli import main; sys.argv[0] = "kas"; main()\''
)


@pytest.mark.parametrize("kas", ["kas", AS_ON_MACOS], ids=["guarded", "no guard (macOS)"])
def test_ctrl_z_stops_the_job_and_fg_gives_the_agent_its_terminal_back(project: Path, kas: str) -> None:
    pid_file = project / "agent.pid"
    shell = Shell(project)
    try:
        shell.expect("PROMPT> ")
        shell.type(f"{kas} spawn -- sh -c 'echo $$ > {pid_file}; read line; echo got:$line; read more'\n")
        wait_for(pid_file.exists)
        wait_for(lambda: pid_file.read_text().strip() != "")
        agent = int(pid_file.read_text())
        guarded = any(part.endswith("guard.py") for part in psutil.Process(agent).parent().cmdline())
        assert guarded == (kas == "kas")
        wait_for(lambda: state(agent) == psutil.STATUS_SLEEPING)  # waiting for its line
        shell.type("\x1a")  # Ctrl-Z
        shell.expect("Stopped")
        shell.expect("PROMPT> ")  # the shell has its terminal back: kas's job is stopped, not hung
        assert state(agent) == psutil.STATUS_STOPPED
        shell.type("bg\n")  # continued without the terminal, it stops again when it reads
        shell.expect("PROMPT> ")
        wait_for(lambda: state(agent) == psutil.STATUS_STOPPED)
        wait_for(lambda: shell.job_stopped())  # as a person would see it before typing fg
        shell.type("fg\n")
        shell.expect("spawn --")
        wait_for(lambda: state(agent) == psutil.STATUS_SLEEPING)
        shell.type("hello\n")
        shell.expect("got:hello")  # it reads from the terminal again
        shell.type("\x03")  # Ctrl-C
        shell.expect("PROMPT> ")
        shell.type("echo status=$?.\n")
        shell.expect("status=130.")
        wait_for(lambda: state(agent) == "gone")
    finally:
        shell.close()


@pytest.mark.parametrize("kas", ["kas", AS_ON_MACOS], ids=["guarded", "no guard (macOS)"])
def test_a_job_that_ends_in_the_background_or_is_killed_leaves_the_shell_its_terminal(
    project: Path, kas: str
) -> None:
    """After `bg` the shell holds the terminal: kas, ending there (or killed with `kill %1` while
    stopped), must not take it back, or the shell reads end-of-file and exits."""
    shell = Shell(project)
    try:
        shell.expect("PROMPT> ")
        for ending in ("bg\n", "kill %1\n"):
            pid_file = project / f"agent-{ending[0]}.pid"
            shell.type(f"{kas} spawn -- sh -c 'echo $$ > {pid_file}; exec sleep 1.5'\n")
            agent = read_pid(pid_file)
            shell.type("\x1a")
            shell.expect("Stopped")
            shell.expect("PROMPT> ")
            shell.type(ending)
            shell.expect("PROMPT> ")
            wait_for(lambda pid=agent: state(pid) == "gone")
            time.sleep(0.3)  # kas's own end, after its agent's
            shell.type("echo still-here.\n")
            shell.expect("still-here.\r\n")
            assert shell.proc.poll() is None
    finally:
        shell.close()
