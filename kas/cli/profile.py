"""``kas profile``: what the config asks for, and what it resolves to here."""

from __future__ import annotations

import os
import shlex

import click

from kas.cli.app import App
from kas.cli.complete import profile_names
from kas.cli.output import echo_json
from kas.launch.prepare import prepare
from kas.profiles import PRESETS, PROFILE_HELP, PROFILES


@click.group()
def profile() -> None:
    """Show the configured resource profile and the presets."""


@profile.command("show")
@click.option(
    "--resolved", is_flag=True, help="Every setting with its value and source, the env and wrapper."
)
@click.option(
    "--profile",
    "as_profile",
    shell_complete=profile_names,
    type=click.Choice(PROFILES),
    help="Show what the config would resolve to with this profile selected instead.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (always fully resolved).")
@click.pass_obj
def show(app: App, resolved: bool, as_profile: str | None, as_json: bool) -> None:
    """Print the profile the config selects.

    With --resolved, also print each setting and where it came from (preset, override or default), the
    build env that would be injected into the current environment and the wrapper prefix for agents.
    """
    prof = app.resolve({"profile": as_profile} if as_profile else None, quiet=as_json)
    prepared = prepare(prof, [], os.environ)
    env, wrapper = prepared.env, prepared.prefix
    if as_json:
        echo_json(
            {
                "profile": prof.name,
                "settings": dict(prof.settings),
                "sources": dict(prof.sources),
                "env": env,
                "wrapper": wrapper,
                "config_path": str(app.config.path) if app.config.path else None,
            }
        )
        return
    click.echo(f"profile: {prof.name}")
    click.echo(f"config:  {app.config_label}")
    if not resolved:
        return
    click.echo("\nsettings:")
    width = max(len(k) for k in prof.settings)
    for key, value in prof.settings.items():
        shown = "unset" if value is None else str(value).lower() if isinstance(value, bool) else value
        click.echo(f"  {key:<{width}}  {shown!s:<12} ({prof.sources[key]})")
    click.echo("\nenv injected into agents (from the current environment):")
    if env:
        for var, value in env.items():
            forced = " (forced)" if var in prof.env else ""
            click.echo(f"  {var}={value}{forced}")
    else:
        click.echo("  (none)")
    click.echo("\nwrapper: " + (shlex.join(wrapper) if wrapper else "(none)"))


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_profiles(as_json: bool) -> None:
    """List the presets and what each one sets."""
    if as_json:
        echo_json({name: {"help": PROFILE_HELP[name], "settings": PRESETS[name]} for name in PROFILES})
        return
    for name in PROFILES:
        click.echo(f"{name:<12} {PROFILE_HELP[name]}")
        for key, value in PRESETS[name].items():
            click.echo(f"    {key} = {value!r}".replace("True", "true"))
