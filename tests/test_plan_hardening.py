"""Hostile plan files: each is one located ``kas: error:`` line and exit 2, before any task has started.

Every hostile plan runs through the real CLI in a subprocess (``python -m kas`` with this checkout first
on ``PYTHONPATH``). Where TOML allows it, the plan's first wave is a good task that creates a canary file:
if the loader let the bad value through to the runner, that task would run first and leave the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kas.errors import PlanError
from kas.waves.plan import MAX_TIMEOUT, Task, load_plan

ROOT = Path(__file__).resolve().parent.parent
MARK = "# <-"  # marks the line a case's error must name


def kas_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run this checkout's kas (not whatever ``kas`` is installed) in the test project."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kas", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def canary_argv(project: Path) -> str:
    """A TOML array for a command that creates ``<project>/canary`` (JSON strings are valid TOML)."""
    return json.dumps([sys.executable, "-c", f"open({str(project / 'canary')!r}, 'w').close()"])


def render(body: str, project: Path) -> str:
    """Fill in ``{canary}`` (a whole first wave) and ``{canary_task}`` (the same task as an inline table)."""
    task = f'{{ id = "canary", command = {canary_argv(project)} }}'
    wave = f'[[waves]]\n[[waves.tasks]]\nid = "canary"\ncommand = {canary_argv(project)}\n'
    return body.replace("{canary}", wave).replace("{canary_task}", task)


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.split("\n"), 1) if MARK in line]
    assert len(lines) == 1, f"a case marks exactly one line with {MARK!r}"
    return lines[0]


def nothing_ran(project: Path) -> bool:
    """No task created the canary and the runner never made a run's log directory."""
    runs = list(Path(os.environ["KAS_STATE_DIR"]).glob("logs/run-*"))
    return not (project / "canary").exists() and runs == []


# fmt: off
HOSTILE = [
    # -- waves and tasks that are not tables -----------------------------------------------------------
    ("waves-of-ints", "waves = [1, 2]  # <-\n", "wave 1 must be a table: use [[waves]]"),
    ("waves-mixed", "waves = [{ tasks = [{canary_task}] }, 1]  # <-\n", "wave 2 must be a table: use [[waves]]"),
    ("waves-string", 'waves = "build"  # <-\n', "waves must be a list of tables"),
    ("waves-single-brackets", '[waves]  # <-\nname = "x"\n', "write each wave as [[waves]]"),
    ("tasks-without-a-wave", '[[waves.tasks]]  # <-\nid = "a"\ncommand = ["true"]\n', "write each wave as [[waves]]"),
    ("tasks-of-ints", "{canary}[[waves]]\ntasks = [1]  # <-\n", "wave 2 task 1 must be a table: use [[waves.tasks]]"),
    ("tasks-mixed", '{canary}[[waves]]\ntasks = [{ id = "b", command = ["true"] }, "c"]  # <-\n', "wave 2 task 2 must be a table"),
    ("tasks-string", '{canary}[[waves]]\ntasks = "x"  # <-\n', "wave 2: tasks must be a list of tables"),
    ("tasks-single-brackets", '{canary}[[waves]]\n[waves.tasks]  # <-\nid = "b"\ncommand = ["true"]\n', "write each task as [[waves.tasks]]"),
    ("inline-wave-tasks-string", 'waves = [{ tasks = [{canary_task}] }, { tasks = "x" }]  # <-\n', "wave 2: tasks must be a list"),
    # -- [defaults] and top-level values of the wrong type ---------------------------------------------
    ("defaults-not-a-table", "defaults = 1  # <-\n{canary}", "defaults must be a table"),
    ("defaults-env-string", '[defaults]\nenv = "A=1"  # <-\n{canary}', "[defaults.env] must be a table"),
    ("defaults-env-number", "[defaults]\nenv = { A = 1 }  # <-\n{canary}", "A = 1 must be a string"),
    ("defaults-env-nul", '[defaults]\nenv = { A = "x\\u0000" }  # <-\n{canary}', "A contains a NUL"),
    ("defaults-mode-number", "[defaults]\nmode = 1  # <-\n{canary}", "mode = 1"),
    ("defaults-mode-list", '[defaults]\nmode = ["sdk"]  # <-\n{canary}', 'use "sdk" or "tmux"'),
    ("defaults-mode-unknown", '[defaults]\nmode = "ssh"  # <-\n{canary}', "mode = 'ssh'"),
    ("defaults-cwd-number", "[defaults]\ncwd = 1  # <-\n{canary}", "cwd = 1 must be a string path"),
    ("plan-name-list", 'name = ["x"]  # <-\n{canary}', "name = ['x'] must be a string"),
    ("plan-name-nul", 'name = "a\\u0000b"  # <-\n{canary}', "name contains a NUL"),
    ("resources-not-a-table", "resources = 1  # <-\n{canary}", "resources must be a table"),
    # -- task values, in the second wave so the canary would have run first ----------------------------
    ("task-id-trailing-newline", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b\\n"  # <-\ncommand = ["true"]\n', "id 'b\\n' may only use letters"),
    ("task-id-leading-dot", '{canary}[[waves]]\n[[waves.tasks]]\nid = ".b"  # <-\ncommand = ["true"]\n', "must start with a letter or digit"),
    ("task-id-too-long-for-a-file-name", f'{{canary}}[[waves]]\n[[waves.tasks]]\nid = "{"b" * 253}"  # <-\ncommand = ["true"]\n', "is 253 characters; use at most 64"),
    ("task-id-one-over-the-limit", f'{{canary}}[[waves]]\n[[waves.tasks]]\nid = "{"b" * 65}"  # <-\ncommand = ["true"]\n', "is 65 characters; use at most 64"),
    ("task-id-empty", '{canary}[[waves]]\n[[waves.tasks]]\nid = ""  # <-\ncommand = ["true"]\n', "wave 2 task 1: needs an id"),
    ("task-id-number", '{canary}[[waves]]\n[[waves.tasks]]\nid = 5  # <-\ncommand = ["true"]\n', "wave 2 task 1: needs an id"),
    ("task-env-list", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\nenv = ["A=1"]  # <-\n', "task 'b': [env] must be a table"),
    ("task-env-nul", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\nenv = { A = "\\u0000" }  # <-\n', "task 'b': [env] A contains a NUL"),
    ("task-name-number", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\nname = 7  # <-\ncommand = ["true"]\n', "task 'b': name = 7 must be a string"),
    ("task-name-nul", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\nname = "\\u0000"  # <-\n', "task 'b': name contains a NUL"),
    ("task-cwd-table", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\ncwd = { x = 1 }  # <-\n', "must be a string path"),
    ("task-cwd-nul", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\ncwd = "a\\u0000b"  # <-\n', "cwd contains a NUL"),
    ("task-cwd-too-long", f'{{canary}}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\ncwd = "{"x" * 300}"  # <-\n', "cannot be used: File name too long"),
    ("task-cwd-unknown-user", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\ncwd = "~no-such-user-kas/x"  # <-\n', "cannot be used"),
    ("task-command-nul", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["tr\\u0000ue"]  # <-\n', "task 'b': command contains a NUL"),
    ("task-command-string-nul", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = "echo \\u0000"  # <-\n', "task 'b': command contains a NUL"),
    ("task-timeout-nan", '{canary}[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\ntimeout = nan  # <-\n', "task 'b': timeout = nan must be a finite number"),
    ("defaults-timeout-negative", "[defaults]\ntimeout = -1  # <-\n{canary}", "[defaults] timeout = -1 cannot be negative"),
    ("wave-name-number", '{canary}[[waves]]\nname = 2  # <-\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\n', "wave 2: name = 2 must be a string"),
    # -- lines come from the task's own table, not the first match anywhere ----------------------------
    ("line-after-inline-tasks", '[[waves]]\ntasks = [{canary_task}]\n[[waves]]\n[[waves.tasks]]\nid = "b"\ncommand = ["true"]\n[[waves.tasks]]\nid = "c"\ncommand = ["true"]\nname = 3  # <-\n', "task 'c': name = 3"),
    ("line-not-from-the-next-table", '{canary}[[waves]]\n[[waves.tasks]]  # <-\nid = "b"\ncommand = ["true"]\nenv.A = 1\n[[waves.tasks]]\nid = "c"\ncommand = ["true"]\nenv = { B = "fine" }\n', "task 'b': [env] A = 1 must be a string"),
]
# fmt: on


@pytest.mark.parametrize(("body", "fragment"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_plan_is_one_located_line_and_nothing_runs(project: Path, body: str, fragment: str) -> None:
    text = render(body, project)
    (project / "plan.toml").write_text(text)
    result = kas_cli(project, "wave", "run", "--yes", "plan.toml")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # exactly one line
    line = result.stderr.strip()
    assert line.startswith(f"kas: error: plan.toml:{marked_line(text)}: "), line
    assert fragment in line, line
    assert nothing_ran(project)


def test_the_canary_runs_when_nothing_is_wrong(project: Path) -> None:
    """Without this, 'nothing ran' above could pass because the canary never works.

    The second task's id is as long as an id may be: its log file must be creatable too.
    """
    text = render(f'{{canary}}[[waves]]\ntasks = [{{ id = "{"b" * 64}", command = ["true"] }}]\n', project)
    (project / "plan.toml").write_text(text)
    result = kas_cli(project, "wave", "run", "--yes", "plan.toml")
    assert result.returncode == 0, result.stderr
    assert (project / "canary").exists()
    assert list(Path(os.environ["KAS_STATE_DIR"]).glob("logs/run-*")) != []


# -- timeout: parsed by load_plan, enforced by the runner ---------------------------------------------


def write_plan(project: Path, defaults: str, first: str, second: str = "") -> Path:
    """A one-wave plan with two tasks; ``defaults`` and each task's extra lines are TOML text."""
    path = project / "plan.toml"
    path.write_text(
        f"[defaults]\n{defaults}\n[[waves]]\n"
        f'[[waves.tasks]]\nid = "a"\ncommand = ["true"]\n{first}\n'
        f'[[waves.tasks]]\nid = "b"\ncommand = ["true"]\n{second}\n'
    )
    return path


@pytest.mark.parametrize(
    ("defaults", "first", "second", "expected"),
    [
        ("", "", "", (None, None)),
        ("timeout = 600", "", "", (600.0, 600.0)),
        ("timeout = 600", "timeout = 30", "", (30.0, 600.0)),  # the task wins, only for itself
        ("timeout = 600", "timeout = 0", "", (None, 600.0)),  # 0 lifts the default
        ("timeout = 0", "", "timeout = 2.5", (None, 2.5)),
        ("", "timeout = 0.0", f"timeout = {MAX_TIMEOUT}", (None, float(MAX_TIMEOUT))),  # the bound is allowed
        ("", "timeout = 1e-3", "timeout = 1_000", (0.001, 1000.0)),
    ],
)
def test_timeout_comes_from_the_task_else_defaults(
    project: Path, defaults: str, first: str, second: str, expected: tuple[float | None, float | None]
) -> None:
    tasks = load_plan(write_plan(project, defaults, first, second)).waves[0].tasks
    assert (tasks[0].timeout, tasks[1].timeout) == expected
    assert all(t.timeout is None or type(t.timeout) is float for t in tasks)  # an int in TOML is a float here


@pytest.mark.parametrize(
    ("defaults", "first", "line", "fragment"),
    [
        ("", "timeout = -1", 7, "task 'a': timeout = -1 cannot be negative"),
        ("", "timeout = -0.5", 7, "cannot be negative"),
        ("", 'timeout = "600"', 7, "timeout = '600' must be a number of seconds"),
        ("", 'timeout = "10m"', 7, "must be a number of seconds"),
        ("", "timeout = true", 7, "timeout = true must be a number of seconds"),
        ("", "timeout = false", 7, "timeout = false must be a number"),
        ("", "timeout = [60]", 7, "must be a number"),
        ("", "timeout = 1979-05-27", 7, "timeout = 1979-05-27 must be a number"),
        ("", "timeout = nan", 7, "timeout = nan must be a finite number"),
        ("", "timeout = inf", 7, "timeout = inf must be a finite number"),
        ("", "timeout = -inf", 7, "must be a finite number"),
        ("", f"timeout = {MAX_TIMEOUT + 1}", 7, "is more than 7 days"),
        ("", f"timeout = {MAX_TIMEOUT}.5", 7, "is more than 7 days"),
        ("timeout = -3", "", 2, "[defaults] timeout = -3 cannot be negative"),
        ("timeout = true", "timeout = 5", 2, "[defaults] timeout = true must be a number"),
        ("timeout = 1e9", "", 2, "[defaults] timeout = 1000000000.0 is more than 7 days"),
    ],
)
def test_a_bad_timeout_is_a_located_plan_error(
    project: Path, defaults: str, first: str, line: int, fragment: str
) -> None:
    path = write_plan(project, defaults, first)
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert caught.value.line == line, str(caught.value)
    assert fragment in caught.value.message


def test_a_task_built_without_a_timeout_has_none() -> None:
    """The runner and older callers build Tasks positionally; the new field must not break them."""
    assert Task("a", ["true"], Path("."), {}, "a").timeout is None
