"""Errors a user can cause. The CLI turns each into one line on stderr and exit 2.

Anything that is not a ``KasError`` is a bug in kas and may show a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class KasError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(KasError):
    """A bad config or plan value; carries where it is so the user can go straight to it."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.key = key

    def located(self, path: Path | str, line: int | None = None) -> ConfigError:
        """Return a copy that names the file (and line) the bad value came from."""
        return ConfigError(
            self.message,
            path=path,
            line=self.line if line is None else line,
            column=self.column,
            key=self.key,
        )

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{self.message}"


class PlanError(ConfigError):
    """A bad wave plan: found before any task starts."""


class RegistryError(KasError):
    """The instance database cannot be used (corrupt, newer schema, unwritable)."""


class RegistryBusyError(RegistryError):
    """Another process held the database's write lock for longer than kas waits.

    Nothing is wrong with the user's setup, so this is a run-time failure (exit 1): trying again works.
    """

    exit_code = 1


class StateError(KasError):
    """The state directory cannot be used safely: not a directory, not writable, or not private."""


class LaunchError(KasError):
    """An agent could not be started (missing tmux, bad cwd, ...)."""
