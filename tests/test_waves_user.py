"""Waves as a user of a task runner expects them: timeouts, resuming a run, exit codes, the bundled
example, and a summary that names every task. Real processes, real plans, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import KAS
from tests.helpers import run_on_terminal, still_running


def plan(project: Path, body: str, name: str = "plan.toml") -> Path:
    path = project / name
    path.write_text(body)
    return path


def task(task_id: str, command: list[str], extra: str = "") -> str:
    return f'[[waves.tasks]]\nid = "{task_id}"\ncommand = {json.dumps(command)}\n{extra}\n'


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def rows(kas) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {r["task_id"]: r for r in json.loads(kas("instance", "list", "--all", "--json").stdout)}


def test_a_task_past_its_timeout_is_stopped_with_its_group_and_reported(
    kas, project: Path, tmp_path: Path
) -> None:
    # The second task ignores SIGTERM, so only SIGKILL after --grace ends it; both leave a grandchild.
    pidfile = tmp_path / "pids"
    stubborn = f"import signal, subprocess, sys, time; signal.signal(15, signal.SIG_IGN); c = subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(60)']); open({str(pidfile)!r}, 'a').write(f'{{c.pid}}\\n'); time.sleep(60)"
    body = (
        "[defaults]\ntimeout = 0.5\n[[waves]]\n"
        + task("sleepy", ["sleep", "60"])
        + task("stubborn", py(stubborn), "timeout = 1")
    )
    body += task("quick", ["true"])
    started = time.monotonic()
    result = kas("wave", "run", "--yes", "--grace", "0.5", str(plan(project, body)))
    assert time.monotonic() - started < 15
    assert result.returncode == 1, result.stderr
    assert "timed out after 0.5s" in result.stdout and "timed out after 1s" in result.stdout
    found = rows(kas)
    assert found["sleepy"]["status"] == "timed out" and found["sleepy"]["exit_status"] == 143
    assert found["stubborn"]["status"] == "timed out" and found["stubborn"]["exit_status"] == 137
    assert found["quick"]["status"] == "exited" and found["quick"]["exit_status"] == 0
    assert still_running(int(p) for p in pidfile.read_text().split()) == []


def test_resume_runs_again_only_what_did_not_succeed_with_the_same_settings(
    kas, project: Path, write_config
) -> None:
    marker = project / "fixed"
    flaky = f"import os, sys; sys.exit(0 if os.path.exists({str(marker)!r}) else 3)"
    count = "import os; open('count', 'a').write(os.environ['KASMOS_RESOURCE_PROFILE'] + '\\n')"
    body = (
        "[[waves]]\n"
        + task("ok", py(count))
        + task("flaky", py(flaky))
        + "[[waves]]\n"
        + task("later", py(count))
    )
    path = plan(project, body)
    write_config('[resources]\nprofile = "interactive"\n')
    first = kas("wave", "run", "--yes", "--fail-fast", str(path))
    assert first.returncode == 1
    assert "not started" in first.stdout  # the later wave never ran, and the summary says so
    run_id = first.stdout.split()[1].rstrip(":")
    assert f"kas wave run --resume {run_id}" in first.stdout
    write_config('[resources]\nprofile = "normal"\n')  # the resumed run keeps the first run's settings
    marker.touch()
    second = kas("wave", "run", "--yes", "--resume", run_id)
    assert second.returncode == 0, second.stderr
    assert f"resuming run {run_id}: skipping ok (succeeded)" in second.stdout
    assert (project / "count").read_text().splitlines() == [
        "interactive",
        "interactive",
    ]  # ok once, later once
    third = kas("wave", "run", "--yes", "--resume", second.stdout.split("\nrun ")[1].split(":")[0])
    assert third.returncode == 0 and "nothing to run" in third.stdout


@pytest.mark.parametrize(
    ("args", "code", "stdin"),
    [
        (["--yes"], 0, None),  # every task succeeded
        (["--yes", "--set", "profile=nope"], 2, None),  # a usage / config error
        ([], 2, subprocess.DEVNULL),  # a later wave needs a confirmation nobody can give
        ([], 0, "y\n"),
        ([], 0, "n\n"),  # declined: nothing failed
    ],
)
def test_exit_codes_follow_the_readme(project: Path, args: list[str], code: int, stdin: object) -> None:
    body = "[[waves]]\n" + task("a", ["true"]) + "[[waves]]\n" + task("b", ["true"])
    path = plan(project, body)
    kwargs: dict[str, object] = {"input": stdin} if isinstance(stdin, str) else {"stdin": stdin}
    result = subprocess.run(
        [KAS, "wave", "run", *args, str(path)], cwd=project, capture_output=True, text=True, **kwargs
    )
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if stdin is subprocess.DEVNULL:
        assert "needs confirmation" in result.stderr and "b       2       not started" in result.stdout
        assert "failed" not in result.stdout.split("TASK")[1]


def test_a_failed_task_exits_1_and_an_interrupted_run_130(kas, project: Path) -> None:
    assert (
        kas("wave", "run", "--yes", str(plan(project, "[[waves]]\n" + task("f", ["false"])))).returncode == 1
    )
    proc = subprocess.Popen([KAS, "wave", "run", "--yes", "--json", str(plan(project, "[[waves]]\n" + task("s", ["sleep", "30"])))],
                            cwd=project, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    next(line for line in proc.stdout if '"task_promoted"' in line)
    proc.send_signal(2)
    assert proc.wait(timeout=20) == 130


def test_the_bundled_example_is_shipped_and_runs(kas, project: Path) -> None:
    text = kas("wave", "example").stdout
    assert 'name = "example"' in text
    assert text == (Path(__file__).resolve().parent.parent / "examples" / "plan.toml").read_text()
    (project / "plan.toml").write_text(text)
    result = kas("wave", "run", "--yes", "plan.toml")
    assert result.returncode == 0, result.stderr
    assert "all 4 tasks succeeded" in result.stdout


def test_status_colours_on_a_terminal_only_and_never_with_no_color(project: Path) -> None:
    path = plan(project, "[[waves]]\n" + task("a", ["true"]))

    def screen(extra_env: dict[str, str]) -> str:
        status, shown = run_on_terminal([KAS, "wave", "run", "--yes", str(path)], project,
                                        {**os.environ, "TERM": "xterm", **extra_env})  # fmt: skip
        assert status == 0
        return shown

    assert "\x1b[32mexited 0" in screen({})
    assert "\x1b[32m" not in screen({"NO_COLOR": "1"})
    piped = subprocess.run(
        [KAS, "wave", "run", "--yes", str(path)], cwd=project, capture_output=True, text=True
    )
    assert "\x1b[" not in piped.stdout
