"""Key pools: several API keys, each kept under its rate limit, rotated on 429.

    pick ── the key with the most headroom that is not marked limited ──▶ take one use of
      │      its window (shared by every process through the coordination backend)
      ▼
    send ── 429 ──▶ mark the key limited until Retry-After, try the next key
      │    every key spent ──▶ back off 1s, 2s, 4s, 8s (configurable, with jitter), retry
      ▼                         still spent ──▶ return the provider's 429
    response

A key is known everywhere but here by its fingerprint: the first 8 hex digits of
its SHA-256. Key values are read from the environment variables the workflow
names and never written anywhere: not to logs, the journal, events, Redis, the
dashboard, metrics, exceptions or any process's argv.

Windows are sliding and exact, with a small margin (5% of the window, at most
1 s) so a request's network delay cannot push the provider's own count over.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from abreast.coord.backend import BACKEND_RETRY_S, Coordinator, CoordUnreachable
from abreast.errors import UsageError
from abreast.spec.durations import format_duration
from abreast.spec.model import KeyPool as KeyPoolSpec

JITTER = 0.25


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


@dataclass
class KeyStats:
    fingerprint: str
    requests: int = 0
    ok: int = 0
    limited: int = 0  # 429s from the provider
    limited_s: float = 0.0  # time spent marked limited
    limited_until: float = 0.0  # monotonic
    statuses: dict[int, int] = field(default_factory=dict)


class _Key:
    __slots__ = ("fp", "stats", "value")

    def __init__(self, value: str) -> None:
        self.value = value
        self.fp = fingerprint(value)
        self.stats = KeyStats(self.fp)

    def __repr__(self) -> str:  # never the value
        return f"<key {self.fp}>"


class AllKeysLimited(Exception):
    """Every key stayed limited through all backoff rounds (the library's signal);
    `retry_after_s`: when one of them will allow a use again, where known."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


Send = Callable[[str], Awaitable[Any]]  # given a key value, make the request; returns a response


class KeyPool:
    """A pool of keys for in-process use (and the proxy's engine)."""

    def __init__(
        self,
        name: str,
        values: list[str],
        *,
        limit: tuple[int, float] | None,
        coord: Coordinator | None = None,
        initial_s: float = 1.0,
        factor: float = 2.0,
        max_s: float = 8.0,
        max_retries: int = 4,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not values:
            raise UsageError(f"key pool {name!r} has no keys")
        self.name = name
        self._keys = [_Key(v) for v in values]
        self.limit = limit
        self.coord = coord
        self.initial_s, self.factor, self.max_s = initial_s, factor, max_s
        self.max_retries = max_retries
        self.rng = rng or random.Random()
        self._sleep = sleep
        self.backoff_delays: list[float] = []  # every backoff actually waited, in order
        self._local: dict[str, list[float]] = {}  # windows when no coordinator is shared
        self._full_for: float | None = None  # when every window was full: until one frees

    @classmethod
    def from_spec(
        cls,
        name: str,
        spec: KeyPoolSpec,
        coord: Coordinator | None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> KeyPool:
        env = os.environ if environ is None else environ
        # A key never holds white space: what surrounds one (a newline from a file, a
        # '\r' from a Windows .env) would only make its HTTP header invalid.
        values = {v: env.get(v, "").strip() for v in spec.from_}
        missing = [v for v, value in values.items() if not value]
        if missing:
            raise UsageError(
                f"key pool {name!r}: {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set",
                hint="export the keys in the environment abreast runs in; they "
                "are read from there and never written anywhere",
            )
        first: dict[str, str] = {}
        for var, value in values.items():
            if value in first:  # one key counted as two would be held to twice its limit
                raise UsageError(
                    f"key pool {name!r}: {first[value]} and {var} hold the same key "
                    f"({fingerprint(value)})",
                    hint=f"list each key once in `from:`; {var} may have been meant to "
                    "hold another",
                )
            first[value] = var
        return cls(
            name,
            list(values.values()),
            limit=spec.limit,
            coord=coord,
            initial_s=spec.backoff.initial,
            factor=spec.backoff.factor,
            max_s=spec.backoff.max,
            max_retries=spec.max_retries,
            **kwargs,
        )

    @property
    def fingerprints(self) -> list[str]:
        return [k.fp for k in self._keys]

    def key_for(self, fp: str) -> str:
        """The value of the key with fingerprint `fp` (for the one place that sends it)."""
        return next(k.value for k in self._keys if k.fp == fp)

    def holds(self, value: str) -> bool:
        return any(k.value == value for k in self._keys)

    def secrets(self) -> list[tuple[str, str]]:
        """(fingerprint, value) of each key: for `redact`, which shows them by fingerprint."""
        return [(k.fp, k.value) for k in self._keys]

    # -- windows -------------------------------------------------------------------------------

    def _window(self) -> float:
        assert self.limit is not None
        w = self.limit[1]
        return w + min(1.0, 0.05 * w)

    def _counter(self, key: _Key) -> str:
        """The key's uses, by its fingerprint and window length, not by pool: the provider
        limits a key however many pools (of this workflow, of other projects on the same
        backend) draw on it. Pools with other window lengths count apart (a counter keeps
        only its own window's uses)."""
        assert self.limit is not None
        return f"key:{key.fp}:{self.limit[1]:g}s"

    def used(self, key: _Key) -> int:
        if self.limit is None:
            return 0
        if self.coord is not None:
            return self.coord.rate_used(self._counter(key), self._window())
        now = time.monotonic()
        return sum(1 for t in self._local.get(key.fp, []) if t > now - self._window())

    def _take_best(self, keys: list[_Key]) -> _Key | None:
        """One use of the key (of `keys`, in order of preference) with the most headroom:
        one backend call, atomic across processes."""
        if self.limit is None:
            return keys[0]
        count, _ = self.limit
        if self.coord is not None:
            index, wait = self.coord.rate_take_any(
                [self._counter(k) for k in keys], count, self._window()
            )
            self._full_for = wait if index is None else None
            return None if index is None else keys[index]
        now = time.monotonic()
        for k in keys:  # keep only this window's uses
            self._local[k.fp] = [t for t in self._local.get(k.fp, []) if t > now - self._window()]
        best = min(keys, key=lambda k: len(self._local[k.fp]))
        if len(self._local[best.fp]) >= count:
            self._full_for = min(self._local[k.fp][0] for k in keys) + self._window() - now
            return None
        self._local[best.fp].append(now)
        return best

    def ranked(self) -> list[_Key]:
        """Keys not marked limited, most headroom first."""
        now = time.monotonic()
        free = [k for k in self._keys if k.stats.limited_until <= now]
        return sorted(free, key=lambda k: (self.used(k), k.stats.requests))

    def mark_limited(self, key: _Key, retry_after_s: float) -> None:
        now = time.monotonic()
        key.stats.limited += 1
        until = now + max(0.0, retry_after_s)
        key.stats.limited_s += max(0.0, until - max(now, key.stats.limited_until))
        key.stats.limited_until = max(key.stats.limited_until, until)

    def backoff(self, round_: int) -> float:
        nominal = min(self.max_s, self.initial_s * self.factor**round_)
        return nominal * self.rng.uniform(1 - JITTER, 1 + JITTER)

    # -- requests ------------------------------------------------------------------------------

    async def send(
        self,
        do: Callable[[str, str], Awaitable[Any]],
        status_of: Callable[[Any], int],
        retry_after_of: Callable[[Any], float | None],
    ) -> Any:
        """Send with rotation and backoff; `do(key value, fingerprint)` makes the request.

        Returns the first response that is not a 429, or the provider's last 429 when every
        key stayed limited through all backoff rounds (AllKeysLimited if there was none).
        """
        last = None
        for round_ in range(self.max_retries + 1):
            tried: set[str] = set()
            while True:
                now = time.monotonic()
                free = [k for k in self._keys if k.stats.limited_until <= now and k.fp not in tried]
                if not free:
                    break
                try:
                    key = self._take_best(sorted(free, key=lambda k: k.stats.requests))
                except CoordUnreachable:  # the windows are kept there: the request waits
                    await self._sleep(BACKEND_RETRY_S)
                    continue
                if key is None:
                    break  # every window is full
                tried.add(key.fp)
                key.stats.requests += 1
                response = await do(key.value, key.fp)
                status = status_of(response)
                key.stats.statuses[status] = key.stats.statuses.get(status, 0) + 1
                if status != 429:
                    key.stats.ok += 1
                    return response
                last = response
                self.mark_limited(key, retry_after_of(response) or self.backoff(round_))
            if round_ == self.max_retries:
                break
            delay = self.backoff(round_)
            self.backoff_delays.append(delay)
            await self._sleep(delay)
        if last is None:
            per = ""
            if self.limit is not None:
                per = f" of {self.limit[0]} per {format_duration(self.limit[1])} each"
            raise AllKeysLimited(
                f"every key of {self.name!r} stayed at its limit{per}", self._full_for
            )
        return last

    async def request(
        self, method: str, url: str, *, client: Any = None, auth: str = "x-api-key", **kwargs: Any
    ) -> Any:
        """An HTTP request with one of the pool's keys (httpx), rotated and backed off:
        the library form of what the proxy does (seed 001's APIKeyRotator)."""
        import httpx

        own = client is None
        client = client or httpx.AsyncClient(timeout=60)
        headers = dict(kwargs.pop("headers", {}) or {})

        async def do(value: str, _fp: str) -> httpx.Response:
            sent = dict(headers)
            if auth == "authorization":
                sent["Authorization"] = f"Bearer {value}"
            else:
                sent[auth] = value
            response: httpx.Response = await client.request(method, url, headers=sent, **kwargs)
            return response

        try:
            return await self.send(do, lambda r: r.status_code, retry_after)
        finally:
            if own:
                await client.aclose()

    def stats(self, *, window: bool = True) -> dict[str, Any]:
        """Per key, by fingerprint: requests, successes, 429s, time spent limited, and (with
        `window`, which asks the coordinator) uses in the current window; plus the backoff
        delays waited."""
        keys = {}
        for k in self._keys:
            keys[k.fp] = {
                "requests": k.stats.requests,
                "ok": k.stats.ok,
                "limited": k.stats.limited,
                "limited_s": round(k.stats.limited_s, 3),
                "in_window": self.used(k) if window else None,
                "statuses": dict(k.stats.statuses),
            }

        used = [fp for fp, s in keys.items() if s["requests"]]
        return {
            "pool": self.name,
            "limit": self.limit,
            "keys": keys,
            "keys_used": len(used),
            "backoff_delays": list(self.backoff_delays),
        }


def retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
