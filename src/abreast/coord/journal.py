"""The journal: runs, tasks, attempts, events and signals, durably in SQLite.

Every decision the engine makes is staged here and committed *before* it is
acted on (a process started, a task reported). The engine stages a whole loop
iteration's writes and commits them in one `BEGIN IMMEDIATE` transaction, so
durability costs one commit per wake-up, not one per row.

SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the
process being killed (the case `abreast resume` is for), though not a power
cut. `busy_timeout` lets many processes (tasks calling `abreast signal`,
`abreast status` in another terminal) write beside the orchestrator.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abreast.errors import StateError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    file TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    root TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    pid INTEGER,
    pid_start INTEGER,
    host TEXT,
    heartbeat_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{}',
    summary TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    iterations INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    exit_code INTEGER,
    signal INTEGER,
    peak_rss_bytes INTEGER,
    reason TEXT,
    feedback TEXT,
    output TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    pgid INTEGER,
    start_ticks INTEGER,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    signal INTEGER,
    peak_rss_bytes INTEGER,
    wall_s REAL,
    log TEXT,
    status_file TEXT,
    output_file TEXT,
    workdir TEXT,
    base_commit TEXT,
    head_commit TEXT,
    feedback TEXT,
    reason TEXT,
    PRIMARY KEY (run_id, task_id, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    task_id TEXT,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
CREATE TABLE IF NOT EXISTS signals (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    name TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (run_id, task_id, name)
);
"""

# runs.cancel_requested: what `abreast cancel` asked of a running run.
CANCEL_REQUESTED = 1
DRAIN_REQUESTED = 2  # `abreast cancel --drain`: start nothing new, let what runs finish


@dataclass(frozen=True)
class RunRow:
    id: str
    workflow: str
    file: str
    file_sha256: str
    root: str
    state: str
    started_at: float
    finished_at: float | None
    pid: int | None
    pid_start: int | None
    host: str | None
    heartbeat_at: float | None
    cancel_requested: int
    options: dict[str, Any]
    summary: dict[str, Any] | None

    @property
    def pauses(self) -> list[tuple[float, float]]:
        """When no orchestrator ran the run, before each `abreast resume`: from the end of
        the last one (its finish, or its last heartbeat if it died) to the resume."""
        return [(float(a), float(b)) for a, b in self.options.get("pauses", [])]

    def active_s(self, t0: float, t1: float) -> float:
        """The seconds from t0 to t1 that the run was orchestrated (its pauses left out):
        a run cancelled on Friday and resumed on Monday did not take the weekend."""
        paused = sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in self.pauses)
        return max(0.0, t1 - t0 - paused)


@dataclass(frozen=True)
class TaskRow:
    run_id: str
    task_id: str
    position: int
    state: str
    attempts: int
    failures: int
    iterations: int
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    signal: int | None
    peak_rss_bytes: int | None
    reason: str | None
    feedback: str | None
    output: dict[str, Any] | None


@dataclass(frozen=True)
class AttemptRow:
    run_id: str
    task_id: str
    attempt: int
    state: str
    pid: int | None
    pgid: int | None
    start_ticks: int | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    peak_rss_bytes: int | None
    wall_s: float | None
    log: str | None
    status_file: str | None
    output_file: str | None
    workdir: str | None
    base_commit: str | None
    head_commit: str | None
    feedback: str | None
    reason: str | None


@dataclass(frozen=True)
class EventRow:
    seq: int
    run_id: str
    ts: float
    type: str
    task_id: str | None
    data: dict[str, Any]


def unclosed(owner: str, path: Path) -> None:
    """Say that `owner` (of the SQLite file `path`) was left to the garbage collector:
    every command closes what it opens (Python 3.13 warns of a bare connection so left)."""
    warnings.warn(f"{owner} {path} was not closed", ResourceWarning, stacklevel=3)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any failure; a
    COMMIT that failed (a full disk) leaves it open otherwise."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def use_wal(db: sqlite3.Connection) -> None:
    """Put the database in WAL mode. Switching a new file takes an exclusive lock without
    waiting on the busy handler, so a second process creating the same file at the same
    moment gets "database is locked": retry until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the other process holds it for a few milliseconds


_INSERT_TASK = "INSERT INTO tasks (run_id, task_id, position, state) VALUES (?, ?, ?, 'pending')"


def _disk_full(path: Path) -> str:
    """` (its disk is full: 12 KB free)` when the disk `path` is on has next to no room
    left (what SQLite may report as a "disk I/O error"); else ""."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" (its disk is full: {free // 1024} KB free)" if free < 1 << 20 else ""


class Journal:
    """One connection to the journal; stage writes, then `commit()` them together."""

    _open = False  # a connection was made and is not closed yet

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as e:
            raise StateError(
                f"cannot open the journal at {self.path}: {e}",
                hint="check the path and its permissions, or pass --state",
            ) from e
        self._open = True
        self._pending: list[tuple[str, Sequence[Any]]] = []
        # Row updates staged per key are merged, so one commit writes each row once.
        self._task_updates: dict[tuple[str, str], dict[str, Any]] = {}
        self._attempt_updates: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._new_attempts: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        # Called with each batch of events once it is durable, in order (sinks, metrics).
        self.listeners: list[Callable[[list[EventRow]], None]] = []
        try:
            self._setup()
        except sqlite3.OperationalError as e:  # it could not be read or written: not its fault
            self.close()
            full = _disk_full(self.path)
            raise StateError(
                f"cannot open the journal at {self.path}: {e}{full}",
                hint="make room on its disk, then run the command again (`abreast resume` "
                "carries on an interrupted run)"
                if full
                else "check the file, its directory and their permissions, or pass --state",
            ) from e
        except sqlite3.DatabaseError as e:
            self.close()
            raise StateError(
                f"{self.path} is not a usable abreast journal: {e}",
                hint="point --state at another file, or move this one away",
            ) from e
        except BaseException:  # a journal of a newer abreast, say
            self.close()
            raise

    def _setup(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        use_wal(db)

        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = OFF")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer abreast "
                f"(schema {version}, this one knows {SCHEMA_VERSION})",
                hint="upgrade abreast, or use another --state",
            )
        if version < SCHEMA_VERSION:
            with self._transaction():
                if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                    return  # another process created it while we waited for the lock
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._open = False
        self._db.close()  # a second close does nothing

    def __del__(self) -> None:
        if self._open:
            unclosed("journal", self.path)
            self.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a failure to write (a full disk, a read-only file) is a
        StateError that says so, and leaves no transaction open."""
        try:
            with immediate(self._db) as db:
                yield db
        except sqlite3.OperationalError as e:
            raise self._write_error(e) from e

    def _write_error(self, e: sqlite3.Error) -> StateError:
        full = _disk_full(self.path)  # ("disk I/O error" too, for a WAL file it cannot grow)
        return StateError(
            f"cannot write the journal at {self.path}: {e}{full if 'full' not in str(e) else ''}",
            hint="make room on its disk (or make it writable), then `abreast resume` "
            "carries on an interrupted run"
            if full or "full" in str(e) or "readonly" in str(e)
            else "check the file and its directory, or pass --state",
        )

    def stage(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a write for the next `commit()`."""
        self._pending.append((sql, params))

    @property
    def has_pending(self) -> bool:
        return bool(
            self._pending
            or self._task_updates
            or self._attempt_updates
            or self._new_attempts
            or self._events
        )

    def commit(self) -> None:
        """Write everything staged, atomically and durably (survives a kill of this process).

        Order within the transaction: new attempts, then statements, then merged row
        updates, then events; a reader never sees an event before the rows it describes.
        """
        if not self.has_pending:
            return
        pending, self._pending = self._pending, []
        tasks, self._task_updates = self._task_updates, {}
        attempts, self._attempt_updates = self._attempt_updates, {}
        new_attempts, self._new_attempts = self._new_attempts, []
        events, self._events = self._events, []
        last = 0
        try:
            with self._transaction() as db:
                for cols, rows in _group(new_attempts).items():
                    db.executemany(_insert_attempt_sql(cols), rows)
                for sql, params in pending:
                    db.execute(sql, params)
                for cols, rows in _updates(tasks).items():
                    db.executemany(_update_sql("tasks", cols), rows)
                for cols, rows in _updates(attempts).items():
                    db.executemany(_update_sql("attempts", cols), rows)
                if events:
                    db.executemany(_INSERT_EVENT, events)
                    if self.listeners:
                        # One writer at a time: the batch's sequence numbers are consecutive.
                        last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
        except sqlite3.Error as e:  # not a write failure (those are StateErrors already)
            raise self._write_error(e) from e
        if last:
            committed = [
                EventRow(last - len(events) + 1 + i, run, ts, kind, task, json.loads(data))
                for i, (run, ts, kind, task, data) in enumerate(events)
            ]
            for listener in self.listeners:
                listener(committed)

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Stage and commit one statement (with anything already staged)."""
        self.stage(sql, params)
        self.commit()

    # -- domain writes (staged) --------------------------------------------------------------

    def stage_event(
        self,
        run_id: str,
        type_: str,
        task_id: str | None = None,
        ts: float | None = None,
        **data: Any,
    ) -> None:
        self._events.append(
            (
                run_id,
                time.time() if ts is None else ts,
                type_,
                task_id,
                _encode(data) if data else "{}",
            )
        )

    def stage_task(self, run_id: str, task_id: str, **fields: Any) -> None:
        if "output" in fields and fields["output"] is not None:
            fields["output"] = json.dumps(fields["output"])
        key = (run_id, task_id)
        if key in self._task_updates:
            self._task_updates[key].update(fields)
        else:
            self._task_updates[key] = fields

    def stage_attempt(self, run_id: str, task_id: str, attempt: int, **fields: Any) -> None:
        key = (run_id, task_id, attempt)
        if key in self._attempt_updates:
            self._attempt_updates[key].update(fields)
        else:
            self._attempt_updates[key] = fields

    def stage_new_attempt(self, run_id: str, task_id: str, attempt: int, **fields: Any) -> None:
        self._new_attempts.append(
            (
                ("run_id", "task_id", "attempt", *fields),
                (run_id, task_id, attempt, *fields.values()),
            )
        )

    def stage_new_tasks(self, run_id: str, task_ids: Sequence[str], first_position: int) -> None:
        """Queue tasks joining a run (pending), after its `first_position` others."""
        for i, tid in enumerate(task_ids, start=first_position):
            self.stage(_INSERT_TASK, (run_id, tid, i))

    def stage_run(self, run_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        values = [
            json.dumps(v) if k in ("options", "summary") and v is not None else v
            for k, v in fields.items()
        ]
        self.stage(f"UPDATE runs SET {cols} WHERE id = ?", (*values, run_id))

    def create_run(
        self,
        run_id: str,
        *,
        workflow: str,
        file: str,
        file_sha256: str,
        root: str,
        pid: int,
        pid_start: int,
        host: str,
        options: dict[str, Any],
        task_ids: Sequence[str],
        started_at: float,
    ) -> None:
        """Journal a new run and all its tasks (pending), in one transaction."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO runs (id, workflow, file, file_sha256, root, state, started_at, "
                    "pid, pid_start, host, heartbeat_at, options) "
                    "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        workflow,
                        file,
                        file_sha256,
                        root,
                        started_at,
                        pid,
                        pid_start,
                        host,
                        started_at,
                        json.dumps(options),
                    ),
                )
                db.executemany(_INSERT_TASK, [(run_id, tid, i) for i, tid in enumerate(task_ids)])
        except sqlite3.IntegrityError:
            raise StateError(
                f"a run with id {run_id!r} already exists",
                hint="choose another --run-id, or `abreast resume` it",
            ) from None

    @contextmanager
    def exclusive(self, waiting: Callable[[int | None], None] | None = None) -> Iterator[None]:
        """Keep out, while the block runs, the other processes that take runs of this
        journal up or down as a whole: `cleanup` (which holds this throughout), `resume`
        (from reading the run to claiming it) and `cancel` of a run whose orchestrator is
        gone. A lock on a file beside the journal, so a process that dies lets go with it.
        If another holds it, `waiting` is told its pid (None if not yet written) and this
        waits for it."""
        path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StateError(f"cannot open the journal's lock file {path}: {e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    holder = os.pread(fd, 32, 0).split(b"\n")[0]
                    waiting(int(holder) if holder.isdigit() else None)
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):  # only for a waiter to be told (a full disk)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # lets go of the lock

    def claim_run(self, seen: RunRow, **fields: Any) -> bool:
        """Write `fields` to the run as one step, only if its state and holder (pid, its
        start time, host) are still as `seen`: of two processes that read the same row and
        both mean to take the run up (two `resume`s, a `resume` and a `cleanup`), exactly
        one succeeds. Commits at once; False for the one that came second."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        as_seen = (seen.id, seen.state, seen.pid, seen.pid_start, seen.host)
        try:
            with self._transaction() as db:
                return bool(
                    db.execute(
                        f"UPDATE runs SET {cols} WHERE id = ? AND state = ? AND pid IS ? "
                        "AND pid_start IS ? AND host IS ?",
                        (*fields.values(), *as_seen),
                    ).rowcount
                )
        except sqlite3.Error as e:  # not a write failure (those are StateErrors already)
            raise self._write_error(e) from e

    def forget_run(self, run_id: str, ended_before: float) -> bool:
        """Delete everything journaled of a run that ended (succeeded, failed or was
        cancelled) before `ended_before`, in one transaction; False if it is not such a run
        (any more: a resume may have taken it up)."""
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM runs WHERE id = ? AND state IN ('succeeded', 'failed', "
                "'cancelled') AND finished_at < ?",
                (run_id, ended_before),
            ).rowcount
            if gone:
                for table in ("tasks", "attempts", "events", "signals"):
                    db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        return bool(gone)

    def compact(self) -> None:
        """Give the pages of forgotten runs back to the file system (VACUUM: it rewrites
        the file in place, so the inode, which anchors link to, stays)."""
        try:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # into the file, now
        except sqlite3.Error as e:
            raise StateError(f"cannot compact the journal at {self.path}: {e}") from e

    def add_signal(self, run_id: str, task_id: str, name: str) -> bool:
        """Record that `task_id` announced `name`; False if it already had."""
        with self._transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO signals (run_id, task_id, name, ts) VALUES (?, ?, ?, ?)",
                (run_id, task_id, name, time.time()),
            )
            return cur.rowcount == 1

    # -- reading -----------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRow | None:
        row = self._db.execute(
            f"SELECT {_cols(RunRow)} FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        return _run_row(row) if row else None

    def cancel_requested(self, run_id: str) -> int:
        """What `abreast cancel` asked of the run (one column: read every tick): 0 nothing,
        CANCEL_REQUESTED (stop), DRAIN_REQUESTED (`--drain`: start nothing new)."""
        row = self._db.execute(
            "SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        return int(row[0]) if row and row[0] else 0

    def finished_at(self, run_id: str) -> float | None:
        """When the run finished (None while it runs, or if there is no such run): without
        decoding its options, which hold the plan (large for a large workflow)."""
        row = self._db.execute("SELECT finished_at FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def runs(self, limit: int | None = 50) -> list[RunRow]:
        """The newest runs first (None: all of them)."""
        rows = self._db.execute(
            f"SELECT {_cols(RunRow)} FROM runs ORDER BY started_at DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [_run_row(r) for r in rows]

    def running_ids(self, file: str) -> list[str]:
        """Ids of the runs of workflow file `file` journaled as running (one query, no
        options parsed: asked at every start)."""
        rows = self._db.execute(
            "SELECT id FROM runs WHERE state = 'running' AND file = ?", (file,)
        ).fetchall()
        return [r[0] for r in rows]

    def run_ids_starting(self, prefix: str, limit: int = 6) -> list[str]:
        """Ids of runs that start with `prefix`, the newest first (at most `limit`)."""
        rows = self._db.execute(
            "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY started_at DESC LIMIT ?",
            (len(prefix), prefix, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def latest_run(self) -> RunRow | None:
        runs = self.runs(1)
        return runs[0] if runs else None

    def tasks(self, run_id: str) -> list[TaskRow]:
        rows = self._db.execute(
            f"SELECT {_cols(TaskRow)} FROM tasks WHERE run_id = ? ORDER BY position",
            (run_id,),
        ).fetchall()
        return [TaskRow(*_with_json_last(r)) for r in rows]

    def task_states(self, run_id: str) -> dict[str, int]:
        """How many of the run's tasks are in each state."""
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM tasks WHERE run_id = ? GROUP BY state", (run_id,)
        ).fetchall()
        return {str(state): int(n) for state, n in rows}

    def attempts(self, run_id: str, task_id: str | None = None) -> list[AttemptRow]:
        sql = f"SELECT {_cols(AttemptRow)} FROM attempts WHERE run_id = ?"
        params: tuple[Any, ...] = (run_id,)
        if task_id is not None:
            sql += " AND task_id = ?"
            params += (task_id,)
        rows = self._db.execute(sql + " ORDER BY started_at, task_id, attempt", params).fetchall()
        return [AttemptRow(*r) for r in rows]

    def events(
        self,
        run_id: str,
        after_seq: int = 0,
        limit: int = 100_000,
        types: Sequence[str] | None = None,
    ) -> list[EventRow]:
        sql = "SELECT seq, run_id, ts, type, task_id, data FROM events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, after_seq]
        if types:
            sql += f" AND type IN ({', '.join('?' for _ in types)})"
            params += list(types)
        rows = self._db.execute(sql + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [EventRow(*_with_json_last(r)) for r in rows]

    def event_heads(
        self, run_id: str, after_seq: int = 0, limit: int = 100_000
    ) -> list[tuple[int, str, str | None, float]]:
        """(seq, type, task_id, ts) of events after `after_seq`: what a live view follows,
        without decoding each event's data."""
        return self._db.execute(
            "SELECT seq, type, task_id, ts FROM events WHERE run_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (run_id, after_seq, limit),
        ).fetchall()

    def last_alive(self, row: RunRow) -> float:
        """When the run's orchestrator was last seen at work: its last heartbeat, or the
        last event it journaled if later (one killed before its first heartbeat did work
        all the same)."""
        last = self._db.execute(  # (not what `abreast cleanup` journaled of it since)
            "SELECT ts FROM events WHERE run_id = ? AND type NOT IN ('run.cleaned',"
            " 'orphan.cleaned') ORDER BY seq DESC LIMIT 1",
            (row.id,),
        ).fetchone()
        return max(row.heartbeat_at or row.started_at, float(last[0]) if last else 0.0)

    def last_seq(self, run_id: str) -> int:
        row = self._db.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0] or 0)

    def held_back(self, run_id: str) -> set[str]:
        """The failed tasks whose last attempt's work was held back, not judged: its checks
        could not start (a program not installed), whatever the work."""
        rows = self._db.execute(
            "SELECT e.task_id FROM events e JOIN tasks t"
            " ON t.run_id = e.run_id AND t.task_id = e.task_id"
            " WHERE e.run_id = ? AND e.type = 'merge.held_back'"
            " AND json_extract(e.data, '$.attempt') = t.attempts",
            (run_id,),
        )
        return {task for (task,) in rows}

    def signal_times(self, run_id: str) -> dict[tuple[str, str], float]:
        """(task, signal) -> when it was first given."""
        rows = self._db.execute("SELECT task_id, name, ts FROM signals WHERE run_id = ?", (run_id,))
        return {(task, name): ts for task, name, ts in rows}

    def signals(self, run_id: str) -> list[tuple[str, str]]:
        return self._db.execute(
            "SELECT task_id, name FROM signals WHERE run_id = ? ORDER BY ts", (run_id,)
        ).fetchall()


_INSERT_EVENT = "INSERT INTO events (run_id, ts, type, task_id, data) VALUES (?, ?, ?, ?, ?)"
# json.dumps(data, default=str) builds an encoder per call; events are many and small.
_encode = json.JSONEncoder(default=str).encode


def _group(rows: list[tuple[Any, ...]]) -> dict[tuple[str, ...], list[Any]]:
    """Value rows grouped by their columns, keeping first-seen order."""
    out: dict[tuple[str, ...], list[Any]] = {}
    for cols, values in rows:
        out.setdefault(cols, []).append(values)
    return out


def _updates(staged: dict[Any, dict[str, Any]]) -> dict[tuple[str, ...], list[Any]]:
    """Merged row updates as {columns: parameter rows (values, then the key)}."""
    out: dict[tuple[str, ...], list[Any]] = {}
    for key, fields in staged.items():
        out.setdefault(tuple(fields), []).append((*fields.values(), *key))
    return out


@functools.cache
def _insert_attempt_sql(cols: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in cols)
    return f"INSERT INTO attempts ({', '.join(cols)}) VALUES ({marks})"


_ROW_KEY = {
    "tasks": "run_id = ? AND task_id = ?",
    "attempts": "run_id = ? AND task_id = ? AND attempt = ?",
}


@functools.cache
def _update_sql(table: str, cols: tuple[str, ...]) -> str:
    """UPDATE of `cols` in one row of `table`; parameters: the values, then the key."""
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in cols)} WHERE {_ROW_KEY[table]}"


def _cols(row_type: Any) -> str:
    return ", ".join(row_type.__dataclass_fields__)


def _with_json_last(r: Sequence[Any]) -> list[Any]:
    return [*r[:-1], json.loads(r[-1]) if r[-1] else None]


def _run_row(r: Sequence[Any]) -> RunRow:
    values = list(r)
    values[-2] = json.loads(values[-2] or "{}")
    values[-1] = json.loads(values[-1]) if values[-1] else None
    return RunRow(*values)


def journal_path_from_url(url: str) -> Path:
    """`sqlite:///abs/path.db` or `sqlite://rel/path.db` or a plain path."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        return Path(rest)
    return Path(os.path.expanduser(url))
