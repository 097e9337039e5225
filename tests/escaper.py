"""A stand-in agent whose descendants try to leave its profile, as build servers and daemons do.

Usage: python escaper.py REPORT_PATH [raise]
Starts a child in a session of its own (``setsid``), a daemon (double fork: its parent exits at once, so
it is re-parented) and, with ``raise``, a child that raises its own priority (nice down by 5, I/O class
best-effort 0, oom_score_adj 0: as far as the kernel lets it). Writes JSON {"pid", "session", "daemon",
"raiser"} to REPORT_PATH once all are in place, then sleeps until it is stopped. On SIGUSR1 it starts one
more child in a session of its own and writes its pid to REPORT_PATH.late.
"""

import contextlib
import json
import os
import signal
import sys
import time

report = sys.argv[1]
raising = sys.argv[2:3] == ["raise"]


def forever() -> None:
    while True:
        time.sleep(60)


session = os.fork()
if session == 0:
    os.setsid()
    forever()

reader, writer = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        os.write(writer, str(os.getpid()).encode().ljust(16))
        forever()
    os._exit(0)
os.waitpid(middle, 0)
daemon = int(os.read(reader, 16))  # the daemon runs, re-parented away from this process

raiser = 0
if raising:
    ready_r, ready_w = os.pipe()
    raiser = os.fork()
    if raiser == 0:
        with contextlib.suppress(OSError):
            os.nice(-5)
        os.system(f"ionice -c 2 -n 0 -p {os.getpid()} 2>/dev/null")
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("0")
        except OSError:
            pass
        os.write(ready_w, b"x")
        forever()
    os.read(ready_r, 1)


def late(_signum: int, _frame: object) -> None:
    child = os.fork()
    if child == 0:
        os.setsid()
        forever()
    with open(report + ".late", "w") as out:
        out.write(str(child))


signal.signal(signal.SIGUSR1, late)
with open(report, "w") as out:
    json.dump({"pid": os.getpid(), "session": session, "daemon": daemon, "raiser": raiser}, out)
forever()
