"""The one place that maps an execution mode to its launcher, and decides which mode applies."""

from __future__ import annotations

from kas.launch.base import Launcher


def choose_mode(flag: str | None, plan: str | None, configured: str) -> str:
    """A ``--mode`` flag beats a plan's ``[defaults] mode``, which beats the config's ``execution_mode``."""
    return flag or plan or configured


def launcher_for(mode: str, *, tmux_socket: str | None = None, tmux_session: str = "kas") -> Launcher:
    """The launcher for ``mode`` (``sdk`` or ``tmux``); tmux options are ignored by sdk."""
    if mode == "tmux":
        from kas.launch.tmux import TmuxLauncher

        return TmuxLauncher(tmux_socket, tmux_session)
    from kas.launch.sdk import SdkLauncher

    return SdkLauncher()
