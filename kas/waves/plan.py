"""Load and validate a wave plan (TOML). Every problem is found here, before any task starts."""

from __future__ import annotations

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
DEFAULT_KEYS = ("cwd", "env", "mode")
WAVE_KEYS = ("name", "tasks")
TASK_KEYS = ("id", "command", "cwd", "env", "name")
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Task:
    id: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    name: str


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


class _ErrorAt(Protocol):
    """Builds a PlanError for this plan file at a line (if one is known)."""

    def __call__(self, message: str, line: int | None = None) -> PlanError: ...


class _Locator:
    """Best-effort line numbers for plan errors (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: dict[str, list[int]] = {}

    def header(self, name: str, index: int) -> int | None:
        """Line of the ``index``-th ``[[name]]`` header (0-based); each name is scanned once."""
        if name not in self.headers:
            pattern = re.compile(rf"^\s*\[\[\s*{re.escape(name)}\s*\]\]")
            self.headers[name] = [n for n, line in enumerate(self.lines, 1) if pattern.match(line)]
        hits = self.headers[name]
        return hits[index] if index < len(hits) else None

    def assignment(self, key: str, value: str | None = None, after: int | None = None) -> int | None:
        """First ``key = [value]`` line after ``after`` (else anywhere); scanning stops at the first hit."""
        quoted = rf"[\"']{re.escape(value)}[\"']" if value is not None else ""
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=\s*{quoted}")
        start = after or 0
        for number in (*range(start + 1, len(self.lines) + 1), *range(1, start + 1)):
            if pattern.match(self.lines[number - 1]):
                return number
        return None


def load_plan(path: Path) -> Plan:
    """Parse, validate and normalise a plan file; relative cwds are relative to the plan's directory."""
    path = Path(path)
    if not path.is_file():
        raise PlanError("plan file not found; check the path", path=path)
    doc, text = parse_toml(path, PlanError)
    where = _Locator(text)

    def err(message: str, line: int | None = None) -> PlanError:
        return PlanError(message, path=path, line=line)

    for key in doc:
        if key not in PLAN_KEYS:
            raise err(
                f"unknown key '{key}' at the top of the plan{suggest(key, PLAN_KEYS)}", where.assignment(key)
            )
    name = doc.get("name", path.stem)
    if not isinstance(name, str):
        raise err("name must be a string", where.assignment("name"))
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise err("[defaults] must be a table")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise err(f"unknown key '{key}' in [defaults]{suggest(key, DEFAULT_KEYS)}", where.assignment(key))
    mode = defaults.get("mode")
    if mode is not None and mode not in EXECUTION_MODES:
        raise err(f'[defaults] mode = {mode!r}: use "sdk" or "tmux"', where.assignment("mode"))
    base_dir = path.parent.resolve()
    default_cwd = _cwd(defaults.get("cwd", "."), base_dir, err, lambda: where.assignment("cwd"))
    default_env = _env(defaults.get("env", {}), "[defaults] env", err, lambda: where.assignment("env"))
    resources = validate_resources(doc, path, text, PlanError)

    raw_waves = doc.get("waves")
    if not isinstance(raw_waves, list) or not raw_waves:
        raise err("the plan has no waves; add [[waves]] with [[waves.tasks]] entries")
    seen: dict[str, str] = {}
    waves: list[Wave] = []
    for w_index, raw in enumerate(raw_waves):
        header = where.header("waves", w_index)
        label = f"wave {w_index + 1}"
        for key in raw:
            if key not in WAVE_KEYS:
                raise err(
                    f"{label}: unknown key '{key}'{suggest(key, WAVE_KEYS)}",
                    where.assignment(key, after=header),
                )
        tasks_raw = raw.get("tasks")
        if not isinstance(tasks_raw, list) or not tasks_raw:
            raise err(f"{label} has no tasks; add [[waves.tasks]] entries or remove the wave", header)
        tasks = []
        for t_index, task in enumerate(tasks_raw):
            line = where.header(
                "waves.tasks", sum(len(x.get("tasks", [])) for x in raw_waves[:w_index]) + t_index
            )
            tasks.append(
                _task(task, f"{label} task {t_index + 1}", line, default_cwd, default_env, seen, err, where)
            )
        wave_name = raw.get("name", f"wave {w_index + 1}")
        if not isinstance(wave_name, str):
            raise err(f"{label}: name must be a string", header)
        waves.append(Wave(wave_name, tasks))
    return Plan(path, name, mode, resources, waves)


def _task(
    raw: Any,
    label: str,
    line: int | None,
    cwd: Path,
    env: dict[str, str],
    seen: dict[str, str],
    err: _ErrorAt,
    where: _Locator,
) -> Task:
    """Validate one task; ``seen`` maps ids already used to where, to name both ends of a duplicate."""
    for key in raw:
        if key not in TASK_KEYS:
            raise err(
                f"{label}: unknown key '{key}'{suggest(key, TASK_KEYS)}", where.assignment(key, after=line)
            )
    task_id = raw.get("id")
    if not isinstance(task_id, str) or not TASK_ID.match(task_id):
        raise err(f"{label}: needs an id (letters, digits, '.', '_', '-'), e.g. id = \"build\"", line)
    id_line = where.assignment("id", task_id, after=line) or line
    if task_id in seen:
        raise err(
            f"duplicate task id '{task_id}' (first used in {seen[task_id]}); ids must be unique", id_line
        )
    seen[task_id] = label
    command = raw.get("command")

    def command_line() -> int | None:
        return where.assignment("command", after=id_line)

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
    task_cwd = (
        _cwd(raw["cwd"], cwd, err, lambda: where.assignment("cwd", after=id_line)) if "cwd" in raw else cwd
    )
    task_env = {
        **env,
        **_env(
            raw.get("env", {}), f"task '{task_id}' env", err, lambda: where.assignment("env", after=id_line)
        ),
    }
    name = raw.get("name", task_id)
    if not isinstance(name, str):
        raise err(f"task '{task_id}': name must be a string", id_line)
    return Task(task_id, argv, task_cwd, task_env, name)


def _cwd(value: Any, base: Path, err: _ErrorAt, line: Callable[[], int | None]) -> Path:
    """A directory relative to ``base``; ``line`` is only looked up when there is an error to locate."""
    if not isinstance(value, str):
        raise err(f"cwd = {value!r} must be a string path", line())
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_dir():
        raise err(f"cwd '{value}' is not a directory (resolved to {path})", line())
    return path


def _env(value: Any, label: str, err: _ErrorAt, line: Callable[[], int | None]) -> dict[str, str]:
    try:
        return validate_env(value, section=label)
    except ConfigError as exc:
        raise err(exc.message, line()) from None
