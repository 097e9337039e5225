"""kas used by a hostile or careless user: bad input, closed pipes, killed processes.

Every case runs the real CLI and asserts: no traceback, the documented exit code, no canary file, and no
process of the test left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kas.registry import Instance, Registry
from tests.conftest import KAS
from tests.helpers import make_fifo, read_report, still_running


def kas_run(project: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("capture_output", True)
    return subprocess.run([KAS, *args], cwd=project, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


CANARY = "canary"
PLAN_OK = '[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = ["true"]\n'


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["check", "--pid", "-1"], 2, "--pid"),
        (["check", "--pid", "0"], 2, "--pid"),
        (["instance", "logs", "-n", "100000000000000000000", "x"], 2, "--lines"),
        (["instance", "stop", ""], 2, "no instance ''"),
        (["instance", "show", "   "], 2, "no instance"),
        (["instance", "stop", "--grace", "inf", "x"], 2, "--grace"),
        (["wave", "run", "--grace", "1e308", "plan.toml"], 2, "--grace"),
        (["wave", "run", "--resume", "../../etc"], 2, "not a run id"),
        (["wave", "run", "--resume", "abcdef"], 2, "no record of run abcdef"),
        (["wave", "run", "--resume", "abcdef", "plan.toml"], 2, "--resume runs the same plan"),
        (["wave", "run"], 2, "give a plan file"),
        (["wave", "run", "--set", "nice=-5", "plan.toml"], 2, "only ever lowers priority"),
        (["wave", "run", "--set", "ionice_class=realtime", "plan.toml"], 2, "realtime"),
        (["wave", "run", "-j", "-1", "plan.toml"], 2, "-j"),
        (["spawn", "--tmux-session", "a:b;touch canary", "--mode", "tmux", "--", "true"], 2, "session name"),
        (["spawn", "--", f"./{CANARY}-missing"], 2, "command not found"),
        (["spawn", "--mode", "tmux", "--tmux-socket", "../../tmp/x", "--", "true"], 2, "socket name"),
        (["spawn", "--name", "a\nID      NAME fake", "--detach", "--", "true"], 0, ""),
        (["spawn", "--cwd", "/nonexistent", "--", "true"], 2, "--cwd"),
        (["spawn", "--name", "x" * 201, "--", "true"], 2, "--name"),
        (["spawn", "--name", "", "--", "true"], 2, "--name"),
    ],
)
def test_hostile_input_is_one_line_and_the_documented_exit(
    project: Path, args: list[str], code: int, says: str, request
) -> None:
    if "tmux" in args:
        request.getfixturevalue("tmux_socket")
    (project / "plan.toml").write_text(PLAN_OK)
    registry = Registry()  # one row: an empty id or prefix would match it if kas let it
    registry.insert(
        Instance(id="feed01", name="only", mode="sdk", status="exited", cwd=str(project), argv=["true"],
                 wrapped_argv=["true"], resource_profile="normal", settings={}, env={}, exit_status=0)
    )  # fmt: skip
    registry.close()
    before = descendants()
    result = kas_run(project, *args, stdin=subprocess.DEVNULL)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert says in result.stderr, result.stderr
    assert not (project / CANARY).exists()
    assert still_running(descendants() - before) == []


def test_a_closed_stdout_stops_the_run_like_sigterm(project: Path, tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "r.fifo")
    code = f"import json, os, time; open({str(fifo)!r}, 'w').write(json.dumps({{'pid': os.getpid()}})); time.sleep(60)"
    gate = make_fifo(tmp_path / "gate.fifo")
    # "gate" ends only when the test says so: after the reader is gone, so kas must write into a closed pipe.
    gated = ["sh", "-c", 'read x < "$0"', str(gate)]
    plan = (
        f'[[waves]]\n[[waves.tasks]]\nid = "long"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
        f'[[waves.tasks]]\nid = "gate"\ncommand = {json.dumps(gated)}\n'
    )
    (project / "plan.toml").write_text(plan)
    reader, writer = os.pipe()
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "plan.toml"], cwd=project, stdout=writer, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    os.close(writer)
    agent = read_report(fifo)["pid"]
    os.close(reader)  # the reader goes away (as `| head` does) while a task runs
    with open(gate, "w") as go:  # the next line kas writes (gate's end) fails
        go.write("go\n")
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "standard output was closed" in err and "Traceback" not in err
    assert still_running([agent]) == []
    registry = Registry()
    statuses = {i.task_id: i.status for i in registry.instances()}
    registry.close()
    assert statuses["long"] == "stopped"


def test_logs_follow_into_a_closed_pipe_ends_at_once(kas, project: Path) -> None:
    code = "import time\nfor i in range(600):\n    print('line', i, flush=True); time.sleep(0.05)"
    row = json.loads(kas("spawn", "--detach", "--json", "--", sys.executable, "-c", code).stdout)
    try:
        started = time.monotonic()
        result = subprocess.run(f"{KAS} instance logs -f {row['id']} | head -1", shell=True, cwd=project,
                                capture_output=True, text=True, timeout=20)  # fmt: skip
        assert time.monotonic() - started < 10  # not when the agent ends (30 s)
        assert result.stdout.startswith("line") and "Traceback" not in result.stderr
    finally:
        kas("instance", "stop", "--grace", "0", row["id"])


def test_output_that_the_terminal_encoding_cannot_show_never_stops_a_task(project: Path) -> None:
    # More than a pipe buffer of a character latin-1 cannot encode (written as UTF-8 bytes by the task).
    code = "import sys; sys.stdout.buffer.write('\\u2713 ok\\n'.encode() * 2000)"
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
    )
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    result = kas_run(project, "wave", "run", "--yes", "--show-output", "plan.toml", env=env)
    assert result.returncode == 0, result.stderr
    assert "[t] ? ok" in result.stdout and "Traceback" not in result.stderr


def test_wave_run_with_stdin_closed(project: Path) -> None:
    (project / "plan.toml").write_text(PLAN_OK + PLAN_OK.replace('"t"', '"u"'))
    result = subprocess.run(f"{KAS} wave run plan.toml <&-", shell=True, cwd=project, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "needs confirmation" in result.stderr and "Traceback" not in result.stderr


def ours(proc: psutil.Process) -> bool:
    """A bench agent of this test (others may run benches too): its environment names our tmux socket."""
    info = proc.info  # type: ignore[attr-defined]
    own = (info["environ"] or {}).get("KAS_TMUX_SOCKET") == os.environ["KAS_TMUX_SOCKET"]
    cmdline = info["cmdline"] or []
    guard = any(arg.endswith("guard.py") for arg in cmdline)  # the burner's guard ends with its argv too
    return own and cmdline[-1:] == ["while True: pass"] and not guard


def test_a_killed_bench_leaves_no_agent(interactive, project: Path, request) -> None:
    for mode in ("sdk", "tmux"):
        if mode == "tmux":
            request.getfixturevalue("tmux_socket")
        proc = subprocess.Popen([KAS, "bench", "responsiveness", "--agents", "2", "--frames", "240", "--mode", mode],
                                cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stderr is not None
        while "running: normal" not in proc.stderr.readline():
            pass
        burners: list[psutil.Process] = []
        deadline = time.monotonic() + 10
        while len(burners) < 2 and time.monotonic() < deadline:
            burners = [p for p in psutil.process_iter(["cmdline", "environ"]) if ours(p)]
            psutil.wait_procs([psutil.Process(proc.pid)], timeout=0.05)
        assert len(burners) == 2, mode
        proc.kill()  # SIGKILL: kas runs no cleanup at all
        proc.wait()
        assert still_running([p.pid for p in burners]) == [], mode


def test_tasks_of_a_killed_wave_runner_show_as_orphaned_and_can_be_stopped(
    kas, project: Path, tmp_path: Path
) -> None:
    fifo = make_fifo(tmp_path / "r.fifo")
    code = f"import json, os, time; open({str(fifo)!r}, 'w').write(json.dumps({{'pid': os.getpid()}})); time.sleep(60)"
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
    )
    runner = subprocess.Popen(
        [KAS, "wave", "run", "--yes", "plan.toml"], cwd=project, stdout=subprocess.DEVNULL
    )
    agent = read_report(fifo)["pid"]
    runner.kill()
    runner.wait()
    try:
        rows = json.loads(kas("instance", "list", "--json").stdout)
        assert [r["status"] for r in rows] == ["orphaned"]
        assert "orphaned" in kas("instance", "list").stdout
        stopped = json.loads(kas("instance", "stop", "--json", "--grace", "1", rows[0]["id"]).stdout)
        assert stopped[0]["status"] == "stopped"
        assert still_running([agent]) == []
    finally:
        os.kill(agent, signal.SIGKILL) if psutil.pid_exists(agent) else None


def test_a_row_without_a_proven_identity_is_never_signalled(kas, project: Path) -> None:
    """A pid from the registry whose start time was never recorded may belong to anyone by now."""
    innocent = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        registry = Registry()
        registry.insert(
            Instance(id="0abc12", name="old", mode="sdk", status="running", cwd=str(project), argv=["x"],
                     wrapped_argv=["x"], resource_profile="normal", settings={}, env={}, pid=innocent.pid)
        )  # fmt: skip
        registry.close()
        assert json.loads(kas("instance", "list", "--json").stdout) == []  # not shown as running
        kas("instance", "stop", "0abc12")
        assert innocent.poll() is None  # and never signalled
    finally:
        innocent.kill()
        innocent.wait()


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_an_agent_that_prints_forever_cannot_fill_the_disk(project: Path, mode: str, request) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    # 3 MB of output against a 1 MB limit: the log rotates once or more, and both files stay bounded.
    code = "import sys\nfor _ in range(3000): sys.stdout.write('x' * 1023 + '\\n')"
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "loud"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
    )
    env = {**os.environ, "KAS_LOG_MAX": "1M"}
    result = kas_run(project, "wave", "run", "--yes", "--mode", mode, "plan.toml", env=env)
    assert result.returncode == 0, result.stderr
    log = next(Path(os.environ["KAS_STATE_DIR"]).glob("logs/run-*/loud.log"))
    older = log.with_name("loud.log.1")
    assert older.exists() and older.stat().st_size <= 1024 * 1024
    assert log.stat().st_size <= 1024 * 1024
    assert oct(older.stat().st_mode & 0o777) == "0o600"
    pruned = kas_run(project, "instance", "prune", "--json")
    assert json.loads(pruned.stdout)["files_removed"] >= 2 and not older.exists()


def test_names_with_control_characters_are_shown_escaped(kas, project: Path) -> None:
    name = "a\nID      NAME fake\x1b]0;pwned\x07"
    row = json.loads(kas("spawn", "--detach", "--json", "--name", name, "--", "sleep", "30").stdout)
    try:
        assert row["name"] == name  # stored as given
        table = kas("instance", "list").stdout
        assert len(table.splitlines()) == 2  # the header and one row: no faked row
        assert "\x1b" not in table and "\\x1b]0;pwned\\x07" in table and "a\\nID" in table
    finally:
        kas("instance", "stop", "--grace", "0", row["id"])


def test_a_registry_locked_mid_run_stops_every_task_instead_of_leaving_it_unrecorded(
    project: Path, tmp_path: Path
) -> None:
    import sqlite3

    gate, fifo = make_fifo(tmp_path / "gate.fifo"), make_fifo(tmp_path / "r.fifo")
    second = f"import json, os, time; open({str(fifo)!r}, 'w').write(json.dumps({{'pid': os.getpid()}})); time.sleep(60)"
    first = json.dumps(["sh", "-c", 'read x < "$0"', str(gate)])
    (project / "plan.toml").write_text(
        "[resources]\nmax_parallel_wave_tasks = 1\n[[waves]]\n"
        f'[[waves.tasks]]\nid = "a"\ncommand = {first}\n'
        f'[[waves.tasks]]\nid = "b"\ncommand = {json.dumps([sys.executable, "-c", second])}\n'
    )
    env = {**os.environ, "KAS_DB_BUSY_TIMEOUT": "0.5"}
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "plan.toml"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    db = Path(os.environ["KAS_STATE_DIR"]) / "instances.db"
    deadline = time.monotonic() + 20
    while not _running_task(db, "a"):  # until kas has recorded task a as running
        assert time.monotonic() < deadline, "task a never ran"
        psutil.wait_procs([psutil.Process(proc.pid)], timeout=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock from now on
    try:
        with open(gate, "w") as go:  # task a ends: its end cannot be written
            go.write("go\n")
        agent = read_report(fifo)["pid"]  # b was promoted before a's end was to be written
        _out, err = proc.communicate(timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        proc.kill()
    assert proc.returncode == 1, err
    assert "stopping every task" in err and "Traceback" not in err
    assert still_running([agent]) == []


def _running_task(db: Path, task_id: str) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(
                "SELECT 1 FROM instances WHERE task_id = ? AND status = 'running'", (task_id,)
            )
            return rows.fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def test_nothing_of_a_finished_tmux_agent_lingers(kas, interactive, tmux_socket: str) -> None:
    """The window may stay (its last screen); its runner, log pipe and `cat` do not."""
    row = json.loads(kas("spawn", "--mode", "tmux", "--json", "--", "echo", "hello").stdout)
    handle_wait = __import__("kas.launch.tmux", fromlist=["TmuxLauncher"]).TmuxLauncher(tmux_socket)
    assert handle_wait.attach(Instance(**row)).wait() == 0
    marker = f"status/{row['id']}"

    def lingering() -> list[int]:
        """Processes naming the agent's spec or FIFO in their argv or holding one open (pipe-pane's cat
        has the FIFO as its stdout, not in its argv)."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            fds = Path(f"/proc/{proc.pid}/fd")
            try:
                held = [os.readlink(fd) for fd in fds.iterdir()]
            except OSError:
                held = []
            if any(marker in part for part in [*(proc.info["cmdline"] or []), *held]):
                found.append(proc.pid)
        return found

    deadline = time.monotonic() + 5
    while lingering() and time.monotonic() < deadline:
        psutil.wait_procs([psutil.Process(p) for p in lingering() if psutil.pid_exists(p)], timeout=0.1)
    assert lingering() == []
    assert "hello" in Path(row["log_path"]).read_text()
    assert not list((Path(os.environ["KAS_STATE_DIR"]) / "status").glob(f"{row['id']}.*"))  # no spec, no FIFO


def test_a_pending_task_cancelled_from_outside_never_starts(kas, project: Path, tmp_path: Path) -> None:
    gate = make_fifo(tmp_path / "gate.fifo")
    first = json.dumps(["sh", "-c", 'read x < "$0"', str(gate)])
    (project / "plan.toml").write_text(
        "[[waves]]\n"
        f'[[waves.tasks]]\nid = "first"\ncommand = {first}\n'
        f'[[waves.tasks]]\nid = "second"\ncommand = ["touch", "{project / CANARY}"]\n'
    )
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "-j", "1", "--json", "plan.toml"], cwd=project,
                            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    next(line for line in proc.stdout if '"task_promoted"' in line)
    second = next(r for r in json.loads(kas("instance", "list", "--json").stdout) if r["task_id"] == "second")
    assert json.loads(kas("instance", "stop", "--json", second["id"]).stdout)[0]["status"] == "cancelled"
    with open(gate, "w") as go:
        go.write("go\n")
    events = [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=20) == 0
    assert not (project / CANARY).exists()  # it never ran
    assert {"event": "task_cancelled", "task": "second"}.items() <= next(
        e for e in events if e["event"] == "task_cancelled"
    ).items()


def test_stopping_a_detached_agent_that_needs_sigkill_records_stopped_with_its_real_status(
    kas, project: Path
) -> None:
    row = json.loads(kas("spawn", "--detach", "--json", "--", "sh", "-c", "trap '' TERM; sleep 50").stdout)
    stopped = json.loads(kas("instance", "stop", "--json", "--grace", "0.3", row["id"]).stdout)[0]
    assert stopped == {"id": row["id"], "status": "stopped", "exit_status": 137}
    time.sleep(0.5)  # give a late writer (the supervisor) the chance to get it wrong
    shown = json.loads(kas("instance", "show", "--json", row["id"]).stdout)
    assert (shown["status"], shown["exit_status"]) == ("stopped", 137)


def test_show_output_with_json_stays_one_json_object_per_line(project: Path) -> None:
    (project / "plan.toml").write_text('[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = ["echo", "hello"]\n')
    result = kas_run(project, "wave", "run", "--yes", "--json", "--show-output", "plan.toml")
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every line parses
    assert {"event": "output", "task": "t", "line": "hello"} in events


def test_nan_is_not_a_number_of_seconds(project: Path) -> None:
    for args in (["instance", "stop", "--grace", "nan", "x"], ["instance", "prune", "--older-than", "nan"]):
        result = kas_run(project, *args)
        assert result.returncode == 2 and "not a number of seconds" in result.stderr


def test_a_row_with_a_damaged_column_is_skipped_with_a_warning(kas, project: Path) -> None:
    import sqlite3

    assert kas("spawn", "--", "true").returncode == 0
    db = Path(os.environ["KAS_STATE_DIR"]) / "instances.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE instances SET created_at = 'abc'")
    for args in (["instance", "list", "--all"], ["instance", "list", "--all", "--json"]):
        result = kas(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert "skipped" in result.stderr and "created_at" in result.stderr


@pytest.mark.parametrize("value", ["abc", "-1", "1T", "0.5M"])
def test_an_unreadable_log_limit_is_refused_before_anything_starts(project: Path, value: str) -> None:
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = ["touch", "{project / CANARY}"]\n'
    )
    env = {**os.environ, "KAS_LOG_MAX": value}
    for args in (
        ["spawn", "--detach", "--", "touch", str(project / CANARY)],
        ["wave", "run", "--yes", "plan.toml"],
    ):
        result = kas_run(project, *args, env=env)
        assert result.returncode == 2 and "KAS_LOG_MAX" in result.stderr and "Traceback" not in result.stderr
        assert not (project / CANARY).exists()


def test_pause_freezes_whole_trees_resume_thaws_them_and_stop_all_ends_every_agent(
    kas, project: Path, tmp_path: Path
) -> None:
    from tests.helpers import agent_argv

    reports = []
    for name in ("one", "two"):
        fifo = make_fifo(tmp_path / f"{name}.fifo")
        assert kas("spawn", "--detach", "--name", name, "--", *agent_argv(fifo, 60)).returncode == 0
        reports.append(read_report(fifo))
    tree = [pid for r in reports for pid in (r["pid"], r["child"])]

    def states() -> set[str]:
        """The tree's states once signals have landed (delivery waits for each process's next turn)."""
        deadline = time.monotonic() + 2
        while True:
            found = {psutil.Process(pid).status() for pid in tree}
            if len(found) == 1 or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    try:
        paused = json.loads(kas("instance", "pause", "--all", "--json").stdout)
        assert {v["status"] for v in paused} == {"paused"} and states() == {psutil.STATUS_STOPPED}
        assert "paused" in kas("instance", "list").stdout
        resumed = json.loads(kas("instance", "resume", "--all", "--json").stdout)
        assert {v["status"] for v in resumed} == {"running"} and psutil.STATUS_STOPPED not in states()
        kas("instance", "pause", "one")
        stopped = json.loads(kas("instance", "stop", "--all", "--grace", "1", "--json").stdout)
        assert {v["status"] for v in stopped} == {"stopped"}  # a paused one stops too (SIGCONT after SIGTERM)
        assert still_running(tree) == []
    finally:  # after a failed assertion, leave nothing behind (paused processes least of all)
        for pid in tree:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
    assert kas("instance", "stop").returncode == 2  # neither ids nor --all
