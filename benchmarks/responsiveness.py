"""The desktop-protection goal, measured: `kas bench responsiveness` in both modes, interactive profile.

Goal: profile p99 within 1.25x of no-load p99, no missed frame, agents >= 80% of their CPU under normal.
Usage: python benchmarks/responsiveness.py [FRAMES]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from common import KAS, private_env, temp_dir


def main() -> None:
    frames = sys.argv[1] if len(sys.argv) > 1 else "600"
    tmp = temp_dir()
    env = private_env(tmp)
    config = tmp / "config.toml"
    config.write_text('[resources]\nprofile = "interactive"\n')
    socket = f"kas-bench-{uuid.uuid4().hex[:6]}"
    try:
        for mode in ("sdk", "tmux"):
            argv = [
                KAS,
                "--config",
                str(config),
                "bench",
                "responsiveness",
                "--frames",
                frames,
                "--mode",
                mode,
            ]
            table = subprocess.run([*argv, "--tmux-socket", socket], env=env, capture_output=True, text=True)
            print(f"## mode {mode}\n{table.stdout}")
            data = json.loads(subprocess.run([*argv, "--tmux-socket", socket, "--json"], env=env,
                                             capture_output=True, text=True).stdout)  # fmt: skip
            cases = {c["case"]: c for c in data["cases"]}
            idle, normal, prof = cases["no load"], cases["normal"], cases["profile: interactive"]
            ratio = prof["p99_ms"] / idle["p99_ms"]
            share = prof["agent_cpu_s"] / normal["agent_cpu_s"]
            ok = ratio <= 1.25 and prof["missed"] == 0 and share >= 0.8
            verdict = "met" if ok else "NOT met"
            missed = prof["missed"]
            print(f"(--json run) p99 x{ratio:.2f}, missed {missed}, agent CPU {share:.0%}: goal {verdict}\n")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
        (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / socket).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
