"""tmux mode against a server kas did not start: the agent's environment, and a server that does not answer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kas.launch.tmux import TmuxLauncher
from kas.registry import Instance
from tests.helpers import agent_argv, make_fifo, read_report
from tests.tmuxtools import MARK, kas_env, leftovers, popen_kas, run_kas, server_pid, tmux

# What tmux itself sets in every pane, and so what a tmux agent sees differently from the same agent in
# sdk mode. Each describes the terminal the agent runs on, which is the pane and not the caller's:
PANE_VARIABLES = {
    "TMUX": "socket, server pid and session of the pane: the agent's own tmux commands reach its server",
    "TMUX_PANE": "the pane the agent runs in (the caller's would name a pane on another server)",
    "TERM": "the terminal type of the pane (tmux's default-terminal), not of the caller's terminal",
    "TERM_PROGRAM": "tmux >= 3.2 names itself as the terminal program",
    "TERM_PROGRAM_VERSION": "and its version",
}


def start_foreign_server(socket: str, home: Path, mark: str) -> None:
    """A server someone else started first, with an environment of its own (no MAKEFLAGS, FROM_SERVER)."""
    home.mkdir(exist_ok=True)
    subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "FROM_SERVER=1", f"{MARK}={mark}", "MAKEFLAGS=-j3",
         "tmux", "-L", socket, "new-session", "-d", "-s", "other", "sleep 60"],
        check=True,
    )  # fmt: skip


def spawn_reporting(
    mode: str, env: dict[str, str], cwd: Path, fifo: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    how = ["--detach"] if mode == "sdk" else ["--mode", "tmux"]
    proc = popen_kas("spawn", *how, "--json", "--", *agent_argv(fifo, 0), env=env, cwd=cwd)
    out, err = proc.communicate(timeout=60)  # both modes return once the agent runs
    assert proc.returncode == 0, err
    return json.loads(out), read_report(fifo)


def test_a_tmux_agent_gets_the_callers_environment_not_the_servers(
    write_config: Callable[[str], Path], project: Path, tmp_path: Path, tmux_socket: str
) -> None:
    """Only what tmux sets to describe the pane differs from the same agent in sdk mode; a value the config
    forces beats even those."""
    write_config('[resources]\nprofile = "interactive"\n[resources.env]\nTERM_PROGRAM_VERSION = "forced"\n')
    mark = uuid.uuid4().hex
    start_foreign_server(tmux_socket, tmp_path / "server-home", mark)
    caller = kas_env(MAKEFLAGS="-j8", FROM_CALLER="1", TERM="xterm-caller", TMUX="/tmp/elsewhere,1,0")
    caller |= {"TMUX_PANE": "%99", MARK: mark}
    row, in_tmux = spawn_reporting("tmux", caller, project, make_fifo(tmp_path / "tmux.fifo"))
    _, in_sdk = spawn_reporting("sdk", caller, project, make_fifo(tmp_path / "sdk.fifo"))
    tmux_env, sdk_env = in_tmux["env"], in_sdk["env"]

    assert tmux_env["MAKEFLAGS"] == "-j8", "the caller's value must be respected"
    assert tmux_env["FROM_CALLER"] == "1"
    assert tmux_env["CARGO_BUILD_JOBS"] == "1" and tmux_env["GOMAXPROCS"] == "2", "the profile's hints"
    assert tmux_env["KASMOS_RESOURCE_PROFILE"] == "interactive"
    assert "FROM_SERVER" not in tmux_env, "the agent got the tmux server's environment"

    differ = {name for name in tmux_env.keys() | sdk_env.keys() if tmux_env.get(name) != sdk_env.get(name)}
    assert differ <= PANE_VARIABLES.keys(), differ - PANE_VARIABLES.keys()
    # Those the pane sets are the pane's, the caller's stay with an sdk agent.
    socket_path = tmux(tmux_socket, "display-message", "-p", "#{socket_path}").stdout.strip()
    assert tmux_env["TMUX"].split(",")[0] == socket_path and tmux_env["TMUX_PANE"] == row["tmux_target"]
    assert tmux_env["TERM"] == tmux(tmux_socket, "show-options", "-gv", "default-terminal").stdout.strip()
    assert tmux_env["TERM_PROGRAM"] == "tmux"
    assert tmux_env["TERM_PROGRAM_VERSION"] == sdk_env["TERM_PROGRAM_VERSION"] == "forced"
    assert (sdk_env["TMUX"], sdk_env["TMUX_PANE"], sdk_env["TERM"]) == (
        "/tmp/elsewhere,1,0",
        "%99",
        "xterm-caller",
    )
    assert "TERM_PROGRAM" not in sdk_env

    pid = server_pid(tmux_socket)
    other = tmux(tmux_socket, "list-panes", "-t", "=other", "-F", "#{pane_pid}").stdout.split()
    kas_window = tmux(tmux_socket, "list-panes", "-t", "=kas:0", "-F", "#{pane_pid}").stdout.split()
    assert leftovers(mark, {pid or 0, *map(int, other + kas_window)}) == []


@pytest.fixture
def stopped_server(tmux_socket: str) -> Iterator[Callable[[], int]]:
    """Stop the private server (SIGSTOP) when asked; it is always continued in teardown, even on failure."""
    stopped: list[int] = []

    def stop() -> int:
        pid = server_pid(tmux_socket)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        return pid

    yield stop
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_instance_list_answers_quickly_about_a_stopped_tmux_server(
    project: Path, tmux_socket: str, stopped_server: Callable[[], int]
) -> None:
    """Three agents on a stopped server: one timeout for the server, not one per row; rows are 'unknown'."""
    env = kas_env(**{MARK: uuid.uuid4().hex})
    ids = []
    for name in ("a1", "a2", "a3"):
        started = run_kas(
            "spawn", "--mode", "tmux", "--json", "--name", name, "--", "sleep", "60", env=env, cwd=project
        )
        assert started.returncode == 0, started.stderr
        ids.append(json.loads(started.stdout)["id"])
    server = stopped_server()

    for args in (["instance", "list"], ["instance", "list", "--json"]):
        began = time.monotonic()
        listed = run_kas(*args, env=env, cwd=project)
        took = time.monotonic() - began
        assert listed.returncode == 0 and listed.stderr == "", listed.stderr
        assert took < 5, f"kas {' '.join(args)} took {took:.1f}s"
        if "--json" in args:
            assert {row["id"]: row["status"] for row in json.loads(listed.stdout)} == dict.fromkeys(
                ids, "unknown"
            )
        else:
            rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
            assert rows == dict.fromkeys(ids, "unknown"), listed.stdout
    shown = run_kas("instance", "show", ids[0], env=env, cwd=project)
    assert shown.returncode == 0 and "unknown" in shown.stdout, shown.stderr

    os.kill(server, signal.SIGCONT)
    stopped = run_kas("instance", "stop", "--grace", "2", "--json", *ids, env=env, cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert {row["status"] for row in json.loads(stopped.stdout)} == {"stopped"}
    kas_window = tmux(tmux_socket, "list-panes", "-t", "=kas:0", "-F", "#{pane_pid}").stdout.split()
    assert leftovers(env[MARK], {server, *map(int, kas_window)}) == []


def test_waiting_for_an_agent_of_a_stopped_server_does_not_spin(
    project: Path, tmux_socket: str, stopped_server: Callable[[], int]
) -> None:
    """Once the server is taken as not answering, a wait (a wave's, ``logs -f``'s) goes on at the pace of
    its channel, not in a busy loop, and ends with the status the runner recorded."""
    env = kas_env(**{MARK: uuid.uuid4().hex})
    started = run_kas("spawn", "--mode", "tmux", "--json", "--", "sleep", "4", env=env, cwd=project)
    assert started.returncode == 0, started.stderr
    handle = TmuxLauncher(tmux_socket).attach(Instance(**json.loads(started.stdout)))
    server = stopped_server()
    result: dict[str, Any] = {}

    def wait() -> None:
        began = time.thread_time()
        result["status"] = handle.wait()
        result["cpu"] = time.thread_time() - began

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(30)
    os.kill(server, signal.SIGCONT)
    assert result["status"] == 0
    assert result["cpu"] < 0.5, f"the wait used {result['cpu']:.2f}s of CPU"
    kas_window = tmux(tmux_socket, "list-panes", "-t", "=kas:0", "-F", "#{pane_pid}").stdout.split()
    assert leftovers(env[MARK], {server, *map(int, kas_window)}) == []


def test_starting_agents_on_a_stopped_server_fails_fast_and_a_wave_still_stops(
    project: Path, tmux_socket: str, stopped_server: Callable[[], int]
) -> None:
    """A stopped server is a launch failure after a bounded wait, never a hang (also through SIGTERM)."""
    env = kas_env(**{MARK: uuid.uuid4().hex})
    assert (
        run_kas("spawn", "--mode", "tmux", "--", "true", env=env, cwd=project).returncode == 0
    )  # the server
    stopped_server()
    began = time.monotonic()
    spawned = run_kas("spawn", "--mode", "tmux", "--", "true", env=env, cwd=project)
    assert (
        spawned.returncode == 2 and "does not answer" in spawned.stderr and "Traceback" not in spawned.stderr
    )
    assert time.monotonic() - began < 10
    (project / "plan.toml").write_text('[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = ["true"]\n')
    began = time.monotonic()
    waved = run_kas("wave", "run", "--yes", "--mode", "tmux", "plan.toml", env=env, cwd=project)
    assert waved.returncode == 1 and "does not answer" in waved.stdout, (waved.stdout, waved.stderr)
    assert time.monotonic() - began < 15
