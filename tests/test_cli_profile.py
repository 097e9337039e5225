"""``kas profile``, ``kas spawn --dry-run`` and ``kas check`` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kas import platform as host
from tests.conftest import assert_user_error
from tests.helpers import make_fifo, read_report


def test_help_explains_every_command(kas) -> None:
    result = kas("--help")
    assert result.returncode == 0
    for command in ("profile", "spawn", "check", "instance", "wave", "bench", "completion"):
        assert command in result.stdout


def test_profile_show_resolved_lists_values_sources_env_and_wrapper(kas, write_config, monkeypatch) -> None:
    write_config('[resources]\nprofile = "interactive"\ngomaxprocs = 4\n[resources.env]\nMAKEFLAGS = "-j2"\n')
    monkeypatch.setenv("CARGO_BUILD_JOBS", "8")
    result = kas("profile", "show", "--resolved")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gomaxprocs" in out and "(override)" in out and "(preset)" in out
    assert "MAKEFLAGS=-j2 (forced)" in out
    assert "GOMAXPROCS=4" in out
    assert "CARGO_BUILD_JOBS" not in out  # set by the caller: respected
    assert "wrapper: nice -n 10 ionice -c 2 -n 7" in out


def test_profile_show_json_shape(kas, write_config) -> None:
    path = write_config('[resources]\nprofile = "interactive"\nmax_parallel_wave_tasks = 2\n')
    data = json.loads(kas("profile", "show", "--json").stdout)
    assert set(data) == {"profile", "settings", "sources", "env", "wrapper", "config_path"}
    assert data["profile"] == "interactive"
    assert data["settings"]["max_parallel_wave_tasks"] == 2
    assert data["sources"]["max_parallel_wave_tasks"] == "override"
    assert data["wrapper"] == ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7"]
    assert data["env"]["KASMOS_RESOURCE_PROFILE"] == "interactive"
    assert data["config_path"] == str(path)


def test_profile_list_names_the_presets(kas) -> None:
    out = kas("profile", "list").stdout
    assert all(name in out for name in ("normal", "interactive", "custom"))
    data = json.loads(kas("profile", "list", "--json").stdout)
    assert data["interactive"]["settings"]["nice"] == 10


def test_spawn_dry_run_prints_the_exact_argv_and_env(kas, interactive) -> None:
    result = kas("spawn", "--dry-run", "--", "make", "-C", "dir with space")
    assert result.returncode == 0
    assert "argv:    nice -n 10 ionice -c 2 -n 7 make -C 'dir with space'" in result.stdout
    assert "MAKEFLAGS=-j1" in result.stdout
    if host.autogroup_enabled():  # the step after launch that is not in the argv
        assert "then:    autogroup nice 19 for the agent's session group" in result.stdout
    data = json.loads(kas("spawn", "--dry-run", "--mode", "tmux", "--json", "--", "make", "a;b").stdout)
    assert data["argv"] == ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "make", "a;b"]
    assert data["mode"] == "tmux"
    assert data["env"]["GOFLAGS"] == "-p=1"
    # The pane runs kas's agent runner, which reads the argv above from a private file (tmux never parses it).
    assert data["tmux_command"].endswith("/kas/launch/pane.py '$KAS_STATE_DIR/status/<id>.spec'")


def test_spawn_dry_run_under_normal_adds_nothing(kas) -> None:
    data = json.loads(kas("spawn", "--dry-run", "--json", "--", "true").stdout)
    assert data == {
        "argv": ["true"],
        "env": {},
        "forced": [],
        "mode": "sdk",
        "profile": "normal",
        "autogroup_nice": 0,
        "guard": {"autogroup": 0},  # the guard holds the tree, lowering nothing
    }


def test_spawn_without_a_command_is_a_usage_error(kas) -> None:
    result = kas("spawn", "--dry-run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_check_reports_tools_and_config(kas, interactive) -> None:
    result = kas("check", "--json")
    data = json.loads(result.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert names["nice on PATH"]["status"] == "ok"
    assert names["config"]["status"] == "ok"
    assert "verdict" in names
    assert result.returncode == (0 if data["ok"] else 1)
    table = kas("check").stdout
    assert "CHECK" in table and "nice on PATH" in table


def test_check_with_a_broken_config_fails(kas, write_config) -> None:
    write_config('[resources]\nprofile = "fast"\n')
    result = kas("check", "--json")
    assert result.returncode == 1
    config = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "config")
    assert config["status"] == "fail" and "unknown profile" in config["detail"]


@pytest.fixture
def child_tree(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start real processes (each with a grandchild) and kill them afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(prefix: list[str]) -> subprocess.Popen[bytes]:
        """The process reports (through a FIFO) once its child exists, so the tree is complete when read."""
        fifo = make_fifo(tmp_path / f"tree{len(procs)}.fifo")
        code = (
            "import json,subprocess,sys,time; c = subprocess.Popen([sys.executable,'-c','import time; time.sleep(30)']);"
            f" open({str(fifo)!r}, 'w').write(json.dumps({{'child': c.pid}})); time.sleep(30)"
        )
        proc = subprocess.Popen([*prefix, sys.executable, "-c", code])
        procs.append(proc)
        assert read_report(fifo)["child"] in [c.pid for c in psutil.Process(proc.pid).children()]
        return proc

    yield start
    for proc in procs:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def test_check_pid_matches_a_process_started_under_the_wrapper(
    kas, interactive, child_tree, write_config
) -> None:
    write_config('[resources]\nprofile = "interactive"\nautogroup = false\n')
    # choom: the OOM score the guard keeps on agents; the spec's wrapper alone does not set it.
    proc = child_tree(["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "choom", "-n", "500", "--"])
    result = kas("check", "--pid", str(proc.pid), "--json")
    data = json.loads(result.stdout)
    assert len(data["processes"]) == 2
    assert all(p["nice"] == 10 and p["ionice_class"] == "best-effort" for p in data["processes"])
    pid_check = next(c for c in data["checks"] if c["name"] == f"pid {proc.pid}")
    assert pid_check["status"] == "ok"


def test_check_pid_mismatch_exits_1_and_names_what_differs(kas, interactive, child_tree) -> None:
    proc = child_tree([])
    result = kas("check", "--pid", str(proc.pid))
    assert result.returncode == 1
    assert "nice is 0, profile wants 10" in result.stdout
    assert "I/O none, profile wants best-effort/7" in result.stdout


def test_check_pid_of_a_missing_process_fails(kas) -> None:
    result = kas("check", "--pid", "999999999", "--json")
    assert result.returncode == 1
    assert any("no such process" in c["detail"] for c in json.loads(result.stdout)["checks"])


def test_config_errors_in_spawn_are_one_line(kas, write_config) -> None:
    write_config('[resources]\nprofile = "interactive"\nnice = -1\n')
    assert_user_error(kas("spawn", "--dry-run", "--", "true"), "only ever lowers")


def test_macos_degrades_to_nice_only(interactive, monkeypatch) -> None:
    """macOS cannot run here, so the platform probe is swapped; everything else is real."""
    from click.testing import CliRunner

    from kas import platform as host
    from kas.cli import main

    monkeypatch.setattr(host, "system", lambda: "darwin")
    result = CliRunner().invoke(main, ["spawn", "--dry-run", "--json", "--", "make"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["argv"] == ["nice", "-n", "10", "make"]
    checked = CliRunner().invoke(main, ["check", "--json"])
    checks = {c["name"]: c for c in json.loads(checked.output)["checks"]}
    assert checks["ionice on PATH"]["status"] == "info" and "darwin" in checks["scheduler"]["detail"]
    assert checks["guard"]["status"] == "info" and "not followed" in checks["guard"]["detail"]
    dry = json.loads(CliRunner().invoke(main, ["spawn", "--dry-run", "--json", "--", "make"]).output)
    assert dry["guard"] is None  # no guard to start: the agent runs directly under kas
