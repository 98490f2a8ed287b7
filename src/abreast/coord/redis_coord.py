"""The Redis coordination backend: several orchestrators and machines.

Atomic operations are Lua scripts; their clock is Redis `TIME`, the same for
every host. Waiters are woken through pub/sub when a lease is released. Lost
connections are retried with exponential backoff (redis-py's Retry).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from abreast.coord.backend import (
    BACKEND_RETRY_S,
    WAITER_TTL_S,
    CoordError,
    Coordinator,
    CoordUnreachable,
    Heartbeat,
    Holder,
    Lease,
    new_store_id,
)
from abreast.coord.location import redact_url
from abreast.spec.durations import format_duration, parse_duration

PREFIX = "abreast:"

# KEYS: lease, queue (zset ticket->ticket), waiters (hash), token counter, held
# ARGV: ticket, holder json, ttl ms, waiter ttl ms
# `held` mirrors the lease without an expiry, and goes only on release: finding it at a
# grant means the lease before ran out, and the grant reports it (`Lease.lapsed`).
_TRY_GRANT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket = ARGV[1]
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 or head[1] == ticket then break end
  local seen = redis.call('HGET', KEYS[3], head[1] .. ':at')
  if seen and tonumber(seen) + tonumber(ARGV[4]) >= now then break end
  redis.call('ZREM', KEYS[2], head[1])
  redis.call('HDEL', KEYS[3], head[1], head[1] .. ':at')
end
redis.call('ZADD', KEYS[2], tonumber(ticket), ticket)
redis.call('HSET', KEYS[3], ticket, ARGV[2], ticket .. ':at', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
if head[1] ~= ticket then return false end
-- Seeded from the clock when missing, so tokens keep growing across a restart that lost
-- the counter (Redis without persistence): fencing must never see a token twice.
if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], now * 1000) end
local token = redis.call('INCR', KEYS[4])
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'token', token, 'holder', ARGV[2], 'since', now,
           'expires', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
local lapsed = redis.call('HMGET', KEYS[5], 'token', 'holder', 'since', 'expires')
redis.call('HSET', KEYS[5], 'token', token, 'holder', ARGV[2], 'since', now,
           'expires', now + ttl)
redis.call('ZREM', KEYS[2], ticket)
redis.call('HDEL', KEYS[3], ticket, ticket .. ':at')
return {token, now, now + ttl, lapsed[1] or '', lapsed[2] or '', lapsed[3] or '',
        lapsed[4] or ''}
"""

# KEYS: lease, queue, waiters, token counter, ticket counter, held
# ARGV: holder json, ttl ms, waiter ttl
# The uncontended path in one round trip: take a ticket, and the lease if it is free.
_ENQUEUE_AND_TRY = """
local ticket = tostring(redis.call('INCR', KEYS[5]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], tonumber(ticket), ticket)
redis.call('HSET', KEYS[3], ticket, ARGV[1], ticket .. ':at', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return {ticket} end
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 or head[1] == ticket then break end
  local seen = redis.call('HGET', KEYS[3], head[1] .. ':at')
  if seen and tonumber(seen) + tonumber(ARGV[3]) >= now then return {ticket} end
  redis.call('ZREM', KEYS[2], head[1])
  redis.call('HDEL', KEYS[3], head[1], head[1] .. ':at')
end
if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], now * 1000) end
local token = redis.call('INCR', KEYS[4])
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'token', token, 'holder', ARGV[1], 'since', now, 'expires', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
local lapsed = redis.call('HMGET', KEYS[6], 'token', 'holder', 'since', 'expires')
redis.call('HSET', KEYS[6], 'token', token, 'holder', ARGV[1], 'since', now, 'expires', now + ttl)
redis.call('ZREM', KEYS[2], ticket)
redis.call('HDEL', KEYS[3], ticket, ticket .. ':at')
return {ticket, token, now, now + ttl, lapsed[1] or '', lapsed[2] or '', lapsed[3] or '',
        lapsed[4] or ''}
"""

# KEYS: lease, held; ARGV: token, ttl ms
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', KEYS[1], 'token')
if current ~= ARGV[1] then
  -- Ran out (the machine slept, the orchestrator was stopped) and granted to nobody
  -- since: a grant rewrites `held`, a release deletes it. Then it is still ours.
  if current or redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] then return false end
  local was = redis.call('HMGET', KEYS[2], 'holder', 'since')
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'holder', was[1], 'since', was[2])
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[2], 'expires', now + ttl)
return {redis.call('HGET', KEYS[1], 'holder'), redis.call('HGET', KEYS[1], 'since'), now + ttl}
"""

# KEYS: lease, wake channel, held; ARGV: token
_RELEASE = """
local held = redis.call('HGET', KEYS[3], 'token') == ARGV[1]
if held then redis.call('DEL', KEYS[3]) end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  -- Ran out and granted to nobody since (a grant rewrites `held`): it was ours to the end.
  if held then return 1 end
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], 'released')
return 1
"""

# KEYS: rate zset; ARGV: limit, window ms, unique member suffix
_RATE_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


# KEYS: rate zsets in order of preference; ARGV: limit, window ms, unique member suffix
_RATE_TAKE_ANY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local best, best_count, wait = 0, limit, -1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < best_count then
    best, best_count = i, count
  elseif count >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if wait < 0 or w < wait then wait = w end
  end
end
if best > 0 then
  redis.call('ZADD', KEYS[best], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[best], window)
  return {best, 0}
end
return {0, wait}
"""


def _granted(name: str, holder: Holder, got: list[Any]) -> Lease:
    """The Lease a grant script's answer describes: token, since, expires (ms), then the
    lapsed lease's token, holder, since and expires ('' where none ran out)."""
    token, since, expires = (int(x) for x in got[:3])
    lapsed = None
    if len(got) > 3 and got[3] != "":
        lapsed = Lease(
            name,
            int(got[3]),
            Holder(**json.loads(got[4])),
            int(got[5]) / 1000,
            int(got[6]) / 1000,
        )
    return Lease(name, token, holder, since / 1000, expires / 1000, lapsed)


# How long abreast keeps trying to reach a Redis that does not answer: at the first
# contact (a CI service starting beside the run), and on each call after it (a restart
# during a run). Pauses between tries grow from 0.1 s to 2 s.
WAIT_VARIABLE = "ABREAST_REDIS_WAIT"
DEFAULT_WAIT_S = 15.0
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


def redis_wait(env: Mapping[str, str] | None = None) -> float:
    """Seconds to keep trying an unreachable Redis: `ABREAST_REDIS_WAIT`, else 15."""
    raw = (os.environ if env is None else env).get(WAIT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_WAIT_S
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise CoordError(
            f"{WAIT_VARIABLE}={raw!r}: {e}",
            hint="how long to keep trying to reach Redis; 0 gives up at once",
        ) from None


def _tries(wait_s: float) -> int:
    """How many retries of a call, with the pauses redis-py's backoff makes between
    them (0.1 s, 0.2 s, ... up to 2 s), add up to at least `wait_s`."""
    tries, waited = 0, 0.0
    while waited < wait_s:
        tries += 1
        waited += min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**tries)
    return tries


PROBE_TIMEOUT_S = 0.5  # how long a look whether Redis is back may take


class RedisCoordinator(Coordinator):
    """Redis as the coordination backend.

    A call that finds Redis gone is tried again for `ABREAST_REDIS_WAIT` (a restart;
    `calls_wait_s` for a caller whose calls may fail: a run's supervisor, its event
    sink); if it still does not answer, it is *down*: from then on a call fails at once
    (CoordUnreachable), but for one quick PING a second, which ends it when Redis
    answers. So an orchestrator waits out one outage once, not once per call: what it
    does without Redis (attempts ending, timeouts, merges) goes on meanwhile.
    """

    def __init__(
        self, url: str, wait_s: float | None = None, calls_wait_s: float | None = None
    ) -> None:
        try:
            import redis
            from redis.backoff import ExponentialBackoff, NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise CoordError(
                "the Redis backend needs redis-py: pip install 'abreast[redis]'"
            ) from None
        self.url = url
        self._redis_mod = redis
        wait = redis_wait() if wait_s is None else wait_s
        self._down: str | None = None  # why the last call found Redis gone, while it is
        self._looked_at = 0.0  # when a call last looked whether it is back
        self._prober: Any = None
        self._r = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),  # the first contact: see below
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=15,
        )
        self._try_grant = self._r.register_script(_TRY_GRANT)
        self._enqueue_and_try = self._r.register_script(_ENQUEUE_AND_TRY)
        self._renew = self._r.register_script(_RENEW)
        self._release = self._r.register_script(_RELEASE)
        self._rate_take = self._r.register_script(_RATE_TAKE)
        self._rate_take_any = self._r.register_script(_RATE_TAKE_ANY)
        self._pubsub: Any = None
        self._counter = 0
        # Tried again until `wait` has passed, as every call after it, unless Redis
        # answered: a wrong or missing password is refused at once, not after ten tries
        # (redis-py takes AuthenticationError for a ConnectionError, which its retries
        # cover).
        try:
            try:
                self.store_id = self._store_id()
            except (redis.AuthenticationError, redis.ResponseError):
                raise
            except redis.RedisError as e:
                if wait <= 0:
                    raise
                # Redis starting beside us (a CI service) is worth the wait; a mistyped
                # address is not, so the wait is said at once rather than kept silent.
                sys.stderr.write(
                    f"abreast: cannot reach Redis at {redact_url(url)} yet ({e}); "
                    f"trying again for up to {format_duration(wait)} "
                    f"({WAIT_VARIABLE} sets how long)\n"
                )
                sys.stderr.flush()
                self.store_id = self._first_contact(time.monotonic() + wait)
        except redis.RedisError as e:
            self._r.close()
            raise (CoordUnreachable if self._gone(e) else CoordError)(
                f"cannot reach Redis at {redact_url(url)}: {e}"
            ) from e
        calls_wait = wait if calls_wait_s is None else calls_wait_s
        self._r.set_retry(
            Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S), _tries(calls_wait))
        )

    def _first_contact(self, deadline: float) -> str:
        """The store id, asked again (with a growing pause) until it answers or the
        deadline passes; the last error is raised then."""
        pause = _BACKOFF_BASE_S
        while True:
            pause = min(_BACKOFF_CAP_S, pause * 2)
            left = deadline - time.monotonic()
            if left <= 0:
                return self._store_id()  # a last try: its error is the one to say
            time.sleep(min(pause, left))
            try:
                return self._store_id()
            except (self._redis_mod.AuthenticationError, self._redis_mod.ResponseError):
                raise
            except self._redis_mod.RedisError:
                if time.monotonic() >= deadline:
                    raise

    def _store_id(self) -> str:
        self._r.set(f"{PREFIX}store_id", new_store_id(), nx=True)
        return str(self._r.get(f"{PREFIX}store_id"))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._down is not None and not self._back():
            raise CoordUnreachable(f"Redis at {redact_url(self.url)}: {self._down}")
        try:
            return fn(*args, **kwargs)
        except self._redis_mod.RedisError as e:
            if not self._gone(e):
                raise CoordError(f"Redis at {redact_url(self.url)}: {e}") from e
            self._down = str(e)  # tried for the whole wait: calls fail at once from now
            raise CoordUnreachable(f"Redis at {redact_url(self.url)}: {e}") from e

    def _gone(self, e: Exception) -> bool:
        """Whether `e` says Redis did not answer (as opposed to refusing: a password)."""
        redis = self._redis_mod
        return isinstance(e, redis.ConnectionError | redis.TimeoutError) and not isinstance(
            e, redis.AuthenticationError
        )

    def _back(self) -> bool:
        """Whether Redis, found gone, answers again: one quick PING, once a second at
        most (a call between two looks fails at once)."""
        now = time.monotonic()
        if now - self._looked_at < BACKEND_RETRY_S:
            return False
        self._looked_at = now
        redis = self._redis_mod
        if self._prober is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._prober = redis.Redis.from_url(
                self.url,
                socket_timeout=PROBE_TIMEOUT_S,
                socket_connect_timeout=PROBE_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        try:
            self._prober.ping()
        except redis.RedisError as e:
            self._down = str(e)
            return False
        self._down = None
        return True

    def now(self) -> float:
        sec, usec = self._call(self._r.time)
        return float(sec) + float(usec) / 1e6

    # -- leases -----------------------------------------------------------------------------

    def _keys(self, name: str) -> list[str]:
        base = f"{PREFIX}lock:{name}"
        return [base, f"{base}:queue", f"{base}:waiters", f"{base}:token"]

    def _held(self, name: str) -> str:
        return f"{PREFIX}lock:{name}:held"

    def enqueue(self, name: str, holder: Holder) -> int:
        base = f"{PREFIX}lock:{name}"
        ticket = int(self._call(self._r.incr, f"{base}:tickets"))
        now_ms = int(self.now() * 1000)
        pipe = self._r.pipeline()
        pipe.zadd(f"{base}:queue", {str(ticket): ticket})
        pipe.hset(
            f"{base}:waiters",
            mapping={str(ticket): json.dumps(holder.to_dict()), f"{ticket}:at": now_ms},
        )
        self._call(pipe.execute)
        return ticket

    def enqueue_and_try(self, name: str, holder: Holder, ttl_s: float) -> tuple[int, Lease | None]:
        keys = [*self._keys(name), f"{PREFIX}lock:{name}:tickets", self._held(name)]
        got = self._call(
            self._enqueue_and_try,
            keys=keys,
            args=[json.dumps(holder.to_dict()), int(ttl_s * 1000), int(WAITER_TTL_S * 1000)],
        )
        ticket = int(got[0])
        if len(got) == 1:
            return ticket, None
        return ticket, _granted(name, holder, got[1:])

    def try_grant(self, name: str, holder: Holder, ticket: int, ttl_s: float) -> Lease | None:
        got = self._call(
            self._try_grant,
            keys=[*self._keys(name), self._held(name)],
            args=[
                str(ticket),
                json.dumps(holder.to_dict()),
                int(ttl_s * 1000),
                int(WAITER_TTL_S * 1000),
            ],
        )
        if not got:
            return None
        return _granted(name, holder, got)

    def dequeue(self, name: str, ticket: int) -> None:
        base = f"{PREFIX}lock:{name}"
        pipe = self._r.pipeline()
        pipe.zrem(f"{base}:queue", str(ticket))
        pipe.hdel(f"{base}:waiters", str(ticket), f"{ticket}:at")
        self._call(pipe.execute)

    def renew(self, name: str, token: int, ttl_s: float) -> Lease | None:
        got = self._call(
            self._renew,
            keys=[self._keys(name)[0], self._held(name)],
            args=[str(token), int(ttl_s * 1000)],
        )
        if not got:
            return None
        holder, since, expires = got
        return Lease(
            name, token, Holder(**json.loads(holder)), int(since) / 1000, int(expires) / 1000
        )

    def release(self, name: str, token: int) -> bool:
        key = self._keys(name)[0]
        return bool(
            self._call(
                self._release, keys=[key, f"{key}:wake", self._held(name)], args=[str(token)]
            )
        )

    def force_release(self, name: str) -> Lease | None:
        lease = self.holder(name)
        key = self._keys(name)[0]
        self._call(self._r.delete, key, self._held(name))
        self._call(self._r.publish, f"{key}:wake", "released")
        return lease

    def holder(self, name: str) -> Lease | None:
        data = self._call(self._r.hgetall, self._keys(name)[0])
        if not data:
            return None
        return Lease(
            name,
            int(data["token"]),
            Holder(**json.loads(data["holder"])),
            int(data["since"]) / 1000,
            int(data["expires"]) / 1000,
        )

    def waiters(self, name: str) -> list[Holder]:
        _, queue, waiters, _ = self._keys(name)
        tickets = self._call(self._r.zrange, queue, 0, -1)
        if not tickets:
            return []
        data = self._call(self._r.hgetall, waiters)
        now_ms = self.now() * 1000
        out = []
        for t in tickets:
            seen = data.get(f"{t}:at")
            if t in data and seen and float(seen) + WAITER_TTL_S * 1000 >= now_ms:
                out.append(Holder(**json.loads(data[t])))
        return out

    def leases(self) -> list[Lease]:
        out = []
        for key in self._call(lambda: list(self._r.scan_iter(f"{PREFIX}lock:*", count=500))):
            name = key[len(f"{PREFIX}lock:") :]
            if ":" in name:  # lock names have no ':'; these are its queue, counters...
                continue
            lease = self.holder(name)
            if lease:
                out.append(lease)
        return sorted(out, key=lambda lease: lease.name)

    def wait_for_change(self, name: str, ticket: int, timeout_s: float) -> None:
        if self._pubsub is None:
            self._pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # (typed from redis 8.2)
        channel = f"{self._keys(name)[0]}:wake"
        if channel.encode() not in self._pubsub.channels and channel not in self._pubsub.channels:
            self._call(self._pubsub.subscribe, channel)
        try:
            self._pubsub.get_message(timeout=timeout_s)
        except self._redis_mod.RedisError:
            time.sleep(timeout_s)

    # -- heartbeats -------------------------------------------------------------------------

    def heartbeat(self, key: str, info: dict[str, Any] | None = None) -> None:
        at = self.now()
        self._call(
            self._r.hset, f"{PREFIX}heartbeats", key, json.dumps({"at": at, "info": info or {}})
        )

    def heartbeats(self, prefix: str = "") -> list[Heartbeat]:
        data = self._call(self._r.hgetall, f"{PREFIX}heartbeats")
        out = []
        for key, raw in sorted(data.items()):
            if key.startswith(prefix):
                value = json.loads(raw)
                out.append(Heartbeat(key, float(value["at"]), value.get("info", {})))
        return out

    def forget(self, key: str) -> None:
        self._call(self._r.hdel, f"{PREFIX}heartbeats", key)

    # -- rate windows -------------------------------------------------------------------------

    def rate_take(self, key: str, limit: int, window_s: float) -> tuple[bool, float]:
        self._counter += 1
        member = f"{time.monotonic_ns()}-{self._counter}"
        ok, wait_ms = self._call(
            self._rate_take,
            keys=[f"{PREFIX}rate:{key}"],
            args=[limit, int(window_s * 1000), member],
        )
        return bool(int(ok)), max(0.0, float(wait_ms) / 1000)

    def rate_take_any(
        self, keys: list[str], limit: int, window_s: float
    ) -> tuple[int | None, float]:
        self._counter += 1
        member = f"{time.monotonic_ns()}-{self._counter}"
        best, wait_ms = self._call(
            self._rate_take_any,
            keys=[f"{PREFIX}rate:{k}" for k in keys],
            args=[limit, int(window_s * 1000), member],
        )
        if int(best) > 0:
            return int(best) - 1, 0.0
        return None, max(0.0, float(wait_ms) / 1000)

    def rate_used(self, key: str, window_s: float) -> int:

        now_ms = int(self.now() * 1000)
        return int(
            self._call(
                self._r.zcount, f"{PREFIX}rate:{key}", f"({now_ms - int(window_s * 1000)}", "+inf"
            )
        )

    # -- pub/sub ----------------------------------------------------------------------------

    def publish(self, channel: str, message: str) -> None:
        self._call(self._r.publish, channel, message)

    def publish_many(self, channel: str, messages: list[str]) -> None:
        """Pipelined: many messages in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for m in messages:
            pipe.publish(channel, m)
        self._call(pipe.execute)

    def subscribe(self, channel: str, timeout_s: float = 1.0) -> Iterator[str | None]:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]  # (typed from redis 8.2)
        self._call(pubsub.subscribe, channel)
        try:
            while True:
                msg = pubsub.get_message(timeout=timeout_s)
                yield None if msg is None else str(msg["data"])
        finally:
            pubsub.close()

    def memory_bytes(self) -> int | None:
        info = self._call(self._r.info, "memory")
        return int(info.get("used_memory", 0))

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        if self._prober is not None:
            self._prober.close()
        self._r.close()
