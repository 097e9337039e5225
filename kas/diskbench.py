"""``kas bench disk``: does a foreground's small synced I/O stay quick while agents write large files?

The foreground does what a game saving or a call recording does: every 50 ms a 4 KiB write followed by
fsync, and a 4 KiB read the page cache cannot answer (O_DIRECT, at a random place in a file of its own).
Agents, started through kas's launchers like real ones, write large files with O_DIRECT (so the page
cache and the writeback of cgroup v1 cannot hide them; buffered where the filesystem refuses O_DIRECT).
Cases: no load, no controls (normal), the profile, and the profile with the idle I/O class. What the
I/O classes do depends on the disk's scheduler: ``kas check`` names it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kas.bench import Agents, running
from kas.errors import LaunchError
from kas.resolver import ResolvedProfile, resolve

BLOCK = 4096
READ_FILE = 64 << 20
PERIOD = 0.05
# Each agent rewrites 256 MiB of its own file in 1 MiB direct writes until it is stopped.
WRITER_CODE = """
import mmap, os, sys
path = os.path.join(sys.argv[1], f"{sys.argv[2]}-{os.getpid()}.bin")
block = 1 << 20
buf = mmap.mmap(-1, block)
buf.write(b"k" * block)
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
except OSError:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
offset = 0
while True:
    os.pwrite(fd, buf, offset)
    offset = (offset + block) % (256 << 20)
"""


@dataclass(frozen=True)
class DiskResult:
    case: str
    agents: int
    write_p50_ms: float
    write_p99_ms: float
    read_p50_ms: float
    read_p99_ms: float
    samples: int
    agent_write_mb_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Foreground:
    """The foreground's two files: one it writes and syncs, one it reads around the page cache."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.write_path = directory / f"{prefix}-fg-write.bin"
        self.read_path = directory / f"{prefix}-fg-read.bin"
        self.direct = True
        try:
            block = b"f" * (1 << 20)
            with open(self.read_path, "wb") as out:
                for _ in range(READ_FILE >> 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            self.buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
            try:
                self.read_fd = os.open(self.read_path, os.O_RDONLY | os.O_DIRECT)
            except OSError:  # tmpfs and some others: the page cache answers, no disk is measured
                self.direct = False
                self.read_fd = os.open(self.read_path, os.O_RDONLY)
            self.write_fd = os.open(self.write_path, os.O_WRONLY | os.O_CREAT, 0o600)
        except BaseException:  # a full disk, Ctrl-C while the file is written: nothing stays behind
            for path in (self.read_path, self.write_path):
                path.unlink(missing_ok=True)
            raise

    def measure(self, samples: int) -> tuple[list[float], list[float]]:
        writes, reads = [], []
        payload = os.urandom(BLOCK)
        slot = time.monotonic()
        for index in range(samples):
            slot += PERIOD
            start = time.perf_counter()
            os.pwrite(self.write_fd, payload, (index % 256) * BLOCK)
            os.fsync(self.write_fd)
            middle = time.perf_counter()
            offset = random.randrange(READ_FILE // BLOCK) * BLOCK
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.read_fd, offset, BLOCK, os.POSIX_FADV_DONTNEED)
            os.preadv(self.read_fd, [self.buf], offset)
            end = time.perf_counter()
            writes.append((middle - start) * 1000)
            reads.append((end - middle) * 1000)
            time.sleep(max(0.0, slot - time.monotonic()))
        return writes, reads

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)
        for path in (self.read_path, self.write_path):
            path.unlink(missing_ok=True)


def disk_cases(resolved: ResolvedProfile) -> list[tuple[str, ResolvedProfile]]:
    base = resolved if resolved.active else resolve({"profile": "interactive"})
    idle = base.with_settings(ionice_class="idle", ionice_level=0)
    return [("normal", resolve({"profile": "normal"})), (f"profile: {base.name}", base),
            (f"profile: {base.name} + ionice idle", idle)]  # fmt: skip


def _written(agents: Agents) -> int:
    import psutil

    total = 0
    for handle in agents.handles:
        with contextlib.suppress(psutil.Error, AttributeError):
            total += psutil.Process(handle.pid).io_counters().write_bytes
    return total


def run_disk_bench(
    resolved: ResolvedProfile,
    *,
    agents: int,
    samples: int,
    directory: Path,
    mode: str,
    tmux_socket: str | None,
    progress: Callable[[str], None] = lambda _: None,
    warn: Callable[[str], None] = lambda _: None,
) -> list[DiskResult]:
    """Every case in turn; the agents and every file the bench wrote are removed afterwards."""
    prefix = f"kas-disk-{os.getpid()}"
    needed = READ_FILE + agents * (256 << 20)
    free = shutil.disk_usage(directory).free
    if free < needed * 1.1:
        raise LaunchError(
            f"{directory}: {free >> 20} MiB free, the disk bench needs about {needed >> 20} MiB; use --dir "
            "elsewhere or fewer --agents"
        )
    foreground = Foreground(directory, prefix)
    if not foreground.direct:
        warn(f"{directory}: no O_DIRECT here (tmpfs?): the page cache answers, so no disk is measured")
    results = []
    try:
        progress("no load")
        writes, reads = foreground.measure(samples)
        results.append(_result("no load", 0, writes, reads, 0.0))
        for label, prof in disk_cases(resolved):
            progress(label)
            group = Agents(prof, agents, mode, tmux_socket, warn, WRITER_CODE, args=(str(directory), prefix))
            with running(group):
                time.sleep(0.5)  # the writers fill the queue
                before, began = _written(group), time.monotonic()
                writes, reads = foreground.measure(samples)
                rate = (_written(group) - before) / (time.monotonic() - began) / 1e6
            if rate < 1:
                warn(f"{label}: the agents wrote almost nothing ({rate:.1f} MB/s): is the disk full?")
            results.append(_result(label, agents, writes, reads, rate))
    finally:
        foreground.close()
        for leftover in directory.glob(f"{prefix}-*.bin"):
            leftover.unlink(missing_ok=True)
    return results


def _result(case: str, agents: int, writes: list[float], reads: list[float], rate: float) -> DiskResult:
    return DiskResult(
        case,
        agents,
        round(statistics.median(writes), 2),
        round(_percentile(writes, 0.99), 2),
        round(statistics.median(reads), 2),
        round(_percentile(reads, 0.99), 2),
        len(writes),
        round(rate, 1),
    )
