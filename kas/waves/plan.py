"""Load and validate a wave plan (TOML). Every problem is found here, before any task starts."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kas.config import parse_toml, validate_resources
from kas.errors import ConfigError, PlanError
from kas.profiles import EXECUTION_MODES, suggest, validate_env

PLAN_KEYS = ("name", "defaults", "resources", "waves")
DEFAULT_KEYS = ("cwd", "env", "mode", "timeout")
WAVE_KEYS = ("name", "tasks")
TASK_KEYS = ("id", "command", "cwd", "env", "name", "timeout")
# Always used with fullmatch: with ``^...$`` and match, ``$`` also matches before a final newline.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# An id names its log file, <state>/logs/run-XXXX/<id>.log: a longer one than a file name may be (255
# bytes) would only fail when its wave starts, after earlier waves ran. 64 leaves room and stays readable.
MAX_TASK_ID = 64
# A task timeout above a week is far more likely a unit slip (milliseconds?) than a wish; 0 means none.
MAX_TIMEOUT = 7 * 24 * 60 * 60
# A bare or dotted table header such as ``[defaults]`` or ``[[waves.tasks]]`` (quoted keys are not located).
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*\]\]?\s*(?:#.*)?$")


@dataclass(frozen=True)
class Task:
    """One command of a wave, with everything it needs already validated and resolved."""

    id: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    name: str
    # Seconds the task may run; None = no limit. Defaults to None so older constructors keep working.
    timeout: float | None = None


@dataclass(frozen=True)
class Wave:
    name: str
    tasks: list[Task]


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    mode: str | None
    resources: dict[str, Any]
    waves: list[Wave] = field(default_factory=list)

    @property
    def task_count(self) -> int:
        return sum(len(w.tasks) for w in self.waves)


@dataclass(frozen=True)
class _Defaults:
    """What ``[defaults]`` gives every task that does not set its own value."""

    cwd: Path
    env: dict[str, str]
    timeout: float | None


class _ErrorAt(Protocol):
    """Builds a PlanError for this plan file at a line (if one is known)."""

    def __call__(self, message: str, line: int | None = None) -> PlanError: ...


class _Locator:
    """Best-effort line numbers for plan errors (tomllib keeps no positions).

    Lines are split on ``\\n`` only, as TOML does: ``str.splitlines`` would also split on characters such
    as U+2028 that TOML allows inside strings and comments, and every later line number would be off.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.tables: list[tuple[int, str, bool]] = []  # (line, dotted name, is an array-of-tables header)
        for number, line in enumerate(self.lines, 1):
            found = _HEADER.match(line)
            if found:
                self.tables.append((number, re.sub(r"\s+", "", found[2]), found[1] == "[["))
        self.header_lines = {number for number, _, _ in self.tables}

    def headers(
        self, name: str, *, array: bool = True, after: int = 0, before: int | None = None
    ) -> list[int]:
        """Lines of the ``[[name]]`` (or ``[name]``) headers strictly between ``after`` and ``before``."""
        return [
            number
            for number, table, is_array in self.tables
            if table == name and is_array == array and after < number and (before is None or number < before)
        ]

    def header(self, name: str, index: int, *, array: bool = True) -> int | None:
        """Line of the ``index``-th ``[[name]]`` header (0-based), if there is one."""
        hits = self.headers(name, array=array)
        return hits[index] if index < len(hits) else None

    def key(self, key: str, table: int | None) -> int | None:
        """Line of ``key = ...`` inside the table whose header is on line ``table`` (0 = the top level).

        The search stops at the next header, so a key is never found in some other table; ``None`` when
        the table is unknown (an inline table, say) or the key is not written on a line of its own.
        """
        if table is None:
            return None
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(table + 1, len(self.lines) + 1):
            if number in self.header_lines:
                return None
            if pattern.match(self.lines[number - 1]):
                return number
        return None


def load_plan(path: Path) -> Plan:
    """Parse, validate and normalise a plan file; relative cwds are relative to the plan's directory.

    Every value is type-checked before it is used: TOML lets a user write ``waves = [1]`` or
    ``env = "x"``, and each such slip must become one located line, not a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError("plan file not found; check the path", path=path)
    doc, text = parse_toml(path, PlanError)
    where = _Locator(text)

    def err(message: str, line: int | None = None) -> PlanError:
        return PlanError(message, path=path, line=line)

    def top(key: str) -> int | None:
        return where.key(key, 0)

    for key in doc:
        if key not in PLAN_KEYS:
            raise err(f"unknown key '{key}' at the top of the plan{suggest(key, PLAN_KEYS)}", top(key))
    name = doc.get("name", path.stem)
    _text(name, "name", err, lambda: top("name"))
    defaults = doc.get("defaults", {})
    defaults_at = where.header("defaults", 0, array=False) or top("defaults")
    if not isinstance(defaults, dict):
        raise err("defaults must be a table: use [defaults]", defaults_at)

    def default_line(key: str) -> int | None:
        return where.key(key, where.header("defaults", 0, array=False)) or defaults_at

    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise err(f"unknown key '{key}' in [defaults]{suggest(key, DEFAULT_KEYS)}", default_line(key))
    mode = defaults.get("mode")
    if mode is not None and mode not in EXECUTION_MODES:
        raise err(f'[defaults] mode = {mode!r}: use "sdk" or "tmux"', default_line("mode"))
    base_dir = path.parent.resolve()
    default_cwd = _cwd(defaults.get("cwd", "."), base_dir, err, lambda: default_line("cwd"))
    default_env = _env(
        defaults.get("env", {}),
        "defaults.env",
        "",
        err,
        lambda: default_line("env") or where.header("defaults.env", 0, array=False),
    )
    default_timeout = (
        _timeout(defaults["timeout"], "[defaults] timeout", err, lambda: default_line("timeout"))
        if "timeout" in defaults
        else None
    )
    task_defaults = _Defaults(default_cwd, default_env, default_timeout)
    if not isinstance(doc.get("resources", {}), dict):
        raise err("resources must be a table: use [resources]", top("resources"))
    resources = validate_resources(doc, path, text, PlanError)

    raw_waves = doc.get("waves")
    waves_at = top("waves") or where.header("waves", 0, array=False) or where.header("waves.tasks", 0)
    if raw_waves is None or raw_waves == []:
        raise err("the plan has no waves; add [[waves]] with [[waves.tasks]] entries", waves_at)
    if not isinstance(raw_waves, list):
        raise err("waves must be a list of tables: write each wave as [[waves]] (double brackets)", waves_at)
    wave_headers = where.headers("waves")
    seen: dict[str, str] = {}
    waves: list[Wave] = []
    for w_index, raw in enumerate(raw_waves):
        header = wave_headers[w_index] if w_index < len(wave_headers) else None
        following = wave_headers[w_index + 1] if w_index + 1 < len(wave_headers) else None
        if not isinstance(raw, dict):
            raise err(f"wave {w_index + 1} must be a table: use [[waves]]", header or waves_at)
        at = (header, following, waves_at)
        waves.append(_wave(raw, w_index, at, task_defaults, seen, err, where))
    return Plan(path, name, mode, resources, waves)


def _wave(
    raw: dict[str, Any],
    index: int,
    at: tuple[int | None, int | None, int | None],
    defaults: _Defaults,
    seen: dict[str, str],
    err: _ErrorAt,
    where: _Locator,
) -> Wave:
    """Validate one wave.

    ``at`` holds its ``[[waves]]`` line (None if written inline), the next wave's, and the line to report
    when the wave has no header of its own (the plan's ``waves = [...]``).
    """
    header, following, fallback = at
    home = header or fallback
    label = f"wave {index + 1}"
    for key in raw:
        if key not in WAVE_KEYS:
            raise err(
                f"{label}: unknown key '{key}'{suggest(key, WAVE_KEYS)}", where.key(key, header) or home
            )
    tasks_raw = raw.get("tasks")
    after = header or 0
    tasks_at = (
        where.key("tasks", header)
        or next(iter(where.headers("waves.tasks", array=False, after=after, before=following)), None)
        or home
    )
    if tasks_raw is None or tasks_raw == []:
        raise err(f"{label} has no tasks; add [[waves.tasks]] entries or remove the wave", home)
    if not isinstance(tasks_raw, list):
        raise err(f"{label}: tasks must be a list of tables: write each task as [[waves.tasks]] "
                  "(double brackets)", tasks_at)  # fmt: skip
    # Only this wave's [[waves.tasks]] headers, so a wave written with inline tasks cannot shift the
    # lines reported for every later task.
    task_headers = where.headers("waves.tasks", after=after, before=following) if header else []
    tasks = []
    for t_index, task in enumerate(tasks_raw):
        task_label = f"{label} task {t_index + 1}"
        line = task_headers[t_index] if t_index < len(task_headers) else None
        if not isinstance(task, dict):
            raise err(f"{task_label} must be a table: use [[waves.tasks]]", line or tasks_at)
        tasks.append(_task(task, task_label, line, tasks_at, defaults, seen, err, where))
    name = raw.get("name", label)
    _text(name, f"{label}: name", err, lambda: where.key("name", header) or home)
    return Wave(name, tasks)


def _task(
    raw: dict[str, Any],
    label: str,
    line: int | None,
    fallback: int | None,
    defaults: _Defaults,
    seen: dict[str, str],
    err: _ErrorAt,
    where: _Locator,
) -> Task:
    """Validate one task; ``seen`` maps ids already used to where, to name both ends of a duplicate.

    ``line`` is the task's ``[[waves.tasks]]`` header (None for an inline task); ``fallback`` is the
    best line to report for an inline task, its wave's ``tasks = [...]``.
    """

    def key_line(key: str) -> int | None:
        return where.key(key, line) or line or fallback

    for key in raw:
        if key not in TASK_KEYS:
            raise err(f"{label}: unknown key '{key}'{suggest(key, TASK_KEYS)}", key_line(key))
    task_id = raw.get("id")
    id_line = key_line("id")
    if not isinstance(task_id, str) or not task_id:
        raise err(f"{label}: needs an id (letters, digits, '.', '_', '-'), e.g. id = \"build\"", id_line)
    if len(task_id) > MAX_TASK_ID:
        raise err(f"{label}: id {task_id[:20]!r}... is {len(task_id)} characters; use at most {MAX_TASK_ID} "
                  "(the id names the task's log file)", id_line)  # fmt: skip
    if not TASK_ID.fullmatch(task_id):
        raise err(f"{label}: id {task_id!r} may only use letters, digits, '.', '_' and '-', and must "
                  "start with a letter or digit", id_line)  # fmt: skip
    if task_id in seen:
        raise err(
            f"duplicate task id '{task_id}' (first used in {seen[task_id]}); ids must be unique", id_line
        )
    seen[task_id] = label
    command = raw.get("command")

    def command_line() -> int | None:
        return key_line("command")

    if command is None:
        raise err(f'task \'{task_id}\' has no command; add command = ["prog", "arg"]', id_line)
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise err(f"task '{task_id}': cannot split command: {exc}", command_line()) from None
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise err(f"task '{task_id}': command must be a list of strings or a string", command_line())
    if not argv:
        raise err(f"task '{task_id}': command is empty", command_line())
    if any("\0" in arg for arg in argv):
        raise err(f"task '{task_id}': command contains a NUL character (\\u0000); no program can "
                  "receive one", command_line())  # fmt: skip
    task_cwd = _cwd(raw["cwd"], defaults.cwd, err, lambda: key_line("cwd")) if "cwd" in raw else defaults.cwd
    task_env = {
        **defaults.env,
        **_env(raw.get("env", {}), "env", f"task '{task_id}': ", err, lambda: key_line("env")),
    }
    name = raw.get("name", task_id)
    _text(name, f"task '{task_id}': name", err, lambda: key_line("name"))
    timeout = (
        _timeout(raw["timeout"], f"task '{task_id}': timeout", err, lambda: key_line("timeout"))
        if "timeout" in raw
        else defaults.timeout
    )
    return Task(task_id, argv, task_cwd, task_env, name, timeout)


def _text(value: Any, label: str, err: _ErrorAt, line: Callable[[], int | None]) -> None:
    """A name must be a string without NUL: names become tmux window names and registry rows."""
    if not isinstance(value, str):
        raise err(f'{label} = {value!r} must be a string; quote it: name = "..."', line())
    if "\0" in value:
        raise err(f"{label} contains a NUL character (\\u0000); remove it", line())


def _cwd(value: Any, base: Path, err: _ErrorAt, line: Callable[[], int | None]) -> Path:
    """A directory relative to ``base``; ``line`` is only looked up when there is an error to locate.

    A path the OS refuses (NUL, too long, unknown ``~user``) is a plan error here, not a traceback.
    """
    if not isinstance(value, str):
        raise err(f"cwd = {value!r} must be a string path", line())
    if "\0" in value:
        raise err("cwd contains a NUL character (\\u0000); remove it", line())
    try:
        path = (base / Path(value).expanduser()).resolve()
        is_dir = path.is_dir()
    except (OSError, RuntimeError) as exc:  # RuntimeError: "~nosuchuser" has no home directory
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise err(f"cwd '{value[:80]}' cannot be used: {reason}", line()) from None
    if not is_dir:
        raise err(f"cwd '{value}' is not a directory (resolved to {path})", line())
    return path


def _env(
    value: Any, section: str, prefix: str, err: _ErrorAt, line: Callable[[], int | None]
) -> dict[str, str]:
    """Environment variables (``prefix`` names the task); a NUL is refused here, as exec would refuse it."""
    try:
        env = validate_env(value, section=section)
    except ConfigError as exc:
        raise err(prefix + exc.message, line()) from None
    for name, text in env.items():
        if "\0" in text:
            raise err(f"{prefix}[{section}] {name} contains a NUL character (\\u0000); remove it", line())
    return env


def _timeout(value: Any, label: str, err: _ErrorAt, line: Callable[[], int | None]) -> float | None:
    """Seconds a task may run, or None for no limit; 0 says "none" explicitly, e.g. to lift a default.

    TOML booleans are Python ints and TOML has ``nan`` and ``inf``: each is refused by name here, so the
    runner only ever sees a positive, finite number of seconds or None.
    """
    shown = (
        str(value).lower()
        if isinstance(value, bool)
        else repr(value)
        if isinstance(value, str)
        else str(value)
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(f"{label} = {shown} must be a number of seconds, e.g. timeout = 600 (0 = none)", line())
    if not math.isfinite(value):
        raise err(f"{label} = {shown} must be a finite number of seconds (0 = none)", line())
    if value < 0:
        raise err(f"{label} = {shown} cannot be negative; use 0 for no timeout", line())
    if value > MAX_TIMEOUT:
        raise err(f"{label} = {shown} is more than 7 days ({MAX_TIMEOUT} seconds); use 0 for no timeout",
                  line())  # fmt: skip
    return float(value) if value else None
