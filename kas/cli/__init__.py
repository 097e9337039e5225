"""The ``kas`` command group. Click lives only in this package: commands ask the library, then print."""

from __future__ import annotations

import click

from kas import __version__
from kas.cli.app import App, KasGroup
from kas.cli.bench import bench
from kas.cli.check import check
from kas.cli.instance import instance
from kas.cli.profile import profile
from kas.cli.spawn import spawn
from kas.cli.wave import wave


@click.group(cls=KasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
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
    ctx.obj = App(config_file)


for command in (profile, spawn, check, instance, wave, bench):
    main.add_command(command)
