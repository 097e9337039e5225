"""The instance registry: one SQLite file (WAL) that every kas process shares safely.

Rows are the source of truth for what kas started; live status always comes from the kernel (``probe``).
Schema changes go through ``MIGRATIONS`` keyed by ``PRAGMA user_version``; a database from a newer kas or a
corrupt file is reported, never overwritten.

Every SQLite failure leaves as a ``RegistryError`` naming the file and the fix (the user's file is never
rewritten, moved or deleted to get past it); a lock held by another process is waited for with backoff
up to ``$KAS_DB_BUSY_TIMEOUT`` seconds (30) and then reported as ``RegistryBusyError`` (exit 1). A row
whose JSON columns cannot be read back is skipped with a warning by the listings, so one bad row does
not make ``kas instance list`` unusable.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from kas import status as _status
from kas.errors import RegistryBusyError, RegistryError
from kas.statedir import private_file, state_dir

T = TypeVar("T")
BUSY_ENV = "KAS_DB_BUSY_TIMEOUT"
BUSY_TIMEOUT = 30.0
# How long one SQLite call waits for a lock by itself before kas pauses and tries again (at most a
# quarter of the whole timeout, so a short timeout is still several tries).
BUSY_SLICE = 1.0
MOVE_ASIDE = "move it aside to start a new one"
SQLITE_BUSY, SQLITE_LOCKED = 5, 6  # primary result codes (sqlite3 names them only from Python 3.11)

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
    # v3: the agent's guard (its parent and subreaper, which keeps the profile on its whole tree), and the
    # last runtime profile switch (``kas profile apply``): when, and from which profile.
    """
    ALTER TABLE instances ADD COLUMN guard_pid INTEGER;
    ALTER TABLE instances ADD COLUMN guard_create_time REAL;
    ALTER TABLE instances ADD COLUMN applied_at REAL;
    ALTER TABLE instances ADD COLUMN applied_from TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
JSON_FIELDS = ("argv", "wrapped_argv", "settings", "env")
JSON_TYPES: dict[str, type] = {"argv": list, "wrapped_argv": list, "settings": dict, "env": dict}
FINISHED = _status.FINISHED
_NUMBER = (int, float)
SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("id", "name", "mode", "status", "cwd", "resource_profile"), (str,)),
    "created_at": _NUMBER,
    **dict.fromkeys(
        ("started_at", "ended_at", "pid_create_time", "owner_create_time", "guard_create_time", "applied_at"),
        (*_NUMBER, type(None)),
    ),
    **dict.fromkeys(("pid", "exit_status", "wave_index", "owner_pid", "guard_pid"), (int, type(None))),
    **dict.fromkeys(
        ("tmux_socket", "tmux_target", "log_path", "wave_run", "task_id", "applied_from"), (str, type(None))
    ),
}


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
    guard_pid: int | None = None
    guard_create_time: float | None = None
    applied_at: float | None = None
    applied_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every column (a shallow copy: ``asdict`` deep-copies, which a list of 1,000 rows feels)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Instance:
        """Rebuild an instance; a JSON column that does not hold what kas wrote raises ``RowError``."""
        data = dict(row)
        for key in JSON_FIELDS:
            try:
                data[key] = json.loads(data[key])
            except (TypeError, ValueError) as exc:
                raise RowError(data["id"], f"column {key!r} is not valid JSON ({exc})") from None
            if not isinstance(data[key], JSON_TYPES[key]):
                kind = type(data[key]).__name__
                raise RowError(data["id"], f"column {key!r} holds a {kind}, not a {JSON_TYPES[key].__name__}")
        for key, kinds in SCALAR_TYPES.items():  # SQLite keeps whatever was written, typed or not
            if not isinstance(data.get(key), kinds) or isinstance(data.get(key), bool):
                raise RowError(
                    str(data["id"]), f"column {key!r} holds {data.get(key)!r}, which kas never writes"
                )
        return cls(**data)


class RowError(RegistryError):
    """One stored row cannot be read back (someone edited the file, or a disk flipped bits)."""

    def __init__(self, inst_id: str, reason: str) -> None:
        super().__init__(f"instance {inst_id}: {reason}")
        self.inst_id = inst_id
        self.reason = reason


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


def busy_timeout() -> float:
    """Seconds to wait for another process's lock: ``$KAS_DB_BUSY_TIMEOUT``, else 30 (a wave can be busy)."""
    raw = os.environ.get(BUSY_ENV)
    if not raw:
        return BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise RegistryError(f"${BUSY_ENV}={raw!r} is not a number of seconds; set it to e.g. 30, or unset it")
    return value


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock we need; waiting may help."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)  # pragma: no cover - Python 3.10


def _writable(path: Path) -> bool:
    """Whether this process may open ``path`` for writing, as the kernel decides (root, immutable files)."""
    mode = os.R_OK | os.W_OK
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)  # pragma: no cover - platforms without faccessat


class Registry:
    """A handle on the database; cheap to open, one per command."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        timeout: float | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path or state_dir() / DB_NAME
        self.timeout = busy_timeout() if timeout is None else timeout
        self.warnings: list[str] = []  # for the front end to show, unless it passed ``warn``
        self.warn = warn or self.warnings.append
        self._skipped: set[str] = set()
        if self.path.is_dir():
            raise RegistryError(f"{self.path}: is a directory, not kas's database; {MOVE_ASIDE}")
        fresh = not self.path.exists()
        if fresh:
            private_file(self.path)
        elif not _writable(self.path):
            raise RegistryError(
                f"{self.path}: not a usable kas database (read-only for you); make it writable "
                f"(`chmod u+w`, or `chattr -i` if lsattr shows 'i') or {MOVE_ASIDE}"
            )
        with self._errors():
            self.conn = sqlite3.connect(
                self.path,
                timeout=min(self.timeout / 4, BUSY_SLICE),
                isolation_level=None,
                check_same_thread=False,
            )
        try:
            with self._errors():
                self.conn.row_factory = sqlite3.Row
                # WAL + NORMAL: never corrupts; a power cut may forget the last commits, not the file.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's exceptions into one ``RegistryError`` line that names the file and the fix."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.DatabaseError) -> RegistryError:
        name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+; the text is the fallback
        text = str(exc)
        if _is_busy(exc):
            return self._busy()
        if name.startswith("SQLITE_READONLY") or "readonly" in text:
            return RegistryError(
                f"{self.path}: not a usable kas database (read-only: {text}); make it and its directory "
                f"writable for you or {MOVE_ASIDE}"
            )
        if name.startswith("SQLITE_FULL") or "disk is full" in text:
            error = RegistryError(f"{self.path}: cannot write the database ({text}); free some disk space")
            error.exit_code = 1  # nothing wrong with the setup: a run-time failure
            return error
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
            return RegistryError(
                f"{self.path}: not a usable kas database (damaged: {text}); {MOVE_ASIDE} "
                f"(keep the old file to recover its rows)"
            )
        return RegistryError(f"{self.path}: not a usable kas database ({text}); {MOVE_ASIDE}")

    def _busy(self) -> RegistryBusyError:
        return RegistryBusyError(
            f"{self.path}: another process held the database lock for over {self.timeout:g}s; try again "
            f"(`fuser -v {self.path}` lists the processes using it)"
        )

    def _retry(self, action: Callable[[], T], patience: float | None = None) -> T:
        """Run ``action``; while another process holds the lock, pause (growing) and retry until the timeout.

        Each try already waits up to ``BUSY_SLICE`` inside SQLite; the outer loop also covers the cases
        where SQLite reports busy without waiting (recovery, a journal-mode change).
        """
        deadline = time.monotonic() + (self.timeout if patience is None else patience)
        pause = 0.01
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy() from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.5)

    def _migrate(self) -> None:
        version = self._retry(lambda: self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RegistryError(
                f"{self.path}: database schema v{version} is newer than this kas understands "
                f"(v{SCHEMA_VERSION}); upgrade kas"
            )
        if version < SCHEMA_VERSION:
            with self.transaction():
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0 and self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise RegistryError(
                        f"{self.path}: not a usable kas database (it has tables but no kas schema version: "
                        f"another program's file?); {MOVE_ASIDE}"
                    )
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._check_schema()
        mode = self._retry(lambda: self.conn.execute("PRAGMA journal_mode").fetchone()[0])
        if mode != "wal":
            # WAL lets readers and a writer work at once; without it kas is slower, not wrong.
            with suppress(RegistryBusyError):
                self._retry(
                    lambda: self.conn.execute("PRAGMA journal_mode = WAL"), patience=min(self.timeout, 2.5)
                )

    def _check_schema(self) -> None:
        """Refuse a file whose ``instances`` table is gone or lacks columns, instead of failing per query."""
        found = {
            r[1] for r in self._retry(lambda: self.conn.execute("PRAGMA table_info(instances)").fetchall())
        }
        if not found:
            raise RegistryError(
                f"{self.path}: not a usable kas database (it has no instances table); {MOVE_ASIDE}"
            )
        missing = [c for c in COLUMNS if c not in found]
        if missing:
            raise RegistryError(
                f"{self.path}: not a usable kas database (its instances table lacks {', '.join(missing)}); "
                f"{MOVE_ASIDE}"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so concurrent writers queue instead of failing.

        Taking the lock (and committing) is retried with backoff up to the busy timeout. A failed body is
        rolled back unless SQLite already did (it does for some errors), so the first error is the one seen.
        """
        self._retry(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self.conn
            self._retry(lambda: self.conn.execute("COMMIT"))
        except BaseException:
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise

    def _instances(self, rows: Iterable[sqlite3.Row]) -> list[Instance]:
        """The readable rows; each unreadable one is skipped with one warning naming it and the fix."""
        found = []
        for row in rows:
            try:
                found.append(Instance.from_row(row))
            except RowError as exc:
                if exc.inst_id not in self._skipped:
                    self._skipped.add(exc.inst_id)
                    self.warn(f"{self.path}: skipped {exc}; {self._row_fix(exc.inst_id)}")
        return found

    def _row_fix(self, inst_id: str) -> str:
        sql = f"DELETE FROM instances WHERE id = '{inst_id}'"
        return f'delete it with: sqlite3 {self.path} "{sql}"'

    def close(self) -> None:
        self.conn.close()

    def insert(self, inst: Instance) -> Instance:
        """Store a new instance, picking a fresh id if the short one is taken."""
        return self.insert_many([inst])[0]

    def insert_many(self, insts: list[Instance]) -> list[Instance]:
        """Store several instances in one transaction (a wave's pending rows appear together)."""
        with self._errors():
            for _ in range(20):
                try:
                    with self.transaction() as conn:
                        conn.executemany(INSERT_SQL, [_row_values(inst) for inst in insts])
                    return insts
                except sqlite3.IntegrityError:
                    for inst in insts:
                        inst.id = new_id()
        raise RegistryError(f"{self.path}: could not find a free instance id")

    def update(self, inst_id: str, *, if_status: str | None = None, **values: Any) -> bool:
        """Change some columns of one row atomically; with ``if_status``, only while the row has that
        status (two kas processes deciding a pending task's fate: one starts it, one cancels it).
        Whether the row changed."""
        values = {key: _column(key, value) for key, value in values.items()}
        assignments = ", ".join(f"{k} = ?" for k in values)
        where, params = "id = ?", [inst_id]
        if if_status is not None:
            where, params = "id = ? AND status = ?", [inst_id, if_status]
        with self._errors(), self.transaction() as conn:
            sql = f"UPDATE instances SET {assignments} WHERE {where}"
            cursor = conn.execute(sql, [*values.values(), *params])
            return bool(cursor.rowcount)

    def get(self, inst_id: str) -> Instance | None:
        """Find by id, or by a unique id prefix or name, as typed; an unreadable row is an error.

        An empty (or blank) id matches nothing: as a prefix it would match every row.
        """
        if not inst_id.strip():
            return None
        with self._errors():
            row = self._retry(
                lambda: self.conn.execute("SELECT * FROM instances WHERE id = ?", (inst_id,)).fetchone()
            )
            if row is None:
                rows = self._retry(
                    lambda: self.conn.execute(
                        "SELECT * FROM instances WHERE substr(id, 1, ?) = ? OR name = ?"
                        " ORDER BY created_at DESC",
                        (len(inst_id), inst_id, inst_id),
                    ).fetchall()
                )
                if len(rows) > 1:
                    ids = ", ".join(r["id"] for r in rows[:5])
                    raise RegistryError(f"'{inst_id}' matches several instances ({ids}); give the full id")
                row = rows[0] if rows else None
        if row is None:
            return None
        try:
            return Instance.from_row(row)
        except RowError as exc:
            raise RegistryError(f"{self.path}: {exc}; {self._row_fix(exc.inst_id)}") from None

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
        with self._errors():
            return self._instances(self._retry(lambda: self.conn.execute(query, params).fetchall()))

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
        with self._errors(), self.transaction() as conn:
            gone = [inst for inst in self._instances(conn.execute(query, params)) if not spare(inst)]
            conn.executemany("DELETE FROM instances WHERE id = ?", [(inst.id,) for inst in gone])
        return gone

    def id_candidates(self, prefix: str, limit: int = 200) -> list[tuple[str, str, str]]:
        """``(id, name, status)`` of rows whose id starts with ``prefix``, newest first (for completion)."""
        with self._errors():
            rows = self.conn.execute(
                "SELECT id, name, status FROM instances WHERE substr(id, 1, ?) = ?"
                " ORDER BY created_at DESC LIMIT ?",
                (len(prefix), prefix, limit),
            ).fetchall()
        return [(r["id"], r["name"], r["status"]) for r in rows]
