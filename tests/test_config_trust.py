"""Which configs kas obeys: found ones must be the user's own (like git's safe.directory); named ones
must not be writable by everyone; too deeply nested TOML is one line, not a RecursionError.

Other users are simulated by chown-ing real files to ``nobody`` (the suite runs as root).
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import textwrap
from pathlib import Path

import pytest

from kas.trust import is_private_group
from tests.conftest import assert_user_error
from tests.run_local import run_kas

NOBODY = pwd.getpwnam("nobody").pw_uid
INTERACTIVE = '[resources]\nprofile = "interactive"\n'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to another user")


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory like /tmp (mode 1777) with a project inside it, which is the test's cwd."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    (directory / "project").mkdir()
    monkeypatch.chdir(directory / "project")
    return directory


def plant(where: Path, text: str = INTERACTIVE, *, file_mode: int = 0o644, dir_mode: int = 0o755) -> Path:
    """Write ``where/.kasmos/config.toml`` with the given modes and return its path."""
    config = where / ".kasmos" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    config.chmod(file_mode)
    config.parent.chmod(dir_mode)
    return config


def root_group_is_private() -> bool:
    """Whether this machine's accounts make ``root`` a private group (read directly, not through kas)."""
    group = grp.getgrgid(0)
    others = [account for account in pwd.getpwall() if account.pw_gid == 0 and account.pw_uid != 0]
    return group.gr_name == "root" and not group.gr_mem and not others


def shows_interactive(result) -> bool:  # type: ignore[no-untyped-def]
    return result.returncode == 0 and "profile: interactive" in result.stdout


def test_own_config_in_a_shared_directory_is_used(shared: Path) -> None:
    plant(shared)
    assert shows_interactive(run_kas("profile", "show"))


@pytest.mark.parametrize("owned_by_nobody", ["file", "directory", "both"])
def test_found_config_of_another_user_is_refused(shared: Path, owned_by_nobody: str) -> None:
    config = plant(shared)
    if owned_by_nobody in ("file", "both"):
        os.chown(config, NOBODY, -1)
    if owned_by_nobody in ("directory", "both"):
        os.chown(config.parent, NOBODY, -1)
    result = run_kas("profile", "show")
    assert_user_error(result, str(config), "refusing this config", "nobody (uid 65534)", "chown", "--config")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("file_mode", "dir_mode", "fragments"),
    [
        (0o666, 0o755, ["it is writable by everyone (mode 0666)", "chmod o-w"]),
        (0o644, 0o777, ["its directory", "writable by everyone (mode 0777)", "chmod o-w"]),
        (0o644, 0o1777, ["its directory", "writable by everyone (mode 1777)"]),
    ],
)
def test_found_config_that_anyone_can_write_is_refused(
    shared: Path, file_mode: int, dir_mode: int, fragments: list[str]
) -> None:
    config = plant(shared, file_mode=file_mode, dir_mode=dir_mode)
    assert_user_error(run_kas("profile", "show"), str(config), "refusing this config", *fragments)


def test_group_writable_is_accepted_only_for_the_owners_private_group(shared: Path) -> None:
    shared_group = next((g for g in grp.getgrall() if g.gr_gid != 0), None)
    if not root_group_is_private() or shared_group is None:
        pytest.skip("this machine's root group is not a private group, or it has no other group")
    config = plant(shared, file_mode=0o664, dir_mode=0o775)
    assert shows_interactive(run_kas("profile", "show"))
    os.chown(config, -1, shared_group.gr_gid)
    result = run_kas("profile", "show")
    assert_user_error(result, str(config), f"writable by group {shared_group.gr_name}", "chmod g-w")
    os.chown(config, -1, 0)
    os.chown(config.parent, -1, shared_group.gr_gid)
    assert_user_error(run_kas("profile", "show"), "its directory", f"group {shared_group.gr_name}")


def with_accounts(tmp_path: Path, group_line: str | None, nobody_gid: int | None) -> list[str]:
    """A prefix that runs kas in a private mount namespace whose /etc/group and /etc/passwd are edited.

    The machine's own account files are untouched; only the kas process sees root's group gain a
    member (``group_line``) or ``nobody`` get root's group as its primary group (``nobody_gid``).
    """
    group, passwd = tmp_path / "group", tmp_path / "passwd"
    lines = Path("/etc/group").read_text().splitlines()
    group.write_text(
        "\n".join(group_line if line.startswith("root:") and group_line else line for line in lines) + "\n"
    )
    accounts = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "nobody" and nobody_gid is not None:
            fields[3] = str(nobody_gid)
        accounts.append(":".join(fields))
    passwd.write_text("\n".join(accounts) + "\n")
    script = 'mount --bind "$1" /etc/group && mount --bind "$2" /etc/passwd && shift 2 && exec "$@"'
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(group),
        str(passwd),
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount account files in a mount namespace here: {probe.stderr!r}")
    return prefix


@pytest.mark.parametrize(
    ("group_line", "nobody_gid"),
    [(None, None), ("root:x:0:nobody", None), (None, 0)],
    ids=["private", "listed-member", "primary-group-of-another-account"],
)
def test_a_group_with_another_member_is_not_private(
    shared: Path, tmp_path: Path, group_line: str | None, nobody_gid: int | None
) -> None:
    if not root_group_is_private():
        pytest.skip("this machine's root group is not a private group")
    config = plant(shared, file_mode=0o664)
    result = run_kas("profile", "show", prefix=with_accounts(tmp_path, group_line, nobody_gid))
    if group_line is None and nobody_gid is None:
        assert shows_interactive(result), result.stderr
    else:
        assert_user_error(result, str(config), "writable by group root", "chmod g-w")


def test_private_group_means_named_like_the_owner_and_no_other_member() -> None:
    assert not is_private_group(pwd.getpwnam("nobody").pw_gid, 0)  # nogroup is not root's
    nobody = pwd.getpwnam("nobody")
    assert not is_private_group(nobody.pw_gid, nobody.pw_uid)  # named nogroup, not nobody
    assert not is_private_group(2**31 - 7, 0)  # no such group


def test_a_symlinked_config_is_judged_by_where_it_really_lives(shared: Path) -> None:
    theirs = shared / "theirs"
    theirs.mkdir()
    real = theirs / "config.toml"
    real.write_text(INTERACTIVE)
    os.chown(theirs, NOBODY, -1)  # the file is ours, but its directory is theirs: they can swap it
    link = shared / ".kasmos" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(real)
    assert_user_error(run_kas("profile", "show"), str(link), "its real directory", "nobody (uid 65534)")


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_a_refused_config_runs_nothing(shared: Path, tmp_path: Path, owner: str) -> None:
    """A config that puts its own ``true`` first on PATH: run when trusted, never when refused."""
    evil = tmp_path / "evil-bin"
    evil.mkdir()
    canary = tmp_path / "canary"
    fake = evil / "true"
    fake.write_text(f"#!/bin/sh\ntouch {canary}\n")
    fake.chmod(0o755)
    config = plant(shared, INTERACTIVE + f'[resources.env]\nPATH = "{evil}:/usr/bin:/bin"\n')
    if owner == "nobody":
        os.chown(config, NOBODY, -1)
    result = run_kas("spawn", "--mode", "sdk", "--", "true")
    if owner == "root":  # the control: the same config, trusted, does run its program
        assert result.returncode == 0, result.stderr
        assert canary.exists()
    else:
        assert_user_error(result, str(config), "nobody (uid 65534)")
        assert not canary.exists()


def test_a_named_config_of_another_user_is_used(shared: Path, tmp_path: Path) -> None:
    """Naming a file is trusting it: --config is the documented way to use a refused config."""
    config = plant(shared)
    os.chown(config, NOBODY, -1)
    assert shows_interactive(run_kas("--config", str(config), "profile", "show"))
    assert shows_interactive(run_kas("profile", "show", env={"KASMOS_CONFIG": str(config)}))


@pytest.mark.parametrize("how", ["--config", "$KASMOS_CONFIG"])
def test_a_named_config_that_anyone_can_write_is_refused(tmp_path: Path, how: str) -> None:
    config = tmp_path / "named.toml"
    config.write_text(INTERACTIVE)
    config.chmod(0o666)
    result = named(how, config)
    assert_user_error(result, str(config), f"(from {how})", "writable by everyone", "chmod o-w")
    config.chmod(0o644)
    assert shows_interactive(named(how, config))


def test_a_named_config_in_an_open_directory_needs_the_sticky_bit(tmp_path: Path) -> None:
    """Without the sticky bit anyone may replace the file; with it (like /tmp) only its owner may."""
    directory = tmp_path / "open"
    directory.mkdir()
    config = directory / "named.toml"
    config.write_text(INTERACTIVE)
    directory.chmod(0o777)
    result = run_kas("--config", str(config), "profile", "show")
    assert_user_error(result, str(config), f"its directory {directory}", "without the sticky bit")
    directory.chmod(0o1777)
    assert shows_interactive(run_kas("--config", str(config), "profile", "show"))


@pytest.mark.parametrize("how", ["--config", "$KASMOS_CONFIG"])
def test_a_missing_named_config_names_where_it_was_named(tmp_path: Path, how: str) -> None:
    assert_user_error(named(how, tmp_path / "nope.toml"), "nope.toml", "not found", f"(from {how})")
    assert_user_error(named(how, tmp_path), str(tmp_path), "is a directory", f"(from {how})")


def named(how: str, config: Path):  # type: ignore[no-untyped-def]
    """``kas profile show`` with ``config`` given the way ``how`` says."""
    if how == "--config":
        return run_kas("--config", str(config), "profile", "show")
    return run_kas("profile", "show", env={"KASMOS_CONFIG": str(config)})


DEEP_ARRAY = "[" * 600 + "]" * 600
DEEP_TABLE = "{a = " * 600 + "1" + "}" * 600


@pytest.mark.parametrize("value", [DEEP_ARRAY, DEEP_TABLE], ids=["arrays", "inline-tables"])
def test_deeply_nested_config_is_one_line(project: Path, value: str) -> None:
    config = plant(project, f"[resources]\nprofile = {value}\n")
    result = run_kas("profile", "show")
    assert_user_error(result, str(config), "nesting too deep")
    assert "RecursionError" not in result.stderr


def test_deeply_nested_plan_is_one_line_and_runs_nothing(project: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    plan = project / "plan.toml"
    plan.write_text(
        textwrap.dedent(f"""\
        name = "deep"
        [[waves]]
        [[waves.tasks]]
        id = "t"
        command = ["touch", "{canary}"]
        [defaults]
        env = {{ X = {DEEP_ARRAY} }}
        """)
    )
    result = run_kas("wave", "run", "--yes", str(plan))
    assert_user_error(result, str(plan), "nesting too deep")
    assert not canary.exists()
