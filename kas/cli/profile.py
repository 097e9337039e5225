"""``kas profile``: what the config asks for, and what it resolves to here."""

from __future__ import annotations

import os
import shlex

import click

from kas.cli.app import App
from kas.cli.complete import instance_ids, profile_names
from kas.cli.options import json_option
from kas.cli.output import safe
from kas.cli.selection import ALL_OPTION, open_registry, select_instances
from kas.profiles import PRESETS, PROFILE_HELP, PROFILES


def shown(value: object) -> str:
    """A setting as TOML spells it: true/false, and unset for no value."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@click.group()
def profile() -> None:
    """Show the configured profile and the presets, and switch running agents to another."""


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
@json_option("Machine-readable output (always fully resolved).")
@click.pass_obj
def show(app: App, resolved: bool, as_profile: str | None, as_json: bool) -> None:
    """Print the profile the config selects.

    With --resolved, also print each setting and where it came from (preset, override or default), the
    build env that would be injected into the current environment and the wrapper prefix for agents.
    """
    from kas.launch.prepare import prepare

    out = app.output(as_json)
    prof = app.resolve({"profile": as_profile} if as_profile else None, quiet=as_json)
    prepared = prepare(prof, [], os.environ)
    env, wrapper = prepared.env, prepared.prefix
    if as_json:
        out.json(
            {
                "profile": prof.name,
                "settings": prof.settings.to_dict(),
                "sources": dict(prof.sources),
                "env": env,
                "wrapper": wrapper,
                "config_path": str(app.config.path) if app.config.path else None,
            }
        )
        return
    out.line(f"profile: {prof.name}")
    out.line(f"config:  {safe(app.config_label)}")
    if not resolved:
        return
    out.line("\nsettings:")
    settings = prof.settings.to_dict()
    width = max(len(k) for k in settings)
    for key, value in settings.items():
        out.line(f"  {key:<{width}}  {shown(value):<12} ({prof.sources[key]})")
    out.line("\nenv injected into agents (from the current environment):")
    for var, value in env.items():
        forced = " (forced)" if var in prof.env else ""
        out.line(f"  {var}={safe(value)}{forced}")
    if not env:
        out.line("  (none)")
    out.line("\nwrapper: " + (shlex.join(wrapper) if wrapper else "(none)"))


@profile.command("list")
@json_option()
@click.pass_obj
def list_profiles(app: App, as_json: bool) -> None:
    """List the presets and what each one sets."""
    out = app.output(as_json)
    if as_json:
        out.json({name: {"help": PROFILE_HELP[name], "settings": PRESETS[name]} for name in PROFILES})
        return
    for name in PROFILES:
        out.line(f"{name:<12} {PROFILE_HELP[name]}")
        for key, value in PRESETS[name].items():
            out.line(f"    {key} = " + (f'"{value}"' if isinstance(value, str) else shown(value)))


@profile.command("apply", short_help="Switch running agents to another profile, now.")
@click.argument("name", metavar="PROFILE", type=click.Choice(PROFILES), shell_complete=profile_names)
@click.argument("inst_ids", nargs=-1, metavar="[ID...|--all]", shell_complete=instance_ids)
@ALL_OPTION
@json_option("A JSON list: each agent's profile before and after, what changed and what stayed.")
@click.pass_obj
def apply(app: App, name: str, inst_ids: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Switch running agents and their whole trees to PROFILE, now, and record it.

    PROFILE is resolved as `kas profile show --profile PROFILE` would here (this directory's config,
    with PROFILE selected). The guard of each agent keeps the new profile on everything it starts from
    now on. The session group (autogroup) and I/O class move both ways; a process's nice and OOM score
    are only ever raised, so a switch to a lighter profile says which nice stays. For Feral GameMode:
    `kas profile apply interactive --all` as a [custom] start= hook, `kas profile apply normal --all`
    as end=.
    """
    from kas.apply import apply_profile

    out = app.output(as_json)
    resolved = app.resolve({"profile": name}, quiet=as_json)
    registry = open_registry(app)
    try:
        done = [
            apply_profile(registry, inst, resolved) for inst in select_instances(registry, inst_ids, every)
        ]
    finally:
        registry.close()
    if as_json:
        out.json([a.to_json() for a in done])
        return
    if not done:
        out.line("no running agents")
    notes: list[str] = []
    for a in done:
        if not a.changed and not a.kept and a.status not in ("running", "paused", "orphaned"):
            out.line(f"{a.inst.id}  {out.status(a.status)}: not running, left as it was")
            continue
        what = ", ".join(a.changed) or "nothing to change"
        out.line(f"{a.inst.id}  {a.previous} -> {a.inst.resource_profile}: {what}")
        notes += [note for note in a.kept if note not in notes]
    for note in notes:  # once, however many agents it concerns
        out.line(f"note: {note}")
