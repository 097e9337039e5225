"""``kas check``: are the tools there, does the profile hold here, and does a given process obey it?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kas import platform as host
from kas.cli.app import App
from kas.cli.output import echo_json, table
from kas.errors import ConfigError
from kas.hostcheck import Finding, HostFacts, host_findings, tool_findings
from kas.launch.session import autogroup_here


@click.command()
@click.option("--pid", type=int, help="Also read this process's (and its children's) niceness and I/O class.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def check(app: App, pid: int | None, as_json: bool) -> None:
    """Check that the resource controls can work on this machine.

    Prints one row per check (ok / warn / fail / info) and a verdict on whether the configured profile
    will hold against other sessions. Exit 0 unless something fails. With --pid, compare a running
    process tree with the resolved profile (exit 1 on a mismatch, naming what differs).
    """
    findings: list[Finding] = []
    resolved = None
    try:
        resolved = app.resolve(quiet=True)
        findings.append(Finding("config", "ok", app.config_label + f" (profile {resolved.name})"))
    except ConfigError as exc:
        findings.append(Finding("config", "fail", str(exc)))
    mode = resolved["execution_mode"] if resolved else "sdk"
    findings += tool_findings(host.system(), host.which, mode)
    if resolved is not None:
        findings += host_findings(HostFacts.gather(Path.cwd()), resolved)

    procs = []
    if pid is not None and resolved is not None:
        from kas.probe import compare, expected_facts, process_tree

        procs = process_tree(pid)
        if not procs:
            findings.append(Finding(f"pid {pid}", "fail", "no such process"))
        else:
            expected = expected_facts(resolved, host.system())
            if autogroup_here(resolved):
                expected["autogroup_nice"] = autogroup_here(resolved)
            bad = compare(procs, expected)
            findings.append(
                Finding(
                    f"pid {pid}",
                    "fail" if bad else "ok",
                    "; ".join(f"pid {p.pid} ({p.name}): {', '.join(p.problems)}" for p in bad)
                    or f"{len(procs)} process(es) match the {resolved.name} profile",
                )
            )
    failed = any(f.status == "fail" for f in findings)
    if as_json:
        echo_json(
            {
                "ok": not failed,
                "checks": [f.to_json() for f in findings],
                "processes": [p.to_json() for p in procs],
            }
        )
    else:
        click.echo(table(((f.name, f.status, f.detail) for f in findings), ("CHECK", "STATUS", "DETAIL")))
        if procs:
            click.echo()
            click.echo(
                table(
                    ((p.pid, p.name, p.nice, p.io, _dash(p.autogroup_nice)) for p in procs),
                    ("PID", "NAME", "NI", "IO", "AG-NI"),
                )
            )
    sys.exit(1 if failed else 0)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
