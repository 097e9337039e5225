"""The ``kas`` command group. Click lives only in this package: commands ask the library, then print."""

from __future__ import annotations

import click

from kas import __version__
from kas.cli.app import App, KasGroup
from kas.cli.lazy import LazyGroup

COMMANDS = {
    "bench": ("kas.cli.bench:bench", "Benchmarks that show whether the resource controls work here."),
    "check": ("kas.cli.check:check", "Check that the resource controls can work on this machine."),
    "completion": (
        "kas.cli.completion:completion",
        "Print the shell completion script for bash, zsh or fish.",
    ),
    "instance": (
        "kas.cli.instance:instance",
        "List, inspect, read, pause, resume, stop, adopt and prune agents.",
    ),
    "profile": (
        "kas.cli.profile:profile",
        "Show the configured profile and the presets, and switch running agents to another.",
    ),
    "serve": ("kas.cli.serve:serve", "Serve the local API and the admin page (token-protected, loopback)."),
    "spawn": ("kas.cli.spawn:spawn", "Start CMD as an agent at the profile's CPU and I/O priority."),
    "wave": ("kas.cli.wave:wave", "Run waves of agent tasks with at most max_parallel_wave_tasks at once."),
}


class KasCLI(KasGroup, LazyGroup):
    """The top-level group: lazy subcommands, and user errors as one line."""


@click.group(
    cls=KasCLI,
    lazy=COMMANDS,
    short_help="Run coding agents at reduced CPU and I/O priority.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    metavar="FILE",
    envvar="KASMOS_CONFIG",
    help="Config file to use instead of the nearest .kasmos/config.toml (also $KASMOS_CONFIG).",
)
@click.version_option(__version__, "-V", "--version", prog_name="kas")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """Run coding agents at reduced CPU and I/O priority, so games, calls and streams keep their frames.

    Settings come from the [resources] block of .kasmos/config.toml (found in the current directory or
    the nearest parent). Start with `kas profile show --resolved` and `kas check`.

    Exit codes: 0 ok, 1 a failure was found, 2 usage or config error, 130 interrupted.
    """
    from_env = ctx.get_parameter_source("config_file") is click.core.ParameterSource.ENVIRONMENT
    ctx.obj = App(config_file, "$KASMOS_CONFIG" if from_env else "--config")
