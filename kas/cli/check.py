"""``kas check``: are the tools there, does the profile hold here, and does a given process obey it?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kas import platform as host
from kas.cli.app import App
from kas.cli.options import json_option
from kas.errors import ConfigError
from kas.hostcheck import Finding, HostFacts, host_findings, process_finding, tool_findings
from kas.probe import ProcFacts


@click.command()
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    help="Also read this process's (and its children's) niceness, I/O class and autogroup.",
)
@json_option()
@click.pass_obj
def check(app: App, pid: int | None, as_json: bool) -> None:
    """Check that the resource controls can work on this machine.

    Prints one row per check (ok / warn / fail / info) and a verdict on whether the configured profile
    will hold against other sessions. Exit 0 unless something fails. With --pid, compare a running
    process tree with the resolved profile (exit 1 on a mismatch, naming what differs).
    """
    out = app.output(as_json)
    findings: list[Finding] = []
    resolved = None
    try:
        resolved = app.resolve(quiet=True)
        findings.append(Finding("config", "ok", app.config_label + f" (profile {resolved.name})"))
    except ConfigError as exc:
        findings.append(Finding("config", "fail", str(exc)))
    from kas.launch.modes import launcher_for

    launcher = launcher_for(resolved.settings.execution_mode if resolved else "sdk")
    tools = tool_findings(host.system(), host.which, launcher.tools)
    findings += tools
    findings += host_findings(HostFacts.gather(Path.cwd()), resolved, tools)
    procs: list[ProcFacts] = []
    if pid is not None and resolved is not None:
        found, procs = process_finding(pid, resolved)
        findings.append(found)
    failed = any(f.status == "fail" for f in findings)
    if as_json:
        out.json(
            {
                "ok": not failed,
                "checks": [f.to_json() for f in findings],
                "processes": [p.to_json() for p in procs],
            }
        )
    else:
        out.table(((f.name, out.status(f.status), f.detail) for f in findings), ("CHECK", "STATUS", "DETAIL"))
        if procs:
            out.line()
            out.table(
                ((p.pid, p.name, p.nice, p.io, _dash(p.autogroup_nice)) for p in procs),
                ("PID", "NAME", "NI", "IO", "AG-NI"),
            )
    sys.exit(1 if failed else 0)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
