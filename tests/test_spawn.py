"""Real spawning: niceness, I/O class, autogroup and env read back from real processes (both modes)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kas import platform as host
from kas.launch import tmux
from kas.registry import Instance
from tests.conftest import KAS, assert_user_error
from tests.helpers import (
    Lines,
    agent_argv,
    desktop_user_prefix,
    make_fifo,
    read_report,
    run_on_terminal,
    still_running,
)


def proc_facts(pid: int) -> tuple[int, int, int]:
    proc = psutil.Process(pid)
    io = proc.ionice()
    return proc.nice(), int(io.ioclass), int(io.value)


def list_json(kas) -> list[dict]:  # type: ignore[no-untyped-def]
    result = kas("instance", "list", "--all", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def spawn_reporting(kas, tmp_path: Path, *args: str, seconds: float = 30, name: str = "rep"):  # type: ignore[no-untyped-def]
    fifo = make_fifo(tmp_path / f"{name}.fifo")
    result = kas("spawn", *args, "--json", "--name", name, "--", *agent_argv(fifo, seconds))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), read_report(fifo)


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_agent_and_grandchild_run_at_the_profile_priority_with_the_build_env(
    kas, interactive, tmp_path: Path, monkeypatch, mode: str, request
) -> None:
    args = ["--detach"] if mode == "sdk" else ["--mode", "tmux"]
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    monkeypatch.setenv("GOMAXPROCS", "9")
    row, report = spawn_reporting(kas, tmp_path, *args)
    try:
        assert row["mode"] == mode
        for pid in (report["pid"], report["child"]):
            assert proc_facts(pid) == (10, psutil.IOPRIO_CLASS_BE, 7)
        env = report["env"]
        assert env["KASMOS_RESOURCE_PROFILE"] == "interactive"
        assert env["MAKEFLAGS"] == "-j1" and env["CARGO_BUILD_JOBS"] == "1" and env["GOFLAGS"] == "-p=1"
        if mode == "sdk":
            assert env["GOMAXPROCS"] == "9"  # the caller's value is respected
        if host.autogroup_enabled():
            assert host.read_autogroup(report["pid"])[1] == 19
            assert host.read_autogroup(report["child"])[1] == 19
            assert host.read_autogroup(report["pid"])[0] != host.read_autogroup(os.getpid())[0]
        listed = {r["id"]: r for r in list_json(kas)}
        live = listed[row["id"]]
        assert live["status"] == "running" and live["resource_profile"] == "interactive"
        assert live["live"][0]["nice"] == 10
        table = kas("instance", "list").stdout
        assert row["id"] in table and "be/7" in table and "running" in table
        shown = kas("instance", "show", row["id"]).stdout
        assert "profile" in shown and "interactive" in shown and "live process tree" in shown
    finally:
        stopped = kas("instance", "stop", "--grace", "2", "--json", row["id"])
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == [{"id": row["id"], "status": "stopped", "exit_status": 143}]
    assert still_running([report["child"]]) == []
    after = {r["id"]: r for r in list_json(kas)}[row["id"]]
    assert after["status"] == "stopped" and after["exit_status"] == 143


def test_foreground_sdk_passes_the_exit_status_through_and_records_it(kas, interactive) -> None:
    result = kas("spawn", "--", sys.executable, "-c", "import os,sys; print(os.nice(0)); sys.exit(7)")
    assert result.returncode == 7
    assert result.stdout.strip() == "10"
    [row] = list_json(kas)
    assert row["status"] == "exited" and row["exit_status"] == 7 and row["pid"]


def test_normal_profile_launches_without_wrapper_or_env(kas, tmp_path: Path) -> None:
    row, report = spawn_reporting(kas, tmp_path, "--detach", seconds=0)
    assert row["wrapped_argv"] == row["argv"]
    assert "KASMOS_RESOURCE_PROFILE" not in report["env"] and "MAKEFLAGS" not in report["env"]
    assert row["resource_profile"] == "normal"


def test_missing_nice_warns_once_and_still_launches(kas, interactive, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ionice", "tmux"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir)}
    fifo = make_fifo(tmp_path / "r.fifo")
    result = kas("spawn", "--detach", "--", *agent_argv(fifo, 0), env=env)
    report = read_report(fifo)
    assert result.returncode == 0
    assert result.stderr.count("nice not found") == 1
    assert report["nice"] == 0  # the agent ran, without the wrapper that could not be found
    assert report["env"]["KASMOS_RESOURCE_PROFILE"] == "interactive"


def test_settings_are_read_at_launch(kas, write_config, tmp_path: Path) -> None:
    write_config('[resources]\nprofile = "interactive"\n')
    first, rep1 = spawn_reporting(kas, tmp_path, "--detach", name="one")
    write_config('[resources]\nprofile = "interactive"\nnice = 15\n')
    second, rep2 = spawn_reporting(kas, tmp_path, "--detach", name="two")
    try:
        assert psutil.Process(rep1["pid"]).nice() == 10
        assert psutil.Process(rep2["pid"]).nice() == 15
    finally:
        kas("instance", "stop", "--grace", "1", first["id"], second["id"])


def test_missing_command_is_a_clear_error(kas, interactive, tmux_socket: str) -> None:
    for args in (["--detach"], [], ["--mode", "tmux"]):
        result = kas("spawn", *args, "--", "definitely-not-a-command-kas")
        assert_user_error(result, "command not found: definitely-not-a-command-kas")
    (Path.cwd() / "adir").mkdir()
    assert_user_error(kas("spawn", "--", "./adir"), "cannot run ./adir: it is a directory")
    assert list_json(kas) == []


def test_missing_tmux_is_a_clear_error(kas, interactive, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    result = kas("spawn", "--mode", "tmux", "--", sys.executable, "-c", "pass", env=env)
    assert result.returncode == 2
    assert "tmux is not installed" in result.stderr and "Traceback" not in result.stderr


def test_tmux_window_keeps_the_exit_status(kas, interactive, tmux_socket: str) -> None:
    code = "import sys; print('to the log'); sys.exit(4)"
    result = kas("spawn", "--mode", "tmux", "--json", "--", sys.executable, "-c", code)
    row = json.loads(result.stdout)
    assert tmux.TmuxLauncher(tmux_socket).attach(Instance(**row)).wait() == 4
    shown = json.loads(kas("instance", "show", "--json", row["id"]).stdout)
    assert "to the log" in Path(shown["log_path"]).read_text()
    listed = {r["id"]: r for r in list_json(kas)}
    assert listed[row["id"]]["status"] == "exited" and listed[row["id"]]["exit_status"] == 4


def test_concurrent_tmux_spawns_share_one_session(kas, interactive, tmux_socket: str, project: Path) -> None:
    procs = [
        subprocess.Popen([KAS, "spawn", "--mode", "tmux", "--name", f"w{i}", "--", "sleep", "5"], cwd=project,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]  # fmt: skip
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    sessions = subprocess.run(["tmux", "-L", tmux_socket, "list-sessions", "-F", "#{session_name}"],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
    assert sessions == ["kas"]
    windows = subprocess.run(["tmux", "-L", tmux_socket, "list-windows", "-t", "kas", "-F", "#{window_name}"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    assert sorted(w for w in windows if w != "kas") == [f"w{i}" for i in range(6)]


def test_foreground_spawn_on_a_terminal_hands_the_agent_the_terminal(interactive, project: Path) -> None:
    code = (
        "import os, sys; print('tty', os.isatty(0), 'foreground', os.tcgetpgrp(0) == os.getpgrp(),"
        " 'nice', os.nice(0), 'group', open(f'/proc/{os.getpid()}/autogroup').read().split()[-1]); sys.exit(3)"
    )
    status, screen = run_on_terminal(
        [KAS, "spawn", "--", sys.executable, "-c", code], project, controlling=True
    )
    assert status == 3, screen
    expected_group = "19" if host.autogroup_enabled() else "0"
    assert f"tty True foreground True nice 10 group {expected_group}" in screen


@pytest.mark.parametrize("user", ["as run", "desktop user"])
def test_foreground_spawn_restores_the_terminal_session_group(interactive, project: Path, user: str) -> None:
    """After the agent, the terminal's session group is back to its old nice (here: 0).

    As a desktop user the restore comes within the kernel's 100 ms autogroup rate limit of the lowering
    (the agent is `true`), so it must wait its turn rather than leave the terminal lowered.
    """
    prefix = desktop_user_prefix() if user == "desktop user" else []
    script = f"{shlex.join([*prefix, KAS])} spawn -- true; cat /proc/$$/autogroup"
    status, screen = run_on_terminal(["sh", "-c", script], project, controlling=True)
    assert status == 0, screen
    assert screen.strip().endswith("nice 0")


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_instance_logs_prints_and_follows_an_agents_output(
    kas, interactive, tmp_path: Path, mode: str, request
) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    go, ready = make_fifo(tmp_path / "go.fifo"), make_fifo(tmp_path / "ready.fifo")
    # Two lines, then a word to the test; the last line only once the test says go (FIFOs, no sleeps).
    script = 'echo zero; echo first; echo "{}" > "$1"; read x < "$0"; echo last'
    spawned = kas(
        "spawn", "--detach", "--mode", mode, "--json", "--", "sh", "-c", script, str(go), str(ready)
    )
    inst_id = json.loads(spawned.stdout)["id"]
    read_report(ready)
    # An sdk agent writes its log itself, so both lines are in it now; a tmux pane's come a moment later.
    last_only = ["-n", "1"] if mode == "sdk" else []
    follower = subprocess.Popen(
        [KAS, "instance", "logs", "--follow", *last_only, inst_id], stdout=subprocess.PIPE, text=True
    )
    assert follower.stdout is not None
    lines = Lines(follower.stdout)
    try:
        assert lines.next().rstrip("\r\n") == ("first" if last_only else "zero")
    finally:
        with open(go, "w") as say:  # let the agent end in any case
            say.write("go\n")
    assert follower.wait(timeout=15) == 0  # it ends with the agent
    assert lines.rest().replace("\r", "").endswith("last\n")

    def text(*args: str) -> str:
        return kas("instance", "logs", *args, inst_id).stdout.replace("\r", "")  # a pane's lines end in CRLF

    assert text() == "zero\nfirst\nlast\n"
    assert text("-n", "1") == "last\n"
    assert text("-n", "0") == ""
    assert text("--follow") == "zero\nfirst\nlast\n"  # ended: printed, not followed


def test_instance_logs_explains_a_missing_log(kas, interactive) -> None:
    assert kas("spawn", "--name", "fg", "--", "true").returncode == 0
    assert_user_error(kas("instance", "logs", "fg"), "has no log", "foreground")
    log = json.loads(kas("spawn", "--detach", "--json", "--name", "bg", "--", "true").stdout)["log_path"]
    Path(log).unlink()
    assert_user_error(kas("instance", "logs", "bg"), log, "is gone")
    assert_user_error(kas("instance", "logs", "nope"), "no instance 'nope'")


def test_following_logs_stops_on_ctrl_c_whichever_thread_the_kernel_picks(kas, interactive) -> None:
    spawned = kas("spawn", "--detach", "--json", "--", sys.executable, "-c", "print('up', flush=True); "
                  "import time; time.sleep(60)")  # fmt: skip
    row = json.loads(spawned.stdout)
    follower = subprocess.Popen([KAS, "instance", "logs", "-f", row["id"]], stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert Lines(follower.stdout).next() == "up\n"
        process = psutil.Process(follower.pid)
        tail = [c.pid for c in process.children()]
        others = [t.id for t in process.threads() if t.id != follower.pid]
        assert tail and others  # tail, and the thread that reads it
        os.kill(others[0], signal.SIGINT)  # kill() aimed at a thread id makes that thread the taker
        assert follower.wait(timeout=10) == 130
        assert still_running(tail) == []
    finally:
        follower.kill()
        kas("instance", "stop", "--grace", "1", row["id"])
