"""The pure resolver: every key, all three profiles, env injection and the wrapper."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kas.errors import ConfigError
from kas.profiles import KEYS, OFF, PRESETS, PROFILE_ENV, PROFILES, UNSET, Key, validate_table
from kas.resolver import Settings, build_env, merge_tables, resolve, wrap_argv

ALL_TOOLS = {"nice": "/usr/bin/nice", "ionice": "/usr/bin/ionice", "systemd-run": "/usr/bin/systemd-run"}


def which_all(name: str) -> str | None:
    return ALL_TOOLS.get(name)


def test_no_table_is_normal_with_everything_off() -> None:
    prof = resolve(None)
    assert prof.name == "normal"
    assert prof.settings.to_dict() == OFF
    assert not prof.active
    assert build_env(prof, {}) == {}
    assert wrap_argv(prof, ["make"], "linux", which_all).argv == ["make"]


def test_interactive_is_the_spec_table() -> None:
    prof = resolve({"profile": "interactive"})
    expected = {
        "nice": 10,
        "ionice_class": "best-effort",
        "ionice_level": 7,
        "build_jobs": 1,
        "go_package_parallelism": 1,
        "gomaxprocs": 2,
        "max_parallel_wave_tasks": 1,
    }
    for key, value in expected.items():
        assert getattr(prof.settings, key) == value
        assert prof.sources[key] == "preset"
    assert prof.sources["execution_mode"] == "default"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nice", 15),
        ("ionice_class", "idle"),
        ("build_jobs", 3),
        ("go_package_parallelism", 2),
        ("gomaxprocs", 4),
        ("max_parallel_wave_tasks", 0),
        ("autogroup", False),
        ("cgroup", "auto"),
        ("cpu_weight", 50),
        ("io_weight", 60),
        ("execution_mode", "tmux"),
    ],
)
def test_each_key_overrides_the_interactive_preset(key: str, value: object) -> None:
    prof = resolve(validate_table({"profile": "interactive", key: value}))
    assert getattr(prof.settings, key) == value
    assert prof.sources[key] == "override"
    untouched = [
        k for k in PRESETS["interactive"] if k != key and not (key == "ionice_class" and k == "ionice_level")
    ]
    assert all(prof.sources[k] == "preset" for k in untouched)


def test_custom_starts_from_off_and_takes_only_given_keys() -> None:
    prof = resolve({"profile": "custom", "nice": 5})
    assert prof.settings.nice == 5 and prof.sources["nice"] == "override"
    assert prof.settings.build_jobs == 0 and prof.sources["build_jobs"] == "default"
    assert wrap_argv(prof, ["x"], "linux", which_all).argv == ["nice", "-n", "5", "x"]
    assert build_env(prof, {}) == {"KASMOS_RESOURCE_PROFILE": "custom"}


def test_custom_best_effort_without_level_takes_the_lowest_level() -> None:
    prof = resolve({"profile": "custom", "ionice_class": "best-effort"})
    assert prof.settings.ionice_level == 7


def test_custom_that_sets_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="sets nothing"):
        resolve({"profile": "custom"})
    with pytest.raises(ConfigError, match="sets nothing"):
        resolve({"profile": "custom", "execution_mode": "tmux"})


def test_keys_under_normal_are_ignored_with_a_warning_naming_them() -> None:
    prof = resolve(
        {"profile": "normal", "nice": 5, "gomaxprocs": 3, "env": {"A": "1"}, "execution_mode": "tmux"}
    )
    assert prof.settings.nice == 0 and prof.settings.gomaxprocs == 0
    assert prof.settings.execution_mode == "tmux"
    assert len(prof.warnings) == 1
    assert "gomaxprocs" in prof.warnings[0] and "nice" in prof.warnings[0] and "env" in prof.warnings[0]
    assert build_env(prof, {}) == {}


def test_idle_with_a_level_is_an_error_but_idle_override_drops_the_preset_level() -> None:
    with pytest.raises(ConfigError, match="ionice_level") as err:
        resolve({"profile": "custom", "ionice_class": "idle", "ionice_level": 3})
    assert err.value.key == "ionice_level"
    prof = resolve({"profile": "interactive", "ionice_class": "idle"})
    assert prof.settings.ionice_level == 0
    assert wrap_argv(prof, ["x"], "linux", which_all).prefix == ["nice", "-n", "10", "ionice", "-c", "3"]


def test_build_env_fills_only_unset_variables() -> None:
    prof = resolve({"profile": "interactive"})
    env = build_env(prof, {"MAKEFLAGS": "-j8", "GOMAXPROCS": "16"})
    assert "MAKEFLAGS" not in env and "GOMAXPROCS" not in env
    assert env["CARGO_BUILD_JOBS"] == "1"
    assert env["CMAKE_BUILD_PARALLEL_LEVEL"] == "1"
    assert env["BUNDLE_JOBS"] == "1"
    assert env["UV_CONCURRENT_BUILDS"] == "1"
    assert env["GOFLAGS"] == "-p=1"
    assert env["KASMOS_RESOURCE_PROFILE"] == "interactive"
    unset = build_env(prof, {})
    assert unset["MAKEFLAGS"] == "-j1" and unset["GOMAXPROCS"] == "2"


def test_zero_hints_inject_nothing() -> None:
    prof = resolve({"profile": "interactive", "build_jobs": 0, "go_package_parallelism": 0, "gomaxprocs": 0})
    assert build_env(prof, {}) == {"KASMOS_RESOURCE_PROFILE": "interactive"}


def test_forced_env_always_wins() -> None:
    prof = resolve({"profile": "interactive", "env": {"MAKEFLAGS": "-j2", "EXTRA": "yes"}})
    env = build_env(prof, {"MAKEFLAGS": "-j8"})
    assert env["MAKEFLAGS"] == "-j2" and env["EXTRA"] == "yes"


def test_merge_tables_later_wins_and_env_merges() -> None:
    merged = merge_tables(
        {"profile": "interactive", "nice": 5, "env": {"A": "1"}}, {"nice": 7, "env": {"B": "2"}}
    )
    assert merged == {"profile": "interactive", "nice": 7, "env": {"A": "1", "B": "2"}}


def test_wrapper_on_linux_and_darwin() -> None:
    prof = resolve({"profile": "interactive"})
    linux = wrap_argv(prof, ["make", "-j", "a b"], "linux", which_all)
    assert linux.argv == ["nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "make", "-j", "a b"]
    assert linux.warnings == ()
    darwin = wrap_argv(prof, ["make"], "darwin", which_all)
    assert darwin.argv == ["nice", "-n", "10", "make"]
    assert darwin.warnings == ()


@pytest.mark.parametrize("missing", ["nice", "ionice"])
def test_a_missing_tool_warns_and_drops_only_its_wrapper(missing: str) -> None:
    prof = resolve({"profile": "interactive"})
    wrapped = wrap_argv(prof, ["make"], "linux", lambda n: None if n == missing else which_all(n))
    assert missing not in wrapped.argv
    assert wrapped.argv[-1] == "make"
    assert len(wrapped.warnings) == 1 and missing in wrapped.warnings[0]


def test_cgroup_scope_wraps_outside_nice_when_a_user_manager_answers() -> None:
    prof = resolve({"profile": "interactive", "cgroup": "auto"})
    wrapped = wrap_argv(prof, ["make"], "linux", which_all, user_manager=True)
    assert wrapped.argv == [
        "systemd-run", "--user", "--scope", "--quiet", "-p", "CPUWeight=20", "-p", "IOWeight=20", "--",
        "nice", "-n", "10", "ionice", "-c", "2", "-n", "7", "make",
    ]  # fmt: skip
    fallback = wrap_argv(prof, ["make"], "linux", which_all, user_manager=False)
    assert fallback.argv[0] == "nice"
    assert fallback.warnings and fallback.warnings[0].startswith("note:")
    forced = wrap_argv(resolve({"profile": "interactive", "cgroup": "systemd"}), ["x"], "linux", which_all)
    assert forced.warnings[0].startswith("warning:")


def test_settings_fields_are_the_key_table() -> None:
    """The typed settings and the key table name the same keys, in the same order, with the same defaults."""
    assert Settings._fields == tuple(KEYS)
    assert Settings.from_dict({}).to_dict() == OFF == {k.name: k.default for k in KEYS.values()}
    assert PRESETS["interactive"] == {
        k.name: k.interactive for k in KEYS.values() if k.interactive is not UNSET
    }


def key_values(key: Key) -> st.SearchStrategy[object]:
    """Every valid value of one key, derived from its row of the key table."""
    if key.kind == "bool":
        values: st.SearchStrategy[object] = st.booleans()
    elif key.kind == "choice":
        values = st.sampled_from(key.choices)
    elif key.kind == "int_or_auto":
        values = st.just("auto") | st.integers(key.minimum or 0, 64)
    else:
        values = st.integers(key.minimum or 0, key.maximum if key.maximum is not None else 64)
    return st.none() | values if key.nullable else values


env_names = st.sampled_from(["MAKEFLAGS", "GOFLAGS", "GOMAXPROCS", "NPM_CONFIG_JOBS", "FOO", PROFILE_ENV])
valid_tables = st.fixed_dictionaries(
    {"profile": st.sampled_from(PROFILES)},
    optional={
        **{name: key_values(key) for name, key in KEYS.items()},
        "env": st.dictionaries(env_names, st.text(max_size=5).filter(lambda v: "\0" not in v), min_size=1),
    },
)
caller_envs = st.dictionaries(
    st.sampled_from(
        ["MAKEFLAGS", "GOMAXPROCS", "GOFLAGS", "CARGO_BUILD_JOBS", "KASMOS_BUILD_JOBS", "X", PROFILE_ENV]
    ),
    st.text(max_size=5),
)


@given(valid_tables, caller_envs)
def test_property_every_key_resolves_as_written_and_caller_vars_are_never_overwritten(table, caller) -> None:  # type: ignore[no-untyped-def]
    try:
        prof = resolve(validate_table(table))
    except ConfigError as exc:
        # The two documented refusals, and nothing else.
        custom_empty = table["profile"] == "custom" and exc.key == "profile"
        idle_level = (
            exc.key == "ionice_level" and table.get("ionice_class") == "idle" and table["ionice_level"]
        )
        assert custom_empty or idle_level, exc
        return
    settings = prof.settings.to_dict()
    for name, value in table.items():
        if name in ("profile", "env"):
            continue
        applies = prof.name != "normal" or not KEYS[name].control
        if applies and not (name == "ionice_level" and settings["ionice_class"] == "idle"):
            assert settings[name] == value and prof.sources[name] == "override", name
        if not applies:
            assert settings[name] == OFF[name], name
    env = build_env(prof, caller)
    forced = table.get("env", {}) if prof.active else {}
    for var in caller:
        if var in env and var != PROFILE_ENV:
            assert var in forced and env[var] == forced[var]  # only a forced value replaces the caller's
    if prof.active:
        assert env[PROFILE_ENV] == forced.get(PROFILE_ENV, prof.name)
    else:
        assert env == {}
    argv = wrap_argv(prof, ["cmd"], "linux", which_all).argv
    assert argv[-1] == "cmd"
    assert ("nice" in argv) == (prof.active and prof.settings.nice > 0)
