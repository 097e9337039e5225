"""The resource keys kas understands and the named presets built from them.

Everything about a key lives in one row of ``KEYS``: its type, range, all-off default and interactive
preset value. Validation, ``--set`` parsing, the resolver's typed ``Settings``, docs, completion and the
tests' generators all derive from that table, so they cannot disagree about a name or a range.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

from kas.errors import ConfigError

PROFILES = ("normal", "interactive", "custom")
IONICE_CLASSES = ("none", "best-effort", "idle")
EXECUTION_MODES = ("sdk", "tmux")
CGROUP_MODES = ("off", "auto", "systemd")
SCHED_POLICIES = ("normal", "batch", "idle")
PROFILE_ENV = "KASMOS_RESOURCE_PROFILE"
# A name, whole: \Z and not $, which would also accept a trailing newline.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")

Value = int | str | bool | None
Kind = Literal["int", "choice", "bool", "int_or_auto"]  # int_or_auto: an integer, or "auto"


class _Unset:
    """Marks a key that a preset leaves at its default (``None`` is a real value for nullable keys)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class Key(NamedTuple):
    """One ``[resources]`` key: its type, allowed values, the all-off default and the interactive value.

    ``control`` is False for keys that are choices of how to run rather than priority controls: they apply
    under every profile, ``normal`` included.
    """

    name: str
    kind: Kind
    help: str
    default: Value
    interactive: Value = UNSET
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    control: bool = True
    nullable: bool = False

    def allowed(self) -> str:
        """Describe the allowed values for error messages and docs."""
        if self.kind == "choice":
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int_or_auto":
            return f'an integer >= {self.minimum} or "auto"'
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        return f"an integer from {self.minimum} to {self.maximum}"

    def completions(self) -> tuple[str, ...]:
        """The values a shell can offer for ``--set KEY=``."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "bool":
            return ("true", "false")
        if self.kind == "int_or_auto":
            return ("auto",)
        return ()


_TABLE = (
    Key("nice", "int", "CPU niceness added to agents (0 = no nice wrapper).", 0, 10, 0, 19),
    Key("ionice_class", "choice", "Linux I/O class for agents.", "none", "best-effort", choices=IONICE_CLASSES),
    Key("ionice_level", "int", "Level within best-effort (7 = lowest priority).", 0, 7, 0, 7),
    Key("build_jobs", "int", "-j hint for make, cargo, cmake, npm, uv, ... (0 = no hint).", 0, 1, 0),
    Key("go_package_parallelism", "int", "GOFLAGS=-p=N for go builds (0 = no hint).", 0, 1, 0),
    Key("gomaxprocs", "int", "GOMAXPROCS for go programs (0 = no cap).", 0, 2, 0),
    # A cap the user writes is a scheduling choice, so it applies under every profile (the spec: "when
    # max_parallel_wave_tasks is set (directly or via the interactive preset), a cap is applied").
    Key("max_parallel_wave_tasks", "int", "Coders running at once in a wave (0 = unlimited).", 0, 1, 0, control=False),
    Key("autogroup", "bool", "Also lower the agent session's autogroup nice (Linux).", False, True),
    # Measured (kas bench): a session group at nice 10 still cost a 60 fps foreground 1.6x its p99 frame
    # time on 2 cores; at 19 it met the 1.25x goal while agents kept 96-98% of their CPU.
    Key("autogroup_nice", "int", "Nice of the agent's whole session against other sessions (default: nice).",
        None, 19, 1, 19, nullable=True),
    Key("cgroup", "choice", "Run agents in a systemd user scope with low weights.", "off", choices=CGROUP_MODES),
    Key("cpu_weight", "int", "CPUWeight of the agent's scope (cgroup only).", None, 20, 1, 10000, nullable=True),
    Key("io_weight", "int", "IOWeight of the agent's scope (cgroup only).", None, 20, 1, 10000, nullable=True),
    # 500: above every desktop process's default (0) and Chromium's visible tabs (300), below its background
    # tabs (up to 1000), which reload cheaply; under memory pressure the kernel kills agents first.
    Key("oom_score_adj", "int", "Linux OOM score added to agents' trees (higher: killed first under memory pressure).",
        None, 500, 0, 1000, nullable=True),
    # Not in a preset: reserved CPUs stay idle even when no game runs (on this 2-core machine, half of it).
    Key("reserve_cpus", "int_or_auto", 'CPUs kept free of agents through their CPU affinity ("auto": 1 per 8 cores, at least 1).',
        0, minimum=0),
    # Never in a preset: SCHED_IDLE cannot be undone by an unprivileged user, and an idle agent holding a
    # lock the desktop waits on (.git/index.lock) can be starved.
    Key("sched_policy", "choice", "Linux scheduling policy of agents: idle runs them only when a CPU is otherwise idle.",
        "normal", choices=SCHED_POLICIES),
    Key("execution_mode", "choice", "How agents are launched: a tmux window or directly.", "sdk",
        choices=EXECUTION_MODES, control=False),
)  # fmt: skip
KEYS: dict[str, Key] = {k.name: k for k in _TABLE}
ALL_KEYS = (*KEYS, "profile", "env")

OFF: dict[str, Value] = {k.name: k.default for k in KEYS.values()}
PRESETS: dict[str, dict[str, Value]] = {
    "normal": {},
    "interactive": {k.name: k.interactive for k in KEYS.values() if k.interactive is not UNSET},
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


def check_value(name: str, value: Any) -> Value:
    """Validate one key's value; raise ``ConfigError`` naming key, value and the allowed range."""
    key = KEYS[name]
    if key.nullable and value is None:
        return None
    bad = ConfigError(f"{name} = {value!r} is not allowed; use {key.allowed()}", key=name)
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if key.kind == "int_or_auto" and value == "auto":
        return "auto"
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


def check_profile(value: Any) -> str:
    """A profile name, or an error listing the valid ones."""
    if not isinstance(value, str) or value not in PROFILES:
        raise ConfigError(f"unknown profile {value!r}; valid profiles: {', '.join(PROFILES)}", key="profile")
    return value


def parse_value(name: str, text: str) -> Value:
    """Turn a ``KEY=VALUE`` string (``--set``, completion) into a typed value, then validate it."""
    key = KEYS[name]
    value: Value = text
    if key.kind == "int_or_auto" and text == "auto":  # as TOML takes it: exactly "auto"
        value = "auto"
    elif key.kind in ("int", "int_or_auto"):
        try:
            value = int(text)
        except ValueError:
            if not (key.nullable and text.lower() in ("", "none", "unset")):
                raise ConfigError(
                    f"{name} = {text!r} is not allowed; use {key.allowed()}", key=name
                ) from None
            value = None
    elif key.kind == "bool":
        lowered = text.lower()
        if lowered not in (*TRUE_WORDS, *FALSE_WORDS):
            raise ConfigError(f"{name} = {text!r} is not allowed; use {key.allowed()}", key=name)
        value = lowered in TRUE_WORDS
    return check_value(name, value)


def parse_sets(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs into a validated ``[resources]`` table; each error names the pair."""
    table: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: use KEY=VALUE, e.g. --set max_parallel_wave_tasks=2")
        try:
            if name == "profile":
                table[name] = check_profile(text)
            elif name in KEYS:
                table[name] = parse_value(name, text)
            else:
                raise ConfigError(f"unknown key '{name}'{suggest(name, [*KEYS, 'profile'])}")
        except ConfigError as exc:
            raise ConfigError(f"--set {pair}: {exc.message}") from None
    return table


def validate_table(table: Any, *, section: str = "resources") -> dict[str, Any]:
    """Check a raw ``[resources]`` table and return a clean copy; every problem names its key."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table", key=section)
    clean: dict[str, Any] = {}
    for name, value in table.items():
        if name == "profile":
            clean[name] = check_profile(value)
        elif name == "env":
            clean[name] = validate_env(value, section=f"{section}.env", forced=True)
        elif name in KEYS:
            clean[name] = check_value(name, value)
        else:
            raise ConfigError(
                f"unknown key '{name}' in [{section}]{suggest(name, ALL_KEYS)}",
                key=name,
            )
    return clean


def validate_env(env: Any, *, section: str = "resources.env", forced: bool = False) -> dict[str, str]:
    """Env values must be strings under valid names; ``KASMOS_*`` is kas's own.

    A config may still force ``KASMOS_RESOURCE_PROFILE`` (``forced``), as kasmos' own tests do: it is the
    label agents see, and the user may want another one.
    """
    if not isinstance(env, dict):
        raise ConfigError(f'[{section}] must be a table of NAME = "value"', key="env")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ConfigError(f"[{section}] {name!r} is not a valid environment variable name", key=name)
        if name.startswith("KASMOS_") and not (forced and name == PROFILE_ENV):
            raise ConfigError(f"[{section}] '{name}': KASMOS_* names are reserved for kas", key=name)
        if not isinstance(value, str):
            raise ConfigError(
                f'[{section}] {name} = {value!r} must be a string; quote it: {name} = "{value}"',
                key=name,
            )
        if "\0" in value:
            raise ConfigError(
                f"[{section}] {name} contains a NUL character, which no environment can hold", key=name
            )
    return dict(env)
