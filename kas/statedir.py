"""Where kas keeps its database and logs: private to the user, since agents' output may hold secrets."""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "KAS_STATE_DIR"


def state_dir() -> Path:
    """``$KAS_STATE_DIR``, else ``$XDG_STATE_HOME/kas``, else ``~/.local/state/kas``; created 0700."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "kas"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create a directory readable only by its owner (and tighten it if it already existed)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create (or open) a file with mode 0600 before anyone writes to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    return path


def log_path(name: str) -> Path:
    """A private log file under ``<state>/logs/`` (the directory is 0700)."""
    return private_file(private_dir(state_dir() / "logs") / f"{name}.log")
