"""Canary tests: what a user or a plan supplies stays data, in both modes; it never becomes code.

tmux reads a directory (``-c``), a window name and the ``pipe-pane`` command as formats (``#(cmd)`` runs
cmd, ``#{...}`` expands, ``##`` is ``#``) and splits its command line at an argument ending in ``;``; a
shell reads ``$(...)``, backticks, quotes and ``$HOME``. Each payload goes into every field kas takes from
a user or a plan: the directory ``kas spawn`` runs in, ``--cwd``, a plan task's ``cwd``, ``--name`` and a
task's name, the caller's environment and a plan's ``env``, the command's own arguments, and the path of
the state directory (which names the log, the status record and the tmux runner's spec file). A real
agent reports its directory, argv and environment; each test checks they arrived byte for byte, that the
run ended as expected, that no canary file appeared (the canary commands touch an absolute path, so a
command run in any directory would leave it) and that no process of the test is left. Fields with a fixed
alphabet (task ids, tmux session names) are refused instead: one ``kas: error:`` line and exit 2.

The payloads are combined: one run carries a payload in every field it has, so three runs per payload and
mode (a spawn from a payload directory, a spawn with ``--cwd``, a wave) cover every field.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from kas.launch.tmux import window_name
from tests.helpers import make_fifo, read_report
from tests.tmuxtools import MARK, kas_env, leftovers, popen_kas, run_kas, server_pid, tmux

PAYLOADS = {
    "hash-command": "#(touch CANARY)",
    "hash-format": "#{session_name}",
    "double-hash": "a##b",
    "trailing-semicolon": "run;",
    "semicolon": ";",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "dollar-command": "$(touch CANARY)",
    "backticks": "`touch CANARY`",
    "dollar-home": "$HOME",
    "newline": "two\nlines",
}
MODES = ("sdk", "tmux")

# The agent: prints a line for the log, then reports where it runs, its argv and its environment.
REPORTER = """\
import json, os, sys
print("canary-agent-ran", flush=True)
with open(os.environ["KAS_TEST_REPORT"], "w") as out:
    json.dump({"cwd": os.getcwd(), "argv": sys.argv[1:], "env": dict(os.environ)}, out)
"""


@dataclass
class Case:
    payload: str
    mode: str
    canary: Path
    state: Path
    env: dict[str, str]  # the caller's environment for every kas run of the test
    socket: str | None
    tmp: Path

    def agent_argv(self) -> list[str]:
        """The command, with the payload as an argument of its own, inside one, and after a ``--``."""
        return [sys.executable, "-c", REPORTER, self.payload, f"<{self.payload}>", "--", self.payload]

    def directory(self, name: str) -> Path:
        """A new directory whose path ends in the payload (a payload with '/' makes nested ones)."""
        path = self.tmp / name / self.payload
        path.mkdir(parents=True)
        return path


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "tmux":
        request.getfixturevalue("tmux_socket")
    return str(request.param)


@pytest.fixture(params=PAYLOADS)
def case(request: pytest.FixtureRequest, mode: str, tmp_path: Path) -> Case:
    canary = tmp_path / "canaries" / "hit"
    canary.parent.mkdir()
    payload = PAYLOADS[request.param].replace("CANARY", str(canary))
    state = tmp_path / "states" / payload / "kas"
    env = kas_env(KAS_STATE_DIR=str(state), KAS_CANARY_CALLER=payload)
    env[MARK] = uuid.uuid4().hex
    socket = env["KAS_TMUX_SOCKET"] if mode == "tmux" else None
    return Case(payload, mode, canary, state, env, socket, tmp_path)


def report_of(proc: Any, fifo: Path, *, returns_first: bool) -> tuple[dict[str, Any], str]:
    """The agent's report, and kas's stdout once it has ended with status 0.

    ``returns_first``: kas returns once the agent runs (tmux, --detach), so a failed kas is seen at once;
    else it waits for the agent, which waits for the report to be read.
    """
    report = {} if returns_first else read_report(fifo)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    return report or read_report(fifo), out


def rows(case: Case) -> dict[str, dict[str, Any]]:
    listed = run_kas("instance", "list", "--all", "--json", env=case.env, cwd=case.tmp)
    assert listed.returncode == 0, listed.stderr
    return {row["id"]: row for row in json.loads(listed.stdout)}


def check_agent(case: Case, report: dict[str, Any], cwd: Path, **env: str) -> None:
    assert report["cwd"] == str(cwd), "the agent ran elsewhere"
    assert report["argv"] == case.agent_argv()[3:], "the agent's argv changed"
    for name, value in {"KAS_CANARY_CALLER": case.payload, **env}.items():
        assert report["env"].get(name) == value, f"{name} changed on its way"


def check_clean(case: Case, agent_panes: set[str]) -> None:
    """Nothing of the test runs on, no canary was touched, and tmux keeps only what it should.

    Spared: the tmux server and the shell in the first window of kas's session (kas's own window, which
    the server keeps until ``isolated`` kills it). An agent's pane must be dead (kept by remain-on-exit for
    its last screen), and no live pane may still run kas's placeholder.
    """
    spare: set[int] = set()
    children: list[psutil.Process] = []  # the server's: a format job (#(...)) or a log pipe included
    if case.socket is not None:
        pid = server_pid(case.socket)
        spare |= {pid} if pid else set()
        children = psutil.Process(pid).children() if pid else []
        for pane_id, pane_pid, _, window in panes(case.socket):
            if pane_id not in agent_panes:
                name = psutil.Process(pane_pid).name()
                assert window == "0" and name != "tail", f"pane {pane_id} ({name}) is left running"
                spare.add(pane_pid)
    assert leftovers(case.env[MARK], spare, also=children) == []
    if case.socket is not None:  # tmux marks a pane dead a moment after it has reaped its process
        deadline = time.monotonic() + 5
        while any(p[0] in agent_panes and not p[2] for p in panes(case.socket)):
            assert time.monotonic() < deadline, "an agent's pane still runs"
            time.sleep(0.05)
    assert not case.canary.exists(), "a payload ran as a command"
    assert list(case.canary.parent.iterdir()) == []


def panes(socket: str) -> list[tuple[str, int, bool, str]]:
    """Every pane of the server: id, pid, dead, window index."""
    listed = tmux(socket, "list-panes", "-a", "-F", "#{pane_id} #{pane_pid} #{pane_dead} #{window_index}")
    found = []
    for line in listed.stdout.splitlines():
        pane_id, pid, dead, window = line.split()
        found.append((pane_id, int(pid), dead == "1", window))
    return found


def check_row(case: Case, row: dict[str, Any], name: str, cwd: Path) -> None:
    assert row["status"] == "exited" and row["exit_status"] == 0, row
    assert row["name"] == name and row["cwd"] == str(cwd) and row["argv"] == case.agent_argv()
    if row["log_path"]:
        log = Path(row["log_path"])
        assert log.is_relative_to(case.state), "the log is not in the state directory asked for"
        assert "canary-agent-ran" in log.read_text()
    if case.socket is not None:
        shown = tmux(case.socket, "display-message", "-p", "-t", row["tmux_target"], "#{window_name}")
        # Shown as given, but for control characters, which kas shows as '?' (never a format, never raw).
        assert shown.stdout[:-1] == window_name(name), "tmux read the window name as a format"


def test_spawn_from_a_payload_directory(case: Case) -> None:
    """The directory kas spawn runs in, --name, the caller's env, argv and the state dir hold the payload.

    sdk mode detaches, so the supervisor and the log in the state directory are on the path too.
    """
    here = case.directory("here")
    fifo = make_fifo(case.tmp / "report.fifo")
    env = {**case.env, "KAS_TEST_REPORT": str(fifo)}
    how = ["--detach"] if case.mode == "sdk" else ["--mode", "tmux"]
    proc = popen_kas(
        "spawn", *how, "--json", "--name", case.payload, "--", *case.agent_argv(), env=env, cwd=here
    )
    report, out = report_of(proc, fifo, returns_first=True)
    started = json.loads(out)
    check_agent(case, report, here)
    check_clean(case, {started["tmux_target"]} if started["tmux_target"] else set())
    check_row(case, rows(case)[started["id"]], case.payload, here)


def test_spawn_with_a_payload_cwd_option(case: Case) -> None:
    """--cwd holds the payload; sdk mode runs in the foreground, so kas's own wait is on the path."""
    there = case.directory("there")
    fifo = make_fifo(case.tmp / "report.fifo")
    env = {**case.env, "KAS_TEST_REPORT": str(fifo)}
    how = [] if case.mode == "sdk" else ["--mode", "tmux"]
    project = Path.cwd()
    proc = popen_kas("spawn", *how, "--cwd", str(there), "--", *case.agent_argv(), env=env, cwd=project)
    report, _ = report_of(proc, fifo, returns_first=case.mode == "tmux")
    check_agent(case, report, there)
    (row,) = rows(case).values()
    check_clean(case, {row["tmux_target"]} if row["tmux_target"] else set())
    check_row(case, rows(case)[row["id"]], Path(sys.executable).name, there)


def test_wave_task_with_payload_cwd_name_and_env(case: Case) -> None:
    """A plan task's cwd, name and env, its command's arguments, and the state dir hold the payload."""
    workdir = case.directory("task")
    fifo = make_fifo(case.tmp / "report.fifo")
    plan = case.tmp / "plan" / "plan.toml"
    plan.parent.mkdir()
    quoted = json.dumps(case.payload)  # a JSON string is a TOML basic string
    plan.write_text(
        f'name = "canary"\n[defaults]\nmode = "{case.mode}"\n[[waves]]\n[[waves.tasks]]\nid = "t1"\n'
        f"name = {quoted}\ncwd = {json.dumps(str(workdir))}\nenv = {{ KAS_CANARY_PLAN = {quoted} }}\n"
        f"command = {json.dumps(case.agent_argv())}\n"
    )
    env = {**case.env, "KAS_TEST_REPORT": str(fifo)}
    proc = popen_kas("wave", "run", "--yes", "--json", str(plan), env=env, cwd=Path.cwd())
    report, out = report_of(proc, fifo, returns_first=False)
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["event"] == "run_done", events[-1]
    check_agent(case, report, workdir, KAS_CANARY_PLAN=case.payload)
    (row,) = rows(case).values()
    check_clean(case, {row["tmux_target"]} if row["tmux_target"] else set())
    assert row["task_id"] == "t1"
    check_row(case, row, case.payload, workdir)


@pytest.mark.parametrize("payload_id", PAYLOADS)
def test_fields_with_a_fixed_alphabet_are_refused_in_one_line(
    payload_id: str, tmp_path: Path, tmux_socket: str
) -> None:
    """A task id (it names a log file) and a tmux session name (a tmux target) are refused, before
    anything starts: one ``kas: error:`` line, exit 2, no tmux server, no row, no canary."""
    canary = tmp_path / "canaries" / "hit"
    canary.parent.mkdir()
    payload = PAYLOADS[payload_id].replace("CANARY", str(canary))
    env = kas_env(**{MARK: uuid.uuid4().hex})
    argv = json.dumps([sys.executable, "-c", "pass"])

    def plan(task_id: str) -> str:
        path = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.toml"
        path.write_text(f"[[waves]]\n[[waves.tasks]]\nid = {json.dumps(task_id)}\ncommand = {argv}\n")
        return str(path)

    attempts = {
        "task id (sdk)": (["wave", "run", "--yes", "--mode", "sdk", plan(payload)], "id "),
        "task id (tmux)": (["wave", "run", "--yes", "--mode", "tmux", plan(payload)], "id "),
        "spawn --tmux-session": (
            ["spawn", "--mode", "tmux", "--tmux-session", payload, "--", sys.executable, "-c", "pass"],
            "tmux session name",
        ),
        "wave --tmux-session": (
            ["wave", "run", "--yes", "--mode", "tmux", "--tmux-session", payload, plan("t1")],
            "tmux session name",
        ),
    }
    for field, (args, fragment) in attempts.items():
        result = run_kas(*args, env=env, cwd=tmp_path)
        assert result.returncode == 2, (field, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kas: error:"), (field, result.stderr)
        assert fragment in lines[0], (field, lines[0])
        assert result.stdout == "", (field, result.stdout)
    assert server_pid(tmux_socket) is None, "tmux was started for a refused run"
    listed = run_kas("instance", "list", "--all", "--json", env=env, cwd=tmp_path)
    assert json.loads(listed.stdout) == []
    assert leftovers(env[MARK], set()) == []
    assert not canary.exists()
