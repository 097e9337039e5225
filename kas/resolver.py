"""The one resolver: preset + overrides + forced env -> one resolved profile.

Pure: data in, data out. No Click, no file or process I/O, so every command gets the same answer and the
rules can be tested exhaustively with plain dictionaries. Callers pass in what the machine looks like
(platform name, a ``which`` function, whether a systemd user manager answers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from kas.errors import ConfigError
from kas.profiles import KEYS, OFF, PRESETS, PROFILE_ENV

# The spec's five job hints ("etc."), plus the ones kasmos' own tests fill: each only where unset.
BUILD_JOB_VARS = (
    "CARGO_BUILD_JOBS",
    "CMAKE_BUILD_PARALLEL_LEVEL",
    "BUNDLE_JOBS",
    "UV_CONCURRENT_BUILDS",
    "NPM_CONFIG_JOBS",
    "YARN_CHILD_CONCURRENCY",
    "KASMOS_BUILD_JOBS",
)
IONICE_CLASS_NUMBER = {"best-effort": "2", "idle": "3"}


class Settings(NamedTuple):
    """Every ``[resources]`` key with its type, so no ``Any`` leaves the resolver.

    The names, ranges and defaults live in ``profiles.KEYS``; a test keeps these fields equal to it.
    """

    nice: int
    ionice_class: str
    ionice_level: int
    build_jobs: int
    go_package_parallelism: int
    gomaxprocs: int
    max_parallel_wave_tasks: int
    autogroup: bool
    autogroup_nice: int | None
    cgroup: str
    cpu_weight: int | None
    io_weight: int | None
    oom_score_adj: int | None
    reserve_cpus: int | str
    sched_policy: str
    execution_mode: str

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from a stored row; keys a newer or older kas did not know take their defaults."""
        return cls(**{k: values.get(k, default) for k, default in OFF.items()})


class ResolvedProfile(NamedTuple):
    """Every setting with its value and where it came from (preset, override or default)."""

    name: str
    settings: Settings
    sources: Mapping[str, str]
    env: Mapping[str, str] = {}
    warnings: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """False for ``normal``: nothing is wrapped or injected."""
        return self.name != "normal"

    def with_settings(self, **changes: Any) -> ResolvedProfile:
        """A copy with some settings replaced (the bench's "nice/ionice only" case)."""
        return self._replace(settings=self.settings._replace(**changes))


class Wrapped(NamedTuple):
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
                f"ionice_level = {settings['ionice_level']} has no meaning with ionice_class = "
                '"idle"; remove ionice_level or use ionice_class = "best-effort"',
                key="ionice_level",
            )
        settings["ionice_level"] = 0
        sources["ionice_level"] = "default"
    elif settings["ionice_class"] == "best-effort" and sources["ionice_level"] == "default":
        # Level 0 would *raise* I/O priority above the kernel default; kas only ever lowers it.
        settings["ionice_level"] = 7
    return ResolvedProfile(name, Settings.from_dict(settings), sources, forced, tuple(warnings))


def build_env(resolved: ResolvedProfile, caller_env: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to the agent's env: hints fill only unset names, forced values always win.

    ``KASMOS_RESOURCE_PROFILE`` is kas's own label, so it always says which profile launched the agent
    (an agent that runs kas itself passes its own label down); only a forced value replaces it.
    """
    if not resolved.active:
        return {}
    add: dict[str, str] = {}
    s = resolved.settings

    def fill(var: str, value: str) -> None:
        if var not in caller_env:
            add[var] = value

    if s.build_jobs > 0:
        fill("MAKEFLAGS", f"-j{s.build_jobs}")
        for var in BUILD_JOB_VARS:
            fill(var, str(s.build_jobs))
    if s.go_package_parallelism > 0:
        fill("GOFLAGS", f"-p={s.go_package_parallelism}")
    if s.gomaxprocs > 0:
        fill("GOMAXPROCS", str(s.gomaxprocs))
    add[PROFILE_ENV] = resolved.name
    add.update(resolved.env)
    return add


def uses_cgroup(resolved: ResolvedProfile, user_manager: bool) -> bool:
    """Whether agents go into a systemd scope: only when a user manager answers (``systemd`` without one
    falls back to nice/autogroup with a warning, as ``auto`` does with a note)."""
    return resolved.active and resolved.settings.cgroup != "off" and user_manager


def autogroup_target(resolved: ResolvedProfile) -> int:
    """The autogroup nice the profile asks for (0 = leave the session group alone)."""
    s = resolved.settings
    if not (resolved.active and s.autogroup):
        return 0
    return s.autogroup_nice or s.nice


def agent_cpus(reserve: int | str, available: Sequence[int]) -> list[int] | None:
    """The CPUs agents may run on once ``reserve`` of ``available`` are kept free (the lowest-numbered
    ones, where the desktop's interrupts tend to land); None: no limit. Agents always keep one CPU."""
    cpus = sorted(available)
    count = (1 if len(cpus) <= 8 else len(cpus) // 8) if reserve == "auto" else int(reserve)
    count = min(count, len(cpus) - 1)
    return cpus[count:] if count > 0 else None


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
    s = resolved.settings
    linux = platform.startswith("linux")

    if linux and s.cgroup != "off":
        if user_manager:
            if which("systemd-run"):
                prefix += ["systemd-run", "--user", "--scope", "--quiet"]
                for prop, weight in (("CPUWeight", s.cpu_weight), ("IOWeight", s.io_weight)):
                    if weight is not None:
                        prefix += ["-p", f"{prop}={weight}"]
                prefix.append("--")
            else:
                warnings.append("systemd-run not found on PATH; agents run without a cgroup scope")
        else:
            verb = "warning" if s.cgroup == "systemd" else "note"
            warnings.append(
                f'{verb}: no systemd user manager answers; cgroup = "{s.cgroup}" falls back to nice/autogroup'
            )

    if s.nice > 0:
        if which("nice"):
            prefix += ["nice", "-n", str(s.nice)]
        else:
            warnings.append("nice not found on PATH; agents run without the nice wrapper")

    if linux and s.ionice_class != "none":
        if which("ionice"):
            prefix += ["ionice", "-c", IONICE_CLASS_NUMBER[s.ionice_class]]
            if s.ionice_class == "best-effort":
                prefix += ["-n", str(s.ionice_level)]
        else:
            warnings.append("ionice not found on PATH; agents run without the ionice wrapper")
    return Wrapped([*prefix, *argv], prefix, tuple(warnings))
