"""A broken or unsafe state directory or database is one ``kas: error:`` line, never a traceback, and
the user's files are left exactly as they were.

Everything is real: files chowned to ``nobody``, ``chattr +i`` for files even root cannot write,
``setpriv`` to make root obey file modes, a second SQLite connection holding the write lock.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kas.registry import SCHEMA_VERSION, Instance, Registry, new_id
from tests.conftest import assert_user_error
from tests.run_local import ROOT, run_kas, without_dac_override

NOBODY = pwd.getpwnam("nobody").pw_uid


def state() -> Path:
    return Path(os.environ["KAS_STATE_DIR"])


def row(**values) -> Instance:  # type: ignore[no-untyped-def]
    base = dict(
        id=new_id(), name="t", mode="sdk", status="exited", cwd="/", argv=["x"], wrapped_argv=["x"],
        resource_profile="normal", settings={}, env={"PAYLOAD": "p" * 300}, ended_at=1.0,
    )  # fmt: skip
    base.update(values)
    return Instance(**base)


def valid_db(rows: int = 40) -> Path:
    """A real kas database with ``rows`` finished rows (several pages), written by kas's own registry."""
    registry = Registry()
    registry.insert_many([row(name=f"r{i}") for i in range(rows)])
    registry.close()
    return registry.path


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


def db_immutable(tmp: Path, immutable: Callable[[Path], None]) -> Path:
    db = valid_db()
    immutable(db)
    return db


def db_read_only(tmp: Path, _: Callable[[Path], None]) -> Path:
    db = valid_db()
    db.chmod(0o400)
    return db


def db_corrupt_pages(tmp: Path, _: Callable[[Path], None]) -> Path:
    """Garbage over every page but the first: the schema still reads, the rows do not."""
    db = valid_db()
    page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    size = db.stat().st_size
    assert size >= 4 * page, "the database should span several pages"
    with open(db, "r+b") as handle:
        handle.seek(page)
        handle.write(bytes((i * 7 + 13) % 256 for i in range(size - page)))
    return db


def db_table_dropped(tmp: Path, _: Callable[[Path], None]) -> Path:
    db = valid_db()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE instances")
    conn.commit()
    conn.close()
    return db


def db_column_missing(tmp: Path, _: Callable[[Path], None]) -> Path:
    state().mkdir(mode=0o700)
    db = state() / "instances.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE instances (id TEXT PRIMARY KEY, name TEXT)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.commit()
    conn.close()
    return db


def db_of_another_program(tmp: Path, _: Callable[[Path], None]) -> Path:
    """A SQLite file with someone else's tables and no schema version: kas must not add its own."""
    state().mkdir(mode=0o700)
    db = state() / "instances.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.execute("INSERT INTO recipes VALUES ('soup')")
    conn.commit()
    conn.close()
    return db


def db_is_a_directory(tmp: Path, _: Callable[[Path], None]) -> None:
    (state() / "instances.db").mkdir(parents=True)
    state().chmod(0o700)


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
    "db-immutable": Case(db_immutable, ["instances.db", "read-only", "move it aside"]),
    "db-read-only": Case(db_read_only, ["instances.db", "read-only", "chmod u+w"], as_user=True),
    "db-corrupt-pages": Case(db_corrupt_pages, ["instances.db", "damaged", "malformed", "move it aside"]),
    "db-table-dropped": Case(db_table_dropped, ["instances.db", "no instances table", "move it aside"]),
    "db-column-missing": Case(db_column_missing, ["instances.db", "lacks mode, status", "move it aside"]),
    "db-of-another-program": Case(
        db_of_another_program, ["instances.db", "another program", "move it aside"]
    ),
    "db-is-a-directory": Case(db_is_a_directory, ["instances.db", "is a directory", "move it aside"]),
    "bad-busy-timeout": Case(
        nothing, ["$KAS_DB_BUSY_TIMEOUT='soon'", "e.g. 30"], {"KAS_DB_BUSY_TIMEOUT": "soon"}
    ),
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


def test_a_row_with_bad_json_is_skipped_with_a_warning_and_kept() -> None:
    registry = Registry()
    good = registry.insert_many([row(name="good1"), row(name="good2")])
    bad_json, bad_type = registry.insert_many([row(name="bad-json"), row(name="bad-type")])
    registry.close()
    conn = sqlite3.connect(registry.path)
    conn.execute("UPDATE instances SET argv = '[\"unterminated' WHERE id = ?", (bad_json.id,))
    conn.execute("UPDATE instances SET env = '[1, 2]' WHERE id = ?", (bad_type.id,))
    conn.commit()
    conn.close()

    listed = run_kas("instance", "list", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["name"] for r in json.loads(listed.stdout)) == ["good1", "good2"]
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 2 and "Traceback" not in listed.stderr, listed.stderr
    assert all(w.startswith("kas: ") and not w.startswith("kas: error:") for w in warnings)
    [json_line] = [w for w in warnings if bad_json.id in w]
    assert "column 'argv' is not valid JSON" in json_line and "DELETE FROM instances" in json_line
    [type_line] = [w for w in warnings if bad_type.id in w]
    assert "column 'env' holds a list, not a dict" in type_line

    table = run_kas("instance", "list", "--all")
    assert table.returncode == 0 and "good1" in table.stdout and "bad-json" not in table.stdout

    assert_user_error(run_kas("instance", "show", bad_json.id), bad_json.id, "not valid JSON", "DELETE FROM")

    pruned = run_kas("instance", "prune")
    assert pruned.returncode == 0, pruned.stderr
    with closing(sqlite3.connect(registry.path)) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM instances")}
    assert left == {bad_json.id, bad_type.id}, "prune must not drop rows it cannot read"
    assert {g.id for g in good}.isdisjoint(left)


def hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another process's writer, as far as SQLite's file locks go: a connection in a write transaction."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_lock_held_past_the_busy_timeout_is_a_clean_exit_1(tmp_path: Path) -> None:
    db = valid_db(rows=1)
    holder = hold_write_lock(db)
    canary = tmp_path / "canary"
    try:
        started = time.monotonic()
        result = run_kas("spawn", "--", "touch", str(canary), env={"KAS_DB_BUSY_TIMEOUT": "0.3"})
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert_user_error(result, str(db), "held the database lock for over 0.3s", "try again", code=1)
    assert 0.3 <= waited < 20
    assert not canary.exists()


def test_a_lock_released_while_kas_waits_is_waited_for(tmp_path: Path) -> None:
    """Held for longer than one SQLite wait (a quarter of the 1.5 s timeout), so kas must retry."""
    db = valid_db(rows=1)
    holder = hold_write_lock(db)
    canary = tmp_path / "canary"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KAS_DB_BUSY_TIMEOUT": "1.5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kas", "spawn", "--", "touch", str(canary)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        opened = wait_until(lambda: has_open(proc.pid, db), timeout=20)
        wait_until(lambda: proc.poll() is not None, timeout=0.5)  # past one 0.375 s wait inside SQLite
    finally:
        holder.rollback()
        holder.close()
    _, err = proc.communicate(timeout=30)
    assert opened, "kas never opened the database"
    assert proc.returncode == 0, err
    assert canary.exists()


def has_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.02)
    return False


@pytest.mark.parametrize(
    "name", ["state-1777", "state-of-another-user", "db-corrupt-pages", "db-table-dropped"]
)
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
