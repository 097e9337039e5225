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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kas.launch import sdk
from kas.launch.prepare import prepare
from kas.launch.session import lower_agent_group
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
    """CPU-bound stand-in agents started through kas's own launch path; always cleaned up."""

    def __init__(self, resolved: ResolvedProfile, count: int, mode: str, tmux_socket: str | None) -> None:
        self.resolved = resolved
        self.count = count
        self.mode = mode
        self.socket = tmux_socket
        self.pids: list[int] = []
        self.panes: list[str] = []

    def start(self) -> None:
        prepared = prepare(self.resolved, [sys.executable, "-c", AGENT_CODE], os.environ)
        for index in range(self.count):
            if self.mode == "tmux":
                from kas.launch import tmux

                info = tmux.start(
                    self.tmux_id(index),
                    prepared.argv,
                    prepared.env,
                    Path.cwd(),
                    socket=self.socket,
                    session_name=BENCH_SESSION,
                    window_name=f"agent{index}",
                    prefix_len=len(prepared.prefix),
                )
                assert info.pid is not None
                pid = info.pid
                self.panes.append(info.pane_id)
            else:
                env = prepared.full_env(os.environ)
                devnull = subprocess.DEVNULL
                pid = sdk.start(
                    prepared.argv, env, Path.cwd(), stdin=devnull, stdout=devnull, stderr=devnull
                ).pid
            self.pids.append(pid)
            lower_agent_group(self.resolved, pid)

    def tmux_id(self, index: int) -> str:
        """The instance id a bench agent's tmux pane records its exit status under."""
        return f"bench-{os.getpid()}-{index}"

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def stop(self) -> None:
        import psutil

        for pid in self.pids:
            sdk.signal_group(pid, signal.SIGKILL)
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                if proc.ppid() == os.getpid():
                    proc.wait(timeout=5)
            except psutil.Error:
                continue
        if self.panes:
            from kas.launch import tmux

            subprocess.run(
                [*tmux.tmux_argv(self.socket), "kill-session", "-t", BENCH_SESSION], capture_output=True
            )
            for index in range(len(self.panes)):
                tmux.status_path(self.tmux_id(index)).unlink(missing_ok=True)


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
    nice_only = replace(base, settings={**base.settings, "autogroup": False, "cgroup": "off"})
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
) -> list[CaseResult]:
    """Run every case in turn; agents are stopped after each case (and on Ctrl-C)."""
    iterations = calibrate(work_ms)
    progress("no load")
    results = [summarize("no load", 0, frame_loop(frames, iterations), 0.0)]
    for label, prof in cases(resolved):
        progress(label)
        with running(Agents(prof, agents, mode, tmux_socket)) as group:
            time.sleep(0.2)  # let the agents get going before the first frame
            cpu_before = group.cpu_seconds()
            measured = frame_loop(frames, iterations)
            cpu = group.cpu_seconds() - cpu_before
        results.append(summarize(label, agents, measured, cpu))
    return results
