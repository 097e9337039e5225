"""What every command shares: the lazily loaded config, the output, and user errors as one line + exit 2."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from kas.cli.output import Output
from kas.errors import KasError

if TYPE_CHECKING:
    from kas.config import Config
    from kas.resolver import ResolvedProfile


class App:
    """Per-invocation state handed to commands through ``ctx.obj``."""

    def __init__(self, config_file: str | None, config_source: str = "--config") -> None:
        # Click feeds $KASMOS_CONFIG into the --config option; the source keeps messages naming the right one.
        self.config_file = config_file
        self.out = Output()
        self.config_source = config_source

    @cached_property
    def config(self) -> Config:
        from kas.config import config_path, load_config

        return load_config(config_path(self.config_file, source=self.config_source))

    def resolve(self, *extra: dict[str, Any] | None, quiet: bool = False) -> ResolvedProfile:
        """The one resolved profile for this invocation; its warnings go to stderr once."""
        resolved = self.config.resolve(*extra)
        if not quiet:
            where = f"{self.config.path}: " if self.config.path else ""
            self.out.warn_all(where + w for w in resolved.warnings)
        return resolved

    def output(self, as_json: bool) -> Output:
        """The command's output, in JSON or for people."""
        self.out.as_json = as_json
        return self.out

    @property
    def config_label(self) -> str:
        path = self.config.path
        return str(path) if path else "(none: built-in normal profile)"


class KasGroup(click.Group):
    """A group that reports ``KasError`` as one line and its exit code, never as a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if os.environ.get("_KAS_COMPLETE"):
            # Only while completing: kas's protocol classes (bash rejoins key=value, the nospace type;
            # see complete.py), so that plain commands never import the completion module.
            from kas.cli.shells import register

            register()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        # Output that the terminal's encoding cannot show is replaced, never fatal (a task printing a
        # check mark under PYTHONIOENCODING=latin-1 must not kill the thread that echoes it).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors="replace")  # type: ignore[union-attr]
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _interrupt)  # commands that run agents install their own
        try:
            return super().invoke(ctx)
        except KasError as exc:
            click.echo(f"kas: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            app = ctx.obj
            if not (isinstance(app, App) and app.out.closed):
                with contextlib.suppress(OSError):
                    click.echo("kas: interrupted", err=True)
            ctx.exit(130)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
