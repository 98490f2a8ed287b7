"""The SQLite coordination backend: one machine, many processes, nothing to install.

It lives in `coord.db` beside the journal (a separate file, so lock traffic
never waits on the journal's writes). Each operation is one `BEGIN IMMEDIATE`
transaction; the clock is read inside it from SQLite (`julianday('now')`).
Waiting is by short, growing sleeps between tries: SQLite cannot notify.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from abreast.coord.backend import (
    WAITER_TTL_S,
    CoordError,
    Coordinator,
    Heartbeat,
    Holder,
    Lease,
    new_store_id,
)
from abreast.coord.journal import BUSY_TIMEOUT_MS, immediate, unclosed, use_wal
from abreast.coord.location import coord_path

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, token INTEGER NOT NULL, holder TEXT NOT NULL,
    since REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lock_tokens (name TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS waiters (
    ticket INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, holder TEXT NOT NULL,
    refreshed_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS waiters_by_name ON waiters (name, ticket);
CREATE TABLE IF NOT EXISTS heartbeats (key TEXT PRIMARY KEY, at REAL NOT NULL, info TEXT);
CREATE TABLE IF NOT EXISTS rate (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_by_key ON rate (key, at);
CREATE TABLE IF NOT EXISTS rate_count (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, at REAL NOT NULL,
    body TEXT NOT NULL);
"""
MESSAGE_KEEP_S = 600.0


def _serialised(method: Any) -> Any:
    """One thread at a time on the connection (sqlite3 objects are not thread-safe); a
    failure of the store (a full disk, say) is a CoordError, as a lost Redis is."""

    @functools.wraps(method)
    def call(self: SqliteCoordinator, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise CoordError(f"coordination store {self.path}: {e}") from e

    return call


class SqliteCoordinator(Coordinator):
    _open = False  # a connection was made and is not closed yet

    def __init__(self, url: str) -> None:
        self._lock = threading.RLock()
        self.path = coord_path(url)
        self.url = url
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._open = True
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            use_wal(self._db)

            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._tx() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (new_store_id(),))
                self.store_id = db.execute(
                    "SELECT value FROM meta WHERE key = 'store_id'"
                ).fetchone()[0]
        except (OSError, sqlite3.Error) as e:
            if self._open:
                self.close()
            raise CoordError(f"cannot use {self.path} for coordination: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (its failures become CoordErrors in `_serialised`)."""
        with immediate(self._db) as db:
            yield db

    @_serialised
    def now(self) -> float:
        return float(self._db.execute(f"SELECT {_NOW}").fetchone()[0])

    # -- leases -----------------------------------------------------------------------------

    @_serialised
    def enqueue(self, name: str, holder: Holder) -> int:
        with self._tx() as db:
            cur = db.execute(
                f"INSERT INTO waiters (name, holder, refreshed_at) VALUES (?, ?, {_NOW})",
                (name, json.dumps(holder.to_dict())),
            )
            return int(cur.lastrowid or 0)

    @_serialised
    def enqueue_and_try(self, name: str, holder: Holder, ttl_s: float) -> tuple[int, Lease | None]:
        ticket = self.enqueue(name, holder) if self._busy(name) else -1
        if ticket == -1:
            with self._tx() as db:  # free and nobody waiting: take it in one transaction
                cur = db.execute(
                    f"INSERT INTO waiters (name, holder, refreshed_at) VALUES (?, ?, {_NOW})",
                    (name, json.dumps(holder.to_dict())),
                )
                ticket = int(cur.lastrowid or 0)
                lease = self._grant_in(db, name, holder, ticket, ttl_s)
            return ticket, lease
        return ticket, self.try_grant(name, holder, ticket, ttl_s)

    @_serialised
    def _busy(self, name: str) -> bool:
        """Held, or others waiting (a read: no write lock taken)."""
        row = self._db.execute(
            f"SELECT (SELECT count(*) FROM leases WHERE name = ? AND "
            f"expires_at > {_NOW}) + (SELECT count(*) FROM waiters WHERE "
            f"name = ?)",
            (name, name),
        ).fetchone()
        return bool(row[0])

    @_serialised
    def try_grant(self, name: str, holder: Holder, ticket: int, ttl_s: float) -> Lease | None:
        # Most tries find the lock still held: answer those with a read, and take the write
        # lock only to refresh our place now and then, or to be granted.
        now = self.now()
        held = self._db.execute("SELECT expires_at FROM leases WHERE name = ?", (name,)).fetchone()
        seen = self._db.execute(
            "SELECT refreshed_at FROM waiters WHERE ticket = ?", (ticket,)
        ).fetchone()
        if (
            held is not None
            and held[0] > now
            and seen is not None
            and now - seen[0] < WAITER_TTL_S / 3
        ):
            return None
        with self._tx() as db:
            return self._grant_in(db, name, holder, ticket, ttl_s)

    def _grant_in(
        self, db: sqlite3.Connection, name: str, holder: Holder, ticket: int, ttl_s: float
    ) -> Lease | None:
        now = float(db.execute(f"SELECT {_NOW}").fetchone()[0])
        db.execute(
            "DELETE FROM waiters WHERE name = ? AND refreshed_at < ? AND ticket != ?",
            (name, now - WAITER_TTL_S, ticket),
        )
        held = json.dumps(holder.to_dict())
        # Refresh our place (or take it back with the same ticket, if it lapsed).
        db.execute(
            "INSERT INTO waiters (ticket, name, holder, refreshed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(ticket) DO UPDATE SET "
            "refreshed_at = excluded.refreshed_at",
            (ticket, name, held, now),
        )
        row = db.execute(
            "SELECT token, holder, since, expires_at FROM leases WHERE name = ?", (name,)
        ).fetchone()
        if row is not None and row[3] > now:
            return None
        # A row left is a lease that ran out: released ones are deleted.
        lapsed = Lease(name, row[0], _holder(row[1]), row[2], row[3]) if row else None
        first = db.execute("SELECT min(ticket) FROM waiters WHERE name = ?", (name,)).fetchone()[0]
        if first != ticket:
            return None
        db.execute(
            "INSERT INTO lock_tokens (name, token) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET token = token + 1",
            (name,),
        )
        token = int(
            db.execute("SELECT token FROM lock_tokens WHERE name = ?", (name,)).fetchone()[0]
        )
        db.execute(
            "INSERT OR REPLACE INTO leases (name, token, holder, since, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, token, held, now, now + ttl_s),
        )
        db.execute("DELETE FROM waiters WHERE ticket = ?", (ticket,))
        return Lease(name, token, holder, now, now + ttl_s, lapsed)

    @_serialised
    def dequeue(self, name: str, ticket: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM waiters WHERE ticket = ?", (ticket,))

    @_serialised
    def renew(self, name: str, token: int, ttl_s: float) -> Lease | None:
        with self._tx() as db:
            now = float(db.execute(f"SELECT {_NOW}").fetchone()[0])
            row = db.execute(
                "SELECT token, holder, since, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            # Ours, even if it ran out (the machine slept, the orchestrator was stopped):
            # a grant to anyone else would have replaced the row, a release deleted it.
            if row is None or row[0] != token:
                return None
            db.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (now + ttl_s, name))
            return Lease(name, token, _holder(row[1]), row[2], now + ttl_s)

    @_serialised
    def release(self, name: str, token: int) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM leases WHERE name = ? AND token = ?", (name, token))
            return cur.rowcount == 1

    @_serialised
    def force_release(self, name: str) -> Lease | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT token, holder, since, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            db.execute("DELETE FROM leases WHERE name = ?", (name,))
        return Lease(name, row[0], _holder(row[1]), row[2], row[3]) if row else None

    @_serialised
    def holder(self, name: str) -> Lease | None:
        row = self._db.execute(
            f"SELECT token, holder, since, expires_at FROM leases "
            f"WHERE name = ? AND expires_at > {_NOW}",
            (name,),
        ).fetchone()
        return Lease(name, row[0], _holder(row[1]), row[2], row[3]) if row else None

    @_serialised
    def waiters(self, name: str) -> list[Holder]:
        rows = self._db.execute(
            f"SELECT holder FROM waiters WHERE name = ? AND "
            f"refreshed_at >= {_NOW} - ? ORDER BY ticket",
            (name, WAITER_TTL_S),
        ).fetchall()
        return [_holder(r[0]) for r in rows]

    @_serialised
    def leases(self) -> list[Lease]:
        rows = self._db.execute(
            f"SELECT name, token, holder, since, expires_at FROM leases "
            f"WHERE expires_at > {_NOW} ORDER BY name"
        ).fetchall()
        return [Lease(r[0], r[1], _holder(r[2]), r[3], r[4]) for r in rows]

    # -- heartbeats -------------------------------------------------------------------------

    @_serialised
    def heartbeat(self, key: str, info: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO heartbeats (key, at, info) VALUES (?, {_NOW}, ?)",
                (key, json.dumps(info or {})),
            )

    @_serialised
    def heartbeats(self, prefix: str = "") -> list[Heartbeat]:
        rows = self._db.execute(
            "SELECT key, at, info FROM heartbeats WHERE key LIKE ? ESCAPE '\\' ORDER BY key",
            (_like(prefix),),
        ).fetchall()
        return [Heartbeat(r[0], r[1], json.loads(r[2] or "{}")) for r in rows]

    @_serialised
    def forget(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM heartbeats WHERE key = ?", (key,))

    # -- rate windows -------------------------------------------------------------------------

    def rate_take(self, key: str, limit: int, window_s: float) -> tuple[bool, float]:
        index, wait = self.rate_take_any([key], limit, window_s)
        return index is not None, wait

    @_serialised
    def rate_take_any(
        self, keys: list[str], limit: int, window_s: float
    ) -> tuple[int | None, float]:
        # Each key's count is kept beside its uses (rate_count), so a call costs what left
        # the window since the last one, not the size of the window.
        with self._tx() as db:
            now = float(db.execute(f"SELECT {_NOW}").fetchone()[0])
            best, best_count, wait = None, limit, None
            for i, key in enumerate(keys):
                gone = db.execute(
                    "DELETE FROM rate WHERE key = ? AND at <= ?", (key, now - window_s)
                ).rowcount
                if gone:
                    db.execute("UPDATE rate_count SET n = n - ? WHERE key = ?", (gone, key))
                row = db.execute("SELECT n FROM rate_count WHERE key = ?", (key,)).fetchone()
                count = int(row[0]) if row else 0
                if count < best_count:
                    best, best_count = i, count
                elif count >= limit:
                    oldest = db.execute("SELECT min(at) FROM rate WHERE key = ?", (key,))
                    w = max(0.0, float(oldest.fetchone()[0]) + window_s - now)
                    wait = w if wait is None else min(wait, w)
            if best is None:
                return None, wait or 0.0
            db.execute("INSERT INTO rate (key, at) VALUES (?, ?)", (keys[best], now))
            db.execute(
                "INSERT INTO rate_count (key, n) VALUES (?, 1) "
                "ON CONFLICT (key) DO UPDATE SET n = n + 1",
                (keys[best],),
            )
            return best, 0.0

    @_serialised
    def rate_used(self, key: str, window_s: float) -> int:
        return int(
            self._db.execute(
                f"SELECT count(*) FROM rate WHERE key = ? AND at > {_NOW} - ?", (key, window_s)
            ).fetchone()[0]
        )

    # -- pub/sub ----------------------------------------------------------------------------

    @_serialised
    def publish(self, channel: str, message: str) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO messages (channel, at, body) VALUES (?, {_NOW}, ?)",
                (channel, message),
            )
            db.execute(f"DELETE FROM messages WHERE at < {_NOW} - ?", (MESSAGE_KEEP_S,))

    def subscribe(self, channel: str, timeout_s: float = 1.0) -> Iterator[str | None]:
        last = self._db.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        quiet_since = time.monotonic()
        while True:
            rows = self._db.execute(
                "SELECT seq, body FROM messages WHERE channel = ? AND seq > ? ORDER BY seq",
                (channel, last),
            ).fetchall()
            for seq, body in rows:
                last = seq
                yield body
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= timeout_s:
                quiet_since = time.monotonic()
                yield None
            else:
                time.sleep(0.02)  # SQLite cannot notify: a subscriber tails the table

    @_serialised
    def close(self) -> None:
        self._open = False
        self._db.close()

    def __del__(self) -> None:
        if self._open:
            unclosed("coordinator", self.path)
            self.close()


def _holder(text: str) -> Holder:
    return Holder(**json.loads(text))


def _like(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
