"""How a guard starts its agent: the zygote's spares, ``posix_spawn`` or fork, the rules file it writes.

Real guards and agents; what the agent inherited is read back from its own /proc entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from kas.cli import main
from kas.errors import LaunchError
from kas.launch.guard import find
from kas.launch.tree import Report, guard_prefix, rules_path
from kas.launch.zygote import Zygote
from tests.conftest import KAS
from tests.helpers import still_running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is Linux's")

INHERITED = textwrap.dedent(
    """\
    import os, sys
    # What this agent inherited, read first thing: signal dispositions and mask, descriptors, CPUs.
    status = open("/proc/self/status").read()
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(fd + " -> " + os.readlink("/proc/self/fd/" + fd))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    with open(sys.argv[1], "w") as out:
        out.write(status + "\\n".join(fds) + "\\ncwd " + os.getcwd() + "\\n")
    """
)
# Python itself ignores SIGPIPE and SIGXFSZ at start-up; glibc's posix_spawn (2.36) leaves its own two
# internal signals, 32 and 33, ignored in the child, and no program uses them (glibc installs its handlers
# when it needs them).
NOT_OURS = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1)) | (1 << 31) | (1 << 32)
RULES = {"autogroup": 0, "nice": 10, "ioclass": 2, "iolevel": 7, "oom": 500, "affinity": None, "policy": None}


@pytest.mark.parametrize("cpus", ["", "reserve_cpus = 1"], ids=["posix_spawn", "fork"])
def test_an_agent_starts_with_default_signals_no_mask_and_only_its_own_descriptors(
    project: Path, cpus: str
) -> None:
    """The guard catches and ignores signals, and holds pipes; none of it may reach the agent, on either
    path (CPUs to narrow make the guard fork instead of ``posix_spawn``). The agent's command is found
    on the PATH of its own environment."""
    tools = project / "tools"
    tools.mkdir()
    tool = tools / "inherited"
    tool.write_text(f"#!{sys.executable}\n{INHERITED}")
    tool.chmod(0o755)
    out = project / "inherited.txt"
    (project / "plan.toml").write_text(
        f'name = "s"\n[resources]\nprofile = "interactive"\n{cpus}\n[[waves]]\n[[waves.tasks]]\nid = "a"\n'
        f'command = ["inherited", "{out}"]\n'
        f'[waves.tasks.env]\nPATH = "{tools}:{os.environ["PATH"]}"\n'
    )
    done = subprocess.run(
        [KAS, "wave", "run", "--yes", "--json", "plan.toml"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = out.read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert int(fields["SigIgn"], 16) & ~NOT_OURS == 0 and int(fields["SigBlk"], 16) == 0
    fds = dict(line.split(" -> ") for line in lines if " -> " in line)
    assert fds["0"] == "/dev/null" and len(fds) == 3
    pipes = sorted(fd for fd, target in fds.items() if target.startswith("pipe:"))
    assert pipes == ["1", "2"]  # its output goes to the log; the guard's report pipe stayed with the guard
    assert f"cwd {project}" in lines
    if cpus and len(os.sched_getaffinity(0)) > 1:
        assert fields["Cpus_allowed_list"] != f"0-{len(os.sched_getaffinity(0)) - 1}"


def test_find_looks_on_the_agents_path_for_a_regular_executable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tool").write_text("not executable")
    (tmp_path / "a" / "dir").mkdir()
    (tmp_path / "b" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "b" / "tool").chmod(0o755)
    path = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    assert find("tool", {"PATH": path}) == f"{tmp_path / 'b'}/tool"
    assert find("dir", {"PATH": path}) is None
    assert find("missing", {"PATH": path}) is None
    assert find("./x/y", {"PATH": ""}) == "./x/y"  # a path is not searched: posix_spawn says what is wrong


def ask(
    factory: Zygote, argv: list[str], cwd: str, inst_id: str, env: dict[str, str] | None = None
) -> Report:
    report_r, report_w = os.pipe()
    try:
        options = guard_prefix(rules_path(inst_id), RULES)[4:]
        factory.start(options, argv, {**os.environ, **(env or {})}, cwd, report_w)
    finally:
        os.close(report_w)
    return Report(report_r)


def test_the_zygote_reports_what_cannot_start_and_replaces_a_killed_spare(tmp_path: Path) -> None:
    factory = Zygote()
    try:
        with pytest.raises(LaunchError, match="command not found: no-such-command-kas"):
            ask(factory, ["no-such-command-kas"], str(tmp_path), "t1").started()
        with pytest.raises(LaunchError, match=r"cannot enter .*gone"):
            ask(factory, ["true"], str(tmp_path / "gone"), "t2").started()
        spares = psutil.Process(factory.proc.pid).children()
        assert spares, "the zygote keeps spares waiting"
        for spare in spares:
            with contextlib.suppress(psutil.NoSuchProcess):  # a guard of the requests above, ending
                spare.kill()
        report = ask(factory, ["sh", "-c", "exit 3"], str(tmp_path), "t3")
        agent, guard = report.started()
        assert agent != guard and report.ended() == 3  # the status comes from the guard, not the zygote
        # A request larger than a socket message holds (about 200 KiB) travels in a memory file.
        env = {"BIG1": "x" * 110_000, "BIG2": "y" * 110_000}  # each below the kernel's 128 KiB a string
        big = ask(factory, ["sh", "-c", 'exit "${#BIG2}"'], str(tmp_path), "t4", env)
        big.started()
        assert big.ended() == 110_000 % 256
    finally:
        factory.close()
        factory.proc.wait(timeout=10)


def test_a_request_nobody_waits_for_any_more_starts_nothing(tmp_path: Path) -> None:
    """A runner that gave up on a start (it died, timed out, was interrupted) closed its end of the report
    pipe: a guard that takes the request only then starts nothing."""
    factory = Zygote()
    marker = tmp_path / "ran"
    try:
        spares = psutil.Process(factory.proc.pid).children()
        for spare in spares:
            spare.suspend()
        ask(factory, ["touch", str(marker)], str(tmp_path), "t5").close()
        for spare in spares:
            spare.resume()
        check = ask(factory, ["sh", "-c", "exit 4"], str(tmp_path), "t6")  # taken after the first
        check.started()
        assert check.ended() == 4
        assert not marker.exists()
    finally:
        factory.close()
        factory.proc.wait(timeout=10)


def write_wave(project: Path, commands: list[list[str]], cap: int | None = None) -> None:
    """``plan.toml``: one wave of tasks t0, t1, ... running ``commands``, at most ``cap`` at once."""
    tasks = "".join(
        f'[[waves.tasks]]\nid = "t{i}"\ncommand = {json.dumps(c)}\n' for i, c in enumerate(commands)
    )
    limit = "" if cap is None else f"[resources]\nmax_parallel_wave_tasks = {cap}\n"
    (project / "plan.toml").write_text(f'name = "w"\n{limit}[[waves]]\n{tasks}')


def start_wave(project: Path, until: str | None = None) -> subprocess.Popen[str]:
    """``kas wave run --json plan.toml``, its events read up to the first ``until`` event."""
    runner = subprocess.Popen(
        [KAS, "wave", "run", "--yes", "--json", "plan.toml"], cwd=project, stdout=subprocess.PIPE, text=True
    )
    assert runner.stdout is not None
    while until is not None and f'"{until}"' not in runner.stdout.readline():
        pass
    return runner


def events_of(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def agents(marker: str) -> list[int]:
    """The running ``sleep MARKER`` agents of a test (a marker no other process uses)."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def wait_until(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.001)


def test_a_wave_goes_on_when_its_guard_factory_is_killed(project: Path) -> None:
    """Each task's status comes from its own guard, and a new zygote replaces one that is gone."""
    write_wave(project, [["sh", "-c", f"sleep 1; exit {i}"] for i in range(4)], cap=2)
    proc = start_wave(project, until="task_promoted")
    zygotes = [p for p in psutil.Process(proc.pid).children() if "--zygote" in p.cmdline()]
    assert len(zygotes) == 1
    zygotes[0].kill()
    rest, _ = proc.communicate(timeout=60)
    statuses = {e["task"]: e["exit_status"] for e in events_of(rest) if e["event"] == "task_finished"}
    assert statuses == {"t0": 0, "t1": 1, "t2": 2, "t3": 3}


def test_pending_tasks_are_claimed_or_cancelled_never_both(project: Path) -> None:
    """`kas instance stop` on a pending task and its runner's start decide its fate in one place: the
    registry row changes only while it is pending, so one of the two wins."""
    from kas import lifecycle
    from kas.registry import Instance, Registry
    from kas.status import PENDING

    registry = Registry()
    try:
        rows = registry.insert_many(
            [Instance(id=name, name=name, mode="sdk", status=PENDING, cwd=str(project), argv=["true"],
                      wrapped_argv=["true"], resource_profile="normal", settings={}, env={})
             for name in ("a1", "b1")]
        )  # fmt: skip
        assert lifecycle.mark_cancelled(registry, rows[0].id) is not None
        assert not lifecycle.claim_start(registry, rows[0].id, os.getpid(), guard=None, created=1.0)
        assert lifecycle.claim_start(registry, rows[1].id, os.getpid(), guard=None, created=1.0)
        assert lifecycle.mark_cancelled(registry, rows[1].id) is None
        assert [registry.get(r.id).status for r in rows] == ["cancelled", "running"]  # type: ignore[union-attr]
    finally:
        registry.close()


def test_stopping_tasks_while_they_start_leaves_nothing_running(project: Path) -> None:
    """`kas instance stop` on every task while a wave of 30 starts them all at once: each ends cancelled
    or stopped, and no agent outlives it."""
    marker = "3" + str(os.getpid())
    write_wave(project, [["sleep", marker]] * 30, cap=0)
    proc = start_wave(project, until="wave_started")
    listed = subprocess.run([KAS, "instance", "list", "--json"], cwd=project, capture_output=True, text=True)
    ids = [row["id"] for row in json.loads(listed.stdout)]
    subprocess.run([KAS, "instance", "stop", *ids], cwd=project, capture_output=True, timeout=60)
    rest, _ = proc.communicate(timeout=60)
    ends = {e["task"] for e in events_of(rest) if e["event"] in ("task_finished", "task_cancelled")}
    assert len(ends) == 30
    time.sleep(0.5)
    assert agents(marker) == []


def test_a_runner_killed_while_its_tasks_start_leaves_them_in_kas_hands(project: Path) -> None:
    """SIGKILL to the runner while eight tasks start: every agent that started is listed (orphaned) and
    `kas instance stop --all` ends it; nothing runs on unseen."""
    marker = "4" + str(os.getpid())
    write_wave(project, [["sleep", marker]] * 8, cap=8)
    proc = start_wave(project, until="task_promoted")
    proc.kill()
    proc.wait()
    time.sleep(1.0)  # every start on its way has happened or been given up
    listed = subprocess.run([KAS, "instance", "list", "--json"], cwd=project, capture_output=True, text=True)
    running = {row["pid"] for row in json.loads(listed.stdout)}
    started = set(agents(marker))
    assert started and started <= running  # each agent that runs is one kas lists
    subprocess.run([KAS, "instance", "stop", "--all"], cwd=project, capture_output=True, timeout=60)
    assert still_running(sorted(started)) == []


def test_the_guard_writes_its_rules_file_and_keeps_an_apply_that_came_first(
    project: Path, interactive
) -> None:
    """The launcher writes no rules file (a start waits for no disk): the guard does at its first look,
    private, unless ``profile apply`` wrote one already, whose rules then hold."""
    runner = CliRunner()

    def spawn() -> dict[str, Any]:
        result = runner.invoke(
            main, ["spawn", "--detach", "--json", "--", "sleep", "30"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    first, second = spawn(), spawn()
    try:
        applied = runner.invoke(main, ["profile", "apply", "normal", second["id"]], catch_exceptions=False)
        assert applied.exit_code == 0, applied.output
        time.sleep(1.0)  # past each guard's first look
        for row, expected_nice in ((first, 10), (second, None)):
            path = rules_path(row["id"])
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert json.loads(path.read_text()).get("nice") == expected_nice
        assert psutil.Process(second["pid"]).ionice().ioclass == psutil.IOPRIO_CLASS_NONE  # not put back
    finally:
        for row in (first, second):
            runner.invoke(main, ["instance", "stop", row["id"]])
    deadline = time.monotonic() + 10
    while rules_path(first["id"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rules_path(first["id"]).exists()  # the guard takes its rules file along


def test_a_wave_interrupted_while_its_tasks_start_leaves_nothing_running(project: Path) -> None:
    """SIGTERM arrives while guards are still starting their agents: each one started is stopped too."""
    write_wave(project, [["sleep", "30"]] * 4)
    proc = start_wave(project, until="wave_started")
    proc.send_signal(signal.SIGTERM)  # the starts are on their way; none was told yet
    rest, _ = proc.communicate(timeout=30)
    events = events_of(rest)
    assert proc.returncode == 130
    pids = [e["pid"] for e in events if e["event"] == "task_promoted"]
    assert all(
        not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in pids
    )
    ends = {e["task"] for e in events if e["event"] in ("task_finished", "task_cancelled")}
    assert ends == {"t0", "t1", "t2", "t3"}


def test_stopping_a_pending_task_its_guard_already_started_ends_the_agent(project: Path) -> None:
    """The runner is frozen between a guard's start and its own record of it (the row still says pending):
    `kas instance stop` cancels the row and ends what the guard started, even if the runner then dies."""
    marker = "5" + str(os.getpid())
    write_wave(project, [["sleep", marker]] * 20, cap=0)
    guards = Path(os.environ["KAS_STATE_DIR"]) / "guards"
    runner = start_wave(project)
    try:
        wait_until(lambda: guards.is_dir() and any(p.suffix == ".pid" for p in guards.iterdir()))
        runner.send_signal(signal.SIGSTOP)
        from kas.registry import Registry

        registry = Registry()
        pending = [
            r.id for r in registry.instances() if r.status == "pending" and (guards / f"{r.id}.pid").exists()
        ]
        registry.close()
        assert pending, "no start caught between its guard and its record: the runner was too quick"
        agent = int((guards / f"{pending[0]}.pid").read_text().split()[0])
        stopped = subprocess.run(
            [KAS, "instance", "stop", pending[0]], cwd=project, capture_output=True, text=True
        )
        assert "cancelled" in stopped.stdout
        assert still_running([agent]) == []
    finally:
        runner.kill()
        runner.wait()
    subprocess.run([KAS, "instance", "list"], cwd=project, capture_output=True)  # recovers the others
    subprocess.run([KAS, "instance", "stop", "--all"], cwd=project, capture_output=True, timeout=60)
    time.sleep(0.5)
    assert agents(marker) == []


def test_requests_a_killed_zygote_never_served_go_to_a_new_one(project: Path) -> None:
    """A zygote killed as it starts takes the requests queued for it along (their report pipes close
    unanswered): each is asked again, once, of a new zygote, and every task runs."""
    write_wave(project, [["true"]] * 30, cap=0)
    runner = start_wave(project)
    zygotes: list[psutil.Process] = []
    wait_until(
        lambda: bool(
            zygotes.extend(p for p in psutil.Process(runner.pid).children() if "--zygote" in p.cmdline())
            or zygotes
        )
    )
    zygotes[0].kill()
    out, _ = runner.communicate(timeout=60)
    assert [e["reason"] for e in events_of(out) if e["event"] == "task_failed"] == []
    assert runner.returncode == 0


def test_a_task_stopped_with_instance_stop_is_stopped_in_the_run_and_in_its_row(project: Path) -> None:
    """`kas instance stop` says so before its signal goes, so the runner records a stop, not an exit with
    the signal's status, and the run and the registry agree."""
    write_wave(project, [["sleep", "60"]])
    runner = start_wave(project)
    assert runner.stdout is not None
    promoted = json.loads(next(line for line in runner.stdout if '"task_promoted"' in line))
    subprocess.run(
        [KAS, "instance", "stop", promoted["instance"]], cwd=project, capture_output=True, timeout=30
    )
    rest, _ = runner.communicate(timeout=30)
    finished = next(e for e in events_of(rest) if e["event"] == "task_finished")
    assert (finished["status"], finished["exit_status"]) == ("stopped", 143)
    row = json.loads(
        subprocess.run([KAS, "instance", "show", "--json", promoted["instance"]], cwd=project,
                       capture_output=True, text=True).stdout
    )  # fmt: skip
    assert (row["status"], row["exit_status"]) == ("stopped", 143)
