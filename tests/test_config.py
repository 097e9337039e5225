"""Finding and validating .kasmos/config.toml: every bad input is one located line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_user_error


def test_config_is_found_in_the_nearest_parent(kas, write_config, project: Path) -> None:
    write_config('[resources]\nprofile = "interactive"\n')
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    result = kas("profile", "show", cwd=deep)
    assert result.returncode == 0
    assert "profile: interactive" in result.stdout
    assert str(project / ".kasmos" / "config.toml") in result.stdout


def test_no_config_or_no_resources_block_is_normal(kas, write_config) -> None:
    assert "profile: normal" in kas("profile", "show").stdout
    write_config("[other]\nx = 1\n")
    assert "profile: normal" in kas("profile", "show").stdout


def test_config_option_and_env_override_discovery(kas, write_config, tmp_path: Path, monkeypatch) -> None:
    write_config('[resources]\nprofile = "interactive"\n')
    other = tmp_path / "other.toml"
    other.write_text('[resources]\nprofile = "custom"\nnice = 4\n')
    assert "profile: custom" in kas("--config", str(other), "profile", "show").stdout
    monkeypatch.setenv("KASMOS_CONFIG", str(other))
    assert "profile: custom" in kas("profile", "show").stdout


def test_missing_explicit_config_is_an_error(kas, tmp_path: Path) -> None:
    result = kas("--config", str(tmp_path / "nope.toml"), "profile", "show")
    assert_user_error(result, "nope.toml", "not found")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[resources]\nprofile = "interactive"\nnice = \n', ["config.toml:3:", "TOML syntax error"]),
        (
            '[resources]\nprofile = "interactive"\ngomaxproc = 4\n',
            ["config.toml:3", "gomaxproc", "did you mean 'gomaxprocs'"],
        ),
        (
            '[resources]\nprofile = "fast"\n',
            ["config.toml:2", "unknown profile 'fast'", "normal, interactive, custom"],
        ),
        (
            '[resources]\nprofile = "interactive"\nnice = -5\n',
            ["config.toml:3", "nice = -5", "only ever lowers priority"],
        ),
        ('[resources]\nprofile = "interactive"\nnice = 25\n', ["nice = 25", "from 0 to 19"]),
        ('[resources]\nprofile = "interactive"\nnice = "10"\n', ["nice = '10'", "integer"]),
        ('[resources]\nprofile = "interactive"\nionice_class = "realtime"\n', ["realtime", "needs root"]),
        ('[resources]\nprofile = "interactive"\nionice_level = 9\n', ["ionice_level = 9", "from 0 to 7"]),
        (
            '[resources]\nprofile = "custom"\nionice_class = "idle"\nionice_level = 2\n',
            ["config.toml:4", "ionice_level", "idle"],
        ),
        ('[resources]\nprofile = "interactive"\nbuild_jobs = -1\n', ["build_jobs = -1", ">= 0"]),
        ('[resources]\nprofile = "interactive"\nexecution_mode = "docker"\n', ["execution_mode", '"tmux"']),
        ('[resources]\nprofile = "interactive"\nautogroup = 1\n', ["autogroup = 1", "true or false"]),
        ('[resources]\nprofile = "custom"\n', ["config.toml:2", "sets nothing"]),
        ('[resources]\nprofile = "interactive"\n[resources.env]\n"1BAD" = "x"\n', ["'1BAD'", "not a valid"]),
        ('[resources]\nprofile = "interactive"\n[resources.env]\nKASMOS_X = "x"\n', ["KASMOS_X", "reserved"]),
        (
            '[resources]\nprofile = "interactive"\n[resources.env]\nMAKEFLAGS = 2\n',
            ["config.toml:4", "must be a string"],
        ),
    ],
)
def test_bad_config_is_one_located_line_and_exit_2(
    kas, write_config, text: str, fragments: list[str]
) -> None:
    write_config(text)
    result = kas("profile", "show")
    assert_user_error(result, *fragments)
    assert result.stdout == ""


def test_toml_error_at_end_of_file_still_names_a_line(kas, write_config) -> None:
    write_config('[resources]\nprofile = "interactive"\nenv = { A = "1"\n')
    assert_user_error(kas("profile", "show"), "config.toml:", "TOML syntax error")


def test_keys_under_normal_warn_and_are_ignored(kas, write_config) -> None:
    write_config('[resources]\nprofile = "normal"\nnice = 5\n')
    result = kas("profile", "show", "--json")
    assert result.returncode == 0
    import json

    assert json.loads(result.stdout)["settings"]["nice"] == 0
    shown = kas("profile", "show")
    assert "ignored: nice" in shown.stderr
