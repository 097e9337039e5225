"""A stand-in agent for tests: starts a grandchild, reports itself, then lives for a while.

Usage: python agent.py REPORT_PATH SECONDS [EXIT_CODE]
Writes JSON {"pid", "child", "env", "cwd", "nice"} to REPORT_PATH (a FIFO or file), then sleeps.
"""

import json
import os
import signal
import subprocess
import sys
import time

report, seconds = sys.argv[1], float(sys.argv[2])
code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
signal.signal(signal.SIGTERM, lambda *_: (child.terminate(), sys.exit(143)))
with open(report, "w") as out:
    report = {
        "pid": os.getpid(),
        "child": child.pid,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "nice": os.nice(0),
    }
    json.dump(report, out)
time.sleep(seconds)
child.wait()
sys.exit(code)
