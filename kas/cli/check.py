"""``kas check``: are the tools there, does the profile hold here, and does a given process obey it?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kas import platform as host
from kas.cli.app import App
from kas.cli.options import json_option
from kas.errors import ConfigError
from kas.hostcheck import Finding, HostFacts, host_findings, process_finding, tool_findings
from kas.probe import ProcFacts

if TYPE_CHECKING:
    from kas.audit import AgentAudit


@click.command()
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    help="Check this process tree against the configured profile instead of the running agents.",
)
@json_option()
@click.pass_obj
def check(app: App, pid: int | None, as_json: bool) -> None:
    """Check that the resource controls can work on this machine.

    Prints one row per check (ok / warn / fail / info) and a verdict on whether the configured profile
    will hold against other sessions. Then every running agent's whole tree (escaped sessions and
    daemons too) is read from the kernel and compared with the profile it runs under: an agent fails
    only if one of its processes has a higher priority than that profile allows; one kept lower than
    asked is reported. Exit 0 unless something fails. With --pid, compare that process tree with the
    configured profile instead (exit 1 on a process above it, naming what differs).
    """
    out = app.output(as_json)
    findings: list[Finding] = []
    resolved = None
    try:
        resolved = app.resolve(quiet=True)
        where = str(app.config.path) if app.config.path else "none found, so the built-in defaults"
        findings.append(Finding("config", "ok", f"{where}: profile {resolved.name}"))
    except ConfigError as exc:
        findings.append(Finding("config", "fail", str(exc)))
    from kas.launch.modes import launcher_for

    launcher = launcher_for(resolved.settings.execution_mode if resolved else "sdk")
    tools = tool_findings(host.system(), host.which, launcher.tools)
    findings += tools
    findings += host_findings(HostFacts.gather(Path.cwd()), resolved, tools)
    procs: list[ProcFacts] = []
    audits: list[AgentAudit] = []
    if pid is not None and resolved is not None:
        found, procs = process_finding(pid, resolved)
        findings.append(found)
    elif pid is None:
        audits = _audit(app)
        findings += [Finding(f"agent {a.inst_id} ({a.name})", a.verdict, a.summary()) for a in audits]
        if not audits:
            findings.append(Finding("agents", "info", "no running agents to audit"))
    failed = any(f.status == "fail" for f in findings)
    if as_json:
        out.json(
            {
                "ok": not failed,
                "checks": [f.to_json() for f in findings],
                "processes": [p.to_json() for p in procs],
                "agents": [a.to_json() for a in audits],
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


def _audit(app: App) -> list[AgentAudit]:
    """The running agents' audit; a registry kas cannot read is one failed row, not a traceback."""
    from kas.audit import audit_agents
    from kas.errors import KasError
    from kas.registry import Registry

    try:
        registry = Registry(warn=app.out.warn)
    except KasError as exc:
        app.out.warn(f"cannot audit running agents: {exc}")
        return []
    try:
        return audit_agents(registry)
    finally:
        registry.close()


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
