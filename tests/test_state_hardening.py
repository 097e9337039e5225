"""A broken or unsafe state directory is one ``kas: error:`` line, never a traceback, and the user's
files are left exactly as they were.

Everything is real: files chowned to ``nobody``, ``chattr +i`` for files even root cannot write,
``setpriv`` to make root obey file modes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import assert_user_error
from tests.run_local import ROOT, run_kas, without_dac_override

NOBODY = pwd.getpwnam("nobody").pw_uid


def state() -> Path:
    return Path(os.environ["KAS_STATE_DIR"])


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """``chattr +i`` a path (even root cannot change it then), undone afterwards so cleanup works."""
    marked: list[Path] = []

    def mark(path: Path) -> None:
        if shutil.which("chattr") is None:
            pytest.skip("chattr not installed")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make files immutable here: {done.stderr.strip()}")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@dataclass
class Case:
    """One broken setup: ``setup`` breaks things and returns the file whose bytes must not change."""

    setup: Callable[[Path, Callable[[Path], None]], Path | None]
    fragments: list[str]
    env: dict[str, str] = field(default_factory=dict)
    as_user: bool = False  # run kas as root without DAC override, i.e. obeying file modes
    code: int = 2


def state_is_a_file(tmp: Path, _: Callable[[Path], None]) -> Path:
    state().write_text("my notes, not a directory\n")
    return state()


def state_under_a_file(tmp: Path, _: Callable[[Path], None]) -> Path:
    blocker = tmp / "blocker"
    blocker.write_text("precious\n")
    os.environ["KAS_STATE_DIR"] = str(blocker / "state")
    return blocker


def state_dir_with_mode(mode: int, owner: int = -1, group: int = -1) -> Callable[..., None]:
    def setup(tmp: Path, _: Callable[[Path], None]) -> None:
        state().mkdir()
        os.chown(state(), owner, group)
        state().chmod(mode)

    return setup


def shared_group() -> int:
    return next(g.gr_gid for g in __import__("grp").getgrall() if g.gr_gid != 0)


def state_immutable(tmp: Path, immutable: Callable[[Path], None]) -> None:
    state().mkdir(mode=0o700)
    immutable(state())


def nothing(tmp: Path, _: Callable[[Path], None]) -> None:
    return None


CASES = {
    "state-is-a-file": Case(state_is_a_file, ["exists but is not a directory", "move it aside"]),
    "state-under-a-file": Case(state_under_a_file, ["is a file, not a directory", "$KAS_STATE_DIR"]),
    "state-under-proc": Case(
        nothing, ["/proc", "pseudo-filesystem", "$KAS_STATE_DIR"], {"KAS_STATE_DIR": "/proc/kas"}
    ),
    "state-is-proc-self": Case(nothing, ["/proc", "pseudo-filesystem"], {"KAS_STATE_DIR": "/proc/self"}),
    "state-1777": Case(state_dir_with_mode(0o1777), ["writable by everyone (mode 1777)", "$KAS_STATE_DIR"]),
    "state-0777": Case(state_dir_with_mode(0o777), ["writable by everyone (mode 0777)", "chmod 700"]),
    "state-shared-group": Case(
        state_dir_with_mode(0o770, group=shared_group()), ["writable by group", "chmod 700"]
    ),
    "state-of-another-user": Case(state_dir_with_mode(0o700, owner=NOBODY), ["nobody (uid 65534)", "chown"]),
    "state-immutable": Case(state_immutable, ["not writable", "chattr -i"]),
    "state-read-only": Case(state_dir_with_mode(0o500), ["not writable", "chmod u+w"], as_user=True),
}  # fmt: skip


def snapshot(path: Path | None) -> tuple[int, bytes] | None:
    """A file's mode and bytes, or a directory's mode, to compare before and after."""
    if path is None:
        return None
    if path.is_dir():
        return (path.stat().st_mode, b"")
    return (path.stat().st_mode, path.read_bytes())


@pytest.mark.parametrize("command", ["instance list", "spawn"])
@pytest.mark.parametrize("name", list(CASES))
def test_broken_state_is_one_line_and_touches_nothing(
    name: str,
    command: str,
    tmp_path: Path,
    immutable: Callable[[Path], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    monkeypatch.setenv("KAS_STATE_DIR", os.environ["KAS_STATE_DIR"])  # restored even if a setup moves it
    kept = case.setup(tmp_path, immutable)
    watched = kept or (state() if state().exists() else None)
    before = snapshot(watched)
    canary = tmp_path / "canary"
    args = (
        ["instance", "list", "--all"] if command == "instance list" else ["spawn", "--", "touch", str(canary)]
    )
    result = run_kas(*args, env=case.env, prefix=without_dac_override() if case.as_user else None)
    assert_user_error(result, *case.fragments, code=case.code)
    assert result.stdout == ""
    assert snapshot(watched) == before
    assert not canary.exists()


def test_an_own_state_dir_readable_by_others_is_only_tightened() -> None:
    """Read access for others cannot have planted anything: kas makes the directory 0700 and goes on."""
    state().mkdir(mode=0o755)
    state().chmod(0o755)
    result = run_kas("instance", "list")
    assert result.returncode == 0, result.stderr
    assert state().stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("name", ["state-1777", "state-of-another-user"])
def test_completion_over_broken_state_offers_nothing_and_prints_no_traceback(
    name: str, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """Completion runs inside the user's shell line: it must stay quiet; the command itself reports."""
    kept = CASES[name].setup(tmp_path, immutable)
    before = snapshot(kept)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_KAS_COMPLETE": "bash_complete",
        "COMP_WORDS": "kas instance show ",
        "COMP_CWORD": "3",
    }
    # Named "kas" as the console script is, so Click reads _KAS_COMPLETE (python -m kas would not).
    program = "from kas.cli import main; main(prog_name='kas')"
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr == ""
    assert snapshot(kept) == before
