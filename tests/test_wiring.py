"""Every option and config key reaches what it controls: in-process CLI runs (Click's CliRunner) over real
processes, a real registry and real plans. Each test here exists because that wiring once broke silently."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kas import platform as host
from kas.cli import main
from kas.profiles import KEYS
from kas.registry import Instance, Registry
from kas.resolver import agent_cpus
from kas.status import CANCELLED, PENDING
from tests.conftest import KAS
from tests.helpers import agent_argv, make_fifo, read_report, still_running

KAS_ROOT = Path(__file__).resolve().parent.parent / "kas"


def cli(*args: str, input: str | None = None) -> Result:
    """Run kas in this process; user errors and exits come back as the result's exit code."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def cli_json(*args: str) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def dry_run(*args: str) -> dict[str, Any]:
    return cli_json("spawn", "--dry-run", "--json", *args, "--", "make")


def one_task_plan(project: Path, extra: str = "", command: str = '["true"]') -> Path:
    plan = project / "plan.toml"
    plan.write_text(f'name = "w"\n{extra}\n[[waves]]\n[[waves.tasks]]\nid = "t"\ncommand = {command}\n')
    return plan


def run_events(*args: str) -> list[dict[str, Any]]:
    result = cli("wave", "run", "--yes", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def started(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["event"] == "run_started")


# What each config key changes that a user can see; the completeness test below keeps this in step with
# the key table, so a new key cannot arrive without a test that its value gets somewhere.
def _argv_has(*seq: str) -> Callable[[dict[str, Any]], bool]:
    def check(dry: dict[str, Any]) -> bool:
        argv = dry["argv"]
        return any(argv[i : i + len(seq)] == list(seq) for i in range(len(argv)))

    return check


EFFECTS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "nice": ("5", _argv_has("nice", "-n", "5")),
    "ionice_class": ('"idle"', _argv_has("ionice", "-c", "3")),
    "ionice_level": ("3", _argv_has("ionice", "-c", "2", "-n", "3")),
    "build_jobs": ("3", lambda d: d["env"]["MAKEFLAGS"] == "-j3" and d["env"]["NPM_CONFIG_JOBS"] == "3"),
    "go_package_parallelism": ("4", lambda d: d["env"]["GOFLAGS"] == "-p=4"),
    "gomaxprocs": ("6", lambda d: d["env"]["GOMAXPROCS"] == "6"),
    "max_parallel_wave_tasks": ("3", lambda d: True),  # its effect is checked through a wave below
    "autogroup": ("false", lambda d: d["autogroup_nice"] == 0),
    "autogroup_nice": ("7", lambda d: d["autogroup_nice"] == (7 if host.autogroup_enabled() else 0)),
    "cgroup": ('"auto"', lambda d: True),  # with no user manager: a note, checked below
    "cpu_weight": ("50", lambda d: True),  # reaches systemd-run: test_desktop's fake systemd-run
    "io_weight": ("60", lambda d: True),
    "oom_score_adj": ("700", lambda d: d["guard"]["oom"] == 700),  # the guard keeps it on the tree
    "reserve_cpus": ("1", lambda d: d["guard"]["affinity"] == agent_cpus(1, sorted(os.sched_getaffinity(0)))),
    "sched_policy": ('"idle"', lambda d: d["guard"]["policy"] == os.SCHED_IDLE),
    "execution_mode": ('"tmux"', lambda d: d["mode"] == "tmux"),
}


def test_every_key_has_a_wiring_check() -> None:
    assert set(EFFECTS) == set(KEYS)


@pytest.mark.parametrize("key", list(KEYS))
def test_each_config_key_is_resolved_and_reaches_the_launch(key: str, write_config) -> None:
    value, effect = EFFECTS[key]
    write_config(f'[resources]\nprofile = "interactive"\n{key} = {value}\n')
    shown = cli_json("profile", "show", "--json")
    assert shown["sources"][key] == "override"
    assert json.dumps(shown["settings"][key]) == value
    assert effect(dry_run())


def test_cgroup_without_a_user_manager_says_it_falls_back(write_config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "none"))
    write_config('[resources]\nprofile = "interactive"\ncgroup = "systemd"\n')
    result = cli("spawn", "--dry-run", "--", "make")
    assert 'cgroup = "systemd" falls back' in result.stderr


@pytest.mark.parametrize("key", list(KEYS))
def test_each_key_set_on_the_command_line_reaches_the_task(key: str, project: Path, request) -> None:
    value = EFFECTS[key][0].strip('"')
    if key == "execution_mode":
        request.getfixturevalue("tmux_socket")
    profile = "custom" if KEYS[key].control else "normal"  # a choice of how to run applies under normal too
    events = run_events("--set", f"profile={profile}", "--set", f"{key}={value}", str(one_task_plan(project)))
    assert started(events)["profile"] == profile
    row = next(r for r in cli_json("instance", "list", "--all", "--json") if r["task_id"] == "t")
    assert json.dumps(row["settings"][key]).strip('"') == value
    if key == "max_parallel_wave_tasks":
        assert started(events)["cap"] == 3
    if key == "execution_mode":
        assert started(events)["mode"] == row["mode"] == "tmux"


def test_the_cap_applies_under_the_normal_profile(project: Path) -> None:
    plan = one_task_plan(project, "[resources]\nmax_parallel_wave_tasks = 2")
    assert started(run_events(str(plan)))["cap"] == 2
    assert started(run_events("-j", "1", str(plan)))["cap"] == 1


def test_mode_precedence_flag_then_plan_then_config(project: Path, write_config, tmux_socket: str) -> None:
    write_config('[resources]\nexecution_mode = "tmux"\n')
    assert dry_run()["mode"] == "tmux"
    assert dry_run("--mode", "sdk")["mode"] == "sdk"
    plain = one_task_plan(project)
    assert started(run_events(str(plain)))["mode"] == "tmux"  # the config's
    sdk_plan = one_task_plan(project, '[defaults]\nmode = "sdk"')
    assert started(run_events(str(sdk_plan)))["mode"] == "sdk"  # the plan's beats the config's
    write_config('[resources]\nexecution_mode = "sdk"\n')
    tmux_plan = one_task_plan(project, '[defaults]\nmode = "tmux"')
    assert started(run_events(str(tmux_plan)))["mode"] == "tmux"
    assert started(run_events("--mode", "sdk", str(tmux_plan)))["mode"] == "sdk"  # the flag beats both


def test_plan_default_env_and_task_env_reach_the_task(project: Path) -> None:
    code = "import os; open('env.json', 'w').write(__import__('json').dumps(dict(os.environ)))"
    plan = project / "plan.toml"
    plan.write_text(
        textwrap.dedent(f"""
        [defaults]
        env = {{ FROM_DEFAULTS = "d", BOTH = "defaults" }}
        [[waves]]
        [[waves.tasks]]
        id = "t"
        env = {{ BOTH = "task" }}
        command = {json.dumps([sys.executable, "-c", code])}
        """)
    )
    run_events(str(plan))
    env = json.loads((project / "env.json").read_text())
    assert env["FROM_DEFAULTS"] == "d" and env["BOTH"] == "task"


def test_prune_older_than_keeps_recent_rows(project: Path) -> None:
    assert cli("spawn", "--", "true").exit_code == 0
    assert cli_json("instance", "prune", "--older-than", "1", "--json") == {"pruned": 0, "files_removed": 0}
    assert cli_json("instance", "prune", "--older-than", "0", "--json")["pruned"] == 1
    assert cli_json("instance", "list", "--all", "--json") == []


def test_profile_show_profile_selects_another_profile(write_config) -> None:
    assert cli_json("profile", "show", "--json", "--profile", "interactive")["settings"]["nice"] == 10
    write_config('[resources]\nprofile = "interactive"\ngomaxprocs = 4\n')
    normal = cli_json("profile", "show", "--json", "--profile", "normal")
    assert normal["profile"] == "normal" and normal["settings"]["nice"] == 0
    text = cli("profile", "show", "--resolved", "--profile", "custom").stdout
    assert "profile: custom" in text and re.search(r"gomaxprocs +4 +\(override\)", text)


def test_stopping_a_pending_task_cancels_it(project: Path) -> None:
    registry = Registry()
    row = registry.insert(
        Instance(
            id="abc123", name="t", mode="sdk", status=PENDING, cwd=str(project), argv=["true"],
            wrapped_argv=["true"], resource_profile="normal", settings={}, env={},
            owner_pid=os.getpid(), owner_create_time=__import__("psutil").Process().create_time(),
        )
    )  # fmt: skip
    assert cli_json("instance", "stop", "--json", row.id) == [
        {"id": row.id, "status": CANCELLED, "exit_status": None}
    ]
    stored = registry.get(row.id)
    registry.close()
    assert stored is not None and stored.status == CANCELLED


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_foreground_spawn_forwards_stop_signals_to_the_agent(
    project: Path, tmp_path: Path, sig: int
) -> None:
    fifo = make_fifo(tmp_path / "ready.fifo")
    code = textwrap.dedent(f"""
        import signal, sys, time
        signal.signal({int(sig)}, lambda *_: (open('got', 'w').write('signal'), sys.exit(42)))
        open({str(fifo)!r}, 'w').write('{{}}')
        time.sleep(30)
    """)
    proc = subprocess.Popen(
        [KAS, "spawn", "--", sys.executable, "-c", code], cwd=project, stdin=subprocess.DEVNULL
    )
    try:
        read_report(fifo)
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 42  # the agent's own status: it got the signal and chose its exit
        assert (project / "got").read_text() == "signal"
    finally:
        proc.kill()


def test_an_interrupted_foreground_spawn_leaves_nothing_of_its_group(project: Path, tmp_path: Path) -> None:
    """A shell's background job ignores SIGINT; kas still ends it once the agent is gone."""
    fifo = make_fifo(tmp_path / "ready.fifo")
    script = f'sleep 33 & echo "{{\\"pid\\": $!}}" > {fifo}; wait'
    proc = subprocess.Popen([KAS, "spawn", "--", "sh", "-c", script], cwd=project, stdin=subprocess.DEVNULL)
    try:
        background = read_report(fifo)["pid"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert still_running([background]) == []
    finally:
        proc.kill()


def test_spawn_detach_returns_a_running_row_and_records_its_end(project: Path, tmp_path: Path) -> None:
    fifo = make_fifo(tmp_path / "r.fifo")
    row = cli_json("spawn", "--detach", "--json", "--", *agent_argv(fifo, 0, code=3))
    report = read_report(fifo)
    assert row["pid"] == report["pid"] and row["status"] == "running"
    deadline = time.monotonic() + 15
    while (shown := cli_json("instance", "show", "--json", row["id"]))["status"] == "running":
        assert time.monotonic() < deadline
        still_running([report["pid"]], timeout=0.2)
    assert shown["status"] == "exited" and shown["exit_status"] == 3


# -- layering: checked on the source, since a stray import or branch breaks nothing at first -------------
def _sources(folder: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in folder.rglob("*.py")}


def test_no_execution_mode_branch_outside_the_launchers() -> None:
    for path, text in _sources(KAS_ROOT).items():
        if path.parent.name == "launch" or path.name == "profiles.py":
            continue
        for word in ('== "tmux"', '== "sdk"', "mode == ", "import tmux", "launch.tmux", "launch.sdk"):
            assert word not in text, f"{path.relative_to(KAS_ROOT)} branches on the mode ({word})"


def test_launch_never_imports_instances_and_only_the_cli_imports_click() -> None:
    for path, text in _sources(KAS_ROOT).items():
        if path.parent.name == "launch":
            assert "kas.instances" not in text, path
        if path.parent.name != "cli":
            assert "import click" not in text and "from click" not in text, path
            # The programs that run on their own (a detached supervisor, a pane's runner) talk on their stdio.
            assert "print(" not in text or path.name in ("supervisor.py", "pane.py"), (
                f"{path}: warnings go through the CLI"
            )


def test_the_readme_lists_every_status_name() -> None:
    from kas.status import MEANING

    readme = (KAS_ROOT.parent / "README.md").read_text()
    table = readme.split("### Statuses", 1)[1].split("###", 1)[0]
    assert {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")} == set(MEANING)


def test_check_keeps_every_row_and_fails_its_verdict_on_a_broken_config_or_a_missing_nice(
    write_config, tmp_path: Path, monkeypatch
) -> None:
    write_config('[resources]\nprofile = "fast"\n')
    rows = {c["name"]: c for c in json.loads(cli("check", "--json").stdout)["checks"]}
    assert rows["config"]["status"] == "fail"
    assert {"autogroup", "cgroup", "I/O scheduler"} <= set(rows) and rows["verdict"]["status"] == "fail"
    write_config('[resources]\nprofile = "interactive"\n')
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("ionice", "tmux"):
        (tools / tool).symlink_to(f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(tools))
    result = cli("check", "--json")
    rows = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.exit_code == 1
    assert rows["nice on PATH"]["status"] == "fail" and rows["verdict"]["status"] == "fail"
    assert "nice is missing" in rows["verdict"]["detail"]


def test_a_config_may_force_the_profile_label_but_no_other_kasmos_name(write_config) -> None:
    write_config(
        '[resources]\nprofile = "interactive"\n[resources.env]\nKASMOS_RESOURCE_PROFILE = "gaming"\n'
    )
    assert dry_run()["env"]["KASMOS_RESOURCE_PROFILE"] == "gaming"
    write_config('[resources]\nprofile = "interactive"\n[resources.env]\nKASMOS_BUILD_JOBS = "9"\n')
    result = cli("profile", "show")
    assert result.exit_code == 2 and "reserved" in result.stderr
    write_config('[resources]\nprofile = "interactive"\n[resources.env]\n"A\\n" = "x"\n')
    result = cli("profile", "show")
    assert result.exit_code == 2 and "not a valid environment variable name" in result.stderr
