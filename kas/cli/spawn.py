"""``kas spawn``: launch one agent, wrapped and with the build env, in sdk or tmux mode."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from kas.cli.app import App
from kas.cli.options import json_option, mode_option, tmux_session_option, tmux_socket_option
from kas.cli.output import Output, safe


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the exact argv and env changes; start nothing.")
@mode_option()
@click.option(
    "--name",
    callback=lambda _ctx, _param, value: _bounded_name(value),
    help="A name to find the instance by, up to 200 characters (default: the command's name).",
)
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory to run in (default: here).",
)
@click.option("--detach", is_flag=True, help="sdk mode: return at once; output goes to a log file.")
@tmux_socket_option
@tmux_session_option
@json_option()
@click.argument("command", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
@click.pass_obj
def spawn(
    app: App,
    dry_run: bool,
    mode: str | None,
    name: str | None,
    cwd: Path | None,
    detach: bool,
    tmux_socket: str | None,
    tmux_session: str,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Start CMD as an agent at the profile's CPU and I/O priority.

    Everything after -- is the command, passed as an argv list (never through a shell). Settings are read
    now: editing the config later affects only later spawns. In the foreground kas waits and exits with
    the agent's status; --detach (or tmux mode) returns at once.

    \b
    Examples:
      kas spawn --dry-run -- cargo build
      kas spawn --name coder1 -- claude -p "fix the tests"
      kas spawn --mode tmux -- aider
    """
    from kas.launch.modes import choose_mode

    out = app.output(as_json)
    resolved = app.resolve(quiet=as_json)
    chosen = choose_mode(mode, None, resolved.settings.execution_mode)
    if dry_run:
        from kas.launch.describe import describe

        dry = describe(resolved, command, chosen, os.environ)
        if as_json:
            out.json(dry.to_json())
            return
        out.warn_all(dry.warnings)
        _print_dry_run(out, dry.to_json(), dry.forced)
        return
    from kas.launch.prepare import prepare
    from kas.launch.spawner import SpawnRequest, spawn_instance

    prepared = prepare(resolved, command, os.environ)
    out.warn_all(prepared.warnings)
    request = SpawnRequest(
        argv=list(command),
        mode=chosen,
        name=name or Path(command[0]).name,
        cwd=(cwd or Path.cwd()).resolve(),
        detach=detach,
        tmux_socket=tmux_socket,
        tmux_session=tmux_session,
    )
    result = spawn_instance(request, resolved, prepared)
    out.warn_all(result.warnings)
    row = result.row
    if as_json:
        out.json(row.to_json())
    elif result.detached:
        where = row.tmux_target or f"pid {row.pid}"
        out.line(f"{row.id}  started {safe(row.name)} ({chosen}, {where}, profile {resolved.name})")
        if row.log_path:
            out.line(f"log: {safe(row.log_path)}")
    if result.exit_status is not None:
        sys.exit(result.exit_status)


def _print_dry_run(out: Output, data: dict[str, object], forced: tuple[str, ...]) -> None:
    out.line(f"mode:    {data['mode']}")
    out.line(f"profile: {data['profile']}")
    argv = data["argv"]
    assert isinstance(argv, list)
    out.line(f"argv:    {safe(shlex.join(argv))}")
    if "tmux_command" in data:
        out.line(f"pane:    {data['tmux_command']}  (runs the argv above)")
    if data["autogroup_nice"]:
        out.line(f"then:    autogroup nice {data['autogroup_nice']} for the agent's session group")
    guard = data.get("guard")
    if isinstance(guard, dict):
        out.line(f"guard:   keeps {guard_summary(guard)} on every process the agent starts")
    env = data["env"]
    assert isinstance(env, dict)
    if env:
        out.line("env:")
        for var, value in env.items():
            out.line(f"  {var}={safe(value)}" + (" (forced)" if var in forced else ""))
    else:
        out.line("env:     (nothing added)")


def guard_summary(rules: dict[str, object]) -> str:
    """The guard's rules as a person reads them: ``autogroup 19, nice 10, I/O be/7, oom_score_adj 500``."""
    parts = []
    if rules.get("autogroup"):
        parts.append(f"autogroup {rules['autogroup']}")
    if rules.get("nice"):
        parts.append(f"nice {rules['nice']}")
    if rules.get("ioclass") == 2:
        parts.append(f"I/O be/{rules.get('iolevel', 0)}")
    elif rules.get("ioclass") == 3:
        parts.append("I/O idle")
    if rules.get("oom") is not None:
        parts.append(f"oom_score_adj {rules['oom']}")
    cpus = rules.get("affinity")
    if isinstance(cpus, list) and cpus:
        parts.append(f"CPUs {','.join(map(str, cpus))}")
    if rules.get("policy"):
        parts.append("sched_policy " + {3: "batch", 5: "idle"}.get(int(str(rules["policy"])), "?"))
    return ", ".join(parts) or "the tree only (nothing lowered)"


def _bounded_name(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= 200:
        raise click.BadParameter("give 1 to 200 characters", param_hint="'--name'")
    return value
