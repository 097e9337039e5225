"""Live facts about a process tree, read from the kernel (psutil and /proc), never from what kas stored.

psutil is imported inside the functions: ``kas --help`` and ``kas profile show`` must not pay for it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from kas import platform as host
from kas.resolver import ResolvedProfile

IOCLASS_NAMES = {0: "none", 1: "realtime", 2: "best-effort", 3: "idle"}
POLICIES = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}
POLICY_RANK = {"fifo": -1, "rr": -1, "deadline": -1, "normal": 0, "batch": 1, "idle": 2}


@dataclass
class ProcFacts:
    """What the kernel says about one process of an agent's tree."""

    pid: int
    name: str
    nice: int | None
    ionice_class: str | None
    ionice_level: int | None
    autogroup_nice: int | None = None
    cgroup: str | None = None
    problems: list[str] = field(default_factory=list)  # a higher priority than its profile allows
    notes: list[str] = field(default_factory=list)  # kept lower than its profile asks: reported, not failed
    ppid: int | None = None
    session: int | None = None
    policy: str | None = None  # scheduling policy: normal, batch, idle (others as the kernel numbers them)
    oom_score_adj: int | None = None
    cpus: list[int] | None = None  # CPU affinity
    # What sets it apart in the agent's tree: "own session" (it left the agent's session: setsid),
    # "daemon" (its parent ended and the guard took it in), "lowered" (the guard lowered its session).
    marks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def io(self) -> str:
        """Short I/O label as ``ionice -p`` would think of it: ``be/7``, ``idle``, ``none``."""
        if self.ionice_class is None:
            return "-"
        if self.ionice_class == "best-effort":
            return f"be/{self.ionice_level}"
        return self.ionice_class


def read_process(proc: Any) -> ProcFacts:
    """Read niceness, I/O class/level, autogroup and cgroup of a ``psutil.Process``."""
    import psutil

    with proc.oneshot():
        name = proc.name()
        nice = proc.nice()
        ppid = proc.ppid()
    try:
        session: int | None = os.getsid(proc.pid)
    except OSError:
        session = None
    policy: str | None = None
    cpus: list[int] | None = None
    with contextlib.suppress(OSError, AttributeError, psutil.Error):
        number = os.sched_getscheduler(proc.pid)
        policy = POLICIES.get(number, str(number))
        cpus = sorted(proc.cpu_affinity())
    io_class: str | None = None
    io_level: int | None = None
    if hasattr(proc, "ionice"):
        try:
            io = proc.ionice()
            io_class = IOCLASS_NAMES.get(int(io.ioclass), str(io.ioclass))
            io_level = int(io.value)
        except (psutil.AccessDenied, OSError):
            pass
    group = host.read_autogroup(proc.pid)
    return ProcFacts(
        proc.pid,
        name,
        nice,
        io_class,
        io_level,
        autogroup_nice=group[1] if group else None,
        cgroup=host.read_cgroup(proc.pid),
        ppid=ppid,
        session=session,
        policy=policy,
        cpus=cpus,
        oom_score_adj=_oom(proc.pid),
    )


def _oom(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def process_root(pid: int, create_time: float | None) -> list[ProcFacts]:
    """Facts for ``pid`` alone (a list's row), empty if it is gone or the pid was recycled."""
    import psutil

    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 0.05:
            return []
        return [read_process(root)]
    except psutil.Error:
        return []


def process_tree(pid: int, create_time: float | None = None) -> list[ProcFacts]:
    """Facts for ``pid`` and all its descendants; empty if it is gone (or the pid was recycled)."""
    import psutil

    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 0.05:
            return []
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    facts = []
    for proc in procs:
        try:
            facts.append(read_process(proc))
        except psutil.Error:
            continue
    return facts


def agent_tree(
    pid: int,
    create_time: float | None,
    guard: int | None = None,
    guard_create_time: float | None = None,
    autogroup_target: int = 0,
) -> list[ProcFacts]:
    """The agent first, then everything its guard holds (what the agent left in other sessions and the
    daemons it started), each marked by how it differs from the agent; without a live guard, the agent's
    own descendants."""
    import psutil

    facts = process_tree(pid, create_time)
    if not facts or not guard or not is_alive(guard, guard_create_time):
        return facts
    known = {f.pid for f in facts}
    try:
        extra = [p for p in psutil.Process(guard).children(recursive=True) if p.pid not in known]
    except psutil.Error:
        extra = []
    for proc in extra:
        with contextlib.suppress(psutil.Error):
            facts.append(read_process(proc))
    home = facts[0].session
    for fact in facts[1:]:
        if fact.session != home:
            fact.marks.append("own session")
            if autogroup_target and fact.autogroup_nice == autogroup_target:
                fact.marks.append("lowered")
        if fact.ppid == guard:
            fact.marks.append("daemon")
    return facts


def is_alive(pid: int | None, create_time: float | None) -> bool:
    """True only for the very process kas started: a recycled pid has another start time.

    Without a recorded start time the process's identity cannot be proven, so it is never taken for the
    agent: kas would rather call an agent lost than signal a stranger that got its pid.
    """
    import psutil

    if not pid or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - create_time) <= 0.05
    except psutil.Error:
        return False


def is_stopped(pid: int) -> bool:
    """True while the process is stopped (SIGSTOP: `kas instance pause`); read from the kernel."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, create_time: float | None, timeout: float | None = None) -> None:
    """Block until the process kas started has ended (a zombie has), woken by the kernel, not by polling;
    or until ``timeout`` seconds have passed.

    A pidfd becomes readable when the process exits (Linux 5.3+); elsewhere psutil waits.
    """
    import select

    import psutil

    if not is_alive(pid, create_time):
        return
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout)
        return
    try:
        if is_alive(pid, create_time):  # the pid was still ours when the pidfd was opened
            select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def create_time(pid: int) -> float | None:
    """The kernel's start time of ``pid``, stored so a recycled pid is never mistaken for the agent."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def expected_facts(resolved: ResolvedProfile, platform: str, autogroup_nice: int = 0) -> dict[str, Any]:
    """What the profile promises for every process of an agent's tree on this platform.

    ``autogroup_nice`` is what kas writes on this machine (0: nothing, so nothing is expected).
    """
    s = resolved.settings
    # Under normal a nice above 0 is a process kept lower than asked (after a switch): reported, not failed.
    expected: dict[str, Any] = {"nice": s.nice if resolved.active else 0}
    if resolved.active and platform.startswith("linux") and s.ionice_class != "none":
        expected["ionice_class"] = s.ionice_class
        if s.ionice_class == "best-effort":
            expected["ionice_level"] = s.ionice_level
    if autogroup_nice:
        expected["autogroup_nice"] = autogroup_nice
    if resolved.active and platform.startswith("linux"):
        from kas import platform as host
        from kas.resolver import agent_cpus

        expected["policy"] = s.sched_policy
        expected["cpus"] = agent_cpus(s.reserve_cpus, host.cpus())
        if s.oom_score_adj is not None:
            expected["oom_score_adj"] = s.oom_score_adj
    return expected


IO_RANK = {"realtime": 0, "best-effort": 1, "none": 1, "idle": 2}


def io_rank(ioclass: str | None, level: int | None, nice: int | None) -> tuple[int, int] | None:
    """Smaller is more urgent: realtime, best-effort by level (class none: the level its nice implies),
    idle. None when the class could not be read."""
    if ioclass not in IO_RANK:
        return None
    if ioclass == "idle":
        return (2, 0)
    if ioclass == "none":
        level = min(7, max(0, ((nice or 0) + 20) // 5))
    return (IO_RANK[ioclass], level or 0)


def compare(facts: list[ProcFacts], expected: dict[str, Any]) -> list[ProcFacts]:
    """Fill in ``problems`` for every process with a *higher* priority than ``expected`` allows and
    ``notes`` for one kept lower than asked (a niced shell, a nice that stays after a switch to a lighter
    profile); return those with problems."""
    bad = []
    for fact in facts:
        for key in ("nice", "autogroup_nice", "oom_score_adj"):
            want, got = expected.get(key), getattr(fact, key)
            if want is None or not isinstance(got, int) or got == want:
                continue
            if got < want:
                fact.problems.append(f"{key} is {got}, profile wants {want}")
            else:
                fact.notes.append(f"{key} {got}: a lower priority than the profile's {want}")
        if "ionice_class" in expected:
            want_rank = io_rank(expected["ionice_class"], expected.get("ionice_level"), expected.get("nice"))
            got_rank = io_rank(fact.ionice_class, fact.ionice_level, fact.nice)
            wanted = expected["ionice_class"] + (
                f"/{expected['ionice_level']}" if expected["ionice_class"] == "best-effort" else ""
            )
            if got_rank is not None and want_rank is not None and got_rank < want_rank:
                fact.problems.append(f"I/O {fact.io}, profile wants {wanted}")
            elif got_rank is not None and want_rank is not None and got_rank > want_rank:
                fact.notes.append(f"I/O {fact.io}: a lower priority than the profile's {wanted}")
        want_policy = expected.get("policy")
        if want_policy and fact.policy in POLICY_RANK:
            if POLICY_RANK[fact.policy] < POLICY_RANK[want_policy]:
                fact.problems.append(f"sched_policy is {fact.policy}, profile wants {want_policy}")
            elif POLICY_RANK[fact.policy] > POLICY_RANK[want_policy]:
                lower = f"a lower priority than the profile's {want_policy}"
                fact.notes.append(f"sched_policy {fact.policy}: {lower}")
        want_cpus = expected.get("cpus")
        if want_cpus and fact.cpus and set(fact.cpus) - set(want_cpus):
            extra = ", ".join(map(str, sorted(set(fact.cpus) - set(want_cpus))))
            fact.problems.append(f"runs on reserved CPU {extra}")
        if fact.problems:
            bad.append(fact)
    return bad
