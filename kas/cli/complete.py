"""Dynamic shell completion: instance ids, profile names, ``--set`` keys. Cheap imports only: commands
reference these callbacks when they are defined, so this module loads with them (the shell classes that
answer a completion request live in kas.cli.shells)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem


# An item the shell must not follow with a space: the user keeps typing right after it.
NOSPACE = "nospace"


def instance_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Ids from the registry, newest first; no database yet, or an unusable one, means nothing to offer.

    A completion must never print a traceback into the user's command line: the command itself reports
    what is wrong with the state directory or the database when it runs.
    """
    from click.shell_completion import CompletionItem

    from kas.errors import KasError
    from kas.registry import DB_NAME, Registry
    from kas.statedir import state_dir

    try:
        if not (state_dir() / DB_NAME).exists():
            return []
        registry = Registry(timeout=0.5)
    except KasError:
        return []
    try:
        rows = registry.id_candidates(incomplete)
    except KasError:
        return []
    finally:
        registry.close()
    return [CompletionItem(inst_id, help=f"{name} ({status})") for inst_id, name, status in rows]


def set_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--set KEY=VALUE``: complete the key, then the choices of choice keys."""
    from click.shell_completion import CompletionItem

    from kas.profiles import KEYS, PROFILES

    if "=" in incomplete:
        name, _, value = incomplete.partition("=")
        options = PROFILES if name == "profile" else KEYS[name].completions() if name in KEYS else ()
        return [CompletionItem(f"{name}={o}") for o in options if o.startswith(value)]
    helps = {**{k: spec.help for k, spec in KEYS.items()}, "profile": "Which preset to start from."}
    # A key ends in "=" and the value follows it directly: nospace.
    return [
        CompletionItem(f"{k}=", type=NOSPACE, help=h) for k, h in helps.items() if k.startswith(incomplete)
    ]


def profile_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The preset names, for ``--profile``."""
    from click.shell_completion import CompletionItem

    from kas.profiles import PROFILES

    return [CompletionItem(p) for p in PROFILES if p.startswith(incomplete)]


def plan_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``*.toml`` files (and directories to descend into) under what has been typed so far.

    A directory ends in ``/`` and is ``nospace``, so one TAB goes into it and the next lists its plans.
    """
    from click.shell_completion import CompletionItem

    head = os.path.dirname(incomplete)
    try:
        names = sorted(os.listdir(head or "."))
    except OSError:
        return []
    items = []
    for name in names:
        shown = os.path.join(head, name)
        if name.startswith(".") or not shown.startswith(incomplete):
            continue
        if os.path.isdir(shown):
            items.append(CompletionItem(shown + "/", type=NOSPACE))
        elif name.endswith(".toml"):
            items.append(CompletionItem(shown, type="plain"))
    return items
