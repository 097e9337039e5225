"""Printing helpers: JSON for scripts, tables for people. tabulate is imported only when a table is drawn."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import click


def echo_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(list(rows), headers=list(headers), tablefmt="plain", disable_numparse=True)
