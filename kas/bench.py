"""``kas bench responsiveness``: does a foreground "game" keep its frames while agents run?

A foreground loop does a fixed slice of CPU work per 60 Hz frame, first alone, then against N CPU-bound
agents that kas itself launches (each in its own session, as real agents are) under three settings:
no controls (``normal``), nice/ionice only (what the spec describes), and the resolved profile. For each
case it reports frame time percentiles, missed frames, and the CPU seconds the agents got, so that
protecting the desktop by starving the agents would show as a cost.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kas import platform as host
from kas.launch.base import Handle, LaunchSpec
from kas.launch.modes import launcher_for
from kas.launch.prepare import prepare
from kas.launch.session import autogroup_here, lower_group
from kas.launch.tree import guard_rules
from kas.resolver import ResolvedProfile, resolve

FRAME = 1 / 60
AGENT_CODE = "while True: pass"
BENCH_SESSION = "kas-bench"


@dataclass(frozen=True)
class CaseResult:
    case: str
    agents: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    missed: int
    frames: int
    agent_cpu_s: float

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


def frame_loop(frames: int, iterations: int) -> tuple[list[float], int]:
    """Run ``frames`` frames at 60 Hz. Returns each frame's work time, and how many frames missed their slot.

    Work time is what the frame's fixed CPU work took on the wall clock (it grows when agents take the CPU
    away mid-frame). A frame is missed when its work ends after its 16.7 ms slot, wake-up delay included.
    """
    times = []
    missed = 0
    slot = time.perf_counter() + FRAME
    for _ in range(frames):
        delay = slot - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        _spin(iterations)
        end = time.perf_counter()
        times.append(end - start)
        if end > slot + FRAME:
            missed += 1
            slot = end  # resync: a late frame does not make the next ones late too
        slot += FRAME
    return times, missed


def summarize(case: str, agents: int, measured: tuple[list[float], int], cpu: float) -> CaseResult:
    times, missed = measured
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return CaseResult(
        case,
        agents,
        round(statistics.median(ms), 2),
        round(p99, 2),
        round(ms[-1], 2),
        missed,
        len(ms),
        round(cpu, 2),
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
    ) -> None:
        self.resolved = resolved
        self.count = count
        self.launcher = launcher_for(mode, tmux_socket=tmux_socket, tmux_session=BENCH_SESSION)
        self.handles: list[Handle] = []
        self.warn = warn

    def start(self) -> None:
        prepared = prepare(self.resolved, [sys.executable, "-c", AGENT_CODE], os.environ)
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
                guard=guard_rules(self.resolved, nice, host.system()),
            )
            handle = self.launcher.start(spec)
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
        for handle in self.handles:
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


def cases(resolved: ResolvedProfile) -> list[tuple[str, ResolvedProfile]]:
    """normal, the spec's nice/ionice only (autogroup off), and the profile as configured."""
    normal = resolve({"profile": "normal"})
    base = resolved if resolved.active else resolve({"profile": "interactive"})
    nice_only = base.with_settings(autogroup=False, cgroup="off")
    return [("normal", normal), ("nice/ionice only", nice_only), (f"profile: {base.name}", base)]


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
        for label, prof in cases(resolved):
            progress(label)
            with running(Agents(prof, agents, mode, tmux_socket, warn)) as group:
                time.sleep(0.2)  # let the agents get going before the first frame
                cpu_before = group.cpu_seconds()
                measured = frame_loop(frames, iterations)
                cpu = group.cpu_seconds() - cpu_before
            results.append(summarize(label, agents, measured, cpu))
    finally:
        # Once, at the end: a tmux server whose last session closes between cases exits, and a case
        # starting right then could ask the dying server for its session.
        launcher.release()
    return results
