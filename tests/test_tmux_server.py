"""tmux mode against a server kas did not start: the agent's environment, and a server that does not answer."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import agent_argv, make_fifo, read_report
from tests.tmuxtools import MARK, kas_env, leftovers, popen_kas, server_pid, tmux

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
