"""The launcher protocol: what every execution mode offers, so that nothing above ``kas/launch`` asks which
mode an agent runs in.

A ``Launcher`` starts a ``LaunchSpec`` and returns a ``Handle``; given a registry row it re-attaches to an
agent started earlier (by this kas or another one). A ``Handle`` waits for the agent, signals its whole
process group and says whether it still runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kas.launch.prepare import Prepared
    from kas.launch.tree import GuardRef
    from kas.registry import Instance, Registry


@dataclass(frozen=True)
class LaunchSpec:
    """One agent to start: the wrapped command, its whole environment, where it runs and logs.

    ``env`` is the agent's complete environment (the caller's plus what the profile adds), the same in
    every mode: a tmux agent does not inherit the tmux server's environment instead of the caller's.
    """

    inst_id: str
    name: str
    prepared: Prepared
    cwd: Path
    env: Mapping[str, str]
    log: Path | None = None  # None: output is discarded (sdk) or only on the pane (tmux)
    autogroup_nice: int = 0  # 0: leave the agent's session group alone
    # Killed when the kas process that started it dies, however it dies (the bench's stand-in agents).
    dies_with_caller: bool = False
    # What the agent's guard keeps on its whole tree (``tree.guard_rules``); None: no guard (not Linux).
    guard: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Poll:
    """An agent's state now: still running, or ended (with its exit status when that is known)."""

    running: bool
    exit_status: int | None = None
    answered: bool = True  # False: the state could not be read (a tmux server that does not answer)


class Handle(Protocol):
    """A started agent."""

    pid: int | None
    create_time: float | None  # the kernel's start time of ``pid``, where it is known
    target: str | None  # where a person finds it besides its pid (a tmux pane id)
    guard: GuardRef | None  # the agent's guard (its parent and subreaper), if it has one

    def ready(self) -> None:
        """Block until the agent itself runs (``start`` may return while its guard still starts it);
        then ``pid`` is the agent's. ``LaunchError`` if it could not start."""
        ...

    def wait(self) -> int | None:
        """Block until the agent ends; its exit status (128 + N for a signal), None if unknown."""
        ...

    def poll(self) -> Poll: ...

    def signal(self, sig: int) -> bool:
        """Signal the agent's whole process group; False if it is gone."""
        ...

    def stop(self, grace: float) -> int | None:
        """SIGTERM the group, SIGKILL after ``grace`` seconds; the exit status if it could be seen."""
        ...

    def discard(self) -> list[Path]:
        """Let go of what the mode kept after the agent ended (a tmux window); return files to delete."""
        ...


@dataclass
class SpawnOutcome:
    """What ``Launcher.spawn`` did: the handle, and for a foreground agent its exit status."""

    handle: Handle
    exit_status: int | None = None
    warnings: list[str] = field(default_factory=list)


class Launcher(Protocol):
    """One execution mode."""

    mode: str
    always_detached: bool  # its agents outlive this process by nature (a tmux window)
    tools: tuple[str, ...]  # programs it cannot work without

    def start(self, spec: LaunchSpec) -> Handle:
        """Start an agent that this process watches (waves, the bench); output goes to ``spec.log``."""
        ...

    def spawn(self, spec: LaunchSpec, registry: Registry, *, foreground: bool) -> SpawnOutcome:
        """``kas spawn``: start an agent whose start and end are recorded in ``registry`` by whoever
        outlives this process; with ``foreground`` (where the mode has one) wait for it here."""
        ...

    def attach(self, inst: Instance) -> Handle:
        """A handle on an agent started earlier, from its registry row."""
        ...

    def describe(self, prepared: Prepared) -> Mapping[str, str]:
        """What ``--dry-run`` adds for this mode (e.g. the tmux pane's command)."""
        ...

    def row_fields(self) -> dict[str, str | None]:
        """Registry columns this mode needs to find its agents again (the tmux socket)."""
        ...

    def release(self) -> None:
        """Let go of what the launcher set up around its agents once they are gone (a tmux session)."""
        ...
