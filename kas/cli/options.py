"""Options that several commands share, defined once so their names, help and bounds agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kas.launch.groups import MAX_GRACE
from kas.profiles import EXECUTION_MODES

F = TypeVar("F", bound=Callable[..., Any])


def json_option(help: str = "Machine-readable output.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def mode_option(help: str = "Override execution_mode from the config.") -> Callable[[F], F]:
    return click.option("--mode", type=click.Choice(EXECUTION_MODES), help=help)


class Seconds(click.FloatRange):
    """A number of seconds in a range; ``nan`` is not one (it passes every comparison)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return number


def grace_option(help: str = "Seconds between SIGTERM and SIGKILL.") -> Callable[[F], F]:
    return click.option(
        "--grace",
        type=Seconds(0, MAX_GRACE),
        default=5.0,
        show_default=True,
        help=f"{help} (0-{MAX_GRACE:g})",
    )


def tmux_socket_option(f: F) -> F:
    return click.option(
        "--tmux-socket",
        envvar="KAS_TMUX_SOCKET",
        help="tmux socket name (tmux -L) instead of the default server (also $KAS_TMUX_SOCKET).",
    )(f)


def tmux_session_option(f: F) -> F:
    return click.option(
        "--tmux-session",
        envvar="KAS_TMUX_SESSION",
        default="kas",
        show_default=True,
        help="tmux session that holds the agent windows (also $KAS_TMUX_SESSION).",
    )(f)
