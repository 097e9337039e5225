"""The resource keys kas understands and the named presets built from them.

The schema lives in one table so that validation, ``--set`` parsing, docs, completion and the resolver all
agree on names, types and ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kas.errors import ConfigError

PROFILES = ("normal", "interactive", "custom")
IONICE_CLASSES = ("none", "best-effort", "idle")
EXECUTION_MODES = ("sdk", "tmux")
CGROUP_MODES = ("off", "auto", "systemd")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Key:
    """One ``[resources]`` key: its type, allowed values and what it is for."""

    name: str
    kind: str  # "int", "choice", "bool"
    help: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    # Keys that are not resource *controls* (execution_mode) apply under every profile, normal included.
    control: bool = True
    nullable: bool = False

    def allowed(self) -> str:
        """Describe the allowed values for error messages and docs."""
        if self.kind == "choice":
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        return f"an integer from {self.minimum} to {self.maximum}"


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("nice", "int", "CPU niceness added to agents (0 = no nice wrapper).", 0, 19),
        Key("ionice_class", "choice", "Linux I/O class for agents.", choices=IONICE_CLASSES),
        Key("ionice_level", "int", "Level within best-effort (7 = lowest priority).", 0, 7),
        Key("build_jobs", "int", "-j hint for make, cargo, cmake, bundler, uv (0 = no hint).", 0),
        Key("go_package_parallelism", "int", "GOFLAGS=-p=N for go builds (0 = no hint).", 0),
        Key("gomaxprocs", "int", "GOMAXPROCS for go programs (0 = no cap).", 0),
        Key("max_parallel_wave_tasks", "int", "Coders running at once in a wave (0 = unlimited).", 0),
        Key("autogroup", "bool", "Also lower the agent session's autogroup nice (Linux)."),
        Key(
            "autogroup_nice",
            "int",
            "Nice of the agent's whole session against other sessions (default: nice).",
            1,
            19,
            nullable=True,
        ),
        Key("cgroup", "choice", "Run agents in a systemd user scope with low weights.", choices=CGROUP_MODES),
        Key("cpu_weight", "int", "CPUWeight of the agent's scope (cgroup only).", 1, 10000, nullable=True),
        Key("io_weight", "int", "IOWeight of the agent's scope (cgroup only).", 1, 10000, nullable=True),
        Key(
            "execution_mode",
            "choice",
            "How agents are launched: a tmux window or directly.",
            choices=EXECUTION_MODES,
            control=False,
        ),
    )
}
ALL_KEYS = (*KEYS, "profile", "env")

OFF: dict[str, Any] = {
    "nice": 0,
    "ionice_class": "none",
    "ionice_level": 0,
    "build_jobs": 0,
    "go_package_parallelism": 0,
    "gomaxprocs": 0,
    "max_parallel_wave_tasks": 0,
    "autogroup": False,
    "autogroup_nice": None,
    "cgroup": "off",
    "cpu_weight": None,
    "io_weight": None,
    "execution_mode": "sdk",
}

PRESETS: dict[str, dict[str, Any]] = {
    "normal": {},
    "interactive": {
        "nice": 10,
        "ionice_class": "best-effort",
        "ionice_level": 7,
        "build_jobs": 1,
        "go_package_parallelism": 1,
        "gomaxprocs": 2,
        "max_parallel_wave_tasks": 1,
        "autogroup": True,
        # Measured (kas bench): a session group at nice 10 still costs a 60 fps foreground 1.6x its p99
        # frame time on 2 cores; at 19 it met the 1.25x goal in every run while agents kept 96-98% of
        # their CPU.
        "autogroup_nice": 19,
        "cpu_weight": 20,
        "io_weight": 20,
    },
    "custom": {},
}

PROFILE_HELP = {
    "normal": "No resource controls: no wrapper, no env injection (the rollback).",
    "interactive": "Agents yield CPU and I/O to the desktop: nice 10, ionice best-effort 7, -j1 hints.",
    "custom": "Starts with everything off and applies only the keys you set.",
}


def suggest(name: str, options: tuple[str, ...] | list[str]) -> str:
    """Return " (did you mean 'x'?)" for a near-miss, so a typo is a one-glance fix."""
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_value(name: str, value: Any) -> Any:
    """Validate one key's value; raise ``ConfigError`` naming key, value and the allowed range."""
    key = KEYS[name]
    if key.nullable and value is None:
        return None
    bad = ConfigError(f"{name} = {value!r} is not allowed; use {key.allowed()}", key=name)
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if key.kind == "choice":
        if name == "ionice_class" and value == "realtime":
            raise ConfigError(
                'ionice_class = "realtime" is rejected: it needs root and starves the desktop; '
                'use "best-effort" or "idle"',
                key=name,
            )
        if not isinstance(value, str) or value not in key.choices:
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad
    if name == "nice" and value < 0:
        raise ConfigError(
            f"nice = {value} is rejected: kas only ever lowers priority; use an integer from 0 to 19",
            key=name,
        )
    if (key.minimum is not None and value < key.minimum) or (key.maximum is not None and value > key.maximum):
        raise bad
    return value


def parse_value(name: str, text: str) -> Any:
    """Turn a ``--set KEY=VALUE`` string into a typed value, then validate it."""
    key = KEYS[name]
    if key.kind == "int":
        try:
            value: Any = int(text)
        except ValueError:
            raise ConfigError(f"{name} = {text!r} is not allowed; use {key.allowed()}", key=name) from None
    elif key.kind == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ConfigError(f"{name} = {text!r} is not allowed; use {key.allowed()}", key=name)
        value = lowered in ("true", "1", "yes", "on")
    else:
        value = text
    return check_value(name, value)


def validate_table(table: Any, *, section: str = "resources") -> dict[str, Any]:
    """Check a raw ``[resources]`` table and return a clean copy; every problem names its key."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table", key=section)
    clean: dict[str, Any] = {}
    for name, value in table.items():
        if name == "profile":
            if not isinstance(value, str) or value not in PROFILES:
                raise ConfigError(
                    f"unknown profile {value!r}; valid profiles: {', '.join(PROFILES)}", key="profile"
                )
            clean[name] = value
        elif name == "env":
            clean[name] = validate_env(value, section=f"{section}.env")
        elif name in KEYS:
            clean[name] = check_value(name, value)
        else:
            raise ConfigError(
                f"unknown key '{name}' in [{section}]{suggest(name, ALL_KEYS)}",
                key=name,
            )
    return clean


def validate_env(env: Any, *, section: str = "resources.env") -> dict[str, str]:
    """Forced env values must be strings under valid, non-reserved names."""
    if not isinstance(env, dict):
        raise ConfigError(f'[{section}] must be a table of NAME = "value"', key="env")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ConfigError(f"[{section}] '{name}' is not a valid environment variable name", key=name)
        if name.startswith("KASMOS_"):
            raise ConfigError(f"[{section}] '{name}': KASMOS_* names are reserved for kas", key=name)
        if not isinstance(value, str):
            raise ConfigError(
                f'[{section}] {name} = {value!r} must be a string; quote it: {name} = "{value}"',
                key=name,
            )
    return dict(env)
