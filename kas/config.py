"""Find and load ``.kasmos/config.toml``; turn every TOML or value problem into a located ``ConfigError``."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from kas.errors import ConfigError
from kas.profiles import validate_table
from kas.resolver import ResolvedProfile, merge_tables, resolve
from kas.trust import others_can_write, user_name, write_fix

CONFIG_ENV = "KASMOS_CONFIG"
CONFIG_RELPATH = Path(".kasmos") / "config.toml"
_TOML_POS = r"\(at line (\d+), column (\d+)\)"


class Config(NamedTuple):
    """A loaded config: where it came from (None = no file) and its validated ``[resources]`` table."""

    path: Path | None
    resources: dict[str, Any]
    text: str = ""

    def resolve(self, *extra: Mapping[str, Any] | None) -> ResolvedProfile:
        """Resolve this config's table (plus later layers such as a plan's or ``--set``), errors located."""
        try:
            return resolve(merge_tables(self.resources, *extra))
        except ConfigError as exc:
            if self.path is None or exc.path is not None:
                raise
            if exc.key and any(layer and exc.key in layer for layer in extra):
                raise  # the value came from the command line or a plan, not from this file's line
            line = key_line(self.text, exc.key) if exc.key else None
            raise exc.located(self.path, line) from None


def find_config(start: Path) -> Path | None:
    """Walk up from ``start`` like git looks for ``.git``; the nearest ``.kasmos/config.toml`` wins.

    A file found this way was not named by the user, so it must pass ``check_found`` before kas obeys it.
    """
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_RELPATH
        if candidate.is_file():
            check_found(candidate)
            return candidate
    return None


def check_found(path: Path) -> None:
    """Refuse a discovered config that someone else could have written (git's ``safe.directory`` rule).

    Its ``[resources.env]`` can set ``PATH`` for every agent, so a config dropped into a shared
    directory such as /tmp would run its author's programs as whoever runs kas below it. The file and
    its ``.kasmos`` directory (and, through a symlink, the real file's directory) must belong to the
    user or root and be writable by nobody else.
    """
    me = os.geteuid()
    real = path.resolve()
    places = [(path, "it"), (path.parent, f"its directory {path.parent}")]
    if real.parent != path.parent.resolve():
        places.append((real.parent, f"its real directory {real.parent}"))
    for place, what in places:
        st = place.stat()
        if st.st_uid not in (me, 0):
            raise ConfigError(
                f"refusing this config: {what} belongs to {user_name(st.st_uid)}, not to you "
                f"({user_name(me, with_uid=False)}), and a config can run programs as you; if you trust it, "
                f"`chown` it to yourself or name it with --config",
                path=path,
            )
        reason = others_can_write(st)
        if reason:
            raise ConfigError(
                f"refusing this config: {what} is {reason}, so anyone could have changed it; "
                f"if you trust it, `{write_fix(st)} {place}`",
                path=path,
            )


def check_named(path: Path, source: str) -> None:
    """Refuse a config the user named (--config, $KASMOS_CONFIG) only if anyone could have changed it.

    Naming a file is trusting its author, so any owner is fine; but a world-writable file, or one in a
    world-writable directory without the sticky bit (anyone may replace it), is not the file they read.
    """
    st = path.stat()
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(
            f"refusing this config (from {source}): it is writable by everyone "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so anyone could have changed it; "
            f"if you trust it, `chmod o-w {path}`",
            path=path,
        )
    directory = path.resolve().parent
    dst = directory.stat()
    if dst.st_mode & stat.S_IWOTH and not dst.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"refusing this config (from {source}): its directory {directory} is writable by everyone "
            f"without the sticky bit, so anyone could have replaced it; move the file to a directory "
            f"only you can write",
            path=path,
        )


def config_path(
    explicit: str | os.PathLike[str] | None, cwd: Path | None = None, source: str = "--config"
) -> Path | None:
    """``--config`` beats ``$KASMOS_CONFIG`` beats discovery; an explicit path that is missing is an error.

    ``source`` says how ``explicit`` was given (the CLI passes ``$KASMOS_CONFIG`` when Click read the
    option from the environment), so messages point at what the user has to change.
    """
    chosen = explicit or None
    if not chosen and os.environ.get(CONFIG_ENV):
        chosen, source = os.environ[CONFIG_ENV], f"${CONFIG_ENV}"
    if chosen:
        path = Path(chosen).expanduser()
        if path.is_dir():
            raise ConfigError(f"is a directory, not a config file (from {source}); name the file", path=path)
        if not path.is_file():
            raise ConfigError(f"config file not found (from {source}); create it or fix the path", path=path)
        check_named(path, source)
        return path
    return find_config((cwd or Path.cwd()).resolve())


def parse_toml(path: Path, error: type[ConfigError] = ConfigError) -> tuple[dict[str, Any], str]:
    """Read and parse a TOML file; syntax errors name file:line:column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read file: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise error("file is not UTF-8 text", path=path) from None
    if sys.version_info >= (3, 11):  # imported here: most runs of kas read no TOML at all
        import tomllib
    else:  # pragma: no cover - exercised only on 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text), text
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively: a few hundred levels exhaust the stack.
        raise error(
            "TOML nesting too deep (arrays or inline tables inside each other hundreds of times); flatten it",
            path=path,
        ) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(_TOML_POS, message)
        if match:
            line, column = int(match[1]), int(match[2])
            message = message[: match.start()].strip()
        else:  # "at end of document"
            line, column = text.count("\n") + 1, None
            message = re.sub(r"\s*\(at end of document\)", "", message) + " at end of file"
        raise error(f"TOML syntax error: {message}", path=path, line=line, column=column) from None


def key_line(text: str, key: str, section: str = "resources") -> int | None:
    """Best-effort line number of ``key`` inside ``[section]`` (tomllib keeps no positions)."""
    current = None
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    assign = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        found = header.match(line)
        if found:
            current = found[1]
            continue
        if current is not None and current.startswith(section) and assign.match(line):
            return number
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"^\s*\[\s*{re.escape(section)}\.{re.escape(key)}\s*\]", line):
            return number
    return None


def validate_resources(
    doc: dict[str, Any], path: Path, text: str, error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """Validate the ``[resources]`` table of a parsed document, locating any error in the file."""
    if "resources" not in doc:
        return {}
    try:
        return validate_table(doc["resources"])
    except ConfigError as exc:
        line = key_line(text, exc.key) if exc.key else None
        raise error(exc.message, path=path, line=line, key=exc.key) from None


def load_config(path: Path | None) -> Config:
    """Load a config file; no file (or no ``[resources]``) is the ``normal`` profile."""
    if path is None:
        return Config(None, {})
    doc, text = parse_toml(path)
    return Config(path, validate_resources(doc, path, text), text)
