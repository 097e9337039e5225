"""Which instances a command acts on: one id, several, or ``--all`` running ones (shared by ``kas instance``
and ``kas profile apply``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kas.cli.app import App
from kas.errors import KasError

if TYPE_CHECKING:
    from kas.registry import Instance, Registry

ALL_OPTION = click.option("--all", "every", is_flag=True, help="Every agent that has not finished.")


def open_registry(app: App) -> Registry:
    from kas.registry import Registry

    return Registry(warn=app.out.warn)


def find_instance(registry: Registry, inst_id: str) -> Instance:
    inst = registry.get(inst_id)
    if inst is None:
        raise KasError(f"no instance '{inst_id}'; see `kas instance list --all`")
    return inst


def select_instances(registry: Registry, inst_ids: tuple[str, ...], every: bool) -> list[Instance]:
    """The instances named (all valid before anything is done), or with --all every unfinished one."""
    from kas.status import FINISHED

    if every and inst_ids:
        raise click.UsageError("give instance ids or --all, not both")
    if not every and not inst_ids:
        raise click.UsageError("give instance ids, or --all for every agent that has not finished")
    if every:
        return [i for i in registry.instances(include_finished=False) if i.status not in FINISHED]
    return [find_instance(registry, inst_id) for inst_id in inst_ids]
