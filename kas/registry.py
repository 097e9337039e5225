"""The instance registry: one SQLite file (WAL) that every kas process shares safely.

Rows are the source of truth for what kas started; live status always comes from the kernel (``probe``).
Schema changes go through ``MIGRATIONS`` keyed by ``PRAGMA user_version``; a database from a newer kas or a
corrupt file is reported, never overwritten.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kas import status as _status
from kas.errors import RegistryError
from kas.statedir import private_file, state_dir

DB_NAME = "instances.db"
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        pid_create_time REAL,
        tmux_socket TEXT,
        tmux_target TEXT,
        cwd TEXT NOT NULL,
        argv TEXT NOT NULL,
        wrapped_argv TEXT NOT NULL,
        resource_profile TEXT NOT NULL,
        settings TEXT NOT NULL,
        env TEXT NOT NULL,
        log_path TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_status INTEGER,
        wave_run TEXT,
        wave_index INTEGER,
        task_id TEXT
    );
    CREATE INDEX instances_status ON instances(status);
    CREATE INDEX instances_wave ON instances(wave_run);
    """,
    # v2: the kas process that owns a row (a wave runner), so pending tasks of a runner that died
    # without cleaning up (kill -9, a crash) are shown as cancelled instead of pending forever.
    """
    ALTER TABLE instances ADD COLUMN owner_pid INTEGER;
    ALTER TABLE instances ADD COLUMN owner_create_time REAL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
JSON_FIELDS = ("argv", "wrapped_argv", "settings", "env")
FINISHED = _status.FINISHED


@dataclass
class Instance:
    """One agent kas started (or a wave task that is still pending)."""

    id: str
    name: str
    mode: str
    status: str
    cwd: str
    argv: list[str]
    wrapped_argv: list[str]
    resource_profile: str
    settings: dict[str, Any]
    env: dict[str, str]
    created_at: float = field(default_factory=time.time)
    pid: int | None = None
    pid_create_time: float | None = None
    tmux_socket: str | None = None
    tmux_target: str | None = None
    log_path: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_status: int | None = None
    wave_run: str | None = None
    wave_index: int | None = None
    task_id: str | None = None
    owner_pid: int | None = None
    owner_create_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Instance:
        data = dict(row)
        for key in JSON_FIELDS:
            data[key] = json.loads(data[key])
        return cls(**data)


COLUMNS = tuple(f.name for f in fields(Instance))


def _column(name: str, value: Any) -> Any:
    """A field as stored: the JSON fields as text, the rest as they are."""
    return json.dumps(value) if name in JSON_FIELDS else value


def _row_values(inst: Instance) -> list[Any]:
    return [_column(c, getattr(inst, c)) for c in COLUMNS]


INSERT_SQL = f"INSERT INTO instances ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def new_id() -> str:
    """Short and unique enough to type; collisions are retried by the insert."""
    return secrets.token_hex(3)


class Registry:
    """A handle on the database; cheap to open, one per command."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / DB_NAME
        fresh = not self.path.exists()
        if fresh:
            private_file(self.path)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 30000")
            # WAL + NORMAL: never corrupts; a power cut may forget the last commits, not the file.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise RegistryError(
                f"{self.path}: not a usable kas database ({exc}); move it aside to start a new one"
            ) from None

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path}: database schema v{version} is newer than this kas understands "
                f"(v{SCHEMA_VERSION}); upgrade kas"
            )
        if version < SCHEMA_VERSION:
            with self.transaction():
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            for _ in range(50):
                try:
                    self.conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so concurrent writers queue instead of failing."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def insert(self, inst: Instance) -> Instance:
        """Store a new instance, picking a fresh id if the short one is taken."""
        return self.insert_many([inst])[0]

    def insert_many(self, insts: list[Instance]) -> list[Instance]:
        """Store several instances in one transaction (a wave's pending rows appear together)."""
        for _ in range(20):
            try:
                with self.transaction() as conn:
                    conn.executemany(INSERT_SQL, [_row_values(inst) for inst in insts])
                return insts
            except sqlite3.IntegrityError:
                for inst in insts:
                    inst.id = new_id()
        raise RegistryError(f"{self.path}: could not find a free instance id")

    def update(self, inst_id: str, **values: Any) -> None:
        """Change some columns of one row atomically."""
        values = {key: _column(key, value) for key, value in values.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as conn:
            conn.execute(f"UPDATE instances SET {assignments} WHERE id = ?", [*values.values(), inst_id])

    def get(self, inst_id: str) -> Instance | None:
        """Find by id, or by a unique id prefix or name, as people type them."""
        row = self.conn.execute("SELECT * FROM instances WHERE id = ?", (inst_id,)).fetchone()
        if row is None:
            rows = self.conn.execute(
                "SELECT * FROM instances WHERE substr(id, 1, ?) = ? OR name = ? ORDER BY created_at DESC",
                (len(inst_id), inst_id, inst_id),
            ).fetchall()
            if len(rows) > 1:
                ids = ", ".join(r["id"] for r in rows[:5])
                raise RegistryError(f"'{inst_id}' matches several instances ({ids}); give the full id")
            row = rows[0] if rows else None
        return Instance.from_row(row) if row else None

    def instances(self, *, include_finished: bool = True, wave_run: str | None = None) -> list[Instance]:
        """Instances newest first; optionally only unfinished ones, or those of one wave run."""
        query = "SELECT * FROM instances"
        where: list[str] = []
        params: list[Any] = []
        if not include_finished:
            where.append(f"status NOT IN ({', '.join('?' * len(FINISHED))})")
            params += FINISHED
        if wave_run is not None:
            where.append("wave_run = ?")
            params.append(wave_run)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at DESC, id"
        return [Instance.from_row(r) for r in self.conn.execute(query, params)]

    def prune(
        self, older_than: float | None = None, spare: Callable[[Instance], bool] = lambda _: False
    ) -> list[Instance]:
        """Delete finished rows (optionally only those ended before a time, and not ``spare``d); return them.

        The rows come back so that the caller can delete the files only they point at; selecting and
        deleting share one write transaction, so a row that changes meanwhile is not lost or half-pruned.
        """
        query = f"SELECT * FROM instances WHERE status IN ({', '.join('?' * len(FINISHED))})"
        params: list[Any] = list(FINISHED)
        if older_than is not None:
            query += " AND ended_at < ?"
            params.append(older_than)
        with self.transaction() as conn:
            gone = [inst for inst in map(Instance.from_row, conn.execute(query, params)) if not spare(inst)]
            conn.executemany("DELETE FROM instances WHERE id = ?", [(inst.id,) for inst in gone])
        return gone

    def id_candidates(self, prefix: str, limit: int = 200) -> list[tuple[str, str, str]]:
        """``(id, name, status)`` of rows whose id starts with ``prefix``, newest first (for completion)."""
        rows = self.conn.execute(
            "SELECT id, name, status FROM instances WHERE substr(id, 1, ?) = ?"
            " ORDER BY created_at DESC LIMIT ?",
            (len(prefix), prefix, limit),
        ).fetchall()
        return [(r["id"], r["name"], r["status"]) for r in rows]
