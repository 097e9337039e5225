"""The SQLite registry: concurrency, corrupt and newer files, live status from the kernel, pruning."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kas.registry import SCHEMA_VERSION, Instance, Registry, new_id
from tests.conftest import KAS, assert_user_error


def row(**values) -> Instance:  # type: ignore[no-untyped-def]
    base = dict(
        id=new_id(), name="t", mode="sdk", status="running", cwd="/", argv=["x"], wrapped_argv=["x"],
        resource_profile="interactive", settings={}, env={},
    )  # fmt: skip
    base.update(values)
    return Instance(**base)


def state(project: Path) -> Path:
    return Path(os.environ["KAS_STATE_DIR"])


def test_state_files_are_private(kas, project: Path) -> None:
    kas("spawn", "--detach", "--", "true")
    directory = state(project)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "instances.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "logs").stat().st_mode) == 0o700
    for log in (directory / "logs").iterdir():
        assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_twenty_concurrent_detached_spawns_lose_no_row(kas, interactive, project: Path) -> None:
    procs = [
        subprocess.Popen([KAS, "spawn", "--detach", "--name", f"n{i}", "--", "true"], cwd=project,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(20)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    rows = json.loads(kas("instance", "list", "--all", "--json").stdout)
    assert sorted(r["name"] for r in rows) == sorted(f"n{i}" for i in range(20))
    assert len({r["id"] for r in rows}) == 20


def test_a_corrupt_database_is_reported_and_left_alone(kas, project: Path) -> None:
    directory = state(project)
    directory.mkdir(mode=0o700)
    db = directory / "instances.db"
    db.write_bytes(b"this is not sqlite, it is something precious" * 100)
    before = db.read_bytes()
    result = kas("instance", "list")
    assert_user_error(result, str(db), "not a usable kas database")
    assert db.read_bytes() == before


def test_a_newer_schema_is_reported_not_downgraded(kas, project: Path) -> None:
    directory = state(project)
    directory.mkdir(mode=0o700)
    db = directory / "instances.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    assert_user_error(kas("instance", "list"), str(db), "newer than this kas understands")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5


def test_dead_and_recycled_pids_never_read_as_running(kas, project: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    registry = Registry()
    dead = registry.insert(row(name="dead", pid=gone.pid, pid_create_time=1.0, created_at=1.0))
    me = psutil.Process(os.getpid())
    recycled = registry.insert(
        row(name="recycled", pid=me.pid, pid_create_time=me.create_time() - 100, created_at=1.0)
    )
    registry.close()
    rows = {r["name"]: r for r in json.loads(kas("instance", "list", "--all", "--json").stdout)}
    assert rows["dead"]["status"] == "lost"
    assert rows["recycled"]["status"] == "lost"
    assert {dead.id, recycled.id} == {rows["dead"]["id"], rows["recycled"]["id"]}
    assert "no instances running" in kas("instance", "list").stdout


def test_prune_drops_only_finished_rows(kas, project: Path) -> None:
    registry = Registry()
    registry.insert(row(name="done", status="exited", exit_status=0, ended_at=1.0))
    registry.insert(row(name="pending", status="pending"))
    registry.close()
    result = kas("instance", "prune")
    assert result.returncode == 0 and "pruned 1" in result.stdout
    assert json.loads(kas("instance", "prune", "--json").stdout) == {"pruned": 0, "files_removed": 0}
    names = [r["name"] for r in json.loads(kas("instance", "list", "--all", "--json").stdout)]
    assert names == ["pending"]


@pytest.mark.parametrize("mode", ["sdk", "tmux"])
def test_prune_deletes_the_files_of_pruned_rows_and_nothing_else(
    kas, project: Path, tmp_path: Path, mode: str, request
) -> None:
    if mode == "tmux":
        request.getfixturevalue("tmux_socket")
    plan = project / "plan.toml"
    plan.write_text('name = "p"\n[[waves]]\n[[waves.tasks]]\nid = "a"\ncommand = "echo secret"\n')
    assert kas("wave", "run", "--yes", "--mode", mode, str(plan)).returncode == 0
    ran = Registry().instances()[0]
    log = Path(ran.log_path or "")
    assert "secret" in log.read_text()
    files = [log] + ([state(project) / "status" / ran.id] if mode == "tmux" else [])
    lock = state(project) / "guards" / f"{ran.id}.lock"  # what `kas profile apply` leaves beside the rules
    lock.write_text("")
    files.append(lock)
    assert all(f.exists() for f in files)
    registry = Registry()
    outside = tmp_path / "mine.log"  # a row naming a file outside the state dir never costs the user it
    outside.write_text("keep")
    registry.insert(row(name="odd", status="exited", exit_status=0, ended_at=1.0, log_path=str(outside)))
    me = psutil.Process()  # a finished task of a wave whose runner (here: this test) is still running
    live_run = row(name="live", status="exited", ended_at=1.0, wave_run="r1", owner_pid=me.pid,
                   owner_create_time=me.create_time())  # fmt: skip
    registry.insert(live_run)
    registry.close()
    result = json.loads(kas("instance", "prune", "--json").stdout)
    assert result == {"pruned": 2, "files_removed": len(files)}
    assert not any(f.exists() for f in files)
    assert not log.parent.exists()  # the wave's emptied log folder goes too
    assert outside.read_text() == "keep"
    assert [r["name"] for r in json.loads(kas("instance", "list", "--all", "--json").stdout)] == ["live"]


def test_prune_keep_logs_keeps_them(kas, project: Path) -> None:
    log = state(project) / "logs" / "kept.log"
    log.parent.mkdir(parents=True)
    log.write_text("x")
    registry = Registry()
    registry.insert(row(name="done", status="exited", exit_status=0, ended_at=1.0, log_path=str(log)))
    registry.close()
    assert "removed 0 file(s)" in kas("instance", "prune", "--keep-logs").stdout
    assert log.exists()


def test_ids_resolve_by_prefix_and_name_and_ambiguity_is_an_error(kas, project: Path) -> None:
    registry = Registry()
    registry.insert(row(id="abc111", name="alpha", status="exited", exit_status=0))
    registry.insert(row(id="abc222", name="beta", status="exited", exit_status=0))
    registry.close()
    assert "alpha" in kas("instance", "show", "abc1").stdout
    assert "abc222" in kas("instance", "show", "beta").stdout
    assert_user_error(kas("instance", "show", "abc"), "matches several")
    assert_user_error(kas("instance", "show", "ab_"), "no instance 'ab_'")  # no LIKE wildcards


def test_migration_is_idempotent_across_opens(project: Path) -> None:
    first = Registry()
    first.insert(row(name="kept"))
    first.close()
    second = Registry()
    assert [i.name for i in second.instances()] == ["kept"]
    assert second.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second.close()


V1_SCHEMA = """
CREATE TABLE instances (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, mode TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER,
    pid_create_time REAL, tmux_socket TEXT, tmux_target TEXT, cwd TEXT NOT NULL, argv TEXT NOT NULL,
    wrapped_argv TEXT NOT NULL, resource_profile TEXT NOT NULL, settings TEXT NOT NULL, env TEXT NOT NULL,
    log_path TEXT, created_at REAL NOT NULL, started_at REAL, ended_at REAL, exit_status INTEGER,
    wave_run TEXT, wave_index INTEGER, task_id TEXT
);
"""


def test_a_v1_database_is_migrated_in_place_and_keeps_its_rows(kas, project: Path) -> None:
    directory = state(project)
    directory.mkdir(mode=0o700)
    conn = sqlite3.connect(directory / "instances.db")
    conn.executescript(V1_SCHEMA)
    conn.execute(
        "INSERT INTO instances (id, name, mode, status, cwd, argv, wrapped_argv, resource_profile, settings, env,"
        " created_at, exit_status) VALUES ('old001', 'legacy', 'sdk', 'exited', '/', '[\"x\"]', '[\"x\"]',"
        " 'interactive', '{}', '{}', 1.0, 0)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    [old] = json.loads(kas("instance", "list", "--all", "--json").stdout)
    assert old["id"] == "old001" and old["owner_pid"] is None
    conn = sqlite3.connect(directory / "instances.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_pending_rows_of_a_dead_runner_read_as_cancelled(kas, project: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    registry = Registry()
    registry.insert(row(name="orphan", status="pending", owner_pid=gone.pid, owner_create_time=1.0))
    mine = psutil.Process(os.getpid())
    registry.insert(
        row(name="alive", status="pending", owner_pid=mine.pid, owner_create_time=mine.create_time())
    )
    registry.close()
    rows = {r["name"]: r["status"] for r in json.loads(kas("instance", "list", "--all", "--json").stdout)}
    assert rows == {"orphan": "cancelled", "alive": "pending"}
