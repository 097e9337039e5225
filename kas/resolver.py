"""The one resolver: preset + overrides + forced env -> one resolved profile.

Pure: data in, data out. No Click, no file or process I/O, so every command gets the same answer and the
rules can be tested exhaustively with plain dictionaries. Callers pass in what the machine looks like
(platform name, a ``which`` function, whether a systemd user manager answers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kas.errors import ConfigError
from kas.profiles import KEYS, OFF, PRESETS

PROFILE_ENV = "KASMOS_RESOURCE_PROFILE"
BUILD_JOB_VARS = ("CARGO_BUILD_JOBS", "CMAKE_BUILD_PARALLEL_LEVEL", "BUNDLE_JOBS", "UV_CONCURRENT_BUILDS")
IONICE_CLASS_NUMBER = {"best-effort": "2", "idle": "3"}


@dataclass(frozen=True)
class ResolvedProfile:
    """Every setting with its value and where it came from (preset, override or default)."""

    name: str
    settings: Mapping[str, Any]
    sources: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def active(self) -> bool:
        """False for ``normal``: nothing is wrapped or injected."""
        return self.name != "normal"


@dataclass(frozen=True)
class Wrapped:
    """The argv to execute plus anything the user should hear about once."""

    argv: list[str]
    prefix: list[str]
    warnings: tuple[str, ...] = ()


def merge_tables(*tables: Mapping[str, Any] | None) -> dict[str, Any]:
    """Layer validated ``[resources]`` tables: later ones win key by key, ``env`` merges by variable."""
    merged: dict[str, Any] = {}
    for table in tables:
        for key, value in (table or {}).items():
            if key == "env":
                merged["env"] = {**merged.get("env", {}), **value}
            else:
                merged[key] = value
    return merged


def resolve(table: Mapping[str, Any] | None) -> ResolvedProfile:
    """Resolve a validated ``[resources]`` table. No table (or no profile) means ``normal``."""
    table = dict(table or {})
    name = table.pop("profile", "normal")
    forced = dict(table.pop("env", {}))
    settings = dict(OFF)
    sources = dict.fromkeys(OFF, "default")
    warnings: list[str] = []

    if name == "normal":
        sources.update((k, "preset") for k in OFF if KEYS[k].control)
        ignored = sorted(k for k in table if KEYS[k].control)
        if forced:
            ignored.append("env")
        if ignored:
            warnings.append(
                "profile is normal (no resource controls), so these keys are ignored: " + ", ".join(ignored)
            )
        forced = {}
        table = {k: v for k, v in table.items() if not KEYS[k].control}
    else:
        preset = PRESETS[name]
        settings.update(preset)
        sources.update(dict.fromkeys(preset, "preset"))
        if name == "custom" and not forced and not any(KEYS[k].control for k in table):
            raise ConfigError(
                'profile = "custom" sets nothing; add keys such as nice = 10, or use profile = "interactive"',
                key="profile",
            )

    settings.update(table)
    sources.update(dict.fromkeys(table, "override"))

    if settings["ionice_class"] == "idle" and settings["ionice_level"]:
        if sources["ionice_level"] == "override":
            raise ConfigError(
                f'ionice_level = {settings["ionice_level"]} has no meaning with ionice_class = "idle"; '
                'remove ionice_level or use ionice_class = "best-effort"',
                key="ionice_level",
            )
        settings["ionice_level"] = 0
        sources["ionice_level"] = "default"
    elif settings["ionice_class"] == "best-effort" and sources["ionice_level"] == "default":
        # Level 0 would *raise* I/O priority above the kernel default; kas only ever lowers it.
        settings["ionice_level"] = 7
    return ResolvedProfile(name, settings, sources, forced, tuple(warnings))


def build_env(resolved: ResolvedProfile, caller_env: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to the agent's env: hints fill only unset names, forced values always win."""
    if not resolved.active:
        return {}
    add: dict[str, str] = {}

    def fill(var: str, value: str) -> None:
        if var not in caller_env:
            add[var] = value

    jobs = resolved["build_jobs"]
    if jobs > 0:
        fill("MAKEFLAGS", f"-j{jobs}")
        for var in BUILD_JOB_VARS:
            fill(var, str(jobs))
    if resolved["go_package_parallelism"] > 0:
        fill("GOFLAGS", f"-p={resolved['go_package_parallelism']}")
    if resolved["gomaxprocs"] > 0:
        fill("GOMAXPROCS", str(resolved["gomaxprocs"]))
    add.update(resolved.env)
    add[PROFILE_ENV] = resolved.name
    return add


def uses_cgroup(resolved: ResolvedProfile, user_manager: bool) -> bool:
    """Whether agents go into a systemd scope: ``systemd`` always asks, ``auto`` only when one answers."""
    mode = resolved["cgroup"]
    return resolved.active and (mode == "systemd" or (mode == "auto" and user_manager))


def wrap_argv(
    resolved: ResolvedProfile,
    argv: Sequence[str],
    platform: str,
    which: Callable[[str], str | None],
    user_manager: bool = False,
) -> Wrapped:
    """Prefix argv with systemd-run / nice / ionice as the profile asks and the machine allows.

    A missing tool is a warning and that wrapper is dropped: the launch is never blocked.
    """
    prefix: list[str] = []
    warnings: list[str] = []
    if not resolved.active:
        return Wrapped(list(argv), prefix)
    linux = platform.startswith("linux")

    if linux and resolved["cgroup"] != "off":
        if user_manager:
            if which("systemd-run"):
                prefix += ["systemd-run", "--user", "--scope", "--quiet"]
                for prop, key in (("CPUWeight", "cpu_weight"), ("IOWeight", "io_weight")):
                    if resolved[key] is not None:
                        prefix += ["-p", f"{prop}={resolved[key]}"]
                prefix.append("--")
            else:
                warnings.append("systemd-run not found on PATH; agents run without a cgroup scope")
        else:
            verb = "warning" if resolved["cgroup"] == "systemd" else "note"
            warnings.append(
                f'{verb}: no systemd user manager answers; cgroup = "{resolved["cgroup"]}" '
                "falls back to nice/autogroup"
            )

    if resolved["nice"] > 0:
        if which("nice"):
            prefix += ["nice", "-n", str(resolved["nice"])]
        else:
            warnings.append("nice not found on PATH; agents run without the nice wrapper")

    io_class = resolved["ionice_class"]
    if linux and io_class != "none":
        if which("ionice"):
            prefix += ["ionice", "-c", IONICE_CLASS_NUMBER[io_class]]
            if io_class == "best-effort":
                prefix += ["-n", str(resolved["ionice_level"])]
        else:
            warnings.append("ionice not found on PATH; agents run without the ionice wrapper")
    return Wrapped([*prefix, *argv], prefix, tuple(warnings))
