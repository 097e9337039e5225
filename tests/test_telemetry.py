"""What agents cost, read from /proc over their whole trees: real writers and burners, read back through
`kas instance list --json` and `kas instance show`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kas.cli import main
from kas.cli.instance import fit

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc telemetry")

# A child writes 64 MB (what a build's objects do), then both burn CPU until stopped.
WRITER = """
import os, sys
if os.fork() == 0:
    with open(sys.argv[1], "wb") as out:
        for _ in range(64):
            out.write(b"x" * 1048576)
while True:
    pass
"""


def cli_json(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def figures(inst_id: str) -> dict[str, Any]:
    [row] = [r for r in cli_json("instance", "list", "--json") if r["id"] == inst_id]
    return dict(row["telemetry"] or {})


def test_telemetry_moves_when_an_agent_writes_and_burns_cpu(project: Path, tmp_path: Path) -> None:
    row = cli_json("spawn", "--detach", "--json", "--", sys.executable, "-c", WRITER, str(tmp_path / "big"))
    try:
        deadline = time.monotonic() + 15
        while not (
            (now := figures(row["id"])).get("write_bytes", 0) >= 50 * 1024 * 1024 and now["cpu_percent"] >= 30
        ):
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        assert now["num_procs"] == 2 and now["rss"] > 1024 * 1024
        shown = cli_json("instance", "show", "--json", row["id"])
        assert shown["telemetry"]["write_bytes"] >= 50 * 1024 * 1024
        assert len(shown["telemetry"]["procs"]) == 2  # per process too
        assert {"cpu_percent", "rss", "read_bytes", "write_bytes"} <= set(
            next(iter(shown["telemetry"]["procs"].values()))
        )
    finally:
        CliRunner().invoke(main, ["instance", "stop", row["id"]])


def test_a_narrow_terminal_keeps_the_essentials() -> None:
    headers = ("ID", "NAME", "STATUS", "CPU%", "MEM", "COMMAND", "MODE")
    rows = [("abc123", "coder", "running", "97", "35M", "claude -p 'a long task description here'", "sdk")]
    kept_rows, kept = fit(rows, headers, ("COMMAND", "MODE"), 48)
    assert kept == ("ID", "NAME", "STATUS", "CPU%", "MEM", "MODE") and len(kept_rows[0]) == len(kept)
    assert fit(rows, headers, ("COMMAND", "MODE"), None)[1] == headers  # not a terminal: every column
    assert fit(rows, headers, ("COMMAND", "MODE"), 20)[1] == (
        "ID",
        "NAME",
        "STATUS",
        "CPU%",
        "MEM",
    )  # never less


def test_list_watch_redraws_until_interrupted(project: Path) -> None:
    import signal
    import subprocess

    from tests.conftest import KAS
    from tests.helpers import Lines

    watch = subprocess.Popen([KAS, "instance", "list", "--watch", "0.2", "--json"], cwd=project,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert watch.stdout is not None
    lines = Lines(watch.stdout)
    assert json.loads(lines.next()) == [] and json.loads(lines.next()) == []  # one JSON list per redraw
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "content",
    ['{"at": "abc"}', '{"at": null}', '{"at": NOW, "cpu_percent": "x", "rss": NaN}', '{"at": NaN}',
     '{"at": NOW, "read_bytes_per_s": 1e300, "procs": [1, 2]}', '{"at": NOW, "procs": {"1": {"cpu_percent": "z"}}}',
     "[1, 2]", "{"],
)  # fmt: skip
def test_a_damaged_figures_file_reads_as_a_missing_one(project: Path, tmp_path: Path, content: str) -> None:
    import os
    import signal

    row = cli_json("spawn", "--detach", "--json", "--", "sleep", "60")
    try:
        os.kill(row["guard_pid"], signal.SIGSTOP)  # it would write its own figures over ours
        stats = Path(os.environ["KAS_STATE_DIR"]) / "guards" / f"{row['id']}.stats.json"
        stats.write_text(content.replace("NOW", str(time.time())))
        [listed] = cli_json("instance", "list", "--json")
        figures = listed["telemetry"] or {}
        assert all(
            v is None or (isinstance(v, (int, float)) and 0 <= v < 1e18)
            for k, v in figures.items()
            if k != "procs"
        )
        for args in (
            ["instance", "list"],
            ["instance", "show", row["id"]],
            ["instance", "show", "--json", row["id"]],
        ):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0 and result.exception is None, result.output
    finally:
        os.kill(row["guard_pid"], signal.SIGCONT)
        CliRunner().invoke(main, ["instance", "stop", row["id"]])


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "0"])
def test_list_watch_refuses_what_is_not_a_pause(value: str) -> None:
    result = CliRunner().invoke(main, ["instance", "list", "--watch", value])
    assert result.exit_code == 2 and "--watch" in result.output
