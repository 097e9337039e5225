"""Where kas keeps its database and logs: private to the user, since agents' output may hold secrets.

The rows there also decide which processes ``kas instance stop`` signals, so a directory someone else
owns or can write is refused rather than tightened: its contents may already have been planted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kas.errors import StateError
from kas.trust import others_can_write, user_name

STATE_ENV = "KAS_STATE_DIR"
# Kernel pseudo-filesystems: they look like directories but cannot hold a database or logs.
PSEUDO_FS = (Path("/proc"), Path("/sys"))
ELSEWHERE = f"point ${STATE_ENV} at a directory of your own"


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
    """Create a directory readable only by its owner, or check that an existing one is really private.

    An existing directory must be ours and writable by nobody else (else ``StateError``); read access
    for others is only tightened away, since nothing could have been planted through it.
    """
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise StateError(
            f"{path}: cannot resolve the state directory ({exc}); fix the symlinks or {ELSEWHERE}"
        ) from None
    for pseudo in PSEUDO_FS:
        if real == pseudo or pseudo in real.parents:
            raise StateError(
                f"{path}: is under {pseudo}, a kernel pseudo-filesystem that cannot hold kas's state; "
                f"{ELSEWHERE} on disk"
            )
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except FileExistsError:
        raise StateError(f"{path}: exists but is not a directory; move it aside or {ELSEWHERE}") from None
    except NotADirectoryError:
        raise StateError(f"{path}: a part of this path is a file, not a directory; {ELSEWHERE}") from None
    except OSError as exc:
        raise StateError(
            f"{path}: cannot create the state directory ({exc.strerror}); create it yourself or {ELSEWHERE}"
        ) from None
    me = os.geteuid()
    if st.st_uid != me:
        raise StateError(
            f"{path}: the state directory belongs to {user_name(st.st_uid)}, not to you "
            f"({user_name(me, with_uid=False)}); if you trust what is in it, `chown -R` it to yourself, "
            f"or {ELSEWHERE}"
        )
    reason = others_can_write(st)
    if reason:
        fix = f"if it is kas's own and nobody else put files in it, `chmod 700 {path}`; or {ELSEWHERE}"
        if st.st_mode & stat.S_ISVTX:  # a shared directory like /tmp: never advise closing it
            fix = f"{ELSEWHERE} (a new one inside {path} will do: kas creates it private)"
        raise StateError(
            f"{path}: the state directory is {reason}, so others could have planted files in it; {fix}"
        )
    if not _writable(path):
        raise StateError(
            f"{path}: the state directory is not writable for you; fix its permissions "
            f"(`chmod u+w`, or `chattr -i` if lsattr shows 'i') or {ELSEWHERE}"
        )
    if st.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            raise StateError(
                f"{path}: cannot make the state directory private ({exc.strerror}); {ELSEWHERE}"
            ) from None
    return path


def _writable(path: Path) -> bool:
    """Whether this process may create files in ``path``, as the kernel decides (root, immutable, ro)."""
    mode = os.W_OK | os.X_OK
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)  # pragma: no cover - platforms without faccessat


def private_file(path: Path) -> Path:
    """Create (or open) a file with mode 0600 before anyone writes to it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except IsADirectoryError:
        raise StateError(f"{path}: is a directory where kas keeps a file; move it aside") from None
    except OSError as exc:
        raise StateError(
            f"{path}: cannot create or open this file ({exc.strerror}); check its permissions"
        ) from None
    os.close(fd)
    return path


def log_path(name: str) -> Path:
    """A private log file under ``<state>/logs/`` (the directory is 0700)."""
    return private_file(private_dir(state_dir() / "logs") / f"{name}.log")
