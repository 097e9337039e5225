"""``kas spawn``: launch one agent, wrapped and with the build env, in sdk or tmux mode."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from kas.cli.app import App
from kas.cli.output import echo_json
from kas.launch.prepare import prepare, warn_once
from kas.profiles import EXECUTION_MODES


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the exact argv and env changes; start nothing.")
@click.option("--mode", type=click.Choice(EXECUTION_MODES), help="Override execution_mode from the config.")
@click.option("--name", help="A name to find the instance by (default: the command's name).")
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory to run in (default: here).",
)
@click.option("--detach", is_flag=True, help="sdk mode: return at once; output goes to a log file.")
@click.option(
    "--tmux-socket",
    envvar="KAS_TMUX_SOCKET",
    help="tmux socket name (tmux -L) instead of the default server (also $KAS_TMUX_SOCKET).",
)
@click.option(
    "--tmux-session",
    envvar="KAS_TMUX_SESSION",
    default="kas",
    show_default=True,
    help="tmux session that holds the agent windows (also $KAS_TMUX_SESSION).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
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
    now: editing the config later affects only later spawns.

    \b
    Examples:
      kas spawn --dry-run -- cargo build
      kas spawn --name coder1 -- claude -p "fix the tests"
      kas spawn --mode tmux -- aider
    """
    resolved = app.resolve(quiet=as_json)
    mode = mode or resolved["execution_mode"]
    prepared = prepare(resolved, command, os.environ)
    if dry_run:
        from kas.launch.session import autogroup_here

        data = {"argv": prepared.argv, "env": prepared.env, "mode": mode, "profile": resolved.name}
        # Not part of the argv: written to /proc/<pid>/autogroup right after launch (0 = left alone).
        data["autogroup_nice"] = autogroup_here(resolved)
        if mode == "tmux":
            from kas.launch.tmux import pane_argv

            # What the pane runs: the same argv under kas's exit-status recorder (see kas.launch.tmux).
            pane = pane_argv("$KAS_STATE_DIR/status/<id>", prepared.argv, len(prepared.prefix))
            data["tmux_command"] = "exec " + shlex.join(pane)
        if as_json:
            echo_json(data)
            return
        warn_once(prepared.warnings)
        click.echo(f"mode:    {mode}")
        click.echo(f"profile: {resolved.name}")
        click.echo(f"argv:    {shlex.join(prepared.argv)}")
        if "tmux_command" in data:
            click.echo(f"pane:    {data['tmux_command']}")
        if data["autogroup_nice"]:
            click.echo(f"then:    autogroup nice {data['autogroup_nice']} for the agent's session group")
        if prepared.env:
            click.echo("env:")
            for var, value in prepared.env.items():
                click.echo(f"  {var}={value}" + (" (forced)" if var in resolved.env else ""))
        else:
            click.echo("env:     (nothing added)")
        return
    warn_once(prepared.warnings)
    from kas.launch.spawner import SpawnRequest, spawn_instance

    request = SpawnRequest(
        argv=list(command),
        mode=mode,
        name=name or Path(command[0]).name,
        cwd=(cwd or Path.cwd()).resolve(),
        detach=detach,
        tmux_socket=tmux_socket,
        tmux_session=tmux_session,
    )
    result = spawn_instance(request, resolved, prepared)
    if as_json:
        echo_json(result.row.to_json())
    elif result.detached:
        where = result.row.tmux_target or f"pid {result.row.pid}"
        click.echo(f"{result.row.id}  started {result.row.name} ({mode}, {where}, profile {resolved.name})")
        if result.row.log_path:
            click.echo(f"log: {result.row.log_path}")
    if result.exit_status is not None:
        sys.exit(result.exit_status)
