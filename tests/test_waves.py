"""``kas wave run`` with real processes: the cap, promotion order, failures, prompts, interrupts, tmux."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from kas.cli import main
from kas.launch.groups import signal_group
from kas.waves.scheduler import WaveScheduler
from tests.conftest import KAS, assert_user_error
from tests.helpers import Lines, make_fifo, run_on_terminal, still_running

RECORDER = textwrap.dedent(
    """
    import json, os, sys, time, psutil
    out, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    io = psutil.Process().ionice()
    start = time.time()
    time.sleep(seconds)
    with open(out, "w") as f:
        json.dump({"start": start, "end": time.time(), "nice": os.nice(0), "ioclass": int(io.ioclass),
                   "iolevel": io.value, "profile": os.environ.get("KASMOS_RESOURCE_PROFILE")}, f)
    sys.exit(code)
    """
)


def write_plan(
    directory: Path, waves: list[list[tuple[str, float, int]]], resources: str = "", extra: str = ""
) -> Path:
    """A plan whose tasks record start/end, niceness and I/O class to <id>.json."""
    (directory / "recorder.py").write_text(RECORDER)
    lines = ['name = "t"', extra, "[resources]", resources or 'profile = "interactive"']
    for wave in waves:
        lines.append("[[waves]]")
        for task_id, seconds, code in wave:
            argv = [
                sys.executable,
                str(directory / "recorder.py"),
                str(directory / f"{task_id}.json"),
                str(seconds),
                str(code),
            ]
            lines += ["[[waves.tasks]]", f'id = "{task_id}"', f"command = {json.dumps(argv)}"]
    path = directory / "plan.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def records(directory: Path, ids: list[str]) -> dict[str, dict]:
    return {i: json.loads((directory / f"{i}.json").read_text()) for i in ids}


def max_overlap(recs: dict[str, dict]) -> int:
    edges = sorted(
        [(r["start"], 1) for r in recs.values()] + [(r["end"], -1) for r in recs.values()],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def test_scheduler_promotes_in_plan_order_as_tasks_finish() -> None:
    sched = WaveScheduler(["T1", "T2", "T3", "T4", "T5"], cap=2)
    assert sched.start() == ["T1", "T2"]
    assert sched.pending() == ["T3", "T4", "T5"]
    assert sched.finish("T1", True) == ["T3"]
    assert sched.finish("T2", False) == ["T4"]
    assert sched.finish("T4", True) == ["T5"]
    assert not sched.finished
    assert sched.finish("T3", True) == [] and sched.finish("T5", True) == []
    assert sched.finished and sched.failed() == ["T2"]
    assert WaveScheduler(["a", "b", "c"], cap=0).start() == ["a", "b", "c"]
    ff = WaveScheduler(["a", "b", "c"], cap=1)
    ff.start()
    assert ff.stop_promoting() == ["b", "c"]
    assert ff.finish("a", False) == [] and ff.finished


def test_cap_two_runs_at_most_two_in_plan_order_at_the_profile_priority(kas, project: Path) -> None:
    ids = ["T1", "T2", "T3", "T4", "T5"]
    plan = write_plan(
        project, [[(i, 0.3, 0) for i in ids]], 'profile = "interactive"\nmax_parallel_wave_tasks = 2'
    )
    result = kas("wave", "run", "--yes", "--json", str(plan))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["task"] for e in events if e["event"] == "task_promoted"] == ids  # plan order
    recs = records(project, ids)
    assert max_overlap(recs) == 2
    ends = sorted(r["end"] for r in recs.values())
    for later in ids[2:]:  # each later task starts only after some earlier task ended
        assert any(end <= recs[later]["start"] for end in ends)
    for rec in recs.values():
        assert (rec["nice"], rec["ioclass"], rec["iolevel"]) == (10, psutil.IOPRIO_CLASS_BE, 7)
        assert rec["profile"] == "interactive"
    assert events[-1] == {**events[-1], "event": "run_done", "exit_code": 0, "failed": []}


def test_cap_zero_starts_every_task_at_once(kas, project: Path) -> None:
    """A barrier, not a stopwatch: each task ends only once all four are running (or fails after 20 s)."""
    ids = ["a", "b", "c", "d"]
    code = (
        "import pathlib, sys, time; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch(); end = time.time() + 20\n"
        "while len(list(d.iterdir())) < 4 and time.time() < end: time.sleep(0.02)\n"
        "sys.exit(0 if len(list(d.iterdir())) == 4 else 1)"
    )
    (project / "started").mkdir()
    tasks = "".join(
        f'[[waves.tasks]]\nid = "{i}"\ncommand = {json.dumps([sys.executable, "-c", code, str(project / "started"), i])}\n'
        for i in ids
    )
    (project / "plan.toml").write_text(f"[[waves]]\n{tasks}")
    result = kas("wave", "run", "--yes", "--set", "max_parallel_wave_tasks=0", "plan.toml")
    assert result.returncode == 0, result.stdout


def test_a_failure_promotes_the_next_and_the_run_exits_1(kas, project: Path) -> None:
    plan = write_plan(project, [[("bad", 0, 3), ("good", 0, 0)]], 'profile = "interactive"')
    text = plan.read_text().replace(
        "[[waves]]", '[[waves]]\n[[waves.tasks]]\nid = "ghost"\ncommand = ["no-such-command-kas"]', 1
    )
    plan.write_text(text)
    result = kas("wave", "run", "--yes", str(plan))
    assert result.returncode == 1
    assert records(project, ["good"])["good"]["nice"] == 10
    assert "failed: ghost, bad" in result.stdout
    assert "command not found: no-such-command-kas" in result.stdout


def test_fail_fast_stops_promoting(kas, project: Path) -> None:
    plan = write_plan(project, [[("bad", 0, 1), ("next", 0, 0)], [("later", 0, 0)]])
    result = kas("wave", "run", "--yes", "--fail-fast", "--json", str(plan))
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {"event": "task_cancelled", "task": "next"}.items() <= next(
        e for e in events if e["event"] == "task_cancelled"
    ).items()
    assert not (project / "next.json").exists() and not (project / "later.json").exists()
    assert events[-1]["event"] == "run_done" and events[-1]["failed"] == ["bad"]


@pytest.mark.parametrize(("answer", "runs_second"), [("y\n", True), ("n\n", False)])
def test_confirmation_prompt_between_waves(project: Path, answer: str, runs_second: bool) -> None:
    plan = write_plan(project, [[("first", 0, 0)], [("second", 0, 0)]])
    result = CliRunner().invoke(main, ["wave", "run", str(plan)], input=answer)
    assert result.exit_code == 0, result.output
    assert "Start wave 2?" in result.output
    assert (project / "second.json").exists() == runs_second
    if not runs_second:
        assert "stopped before wave 2" in result.output


def test_no_terminal_and_no_yes_stops_with_a_message(kas, project: Path) -> None:
    plan = write_plan(project, [[("first", 0, 0)], [("second", 0, 0)]])
    result = kas("wave", "run", str(plan), stdin=io.StringIO(""))
    assert_user_error(result, "needs confirmation", "--yes")
    assert not (project / "second.json").exists()
    # An open pipe that never answers must not hang the run either.
    idle = subprocess.Popen([KAS, "wave", "run", str(plan)], cwd=project, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert idle.stderr is not None
    err = idle.stderr.read()  # returns at exit; stdin stays open and silent the whole time
    assert idle.wait(timeout=60) == 2 and "needs confirmation" in err
    assert idle.stdin is not None
    idle.stdin.close()


def test_pending_tasks_show_in_instance_list_while_the_wave_runs(kas, project: Path) -> None:
    plan = write_plan(project, [[("slow", 30, 0), ("waiting", 0, 0)]], 'profile = "interactive"')
    proc = subprocess.Popen(
        [KAS, "wave", "run", "--yes", "--json", str(plan)], cwd=project, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "task_promoted":
                break
        rows = {r["task_id"]: r for r in json.loads(kas("instance", "list", "--json").stdout)}
        assert rows["slow"]["status"] == "running" and rows["waiting"]["status"] == "pending"
        assert rows["slow"]["live"][0]["nice"] == 10
        assert "pending [waiting]" in kas("instance", "list").stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 130


def test_interrupt_stops_everything_and_leaves_the_registry_consistent(
    kas, project: Path, tmp_path: Path
) -> None:
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)"
    tasks = "\n".join(
        f'[[waves.tasks]]\nid = "t{i}"\ncommand = {json.dumps([sys.executable, "-c", code])}'
        for i in range(3)
    )
    plan = project / "plan.toml"
    plan.write_text(
        f'[resources]\nprofile = "interactive"\nmax_parallel_wave_tasks = 2\n[[waves]]\n{tasks}\n'
    )
    proc = subprocess.Popen(
        [KAS, "wave", "run", "--yes", "--json", "--grace", "1", str(plan)],
        cwd=project,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    promoted: list[int] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "task_promoted":
            promoted.append(event["pid"])
        if len(promoted) == 2:
            break
    tree = []
    for pid in promoted:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
        while not children:  # the grandchild is started right away; wait for it to exist
            psutil.wait_procs([parent], timeout=0.02)
            children = parent.children(recursive=True)
        tree += [pid, *(c.pid for c in children)]
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 130
    assert '"run_interrupted"' in rest
    assert still_running(tree) == []
    rows = {r["task_id"]: r for r in json.loads(kas("instance", "list", "--all", "--json").stdout)}
    assert rows["t2"]["status"] == "cancelled"
    assert {rows["t0"]["status"], rows["t1"]["status"]} == {"stopped"}


def test_tmux_mode_runs_each_task_in_a_window(kas, project: Path, tmux_socket: str) -> None:
    plan = write_plan(
        project,
        [[("a", 0.2, 0), ("b", 0.2, 5), ("c", 0.2, 0)]],
        'profile = "interactive"\nmax_parallel_wave_tasks = 2',
    )
    result = kas("wave", "run", "--yes", "--mode", "tmux", "--json", str(plan))
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    finished = {e["task"]: e["exit_status"] for e in events if e["event"] == "task_finished"}
    assert finished == {"a": 0, "b": 5, "c": 0}
    recs = records(project, ["a", "b", "c"])
    assert max_overlap(recs) <= 2
    assert all(r["nice"] == 10 for r in recs.values())
    windows = subprocess.run(["tmux", "-L", tmux_socket, "list-windows", "-t", "kas", "-F", "#{window_name}"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    assert {"a", "b", "c"} <= set(windows)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("[[waves]]\n[[waves.tasks]]\nid = \n", ["plan.toml:3:", "TOML syntax error"]),
        (
            '[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = ["true"]\n[[waves.tasks]]\nid = "a"\ncommand = ["true"]\n',
            ["plan.toml:6", "duplicate task id 'a'"],
        ),
        ('[[waves]]\nname = "empty"\n', ["plan.toml:1", "wave 1 has no tasks"]),
        (
            'nmae = "x"\n[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = ["true"]\n',
            ["plan.toml:1", "unknown key 'nmae'", "did you mean 'name'"],
        ),
        ('[[waves]]\n[[waves.tasks]]\nid = "a"\n', ["plan.toml:3", "task 'a' has no command"]),
        (
            '[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = ["true"]\ncwd = "nowhere"\n',
            ["plan.toml:5", "cwd 'nowhere' is not a directory"],
        ),
        (
            '[resources]\nprofile = "interactive"\nnice = -3\n[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = ["true"]\n',
            ["plan.toml:3", "only ever lowers"],
        ),
        (
            '[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = "echo \'unclosed"\n',
            ["plan.toml:4", "cannot split command"],
        ),
        ('name = "no waves"\n', ["no waves"]),
    ],
)
def test_plan_errors_are_one_line_before_anything_starts(
    kas, project: Path, body: str, fragments: list[str]
) -> None:
    (project / "plan.toml").write_text(body)
    result = kas("wave", "run", "--yes", "plan.toml")
    assert_user_error(result, *fragments)
    assert json.loads(kas("instance", "list", "--all", "--json").stdout) == []


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [("nice=-1", "only ever lowers"), ("gomaxproc=2", "did you mean 'gomaxprocs'"), ("nice", "KEY=VALUE")],
)
def test_bad_set_is_a_usage_error(kas, project: Path, arg: str, fragment: str) -> None:
    plan = write_plan(project, [[("a", 0, 0)]])
    assert_user_error(kas("wave", "run", "--yes", "--set", arg, str(plan)), fragment)


def test_missing_plan_file(kas) -> None:
    assert_user_error(kas("wave", "run", "nope.toml"), "nope.toml", "not found")


def test_bundled_example_runs(kas) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "plan.toml"
    result = kas("wave", "run", "--yes", str(example), env={**os.environ, "PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert "all 4 tasks succeeded" in result.stdout
    assert "\x1b[" not in result.stdout  # piped: plain lines, no redraw


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_show_output_prefixes_each_line_with_the_task_id(kas, project: Path, mode: str, request) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    code = "print('hello from', 'the task'); print('second line')"
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "greet"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
    )
    result = kas("wave", "run", "--yes", "--show-output", "--mode", mode, "plan.toml")
    assert result.returncode == 0, result.stderr
    assert "[greet] hello from the task" in result.stdout
    assert "[greet] second line" in result.stdout
    assert result.stdout.index("started  greet") < result.stdout.index("[greet] hello")  # start, then output
    log = next(Path(os.environ["KAS_STATE_DIR"]).glob("logs/run-*/greet.log"))
    assert "second line" in log.read_text()


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_show_output_streams_while_the_task_runs(project: Path, tmp_path: Path, mode: str, request) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    fifo = make_fifo(tmp_path / "go.fifo")
    # The task prints a line, then waits for the test to have seen it before it prints the last one.
    command = ["sh", "-c", 'echo first; read x < "$0"; echo last', str(fifo)]
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = {json.dumps(command)}\n'
    )
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "--show-output", "--mode", mode, "plan.toml"],
                            cwd=project, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    try:
        while "[t] first" not in lines.next():  # fails if the line only comes once the task has ended
            pass
    finally:
        with open(fifo, "w") as go:  # let the task end in any case
            go.write("go\n")
    assert proc.wait(timeout=15) == 0
    text = lines.rest()
    assert "[t] last" in text and text.index("[t] last") < text.index("exited 0 t")


def test_a_terminal_gets_a_live_view_redrawn_in_place(project: Path) -> None:
    """On a TTY the task block is redrawn with cursor movement; piped output never has escapes."""
    plan = write_plan(project, [[("one", 0.2, 0), ("two", 0.2, 0)]])
    status, screen = run_on_terminal(
        [KAS, "wave", "run", "--yes", str(plan)], project, {**os.environ, "TERM": "xterm"}
    )
    assert status == 0
    assert "\x1b[2K" in screen and "\x1b[" in screen.replace("\x1b[2K", "")
    assert "[2/2 finished]" in screen and "all 2 tasks succeeded" in screen


def run_until_ready(
    project: Path, task_id: str, code: str, grace: float
) -> tuple[subprocess.Popen[str], int]:
    """Start a one-task wave (--json) whose task prints 'ready'; return the run and the task's pid once it has."""
    (project / "plan.toml").write_text(
        f'[[waves]]\n[[waves.tasks]]\nid = "{task_id}"\ncommand = {json.dumps([sys.executable, "-c", code])}\n'
    )
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "--json", "--grace", str(grace), "plan.toml"],
                            cwd=project, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    pid = next(json.loads(line)["pid"] for line in proc.stdout if '"task_promoted"' in line)
    log = next(Path(os.environ["KAS_STATE_DIR"]).glob(f"logs/run-*/{task_id}.log"))
    while "ready" not in log.read_text():
        psutil.wait_procs([psutil.Process(pid)], timeout=0.05)
    return proc, pid


def test_an_interrupt_delivered_to_a_worker_thread_still_stops_the_run(project: Path) -> None:
    """The kernel gives a process's signal to any thread that can take it, not always the main one.

    kill() aimed at a worker thread's id makes that thread the one that takes it: the run must still
    stop at once, not when the next task event happens to wake the main thread (here: in 60 s).
    """
    proc, pid = run_until_ready(project, "slow", "print('ready', flush=True); import time; time.sleep(60)", 1)
    workers = [t.id for t in psutil.Process(proc.pid).threads() if t.id != proc.pid]
    assert workers, "the runner waits for its task in a thread of its own"
    os.kill(workers[0], signal.SIGINT)
    try:
        assert proc.wait(timeout=15) == 130
        assert still_running([pid]) == []
    finally:  # after a failed assertion, leave nothing running
        proc.kill()
        signal_group(pid, signal.SIGKILL)


def test_a_second_interrupt_kills_without_waiting_out_the_grace_period(project: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    proc, pid = run_until_ready(
        project, "stubborn", stubborn, 120
    )  # 'ready': its SIGTERM handler is in place
    assert proc.stdout is not None
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if '"run_interrupted"' in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130  # far less than --grace 120
    assert still_running([pid]) == []
