"""Making lowered priority hold against other sessions: autogroup, cgroup scopes, check's verdict, bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from kas import platform as host
from kas.hostcheck import HostFacts, host_findings, verdict
from kas.launch.session import lower_group
from kas.resolver import autogroup_target, resolve
from tests.conftest import KAS
from tests.helpers import agent_argv, desktop_user_prefix, make_fifo, read_report, still_running

linux_autogroup = pytest.mark.skipif(not host.autogroup_enabled(), reason="kernel without autogroup")


def facts(**values) -> HostFacts:  # type: ignore[no-untyped-def]
    base = dict(
        platform="linux",
        autogroup=True,
        cgroup_version=2,
        own_cgroup="/",
        user_manager=False,
        io_scheduler="mq-deadline",
    )
    base.update(values)
    return HostFacts(**base)


def test_autogroup_target_follows_the_profile() -> None:
    assert autogroup_target(resolve({"profile": "interactive"})) == 19
    assert autogroup_target(resolve({"profile": "interactive", "autogroup": False})) == 0
    assert autogroup_target(resolve({"profile": "normal"})) == 0
    assert autogroup_target(resolve({"profile": "custom", "nice": 7, "autogroup": True})) == 7
    assert (
        autogroup_target(resolve({"profile": "custom", "nice": 7, "autogroup": True, "autogroup_nice": 12}))
        == 12
    )


@linux_autogroup
def test_a_failed_autogroup_write_is_a_warning_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A /proc where the autogroup file cannot be written stands in for a kernel or sandbox that refuses it.
    fake = tmp_path / "proc"
    (fake / "123" / "autogroup").mkdir(parents=True)
    monkeypatch.setattr(host, "PROC", fake)
    message = lower_group(123, 19)
    assert message is not None and "pid 123" in message
    # An agent that already ended has nothing left to lower: no warning.
    assert lower_group(999_999_999, 19) is None


@linux_autogroup
def test_the_agent_session_group_is_lowered_and_the_caller_group_is_not(
    kas, interactive, tmp_path: Path
) -> None:
    mine = host.read_autogroup(os.getpid())
    fifo = make_fifo(tmp_path / "a.fifo")
    row = json.loads(kas("spawn", "--detach", "--json", "--", *agent_argv(fifo, 30)).stdout)
    report = read_report(fifo)
    try:
        assert host.read_autogroup(report["pid"])[1] == 19
        assert host.read_autogroup(os.getpid()) == mine
        listed = json.loads(kas("instance", "list", "--json").stdout)[0]
        assert listed["live"][0]["autogroup_nice"] == 19
        assert " 19 " in kas("instance", "list").stdout
        check = json.loads(kas("check", "--pid", str(report["pid"]), "--json").stdout)
        assert next(c for c in check["checks"] if c["name"].startswith("pid "))["status"] == "ok"
    finally:
        kas("instance", "stop", "--grace", "1", row["id"])


# Each agent waits (at most 5 s) until its own session group is at nice 19, then reports.
WAIT_LOWERED = "until grep -q 'nice 19' /proc/$$/autogroup; do sleep 0.01; done"


@linux_autogroup
@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_every_agent_of_a_wave_is_lowered_despite_the_kernel_rate_limit(
    interactive, project: Path, mode: str, request
) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    task = f'command = ["timeout", "5", "sh", "-c", "{WAIT_LOWERED}"]'
    tasks = "".join(f'[[waves.tasks]]\nid = "t{i}"\n{task}\n' for i in range(4))
    plan = project / "plan.toml"
    plan.write_text(f'name = "burst"\n[resources]\nmax_parallel_wave_tasks = 0\n[[waves]]\n{tasks}')
    result = subprocess.run(
        [*desktop_user_prefix(), KAS, "wave", "run", "--yes", "--mode", mode, str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "autogroup" not in result.stderr


@linux_autogroup
def test_concurrent_detached_spawns_are_all_lowered_despite_the_kernel_rate_limit(
    interactive, project: Path, tmp_path: Path
) -> None:
    fifos = [make_fifo(tmp_path / f"ag{i}.fifo") for i in range(4)]
    spawns = [
        subprocess.Popen(
            [
                *desktop_user_prefix(),
                KAS,
                "spawn",
                "--detach",
                "--",
                "timeout",  # an agent never lowered ends by itself, and its report never comes
                "5",
                "sh",
                "-c",
                f'{WAIT_LOWERED}; echo "{{\\"pid\\": $$}}" > "$0"',
                str(fifo),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for fifo in fifos
    ]
    warnings = [proc.communicate(timeout=30)[1] for proc in spawns]
    assert [proc.returncode for proc in spawns] == [0] * 4, warnings
    assert not any("autogroup" in text for text in warnings), warnings
    for fifo in fifos:
        assert read_report(fifo, timeout=10)["pid"] > 0


def test_the_kernel_root_group_reads_as_such_and_a_write_there_says_why_it_fails() -> None:
    # init's session (pid 1) and anything that never called setsid() run in the root group, whose
    # /proc/<pid>/autogroup is empty; that is a fact to report, not an unreadable file.
    in_root = [pid for pid in (1, os.getpid()) if _autogroup_text(pid) == ""]
    if not in_root or not host.autogroup_enabled():
        pytest.skip("no process here runs in the kernel's root scheduling group")
    assert host.read_autogroup(in_root[0]) == host.ROOT_AUTOGROUP
    if os.geteuid() == 0:  # the kernel refuses to reweight the root group (EINVAL); nothing changes
        message = host.set_autogroup_nice(in_root[0], 19)
        assert message is not None and "root group" in message
        assert host.read_autogroup(in_root[0]) == host.ROOT_AUTOGROUP


def _autogroup_text(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "autogroup").read_text()
    except OSError:
        return None


def test_autogroup_off_runs_in_a_plain_session(kas, write_config, tmp_path: Path) -> None:
    write_config('[resources]\nprofile = "interactive"\nautogroup = false\n')
    fifo = make_fifo(tmp_path / "a.fifo")
    kas("spawn", "--detach", "--", *agent_argv(fifo, 0))
    report = read_report(fifo)
    group = host.read_autogroup(report["pid"])
    assert group is None or group[1] == 0 or not host.autogroup_enabled()


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in user manager: systemctl says running; systemd-run records its argv and runs the rest."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    record = tmp_path / "systemd-run.args"
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho running\n")
    (bin_dir / "systemd-run").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nwhile [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'
    )
    for tool in ("systemctl", "systemd-run"):
        (bin_dir / tool).chmod(0o755)
    runtime = tmp_path / "runtime"
    (runtime / "systemd").mkdir(parents=True)
    (runtime / "systemd" / "private").touch()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


def test_cgroup_auto_launches_through_a_systemd_scope_with_weights(
    kas, write_config, fake_systemd: Path, tmp_path: Path
) -> None:
    write_config('[resources]\nprofile = "interactive"\ncgroup = "auto"\n')
    dry = json.loads(kas("spawn", "--dry-run", "--json", "--", "make").stdout)
    assert dry["argv"][:9] == [
        "systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "-p",
        "CPUWeight=20",
        "-p",
        "IOWeight=20",
        "--",
    ]
    assert dry["argv"][9:] == ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "make"]
    fifo = make_fifo(tmp_path / "c.fifo")
    kas("spawn", "--detach", "--", *agent_argv(fifo, 0))
    report = read_report(fifo)
    recorded = fake_systemd.read_text().splitlines()
    assert recorded[:4] == ["--user", "--scope", "--quiet", "-p"] and "CPUWeight=20" in recorded
    assert report["nice"] == 10  # the agent's own niceness, as it read it
    assert report["env"]["KASMOS_RESOURCE_PROFILE"] == "interactive"
    verdict_row = next(
        c for c in json.loads(kas("check", "--json").stdout)["checks"] if c["name"] == "verdict"
    )
    assert verdict_row["status"] == "ok" and "systemd scope" in verdict_row["detail"]


def test_cgroup_auto_without_a_user_manager_falls_back_with_one_note(
    kas, write_config, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime"))
    write_config('[resources]\nprofile = "interactive"\ncgroup = "auto"\n')
    result = kas("spawn", "--dry-run", "--", "make")
    assert "argv:    nice -n 10" in result.stdout
    assert result.stderr.count("falls back to nice/autogroup") == 1


def test_verdict_for_each_kind_of_machine() -> None:
    interactive = resolve({"profile": "interactive"})
    nice_only = resolve({"profile": "interactive", "autogroup": False})
    assert verdict(facts(), interactive).status == "ok"
    bad = verdict(facts(), nice_only)
    assert bad.status == "fail" and "autogroup = true" in bad.detail
    assert verdict(facts(autogroup=False), nice_only).status == "ok"
    app_cgroup = verdict(facts(own_cgroup="/user.slice/app.slice/term.scope", user_manager=True), interactive)
    assert app_cgroup.status == "fail" and 'cgroup = "auto"' in app_cgroup.detail
    scoped = resolve({"profile": "interactive", "cgroup": "auto"})
    assert (
        verdict(facts(own_cgroup="/user.slice/app.slice/term.scope", user_manager=True), scoped).status
        == "ok"
    )
    assert verdict(facts(), resolve(None)).status == "warn"
    darwin = host_findings(facts(platform="darwin"), interactive)
    assert [(f.name, f.status) for f in darwin] == [
        ("scheduler", "info"),
        ("guard", "info"),
        ("verdict", "ok"),
    ]


def test_check_tells_the_truth_about_this_machine(kas, write_config) -> None:
    write_config('[resources]\nprofile = "interactive"\nautogroup = false\n')
    checks = {c["name"]: c for c in json.loads(kas("check", "--json").stdout)["checks"]}
    for name in ("autogroup", "cgroup", "I/O scheduler", "verdict"):
        assert name in checks
    if host.autogroup_enabled():
        assert checks["autogroup"]["detail"].startswith("on")
        assert checks["verdict"]["status"] == "fail"
        assert kas("check").returncode == 1


def bench_agents() -> list[psutil.Process]:
    """This test's bench agents (others may run benches too: their environment names another tmux
    socket); not their guards, whose command line ends with the agent's."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmdline = proc.info["cmdline"] or []
        own = (proc.info["environ"] or {}).get("KAS_TMUX_SOCKET") == os.environ["KAS_TMUX_SOCKET"]
        guard = any(arg.endswith("guard.py") for arg in cmdline)
        if own and not guard and "while True: pass" in " ".join(cmdline):
            found.append(proc)
    return found


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_bench_reports_every_case_and_cleans_up(kas, interactive, mode: str, request) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    result = kas("bench", "responsiveness", "--agents", "2", "--frames", "10", "--mode", mode, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [c["case"] for c in data["cases"]] == [
        "no load",
        "normal",
        "nice/ionice only",
        "profile: interactive",
        "profile: interactive, hogs setsid",
        "profile: interactive, hogs setsid, no guard",
        "profile: interactive + reserve_cpus auto",
        "profile: interactive + sched_policy idle",
        "profile: interactive + both",
    ]
    for case in data["cases"]:
        assert case["frames"] == 10 and case["late_p50_ms"] > 0 and case["late_p99_ms"] >= case["late_p50_ms"]
        assert case["late_p50_ms"] >= case["work_p50_ms"] > 0  # lateness includes the work
        assert case["agent_cpu_s"] >= 0 and (case["agents"] > 0 or case["agent_cpu_s"] == 0)
    # Unthrottled agents always get CPU; lowered ones may get none in 10 frames on a busy machine.
    assert next(c for c in data["cases"] if c["case"] == "normal")["agent_cpu_s"] > 0
    assert still_running(p.pid for p in bench_agents()) == []  # SIGKILLed: give them a moment to exit
    assert not list(Path(os.environ["KAS_STATE_DIR"]).glob("status/bench-*"))  # nor their status files
    table = kas("bench", "responsiveness", "--agents", "1", "--frames", "10", "--mode", mode).stdout
    assert "LATE P99 ms" in table and "nice/ionice only" in table


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_bench_stops_its_agents_when_interrupted(interactive, project: Path, sig: int) -> None:
    proc = subprocess.Popen([KAS, "bench", "responsiveness", "--agents", "2", "--frames", "300"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "normal" in line:  # the first case with agents has begun
            break
    agents: list[psutil.Process] = []
    while len(agents) < 2:
        psutil.wait_procs([psutil.Process(proc.pid)], timeout=0.05)
        agents = bench_agents()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    _gone, alive = psutil.wait_procs(agents, timeout=5)
    assert alive == []


def test_cgroup_systemd_without_a_user_manager_is_not_called_a_scope_by_check() -> None:
    prof = resolve({"profile": "interactive", "cgroup": "systemd"})
    assert (
        verdict(facts(user_manager=False), prof).detail
        != "agents run in a low-weight systemd scope: holds against other apps"
    )
    assert "systemd scope" in verdict(facts(user_manager=True), prof).detail


def test_disk_bench_reports_every_case_and_leaves_no_file(kas, interactive, project: Path) -> None:
    result = kas("bench", "disk", "--agents", "1", "--samples", "10", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [c["case"] for c in data["cases"]] == [
        "no load",
        "normal",
        "profile: interactive",
        "profile: interactive + ionice idle",
    ]
    for case in data["cases"]:
        assert case["samples"] == 10 and 0 < case["write_p50_ms"] <= case["write_p99_ms"]
        assert 0 < case["read_p50_ms"] <= case["read_p99_ms"]
    assert next(c for c in data["cases"] if c["case"] == "normal")["agent_write_mb_s"] > 0  # the agents wrote
    assert not list(project.glob("kas-disk-*"))  # every file the bench wrote is gone
    writers = [
        p.pid for p in psutil.process_iter(["cmdline"]) if str(project) in " ".join(p.info["cmdline"] or [])
    ]
    assert still_running(writers) == []  # and every writer


def test_an_early_interrupted_disk_bench_leaves_no_file(kas, interactive, project: Path) -> None:
    import signal as signals

    bench = subprocess.Popen([KAS, "bench", "disk", "--agents", "1", "--samples", "10"], cwd=project,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 10
    while not list(project.glob("kas-disk-*-fg-read.bin")):  # interrupted while it writes its first file
        assert time.monotonic() < deadline and bench.poll() is None
        time.sleep(0.01)
    bench.send_signal(signals.SIGTERM)
    assert bench.wait(timeout=30) == 130
    assert not list(project.glob("kas-disk-*"))
