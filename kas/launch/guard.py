"""The guard: one small process per agent that keeps the profile on everything the agent starts.

A ``nice`` prefix reaches the agent and what it forks, but a descendant can leave: ``setsid`` gives it a
new session and so a new autogroup at nice 0, and a double fork (a daemon) re-parents it away from the
agent, out of reach of ``kas instance stop``. The guard closes both holes:

- it is the agent's parent and a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so an orphan anywhere
  below it re-parents to the guard instead of init: nothing the agent starts leaves its tree;
- it watches the tree (``/proc``, every ``TICK`` seconds) and lowers what gained priority: a new
  session's autogroup, a raised nice, a raised I/O class, a lowered ``oom_score_adj``; it only ever
  lowers (``kas profile apply`` is what moves priorities both ways);
- when the agent ends, the guard ends what it left behind (SIGTERM, ``LEFTOVER_GRACE``, SIGKILL), as
  systemd does for a service's control group, unless it was told to let them go (SIGUSR1);
- it exits with the agent's status (128 + N for a death by signal N), so a launcher waits for the guard
  as it would for the agent.

Signals it takes: SIGTERM/SIGINT/SIGHUP are passed to the agent's group and every process in the tree
(a stop reaches escaped sessions and daemons); SIGUSR1 releases the leftovers; SIGUSR2 kills the whole
tree at once (the owner died, or a stop's grace ran out).

It runs as ``python -I -S guard.py`` and imports only the standard library (no kas, no psutil): it lives
as long as its agent, once per agent, so its memory is the cost that multiplies. Rules come from a
private JSON file, re-read when it changes (``kas profile apply`` rewrites it).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py's enums would add 4 ms to every agent's start
import os
import select
import sys
import time

TYPE_CHECKING = False  # typing itself costs 7 ms at start-up (it imports re); annotations need no import
if TYPE_CHECKING:
    from typing import Any

TICK = 0.5  # seconds between two looks at the tree: a new session is lowered within one
RETRY = 0.1  # the next look when the kernel's autogroup rate limit held a session back
THREADS_EVERY = 4  # every this many looks, every thread of every process is checked, not just new ones
# Seconds between SIGTERM and SIGKILL for what an ended agent left behind; after a stop (the signal reached
# them with the agent), the seconds they get beyond the agent's own end.
LEFTOVER_GRACE = 2.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
IOPRIO_WHO_PROCESS = 1
# (ioprio_set, ioprio_get) by machine; elsewhere the guard leaves I/O classes alone.
IOPRIO_CALLS = {
    "x86_64": (251, 252),
    "i386": (289, 290),
    "i686": (289, 290),
    "aarch64": (30, 31),
    "riscv64": (30, 31),
    "loongarch64": (30, 31),
    "armv7l": (314, 315),
    "ppc64le": (273, 274),
    "s390x": (282, 283),
}


class Stat:
    """The fields of ``/proc/PID/stat`` the guard reads."""

    __slots__ = ("cpu", "nice", "pgid", "ppid", "rss", "sid", "start", "state", "threads")

    def __init__(self, raw: bytes) -> None:
        fields = raw.rsplit(b")", 1)[1].split()
        self.state = fields[0]
        self.ppid, self.pgid, self.sid = int(fields[1]), int(fields[2]), int(fields[3])
        self.nice, self.start = int(fields[16]), int(fields[19])
        self.cpu = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        self.rss = int(fields[21])  # pages
        self.threads = int(fields[17])


def read_stat(pid: int | str) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return Stat(f.read())
    except (OSError, IndexError, ValueError):
        return None


# Every signal the agent gets back at its default (the guard catches or ignores several).
DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def find(name: str, env: Any) -> str | None:
    """The executable ``name`` on the agent's PATH, for ``posix_spawn`` (glibc's ``posix_spawnp`` would
    search the guard's own PATH, not the agent's); None: not found there, so ``execvpe`` says why."""
    if "/" in name:
        return name
    for folder in env.get("PATH", os.defpath).split(":"):
        path = f"{folder or '.'}/{name}"
        try:
            if os.stat(path).st_mode & 0o170000 == 0o100000 and os.access(path, os.X_OK):
                return path
        except OSError:
            continue
    return None


def pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


class Kernel:
    """The few calls Python's ``os`` lacks (prctl, ioprio), through ctypes, loaded once."""

    def __init__(self) -> None:
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.io = IOPRIO_CALLS.get(os.uname().machine)

    def prctl(self, option: int, value: int) -> bool:
        return bool(self.libc.prctl(option, value, 0, 0, 0) == 0)

    def ioprio(self, tid: int) -> int | None:
        if self.io is None:
            return None
        value = int(self.libc.syscall(self.io[1], IOPRIO_WHO_PROCESS, tid))
        return None if value < 0 else value

    def set_ioprio(self, tid: int, value: int) -> bool:
        return self.io is not None and self.libc.syscall(self.io[0], IOPRIO_WHO_PROCESS, tid, value) == 0


def io_rank(prio: int, nice: int) -> tuple[int, int]:
    """Smaller is more urgent: realtime, then best-effort by level, then idle. Class none means
    best-effort at the level the nice implies."""
    klass, level = prio >> 13, prio & 0x1FFF
    if klass == 1:
        return (0, level)
    if klass == 3:
        return (2, 0)
    if klass == 0:
        level = min(7, max(0, (nice + 20) // 5))
    return (1, level)


def _number(data: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} = {value!r}")
    return value


class Rules:
    """What the profile asks of every process in the tree; None leaves that property alone.

    Read from a file anyone with the user's rights could edit, so every value is checked: a rules file
    the guard cannot read keeps the rules it had (a guard that died of one would drop the whole tree).
    """

    POLICIES = (3, 5)  # SCHED_BATCH, SCHED_IDLE: the only ones the guard moves agents to

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ValueError("not a table")
        self.nice = _number(data, "nice", 0, 19)
        self.ioclass = _number(data, "ioclass", 2, 3)
        self.iolevel = _number(data, "iolevel", 0, 7) or 0
        self.autogroup = _number(data, "autogroup", 0, 19) or 0
        self.oom = _number(data, "oom", 0, 1000)
        self.policy = _number(data, "policy", 3, 5)
        if self.policy is not None and self.policy not in self.POLICIES:
            raise ValueError(f"policy = {self.policy}")
        affinity = data.get("affinity")
        if affinity is not None and (
            not isinstance(affinity, list)
            or not affinity
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 4096 for c in affinity)
        ):
            raise ValueError(f"affinity = {affinity!r}")
        self.affinity: set[int] | None = set(affinity) if affinity is not None else None

    @property
    def ioprio(self) -> int | None:
        if self.ioclass is None:
            return None
        return (self.ioclass << 13) | (self.iolevel if self.ioclass == 2 else 0)


POLICY_RANK = {0: 0, 3: 1, 5: 2}  # normal, batch, idle: higher runs less


def read_io(pid: int) -> tuple[int, int]:
    """Bytes the process made the disk read and write (``/proc/PID/io``, as psutil's io_counters)."""
    read = written = 0
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"read_bytes:"):
                    read = int(line.split()[1])
                elif line.startswith(b"write_bytes:"):
                    written = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return read, written


class Telemetry:
    """What the agent's tree costs, summed over every process in it, written where ``kas instance list``
    reads it (so the list need not walk every tree). Totals only grow: a process that ends keeps what it
    used; rates come from the processes seen in two samples in a row. Field names are psutil's."""

    EVERY = 1.0  # seconds between two samples
    PROCS = 100  # per-process figures kept for `instance show`

    def __init__(self, path: str) -> None:
        self.path = path
        self.last: dict[tuple[int, int], tuple[int, int, int]] = {}  # (pid, start) -> cpu ticks, read, write
        self.totals = [0, 0, 0]  # cpu ticks, read bytes, write bytes
        self.at = 0.0
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def due(self, now: float) -> bool:
        return now - self.at >= self.EVERY

    def sample(self, stats: dict[int, Stat], agent_sid: int | None, now: float) -> None:
        elapsed = now - self.at if self.at else 0.0
        seen: dict[tuple[int, int], tuple[int, int, int]] = {}
        rates = [0, 0, 0]
        procs: dict[str, dict[str, float]] = {}
        rss = 0
        sessions = set()
        for pid, st in stats.items():
            if st.state in (b"Z", b"X"):
                continue
            read, written = read_io(pid)
            now_counts = (st.cpu, read, written)
            key = (pid, st.start)
            before = self.last.get(key)
            for i in range(3):
                delta = now_counts[i] - (before[i] if before else 0)
                self.totals[i] += max(0, delta)
                if before is not None:
                    rates[i] += max(0, delta)
            seen[key] = now_counts
            rss += st.rss * self.page
            sessions.add(st.sid)
            if len(procs) < self.PROCS:
                cpu = (st.cpu - before[0]) / self.tick / elapsed * 100 if before and elapsed else 0.0
                procs[str(pid)] = {
                    "cpu_percent": round(cpu, 1),
                    "rss": st.rss * self.page,
                    "read_bytes": read,
                    "write_bytes": written,
                }
        self.last = seen
        report = {
            "at": time.time(),
            "cpu_percent": round(rates[0] / self.tick / elapsed * 100, 1) if elapsed else 0.0,
            "rss": rss,
            "read_bytes": self.totals[1],
            "write_bytes": self.totals[2],
            "read_bytes_per_s": round(rates[1] / elapsed) if elapsed else 0,
            "write_bytes_per_s": round(rates[2] / elapsed) if elapsed else 0,
            "num_procs": len(seen),
            "escaped_sessions": len(sessions - {agent_sid}) if agent_sid is not None else 0,
            "procs": procs,
        }
        self.at = now
        import json

        replace_private(self.path, json.dumps(report).encode())  # a full disk costs the figures only

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Guard:
    """Watches one agent's tree and keeps the rules on it."""

    def __init__(self, rules_file: str | None, rules: dict[str, Any], seen: set[int] | None = None) -> None:
        """``seen``: the processes that were there before (a zygote's listing); else listed now."""
        self.kernel = Kernel()
        self.rules_file = rules_file
        self.rules_mtime: int | None = None
        self.rules = Rules(rules)
        self.given = rules  # as the launcher gave them, for the rules file
        self.published = False
        self.me = os.getpid()
        self.agent = 0
        self.settled = 0.0  # until then the agent is left to its wrapper
        self.members: dict[int, int] = {}  # pid -> kernel start time (so a recycled pid is not ours)
        self.fresh: set[int] = set()  # members not yet checked whole (every thread)
        self.seen: set[int] = pids() if seen is None else seen
        self.thread_counts: dict[int, int] = {}  # pid -> threads at the last look
        self.looks = 0
        self.subreaper = False
        self.adopted = False

    # -- the rules ---------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the rules file if it changed; True if the rules are new."""
        if not self.rules_file:
            return False
        try:
            mtime = os.stat(self.rules_file).st_mtime_ns
            if mtime == self.rules_mtime:
                return False
            import json  # not at start-up: the first rules come on the command line (a faster start)

            with open(self.rules_file) as f:
                data = json.load(f)
            rules = Rules(data)
        except (OSError, ValueError):
            return False
        self.rules_mtime = mtime
        self.rules = rules
        self.fresh.update(self.members)
        return True

    def publish(self) -> None:
        """Write the rules file where ``kas profile apply`` rewrites them, unless it already has: the
        launcher leaves this to the guard, so a start waits for no file (0600, in kas's private
        state directory)."""
        if not self.rules_file or self.published:
            return
        self.published = True
        try:
            fd = os.open(self.rules_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        import json

        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.given, out)
                out.flush()
                self.rules_mtime = os.fstat(fd).st_mtime_ns  # ours: no need to read it back
        except (OSError, ValueError):
            pass

    # -- the tree ----------------------------------------------------------------------------------
    def scan(self) -> dict[int, Stat]:
        """Take in processes born into the tree since the last look; return every member's stat."""
        listing = pids()
        born = listing - self.seen
        self.seen = listing
        pending = {pid: st for pid in born if (st := read_stat(pid)) is not None}
        found = True
        while found and pending:  # a child and its parent may both be new
            found = False
            for pid, st in list(pending.items()):
                if st.ppid in self.members or st.ppid == self.me:
                    self.members[pid] = st.start
                    self.fresh.add(pid)
                    del pending[pid]
                    found = True
        stats = {}
        for pid, start in list(self.members.items()):
            st = read_stat(pid)
            if st is None or st.start != start:
                del self.members[pid]
                self.fresh.discard(pid)
            else:
                stats[pid] = st
        return stats

    def adopt_tree(self, root: int) -> None:
        """Take ``root`` and everything below it as members (``kas instance adopt``)."""
        parents: dict[int, list[int]] = {}
        for pid in self.seen:
            st = read_stat(pid)
            if st is not None:
                parents.setdefault(st.ppid, []).append(pid)
        todo = [root]
        while todo:
            pid = todo.pop()
            st = read_stat(pid)
            if st is None:
                continue
            self.members[pid] = st.start
            self.fresh.add(pid)
            todo.extend(parents.get(pid, []))

    # -- keeping the rules -------------------------------------------------------------------------
    def enforce(self, stats: dict[int, Stat]) -> bool:
        """Lower whatever in the tree has more than the rules allow; True if a session could not be
        lowered yet (the kernel lets a normal user change one autogroup per 100 ms: look again soon).

        Every session is read again at every look, since any process may raise its own autogroup back
        to 0. A process is checked thread by thread when it is new, when its thread count changed and
        every ``THREADS_EVERY`` looks (a thread may raise itself); in between, its main thread.
        """
        rules = self.rules
        pending = False
        sessions: dict[int, int] = {}
        self.looks += 1
        every_thread = self.looks % THREADS_EVERY == 0
        for pid, st in stats.items():
            if st.state in (b"Z", b"X"):
                continue
            if pid == self.agent and time.monotonic() < self.settled:
                continue  # its wrapper (nice -n N: relative) is still setting it up
            whole = every_thread or pid in self.fresh or self.thread_counts.get(pid) != st.threads
            self.fresh.discard(pid)
            self.thread_counts[pid] = st.threads
            # An adopted agent may share a session with its user's shell: only sessions it leads.
            if not self.adopted or st.sid in self.members:
                sessions.setdefault(st.sid, pid)
            tids = threads(pid) if whole else [pid]
            if rules.nice is not None:
                for tid in tids:
                    tst = st if tid == pid else read_stat(f"{pid}/task/{tid}")
                    if tst is not None and tst.nice < rules.nice:
                        try:
                            os.setpriority(os.PRIO_PROCESS, tid, rules.nice)
                        except OSError:
                            pass
            want = rules.ioprio
            if want is not None:
                for tid in tids:
                    have = self.kernel.ioprio(tid)
                    if have is not None and io_rank(have, st.nice) < io_rank(want, st.nice):
                        self.kernel.set_ioprio(tid, want)
            if rules.oom is not None:
                self._oom(pid, rules.oom)
            if whole:
                self._cpus_and_policy(tids, rules)
        if rules.autogroup:
            for sid, pid in sessions.items():
                pending |= not self._autogroup(pid, sid, rules.autogroup)
        return pending

    @staticmethod
    def _cpus_and_policy(tids: list[int], rules: Rules) -> None:
        """Only ever narrow the CPUs and move the policy towards idle: never the other way."""
        for tid in tids:
            if rules.affinity is not None:
                try:
                    have = os.sched_getaffinity(tid)
                    narrowed = have & rules.affinity
                    if narrowed and narrowed != have:
                        os.sched_setaffinity(tid, narrowed)
                except OSError:
                    pass
            if rules.policy is not None:
                try:
                    have_policy = os.sched_getscheduler(tid)
                    if POLICY_RANK.get(have_policy, 2) < POLICY_RANK[rules.policy]:
                        os.sched_setscheduler(tid, rules.policy, os.sched_param(0))
                except OSError:
                    pass

    @staticmethod
    def _autogroup(pid: int, sid: int, nice: int) -> bool:
        """Make sure the session of ``pid`` is at least at ``nice``; False if the kernel refused for now."""
        path = f"/proc/{pid}/autogroup"
        try:
            with open(path) as f:
                words = f.read().split()
            if not words or int(words[2]) >= nice:  # empty: the kernel's root group, whose weight is fixed
                return True
            with open(path, "w") as f:
                f.write(str(nice))
            return True
        except FileNotFoundError:
            return True  # gone
        except BlockingIOError:
            return False  # rate-limited: one write per 100 ms for a normal user
        except (OSError, IndexError, ValueError):
            return True

    @staticmethod
    def _oom(pid: int, value: int) -> None:
        path = f"/proc/{pid}/oom_score_adj"
        try:
            with open(path) as f:
                if int(f.read()) >= value:
                    return
            with open(path, "w") as f:
                f.write(str(value))
        except (OSError, ValueError):
            pass

    # -- signals to the tree -----------------------------------------------------------------------
    def send(self, sig: int, *, only_agent: bool = False) -> None:
        if self.agent:
            try:
                os.killpg(self.agent, sig)
            except OSError:
                pass
        if only_agent:
            return
        for pid in list(self.members):
            if pid != self.me:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass


class Run:
    """The guard's main loop: start the agent, keep the rules, end the tree, pass on the status."""

    def __init__(self, guard: Guard, report_fd: int | None) -> None:
        self.guard = guard
        self.report_fd = report_fd
        self.telemetry: Telemetry | None = None
        self.output: int | None = None  # the read end of the agent's output pipe (detached: --log)
        self.log: Any = None  # kas.logfile.RotatingLog
        self.status: int | None = None
        self.reported: Any = None  # called once the agent is named (a zygote's guard tells the zygote)
        self.signals: list[int] = []
        self.released = False
        self.stopping = False
        self.terminal = False  # the agent holds kas's terminal: keyboard stops are passed up to kas's job
        self.tty = -1  # that terminal (the guard's own stdin is /dev/null once the agent runs)
        self.owner = os.getppid()  # the kas that started this guard
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def install(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for sig in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGCHLD,
            signal.SIGCONT,
        ):
            signal.signal(sig, self.on_signal)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def report(self, text: str) -> bool:
        """Name the agent (or the error) to whoever started the guard; False if nobody reads any more.
        The pipe stays open for ``tell_end`` (a wave's runner reads the agent's status there)."""
        if self.report_fd is None:
            return True
        try:
            os.write(self.report_fd, text.encode() + b"\n")
            return True
        except OSError:
            self.close_report()
            return False

    def reader_gone(self) -> bool:
        """Whoever asked for this agent stopped waiting for it (it died, gave up, or was interrupted)."""
        if self.report_fd is None:
            return False
        poll = select.poll()
        poll.register(self.report_fd, select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poll.poll(0))

    def tell_end(self) -> None:
        """The agent's status, once its tree is gone and its output is in the log: a wave's runner takes
        it from here (a launcher that read only the first line has closed the pipe: nothing is sent)."""
        if self.report_fd is not None and not self.reader_gone():
            self.report("exit " + ("lost" if self.status is None else str(self.status)))
        self.close_report()

    def close_report(self) -> None:
        if self.report_fd is not None:
            try:
                os.close(self.report_fd)
            except OSError:
                pass
            self.report_fd = None

    def start(
        self, argv: list[str], terminal: bool, log: str | None = None, env: dict[str, str] | None = None
    ) -> bool:
        """Start the agent in a process group of its own; False (reported) if it cannot run.

        With ``log`` the agent's stdout and stderr go through a pipe that this loop copies into the
        bounded log (``kas.logfile``), so a detached agent needs no other kas process. ``env`` is the
        agent's environment where it is not the guard's own (a guard forked by the zygote).
        """
        if self.reader_gone():  # a request that waited while its runner went away: start nothing
            return False
        out_r, out_w = os.pipe() if log else (-1, -1)
        self.terminal = terminal
        environ = os.environ if env is None else env
        rules = self.guard.rules
        program = None if terminal or rules.affinity or rules.policy is not None else find(argv[0], environ)
        if program is not None:
            pid, failure = self._spawn(program, argv, environ, out_w)
        else:
            pid, failure = self._fork(argv, terminal, environ, out_w)
        if log:
            os.close(out_w)
            os.set_blocking(out_r, False)
            self.output = out_r
        if failure is not None:
            code, name = failure
            import errno as errnos

            if code == errnos.ENOENT:
                self.report(f"error command not found: {name}")
            elif code == errnos.EACCES:
                self.report(f"error permission denied: {name}")
            else:
                self.report(f"error cannot start {name}: {os.strerror(code)}")
            return False
        self.guard.agent = pid
        self.guard.settled = time.monotonic() + 1.0
        if not self.report(f"pid {pid} {os.getpid()}"):  # nobody will ever know of this agent: end it
            self.kill_all()
            return False
        if self.reported is not None:
            self.reported()
        if self.guard.rules_file:  # found by `kas instance list` if the runner dies before it records it
            publish_start(self.guard.rules_file, pid)
        if log:
            self.log = logfile().RotatingLog(log)
        st = read_stat(pid)
        self.guard.members[pid] = st.start if st is not None else 0
        self.guard.fresh.add(pid)
        return True

    @staticmethod
    def _spawn(program: str, argv: list[str], env: Any, out_w: int) -> tuple[int, tuple[int, str] | None]:
        """The common case, as ``posix_spawn``: no copy of this interpreter's memory, so a start costs a
        third of a fork's. The agent gets default signal handlers and an empty mask, as after ``_fork``."""
        actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)] if out_w >= 0 else []
        try:
            pid = os.posix_spawn(
                program, argv, env, file_actions=actions, setpgroup=0, setsigmask=(),
                setsigdef=DEFAULT_SIGNALS,
            )  # fmt: skip
        except OSError as exc:
            return 0, (exc.errno or 0, argv[0])
        return pid, None

    def _fork(
        self, argv: list[str], terminal: bool, env: Any, out_w: int
    ) -> tuple[int, tuple[int, str] | None]:
        """Fork and exec: for what ``posix_spawn`` cannot set up (the terminal, CPUs, a policy), or a
        command not found on PATH, whose error ``execvpe`` reports as a shell would."""
        check_r, check_w = os.pipe()
        os.set_inheritable(check_w, False)
        pid = os.fork()
        if pid == 0:  # the agent, between fork and exec
            try:
                os.close(check_r)
                if out_w >= 0:
                    os.dup2(out_w, 1)
                    os.dup2(out_w, 2)
                for sig in DEFAULT_SIGNALS:
                    try:
                        signal.signal(sig, signal.SIG_DFL)
                    except (OSError, ValueError):
                        pass
                signal.set_wakeup_fd(-1)
                os.setpgid(0, 0)
                rules = self.guard.rules
                if rules.affinity:
                    try:
                        os.sched_setaffinity(0, rules.affinity)
                    except OSError:
                        pass
                if rules.policy is not None:
                    try:
                        os.sched_setscheduler(0, rules.policy, os.sched_param(0))
                    except OSError:
                        pass
                if terminal:
                    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                    os.tcsetpgrp(0, os.getpgrp())
                    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(check_w, f"{exc.errno} {argv[0]}".encode())
            finally:
                os._exit(127)
        os.close(check_w)
        failure = b""
        while chunk := os.read(check_r, 512):
            failure += chunk
        os.close(check_r)
        if not failure:
            return pid, None
        os.waitpid(pid, 0)
        errno_text, _, name = failure.decode(errors="replace").partition(" ")
        return pid, (int(errno_text), name)

    def reap(self) -> bool:
        """Collect ended children; False once the guard has no child left. On a terminal, an agent
        stopped from the keyboard (Ctrl-Z) stops the job kas belongs to, as a shell expects."""
        if self.terminal and self.guard.agent and self.status is None:
            try:
                pid, wstatus = os.waitpid(self.guard.agent, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                pid = 0
            if pid and os.WIFSTOPPED(wstatus):
                self.suspend()
            elif pid:
                code = os.waitstatus_to_exitcode(wstatus)
                self.status = 128 - code if code < 0 else code
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.guard.agent and self.status is None:
                code = os.waitstatus_to_exitcode(wstatus)
                self.status = 128 - code if code < 0 else code

    def suspend(self) -> None:
        """The agent stopped for its terminal (Ctrl-Z, or a read in the background): give the terminal
        back to kas's job and stop that job, so the shell sees it stopped and shows its prompt. If the
        job has the terminal by now (``fg`` came first), the agent gets it back and goes on instead."""
        job = self.job()
        if job is None:
            return
        try:
            holder = os.tcgetpgrp(self.tty)
        except OSError:
            holder = None
        if holder == job:
            self.resume()
            return
        if holder == self.guard.agent:
            try:
                os.tcsetpgrp(self.tty, job)
            except OSError:
                pass
        try:
            os.killpg(job, signal.SIGTSTP)
        except OSError:
            pass

    def resume(self) -> None:
        """kas's job was continued (``fg`` or ``bg``; kas passes SIGCONT on): continue the agent, with
        the terminal if the job has it (``fg``)."""
        job = self.job()
        try:
            if job is not None and os.tcgetpgrp(self.tty) == job:
                os.tcsetpgrp(self.tty, self.guard.agent)
        except OSError:
            pass
        try:
            os.killpg(self.guard.agent, signal.SIGCONT)
        except OSError:
            pass

    def job(self) -> int | None:
        """The process group of the kas that started this guard on its terminal (the shell's job)."""
        try:
            return os.getpgid(self.owner)
        except OSError:
            return None

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                continue
            if sig == signal.SIGCONT:
                if self.terminal and self.guard.agent and self.status is None:
                    self.resume()
                continue
            if sig == signal.SIGUSR1:
                self.released = True
            elif sig == signal.SIGUSR2:
                self.kill_all()
            else:
                self.stopping = True
                self.guard.send(sig, only_agent=self.released)
                self.guard.send(signal.SIGCONT, only_agent=self.released)

    def kill_all(self) -> None:
        """SIGKILL the whole tree until nothing of it is left (a fork between two looks is caught next)."""
        self.stopping = True
        for _ in range(100):
            stats = self.guard.scan()
            self.guard.send(signal.SIGKILL)
            self.reap()
            if not any(st.state not in (b"Z", b"X") for st in stats.values()):
                return
            time.sleep(0.02)

    def sleep(self, timeout: float) -> None:
        """Wait for a signal, the agent's output, or ``timeout``; copy what output there is."""
        watched = [self.wake_r] if self.output is None else [self.wake_r, self.output]
        try:
            select.select(watched, [], [], timeout)
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self.copy_output()

    def copy_output(self) -> None:
        while self.output is not None:
            try:
                data = os.read(self.output, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # every writer closed it
                os.close(self.output)
                self.output = None
                return
            try:
                self.log.write(data)
            except OSError:
                pass  # a full disk loses output, never the guard

    def drain(self, patience: float | None = 1.0) -> None:
        """Copy the last output once the tree is gone (a process outside it may hold the pipe: bounded by
        ``patience`` seconds, or None: until every writer has closed it)."""
        deadline = None if patience is None else time.monotonic() + patience
        while self.output is not None and (deadline is None or time.monotonic() < deadline):
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                select.select([self.output], [], [], wait)
            except InterruptedError:
                pass
            self.copy_output()
        if self.output is not None:
            os.close(self.output)
            self.output = None
        if self.log is not None:
            self.log.close()

    def loop(self) -> int:
        """Look at the tree every ``TICK`` (at once when the agent ends); in between, only signals and the
        agent's output wake the guard, and they cost no look at /proc."""
        guard = self.guard
        deadline: float | None = None
        # The agent starts with the rules on it: the first look is one tick later (an adopted tree's, now).
        next_look = 0.0 if guard.adopted else time.monotonic() + TICK
        end_seen = False
        while True:
            self.handle_signals()
            self.reap()
            now = time.monotonic()
            if self.status is not None and not end_seen:
                end_seen, next_look = True, now
            if now < next_look:
                self.sleep(next_look - now)
                continue
            if self.status is None:  # an agent that has ended needs no rules file, nor figures
                guard.publish()
            guard.reload()
            stats = guard.scan()
            behind = guard.enforce(stats)
            if self.status is None and self.telemetry is not None and self.telemetry.due(now):
                home = stats.get(guard.agent)
                self.telemetry.sample(stats, home.sid if home else None, now)
            next_look = now + (RETRY if behind else TICK)
            adopted_gone = guard.agent not in stats or stats[guard.agent].state in (b"Z", b"X")
            if self.status is None and not (guard.adopted and adopted_gone):
                continue
            if self.released:
                return self.status or 0
            left = any(st.state not in (b"Z", b"X") for pid, st in stats.items() if pid != guard.agent)
            if not left:
                return self.status if self.status is not None else 0
            if deadline is None:
                if not self.stopping:
                    guard.send(signal.SIGTERM)
                    guard.send(signal.SIGCONT)
                deadline = now + LEFTOVER_GRACE
            elif now >= deadline:
                self.kill_all()
                self.reap()
                return self.status if self.status is not None else 0
            next_look = now + 0.05  # the leftovers' end is looked for more often


def start_file(rules_file: str) -> str:
    """Beside the rules: the agent's and the guard's pids, while the guard runs (``guards/ID.pid``)."""
    return rules_file.removesuffix(".json") + ".pid"


def publish_start(rules_file: str, agent: int) -> None:
    replace_private(start_file(rules_file), f"{agent} {os.getpid()}\n".encode())


def replace_private(path: str, data: bytes) -> bool:
    """Write ``path`` whole (0600, then renamed into place), so a reader never sees half of it; False if
    the disk refused (the guard goes on without it)."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def encode_rules(rules: dict[str, Any]) -> str:
    """Rules for the command line: ``nice=10,ioclass=2,affinity=1:2`` (None: empty)."""
    parts = []
    for key, value in rules.items():
        text = "" if value is None else ":".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    return ",".join(parts)


def parse_rules(text: str) -> dict[str, Any]:
    """The inverse of ``encode_rules``; whatever it cannot read is left out (Rules checks the rest)."""
    data: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            if key == "affinity":
                data[key] = [int(c) for c in value.split(":")] if value else None
            else:
                data[key] = int(value) if value else None
        except ValueError:
            continue
    return data


def parse(args: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"rules": {}, "rules_file": None, "report_fd": None, "terminal": False}
    opts.update(die_with_parent=False, adopt=None, argv=[], log=None, record=None, id=None)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts["argv"] = args[i + 1 :]
            break
        if arg in ("--terminal", "--die-with-parent"):
            opts[arg[2:].replace("-", "_")] = True
            i += 1
            continue
        value = args[i + 1]
        if arg == "--rules":
            opts["rules"] = parse_rules(value)
        elif arg == "--rules-file":
            opts["rules_file"] = value
        elif arg == "--report-fd":
            opts["report_fd"] = int(value)
        elif arg == "--adopt":
            opts["adopt"] = int(value)
        elif arg in ("--log", "--record", "--id"):
            opts[arg[2:]] = value
        else:
            raise SystemExit(f"kas guard: unknown option {arg}")
        i += 2
    return opts


def main(
    args: list[str], env: dict[str, str] | None = None, seen: set[int] | None = None, reported: Any = None
) -> int:
    """``env``: the agent's environment, where it is not this process's own (a guard the zygote forked);
    ``seen``: the processes listed before the request (a spare's listing); ``reported``: called once the
    agent is named."""
    opts = parse(args)
    if opts["report_fd"] is not None:  # the agent must not hold the report pipe open
        try:
            os.set_inheritable(opts["report_fd"], False)
        except OSError:
            opts["report_fd"] = None
    guard = Guard(opts["rules_file"], opts["rules"], seen)
    if not opts["rules"]:
        guard.reload()  # otherwise the file holds the same rules: the first look reads it
    run = Run(guard, opts["report_fd"])
    run.reported = reported
    run.install()
    if opts["die_with_parent"]:
        parent = os.getppid()
        guard.kernel.prctl(PR_SET_PDEATHSIG, signal.SIGUSR2)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGUSR2)
    if opts["adopt"]:
        guard.adopted = True
        guard.agent = opts["adopt"]
        guard.adopt_tree(opts["adopt"])
        run.report(f"pid {opts['adopt']} {os.getpid()}")
    else:
        guard.subreaper = guard.kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
        if guard.rules.autogroup:  # the agent's session (a new one, a pane's, a terminal's), before it runs
            guard._autogroup(os.getpid(), os.getsid(0), guard.rules.autogroup)
        if guard.rules.oom is not None:
            guard._oom(os.getpid(), guard.rules.oom)
        if not run.start(opts["argv"], opts["terminal"], opts["log"], env):
            return 127
    # The guard holds nothing of the agent's I/O: a log pipe ends when the agent's tree closes it. Only a
    # terminal is kept, to hand it between the agent and kas's job (Ctrl-Z, fg).
    if run.terminal:
        run.tty = os.dup(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if guard.rules_file:
        run.telemetry = Telemetry(guard.rules_file.removesuffix(".json") + ".stats.json")
    try:
        status = run.loop()
    finally:
        if guard.rules_file:
            for path in (guard.rules_file, start_file(guard.rules_file)):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if run.telemetry is not None:
            run.telemetry.remove()
    # Released daemons (stop --keep-daemons) may still write to the log pipe: its only reader stays, after
    # the end is recorded, until they close it, or they would die of SIGPIPE. Otherwise the tree is gone
    # and a second is plenty for the last output.
    if not run.released:
        run.drain(1.0)
    run.tell_end()
    recorded = record(opts, run.status)
    if run.released:
        run.drain(None)
    return status if recorded else 1


def record(opts: dict[str, Any], status: int | None) -> bool:
    """Detached: nobody else is left to write how the agent ended."""
    if not (opts["record"] and opts["id"]):
        return True
    kas_root()
    from pathlib import Path

    from kas.launch.record import record_end

    return record_end(Path(opts["record"]), opts["id"], status)


def kas_root() -> None:
    """Make kas importable in this isolated interpreter (``-I -S``): its package root, nothing else is
    added, and only for the modules the guard asks for."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)


def logfile() -> Any:
    kas_root()
    import kas.logfile

    return kas.logfile


SPARES = 2  # guards kept waiting: a wave's tasks that end together start again together


def zygote(sock_fd: int, rules: Rules) -> int:
    """Start guards on request, each a fork of this lean, single-threaded process: a wave of short tasks
    would otherwise pay a new interpreter's 18 ms at every promotion.

    One ``SOCK_SEQPACKET`` message per request: JSON with the guard's options, the agent's argv,
    environment and directory (or ``memfd`` and a memory file holding it, when larger), carrying the
    task's report pipe, where the guard names itself with its agent and later tells the agent's status.
    ``SPARES`` guards (``_spare``) are forked ahead and wait for requests themselves, so a start pays no
    fork; the zygote forks a new one once a spare has started its agent (a fork meanwhile would slow that
    start down), and reaps its guards. A guard whose runner stopped waiting before it took the request
    starts nothing. When the runner closes its end the zygote starts nothing more and leaves once its
    guards have ended (guards whose runner died go on, as any agent does: kas lists them as orphaned).
    """
    import json  # noqa: F401 - every guard reads requests and writes rules and figures with it
    import socket
    import warnings  # noqa: F401 - os.execvpe imports it in a forked agent: once, here, instead

    logfile()  # a task's guard writes its log
    Kernel()  # load ctypes and libc once, here: every guard forked from now on has them
    import gc

    gc.freeze()  # what is here now is never collected: a guard's collections leave these pages shared
    if rules.autogroup:  # the runner started it in a session of its own: its spares' work is background
        Guard._autogroup(os.getpid(), os.getsid(0), rules.autogroup)
    os.set_inheritable(sock_fd, False)  # a guard holds it until its agent runs: never the agent
    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe()
    took_r, took_w = os.pipe()  # spares say here when they took a request ("took PID") or saw the end
    for fd in (wake_r, wake_w, took_r):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    children: set[int] = set()
    spares: set[int] = set()
    listening = True

    def news() -> None:
        nonlocal listening
        try:
            text = os.read(took_r, 4096).decode()
        except OSError:
            return
        for line in text.splitlines():
            kind, _, pid = line.partition(" ")
            if kind == "took":
                spares.discard(int(pid))
            elif kind == "eof":
                listening = False

    while listening or children:
        while listening and len(spares) < SPARES:
            pid = os.fork()
            if pid == 0:
                _spare(sock, (wake_r, wake_w, took_r), took_w, rules)
            children.add(pid)
            spares.add(pid)
        try:
            select.select([took_r, wake_r], [], [], 1.0)
        except InterruptedError:
            pass
        try:
            while os.read(wake_r, 512):
                pass
        except OSError:
            pass
        news()
        while children:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            spares.discard(pid)  # a spare that ended without a request (the runner's end, or killed)
    return 0


def _spare(sock: Any, inherited: tuple[int, ...], took_w: int, rules: Rules) -> None:
    """A guard forked ahead of its request: it opens its agent's session and lowers it (and its own
    ``oom_score_adj``) now, lists /proc now (and every second while it waits) and has its pages copied
    already, so taking a request costs only the guard's own start. Never returns."""
    code = 0
    try:
        for fd in inherited:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        if rules.autogroup:  # a normal user's one write per 100 ms is spent now, not at the start
            Guard._autogroup(os.getpid(), os.getpid(), rules.autogroup)
        if rules.oom is not None:
            Guard._oom(os.getpid(), rules.oom)
        waited = _await_request(sock)
        me = os.getpid()
        if waited is None:
            _tell_zygote(took_w, f"eof {me}")
            return
        message, fds, seen = waited
        told: list[bool] = []

        def tell() -> None:  # once the agent runs: the zygote's next fork would slow its start down
            if not told:
                told.append(True)
                _tell_zygote(took_w, f"took {me}")
                os.close(took_w)
                sock.close()

        code = 127
        code = _become_guard(message, fds, seen, tell)
        tell()
    finally:
        os._exit(code)


def _tell_zygote(pipe: int, news: str) -> None:
    """A spare outlives a zygote that was killed (it needs none to guard: its runner reads the agent's
    status from the report pipe), and then tells nobody."""
    try:
        os.write(pipe, news.encode() + b"\n")
    except OSError:
        pass


def _await_request(sock: Any) -> tuple[bytes, list[int], set[int]] | None:
    """The next request, with the processes there were just before it; None once the runner closed its
    end (or went away)."""
    seen = pids()
    _rehearse(seen)
    while True:
        try:
            ready = select.select([sock.fileno()], [], [], 1.0)[0]
        except InterruptedError:
            continue
        if not ready:
            seen = pids()
            continue
        message, fds = _request(sock)
        return (message, fds, seen) if message else None


def _rehearse(seen: set[int]) -> None:
    """Run a guard's start-up steps once with nothing at stake, before any request: a fork shares this
    process's memory until a page is first written, and Python writes to every object it uses; copying
    those pages now keeps the copies off the path between a request and the agent's start."""
    import json

    opts = parse(["--rules", "nice=0,autogroup=0", "--rules-file", "", "--report-fd", "0", "--", "true"])
    guard = Guard(None, opts["rules"], seen)
    json.loads(json.dumps({"options": [], "argv": ["true"], "env": {"PATH": ""}, "cwd": "/"}))
    guard._autogroup(os.getpid(), 0, 0)  # a read only: the session is already at 0 or above
    guard._oom(os.getpid(), 0)
    find("true", {"PATH": os.defpath})
    read_stat(os.getpid())
    encode_rules(opts["rules"])


def _request(sock: Any) -> tuple[bytes, list[int]]:
    import socket

    try:
        message, fds, _flags, _address = socket.recv_fds(sock, 1 << 20, 3)
    except OSError:
        return b"", []
    return message, fds


def _become_guard(message: bytes, fds: list[int], seen: set[int], reported: Any) -> int:
    """In a spare that took a request (in a session of its own already): the agent's directory, the
    report pipe (the agent's output goes to its log through the guard, or nowhere); then the guard's own
    main, which finds the session and ``oom_score_adj`` lowered when the rules are the zygote's."""
    import json

    report, *memory = fds
    if message == b"memfd" and memory:  # too large for a socket message: it came in a memory file
        message = os.pread(memory[0], os.fstat(memory[0]).st_size, 0)
    for fd in memory:
        os.close(fd)
    request = json.loads(message)
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        os.write(report, f"error cannot enter {request['cwd']}: {exc.strerror}\n".encode())
        return 127
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return main(
        [*request["options"], "--report-fd", str(report), "--", *request["argv"]],
        request["env"],
        seen,
        reported,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        try:
            shared = Rules(parse_rules(sys.argv[3]) if len(sys.argv) > 3 else {})
        except ValueError:
            shared = Rules({})
        sys.exit(zygote(int(sys.argv[2]), shared))
    sys.exit(main(sys.argv[1:]))
