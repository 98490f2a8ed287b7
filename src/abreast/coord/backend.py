"""The coordination interface: leases, heartbeats, rate windows and pub/sub.

Two backends implement it: SQLite (one machine, many processes; nothing to
install) and Redis (several orchestrators and machines). Every operation that
must be atomic is one `BEGIN IMMEDIATE` transaction (SQLite) or one Lua script
(Redis), and time for TTLs comes from the backend's own clock (the host clock
inside SQLite's transaction; Redis `TIME`), never from one process's clock
compared with another's.

Leases: a lock is held for `ttl` and must be renewed by its holder's supervisor
before it runs out; a holder that stops renewing loses it. Every grant carries
a fencing token that only ever grows for that lock, so a holder that lost its
lease (stopped, partitioned) can be refused by `validate`. Waiters are served
first come, first served; a waiter that dies leaves the queue when its place
expires (it refreshes it while it waits).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from abreast.errors import StateError

WAITER_TTL_S = 5.0  # a waiter that has not refreshed its place for this long is gone
POLL_S = 0.001  # first wait between tries on backends without notifications; doubles to
POLL_MAX_S = 0.01


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) a lock."""

    id: str  # unique per acquisition attempt
    run: str | None = None
    task: str | None = None
    pid: int = 0
    host: str = ""

    @classmethod
    def here(cls, run: str | None = None, task: str | None = None, suffix: str = "") -> Holder:
        pid = os.getpid()
        host = socket.gethostname()
        unique = f"{host}:{pid}:{time.monotonic_ns()}{suffix}"
        return cls(unique, run, task, pid, host)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Lease:
    name: str
    token: int  # the fencing token: grows with every grant of this lock
    holder: Holder
    since: float  # backend clock
    expires_at: float  # backend clock
    # On a grant: the lease this one replaced because it ran out, its holder never having
    # released it (stopped, killed, cut off). What still holds it must be fenced off.
    lapsed: Lease | None = None

    def remaining_s(self, now: float) -> float:
        return self.expires_at - now


@dataclass(frozen=True)
class Heartbeat:
    key: str
    at: float
    info: dict[str, Any]


class CoordError(StateError):
    """The coordination backend could not be reached or answered nonsense."""


class CoordUnreachable(CoordError):
    """The backend did not answer (a network backend gone, or restarting): worth waiting
    out, unlike a refusal."""


class WaitStopped(CoordError):
    """A wait for a lock was given up because the waiter is stopping (a cancelled run)."""


class Coordinator(ABC):
    """One interface, two backends."""

    url: str
    # A random id kept in the store itself, made by whoever used it first. Lease tokens
    # count per store, so processes started under a lease carry this beside it: fencing
    # `tests` token 1 of one project must not end what holds `tests` token 1 of another.
    store_id: str

    # -- clock ------------------------------------------------------------------------------

    @abstractmethod
    def now(self) -> float:
        """The backend's clock, in seconds."""

    # -- leases -----------------------------------------------------------------------------

    @abstractmethod
    def enqueue(self, name: str, holder: Holder) -> int:
        """Take a place in `name`'s queue; returns the ticket (smaller is earlier)."""

    @abstractmethod
    def try_grant(self, name: str, holder: Holder, ticket: int, ttl_s: float) -> Lease | None:
        """Grant the lease if it is free (or expired) and `ticket` is first among the live
        waiters; else refresh the waiter's place and return None."""

    def enqueue_and_try(self, name: str, holder: Holder, ttl_s: float) -> tuple[int, Lease | None]:
        """Take a place and try at once: (ticket, lease or None). One round trip where the
        backend can (the uncontended case costs no more than that)."""
        ticket = self.enqueue(name, holder)
        return ticket, self.try_grant(name, holder, ticket, ttl_s)

    @abstractmethod
    def dequeue(self, name: str, ticket: int) -> None:
        """Leave the queue (gave up waiting)."""

    @abstractmethod
    def renew(self, name: str, token: int, ttl_s: float) -> Lease | None:
        """Extend the lease held with `token`; None if it is no longer held (expired,
        released, taken over)."""

    @abstractmethod
    def release(self, name: str, token: int) -> bool:
        """Give the lease back; False if `token` no longer held it."""

    @abstractmethod
    def force_release(self, name: str) -> Lease | None:
        """Take the lease from whoever holds it (operators); returns what was held."""

    @abstractmethod
    def holder(self, name: str) -> Lease | None:
        """The current, unexpired lease, if any."""

    @abstractmethod
    def waiters(self, name: str) -> list[Holder]:
        """Live waiters, in the order they will be served."""

    @abstractmethod
    def leases(self) -> list[Lease]:
        """Every unexpired lease."""

    def validate(self, name: str, token: int) -> bool:
        """Whether `token` is the current, unexpired grant of `name` (fencing)."""
        lease = self.holder(name)
        return lease is not None and lease.token == token

    def wake(self, name: str) -> None:  # noqa: B027 - optional notification
        """Tell waiters of `name` that something changed (backends that can)."""

    def wait_for_change(self, name: str, ticket: int, timeout_s: float) -> None:
        """Block until `name` may have changed for this waiter, or `timeout_s`."""
        time.sleep(timeout_s)

    def acquire(
        self,
        name: str,
        holder: Holder,
        ttl_s: float,
        timeout_s: float | None = None,
        on_wait: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Lease | None:
        """Wait in line for `name` (at most `timeout_s`; None: forever). None on timeout,
        or as soon as `stop` is set (within a few milliseconds: a wait is never longer)."""
        ticket, lease = self.enqueue_and_try(name, holder, ttl_s)
        if lease is not None:
            return lease
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = POLL_S
        try:
            while True:
                lease = self.try_grant(name, holder, ticket, ttl_s)
                if lease is not None:
                    ticket = 0
                    return lease
                if on_wait:
                    on_wait()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                if stop is not None and stop.is_set():
                    return None
                wait = delay if deadline is None else min(delay, deadline - time.monotonic())
                self.wait_for_change(name, ticket, max(0.0, wait))
                delay = min(delay * 2, POLL_MAX_S)
        finally:
            if ticket:
                self.dequeue(name, ticket)

    # -- heartbeats -------------------------------------------------------------------------

    @abstractmethod
    def heartbeat(self, key: str, info: dict[str, Any] | None = None) -> None: ...

    @abstractmethod
    def heartbeats(self, prefix: str = "") -> list[Heartbeat]: ...

    def stale(self, older_than_s: float, prefix: str = "") -> list[Heartbeat]:
        now = self.now()
        return [h for h in self.heartbeats(prefix) if now - h.at > older_than_s]

    @abstractmethod
    def forget(self, key: str) -> None:
        """Remove a heartbeat."""

    # -- rate windows -------------------------------------------------------------------------

    @abstractmethod
    def rate_take(self, key: str, limit: int, window_s: float) -> tuple[bool, float]:
        """One use of `key` if fewer than `limit` happened in the last `window_s` (a sliding
        window, exact); (taken, seconds until one would be allowed)."""

    @abstractmethod
    def rate_take_any(
        self, keys: list[str], limit: int, window_s: float
    ) -> tuple[int | None, float]:
        """One use of whichever of `keys` has the fewest uses in its window, if under `limit`
        (the first on ties), in one atomic step; (its index, 0) or (None, seconds until
        one of them would allow a use)."""

    @abstractmethod
    def rate_used(self, key: str, window_s: float) -> int:
        """Uses of `key` in the last `window_s`."""

    # -- pub/sub ----------------------------------------------------------------------------

    @abstractmethod
    def publish(self, channel: str, message: str) -> None: ...

    @abstractmethod
    def subscribe(self, channel: str, timeout_s: float = 1.0) -> Iterator[str | None]:
        """Messages on `channel` as they come; None after `timeout_s` of silence."""

    # -- housekeeping -----------------------------------------------------------------------

    def memory_bytes(self) -> int | None:
        """The backend's own memory use, where it has one (Redis `used_memory`)."""
        return None

    @abstractmethod
    def close(self) -> None: ...


# How long a call that may fail (a heartbeat, a renewal before the ttl, an event) tries a
# network backend that does not answer, whatever ABREAST_REDIS_WAIT says.
BEST_EFFORT_WAIT_S = 1.0
# How often what must wait for a backend found unreachable (a lock, a key's window) asks
# again; the backend itself looks no more often than this (a PING).
BACKEND_RETRY_S = 1.0


def open_coordinator(
    url: str, wait_s: float | None = None, calls_wait_s: float | None = None
) -> Coordinator:
    """The backend for `url`: sqlite:///path or redis://host:port/db. A network backend
    that does not answer is tried again for `wait_s` (default: `ABREAST_REDIS_WAIT`),
    and so is each call later, or for `calls_wait_s`."""
    if url.startswith("sqlite://"):
        from abreast.coord.sqlite_coord import SqliteCoordinator

        return SqliteCoordinator(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from abreast.coord.redis_coord import RedisCoordinator

        return RedisCoordinator(url, wait_s, calls_wait_s)
    from abreast.coord.location import redact_url

    raise CoordError(f"no coordination backend for {redact_url(url)!r}")


def new_store_id() -> str:
    import secrets

    return secrets.token_hex(8)
