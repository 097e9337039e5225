"""Facts about this machine that decide whether lowered priority actually holds.

Each probe is cheap, reads only ``/proc``/``/sys`` or PATH, and never raises: an unreadable fact is ``None``.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def which(name: str) -> str | None:
    """Where ``name`` is on the current PATH; passed to the pure resolver so tests can swap it."""
    return _which(name, os.environ.get("PATH", os.defpath))


def which_on(name: str, path: str) -> str | None:
    """``name`` looked up on ``path`` (an agent's PATH, not necessarily kas's own)."""
    return _which(name, path)


@functools.lru_cache(maxsize=64)
def _which(name: str, path: str) -> str | None:
    # A wave prepares every task; looking nice/ionice up once per PATH is enough. Not shutil.which: that
    # module pulls in the compression libraries, which `kas profile show` would load for one lookup.
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def system() -> str:
    """``linux``, ``darwin``, ...: the resolver only needs to know whether ionice applies."""
    return sys.platform


def autogroup_enabled() -> bool | None:
    """Whether the kernel groups CPU time per session (then plain nice only ranks inside a session)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


ROOT_AUTOGROUP = ("/", 0)
"""Where a process of a session that never called setsid() (init's, say) is scheduled: the kernel's root
group, which has no autogroup of its own (``/proc/<pid>/autogroup`` is empty) and a fixed weight of nice 0."""

AUTOGROUP_SPACING = 0.105
"""The kernel lets a process without CAP_SYS_ADMIN (every desktop user) change an autogroup nice once per
100 ms, system-wide; any other write in that window fails with EAGAIN. A little over, for jiffy rounding."""

_autogroup_lock = threading.Lock()
_last_autogroup_write = -AUTOGROUP_SPACING


def cpus() -> list[int]:
    """The CPUs this process may run on (where affinity is unknown: all of them)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def read_autogroup(pid: int) -> tuple[str, int] | None:
    """The autogroup name and nice of a process, e.g. ``("/autogroup-42", 10)``, or ``ROOT_AUTOGROUP``."""
    try:
        text = (PROC / str(pid) / "autogroup").read_text().split()
    except OSError:
        return None
    if not text:
        return ROOT_AUTOGROUP
    try:
        return text[0], int(text[2])
    except (IndexError, ValueError):
        return None


def set_autogroup_nice(pid: int, nice: int, patience: float = 3.0) -> str | None:
    """Lower the whole session group's share of CPU; return an error text instead of raising.

    A write refused by the kernel's rate limit is retried: without that, a wave that starts four agents at
    once as a normal user would lower the first one's group only. Calls are serialised in this process so
    that they queue instead of racing; ``patience`` bounds the wait for one write.
    """
    global _last_autogroup_write
    target = PROC / str(pid) / "autogroup"
    group = read_autogroup(pid)
    if group is not None and group != ROOT_AUTOGROUP and group[1] == nice:
        return None  # already there (the agent's guard lowered it first): a write would only spend the
        # system-wide rate limit (one change per 100 ms for a normal user) that others are waiting for
    with _autogroup_lock:
        deadline = time.monotonic() + patience
        while True:
            try:
                target.write_text(str(nice))
            except (FileNotFoundError, ProcessLookupError):
                if not (PROC / str(pid)).exists():
                    return None  # the agent already ended: nothing left to lower
                return f"cannot set autogroup nice of pid {pid}: this kernel has no /proc/<pid>/autogroup"
            except OSError as exc:
                # Checked first: the root group refuses every write, with EINVAL or (unprivileged) EAGAIN.
                if read_autogroup(pid) == ROOT_AUTOGROUP:
                    return (
                        f"cannot set autogroup nice of pid {pid}: it runs in the kernel's root group "
                        "(a session that never called setsid), whose weight is fixed"
                    )
                if not isinstance(exc, BlockingIOError):
                    return f"cannot set autogroup nice of pid {pid}: {exc.strerror or exc}"
                if time.monotonic() >= deadline:
                    return (
                        f"cannot set autogroup nice of pid {pid}: the kernel allows one change per 100 ms "
                        f"and other processes kept it busy for {patience:g} s"
                    )
                # Our own last write tells when the window reopens; otherwise try again shortly.
                time.sleep(max(0.02, _last_autogroup_write + AUTOGROUP_SPACING - time.monotonic()))
                continue
            _last_autogroup_write = time.monotonic()
            return None


def cgroup_version() -> int | None:
    """2 for the unified hierarchy, 1 for legacy/hybrid, None off Linux."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return 2
    if root.is_dir():
        return 1
    return None


def read_cgroup(pid: int) -> str | None:
    """The unified (v2) cgroup path of a process, or None if not on v2."""
    try:
        for line in (PROC / str(pid) / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    except OSError:
        return None
    return None


@functools.lru_cache(maxsize=1)
def user_manager_answers() -> bool:
    """Whether ``systemd-run --user`` can reach a systemd user manager (needs its bus socket)."""
    import subprocess

    if not which("systemctl"):
        return False
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    if not (Path(runtime) / "systemd" / "private").exists() and not (Path(runtime) / "bus").exists():
        return False
    try:
        done = subprocess.run(
            ["systemctl", "--user", "is-system-running"], capture_output=True, text=True, timeout=3
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() in ("running", "degraded", "starting")


def io_scheduler(path: Path) -> str | None:
    """The active I/O scheduler of the disk holding ``path`` (``none`` means ionice has no effect)."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for candidate in (sys_dev, sys_dev.parent if sys_dev.exists() else None):
        if candidate is None:
            continue
        queue = candidate.resolve() / "queue" / "scheduler"
        if not queue.exists():
            queue = candidate.resolve().parent / "queue" / "scheduler"
        try:
            text = queue.read_text()
        except OSError:
            continue
        for word in text.split():
            if word.startswith("["):
                return word.strip("[]")
        return text.strip() or None
    return None
