"""A Click group that imports a subcommand's module only when that command is used.

``kas --help`` and ``kas profile show`` must start fast; importing every command module (and what
they import) up front would cost more than Click itself.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """Subcommands given as ``name -> ("module:attr", "short help")``; loaded on first use.

    The stored short help becomes the loaded command's own (unless it sets one), so ``kas --help``, the
    group's listing after loading, and the man pages' NAME lines say the same whole sentence rather
    than Click cutting the docstring's first line at 45 characters with "...".
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, attr = self.lazy[cmd_name][0].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            if command.short_help is None:
                command.short_help = self.lazy[cmd_name][1]
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the stored short help, so ``--help`` imports no command module."""
        rows = [(name, self.lazy[name][1]) for name in self.list_commands(ctx) if name in self.lazy]
        rows += [
            (name, cmd.get_short_help_str(formatter.width))
            for name, cmd in self.commands.items()
            if name not in self.lazy and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))
