"""``kas bench responsiveness``: does a foreground "game" keep its frames while agents run?

A foreground loop does a fixed slice of CPU work per 60 Hz frame, first alone, then against N CPU-bound
agents that kas itself launches (each in its own session, as real agents are) under several settings:
no controls (``normal``), nice/ionice only (what the spec describes), the resolved profile, and the
profile with agents whose CPU hogs escape into sessions of their own (``setsid``, as build servers do),
which only the guard brings back down. For each case it reports frame *lateness* (from the frame's slot
to the end of its work, wake-up delay included: what a player feels), the work time alone, missed frames,
and the CPU seconds the agents got, so that protecting the desktop by starving the agents would show.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from kas import platform as host
from kas.launch.base import Handle, LaunchSpec
from kas.launch.modes import launcher_for
from kas.launch.prepare import prepare
from kas.launch.session import autogroup_here, lower_group
from kas.launch.tree import guard_rules
from kas.resolver import ResolvedProfile, resolve

FRAME = 1 / 60
AGENT_CODE = "while True: pass"
# The agent stays (waiting), its child leaves for a session of its own and burns the CPU there.
# It dies with the agent (PR_SET_PDEATHSIG), so even the unguarded case leaves no burner after a kill -9.
ESCAPING_CODE = (
    "import ctypes,os,signal,sys\nif os.fork():\n    os.wait()\n    sys.exit()\nos.setsid()\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\nwhile True: pass"
)
ESCAPE_PATIENCE = 3.0  # seconds the bench waits for the guard to lower the escaped hogs' sessions
BENCH_SESSION = "kas-bench"


@dataclass(frozen=True)
class CaseResult:
    case: str
    agents: int
    late_p50_ms: float  # lateness: from the frame's slot to the end of its work
    late_p99_ms: float
    late_max_ms: float
    missed: int
    frames: int
    agent_cpu_s: float
    machine_share: float = 0.0  # the agents' CPU time as a share of the whole machine's over the case
    work_p50_ms: float = 0.0  # the frame's work alone, wake-up delay left out
    work_p99_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(work_ms: float) -> int:
    """Loop iterations that take ``work_ms`` here, from the fastest of several undisturbed runs."""
    n = 20000
    while True:
        best = min(_timed(n) for _ in range(5))
        if best > 0.01:
            return max(1, int(n * (work_ms / 1000) / best))
        n *= 2


def _timed(n: int) -> float:
    start = time.perf_counter()
    _spin(n)
    return time.perf_counter() - start


def _spin(n: int) -> int:
    acc = 0
    for i in range(n):
        acc ^= i
    return acc


class Frames(list[tuple[float, float]]):
    """(lateness, work time) of each frame, in seconds, and how many frames missed their slot."""

    missed: int = 0


def frame_loop(frames: int, iterations: int) -> Frames:
    """Run ``frames`` frames at 60 Hz.

    Lateness is from the frame's slot (when it should start) to the end of its work: the wake-up delay
    (the loop waits its turn for a CPU) plus the work, which grows when agents take the CPU mid-frame.
    A frame is missed when its work ends after the next slot.
    """
    measured = Frames()
    slot = time.perf_counter() + FRAME
    for _ in range(frames):
        delay = slot - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        _spin(iterations)
        end = time.perf_counter()
        measured.append((end - slot, end - start))
        if end > slot + FRAME:
            measured.missed += 1
            slot = end  # resync: a late frame does not make the next ones late too
        slot += FRAME
    return measured


def _percentile(ms: list[float], share: float) -> float:
    return ms[min(len(ms) - 1, round(share * (len(ms) - 1)))]


def summarize(case: str, agents: int, measured: Frames, cpu: float) -> CaseResult:
    late = sorted(lateness * 1000 for lateness, _ in measured)
    work = sorted(spent * 1000 for _, spent in measured)
    return CaseResult(
        case,
        agents,
        late_p50_ms=round(statistics.median(late), 2),
        late_p99_ms=round(_percentile(late, 0.99), 2),
        late_max_ms=round(late[-1], 2),
        missed=measured.missed,
        frames=len(late),
        agent_cpu_s=round(cpu, 2),
        work_p50_ms=round(statistics.median(work), 2),
        work_p99_ms=round(_percentile(work, 0.99), 2),
    )


class Agents:
    """CPU-bound stand-in agents started through kas's own launchers; always cleaned up."""

    def __init__(
        self,
        resolved: ResolvedProfile,
        count: int,
        mode: str,
        tmux_socket: str | None,
        warn: Callable[[str], None] = lambda _: None,
        code: str = AGENT_CODE,
        guarded: bool = True,
        args: tuple[str, ...] = (),
    ) -> None:
        self.code = code
        self.args = args
        self.guarded = guarded
        self.resolved = resolved
        self.count = count
        self.launcher = launcher_for(mode, tmux_socket=tmux_socket, tmux_session=BENCH_SESSION)
        self.handles: list[Handle] = []
        self.warn = warn

    def start(self) -> None:
        prepared = prepare(self.resolved, [sys.executable, "-c", self.code, *self.args], os.environ)
        for message in prepared.warnings:
            self.warn(message)
        nice = autogroup_here(self.resolved)
        for index in range(self.count):
            spec = LaunchSpec(
                f"bench-{os.getpid()}-{index}",
                f"agent{index}",
                prepared,
                Path.cwd(),
                prepared.full_env(os.environ),
                autogroup_nice=nice,
                dies_with_caller=True,  # a killed bench must not leave CPU burners behind
                guard=guard_rules(self.resolved, nice, host.system()) if self.guarded else None,
            )
            handle = self.launcher.start(spec)
            handle.ready()
            self.handles.append(handle)
            problem = lower_group(handle.pid, nice)
            if problem:
                self.warn(problem)

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for handle in self.handles:
            try:
                proc = psutil.Process(handle.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except (psutil.Error, ValueError):
                continue
        return total

    def stop(self) -> None:
        import psutil

        for handle in self.handles:
            with contextlib.suppress(psutil.Error):  # unguarded hogs that left the agent's group, too
                for proc in psutil.Process(handle.pid).children(recursive=True):
                    proc.kill()
            handle.signal(signal.SIGKILL)
        for handle in self.handles:
            handle.stop(0.0)  # bounded: waits a moment for the end the SIGKILL above brings
            for path in handle.discard():
                path.unlink(missing_ok=True)


@contextmanager
def running(agents: Agents) -> Iterator[Agents]:
    try:
        agents.start()
        yield agents
    finally:
        agents.stop()


def wait_escapes_lowered(agents: Agents, target: int, patience: float = ESCAPE_PATIENCE) -> None:
    """Wait (briefly) until every hog's session group is at ``target``: the guard's steady state."""
    import psutil

    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        groups = set()
        for handle in agents.handles:
            with contextlib.suppress(psutil.Error):
                for proc in psutil.Process(handle.pid).children(recursive=True):
                    group = host.read_autogroup(proc.pid)
                    groups.add(group[1] if group else None)
        if groups == {target}:
            return
        time.sleep(0.05)


class Case(NamedTuple):
    label: str
    resolved: ResolvedProfile
    code: str = AGENT_CODE
    guarded: bool = True


def cases(resolved: ResolvedProfile) -> list[Case]:
    """normal, the spec's nice/ionice only (autogroup off), the profile as configured, and (where a guard
    keeps the tree: Linux) the profile against hogs that escape into sessions of their own."""
    normal = resolve({"profile": "normal"})
    base = resolved if resolved.active else resolve({"profile": "interactive"})
    nice_only = base.with_settings(autogroup=False, cgroup="off")
    chosen = [
        Case("normal", normal),
        Case("nice/ionice only", nice_only),
        Case(f"profile: {base.name}", base),
    ]
    if host.system().startswith("linux"):
        chosen.append(Case(f"profile: {base.name}, hogs setsid", base, ESCAPING_CODE))
        chosen.append(Case(f"profile: {base.name}, hogs setsid, no guard", base, ESCAPING_CODE, False))
        # The levers that are in no preset, one at a time and together, so one run gives the trade-off.
        if len(host.cpus()) > 1 and base.settings.reserve_cpus in (0, "auto"):
            chosen.append(
                Case(f"profile: {base.name} + reserve_cpus auto", base.with_settings(reserve_cpus="auto"))
            )
        if base.settings.sched_policy != "idle":
            chosen.append(
                Case(f"profile: {base.name} + sched_policy idle", base.with_settings(sched_policy="idle"))
            )
        if len(host.cpus()) > 1 and base.settings.sched_policy != "idle":
            both = base.with_settings(reserve_cpus="auto", sched_policy="idle")
            chosen.append(Case(f"profile: {base.name} + both", both))
    return chosen


def run_bench(
    resolved: ResolvedProfile,
    *,
    agents: int,
    frames: int,
    mode: str,
    tmux_socket: str | None,
    work_ms: float = 4.0,
    progress: Callable[[str], None] = lambda _: None,
    warn: Callable[[str], None] = lambda _: None,
) -> list[CaseResult]:
    """Run every case in turn; agents are stopped after each case (and on Ctrl-C)."""
    iterations = calibrate(work_ms)
    progress("no load")
    results = [summarize("no load", 0, frame_loop(frames, iterations), 0.0)]
    launcher = launcher_for(mode, tmux_socket=tmux_socket, tmux_session=BENCH_SESSION)
    try:
        for label, prof, code, guarded in cases(resolved):
            progress(label)
            with running(Agents(prof, agents, mode, tmux_socket, warn, code, guarded)) as group:
                time.sleep(0.2)  # let the agents get going before the first frame
                if code == ESCAPING_CODE and guarded and autogroup_here(prof):
                    wait_escapes_lowered(group, autogroup_here(prof))
                cpu_before = group.cpu_seconds()
                began = time.monotonic()
                measured = frame_loop(frames, iterations)
                cpu = group.cpu_seconds() - cpu_before
                capacity = (time.monotonic() - began) * len(host.cpus())
            result = summarize(label, agents, measured, cpu)
            results.append(replace(result, machine_share=round(cpu / capacity, 3)) if capacity else result)
    finally:
        # Once, at the end: a tmux server whose last session closes between cases exits, and a case
        # starting right then could ask the dying server for its session.
        launcher.release()
    return results
