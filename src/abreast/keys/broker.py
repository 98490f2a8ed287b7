"""What each attempt gets to call its provider, and what the run records of key use.

- Direct mode (a pool without `upstream`): the attempt leases one key, the one with
  the fewest holders and then the most headroom, in the pool's `env` variable.
  `max_concurrent_per_key` caps holders per key (in this orchestrator); when the
  best key is near its limit (80% of its window used), starts are staggered by one
  emission interval (window / limit).
- Proxy mode (`upstream` set): the attempt gets the proxy's address in
  `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL` and a per-attempt token in `env`: it never
  holds a real key.
- In both modes the variables the keys are read from (`from:`) are removed from every
  task's environment.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from abreast.coord.backend import BACKEND_RETRY_S, Coordinator, CoordUnreachable
from abreast.coord.journal import Journal
from abreast.keys.pool import KeyPool
from abreast.keys.proxy import BASE_URL_ENV, KeyProxy, Route
from abreast.keys.tokens import Tokens
from abreast.spec.durations import counted
from abreast.spec.model import Task, Workflow

NEAR_LIMIT = 0.8


class KeyBroker:
    def __init__(
        self,
        wf: Workflow,
        coord: Coordinator | None,
        journal: Journal,
        run_id: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.wf = wf
        self.journal = journal
        self.run_id = run_id
        self.pools = {
            name: KeyPool.from_spec(name, spec, coord, env) for name, spec in wf.keys.items()
        }
        self.secret_vars = {v for spec in wf.keys.values() for v in spec.from_}
        routes = {
            name: Route(self.pools[name], str(spec.upstream), spec.style)
            for name, spec in wf.keys.items()
            if spec.upstream
        }
        self.proxy = KeyProxy(routes) if routes else None
        self._holders: dict[tuple[str, str], int] = {}
        self._leases: dict[tuple[str, int], tuple[str, str, bool]] = {}  # -> pool, fp/token, proxy
        self._freed = asyncio.Event()
        self._reported: dict[tuple[str, str, int], int] = {}
        # proxy token -> (task, attempt, pool, whether the attempt ended), and the tokens
        # its answers said they used that are journaled (api.usage)
        self._proxied: dict[str, tuple[str, int, str, bool]] = {}
        self._used_reported: dict[str, Tokens] = {}
        self._limited_reported: dict[tuple[str, str], int] = {}
        self._unreached_reported: dict[str, int] = {}  # proxy token -> failures journaled
        self._unreached_said: set[str] = set()  # pools whose upstream failing was warned of

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.start()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()

    def scrub(self, env: dict[str, str]) -> dict[str, str]:
        """The environment without the variables real keys are read from."""
        return {k: v for k, v in env.items() if k not in self.secret_vars}

    def secrets(self) -> list[tuple[str, str]]:
        """(fingerprint, value) of every key of every pool: what must not reach a log
        or a commit."""
        return [secret for pool in self.pools.values() for secret in pool.secrets()]

    def pool_of(self, task: Task) -> str | None:
        return self.wf.key_pool_of(task)

    async def lease(
        self, task_id: str, attempt: int, pool_name: str, max_tokens: int | None = None
    ) -> dict[str, str]:
        spec = self.wf.keys[pool_name]
        pool = self.pools[pool_name]
        if spec.upstream:
            assert self.proxy is not None
            token = self.proxy.issue(pool_name, max_tokens)
            self._leases[(task_id, attempt)] = (pool_name, token, True)
            self._proxied[token] = (task_id, attempt, pool_name, False)
            return {spec.key_env: token} | dict.fromkeys(BASE_URL_ENV[spec.style], self.proxy.url)
        while True:
            try:
                ranked = sorted(
                    pool.ranked() or pool._keys,
                    key=lambda k: (self._holders.get((pool_name, k.fp), 0), pool.used(k)),
                )
            except CoordUnreachable:  # the keys' windows are kept there: wait for it
                await asyncio.sleep(BACKEND_RETRY_S)
                continue
            cap = spec.max_concurrent_per_key
            free = [
                k for k in ranked if cap is None or self._holders.get((pool_name, k.fp), 0) < cap
            ]
            if free:
                break
            self._freed.clear()
            await self._freed.wait()  # a key is given back when an attempt ends
        key = free[0]
        if pool.limit is not None and _near_limit(pool, key):
            await asyncio.sleep(pool.limit[1] / pool.limit[0])  # stagger near the limit
        self._holders[(pool_name, key.fp)] = self._holders.get((pool_name, key.fp), 0) + 1
        self._leases[(task_id, attempt)] = (pool_name, key.fp, False)
        self.journal.stage_event(
            self.run_id, "key.leased", task_id, attempt=attempt, pool=pool_name, fingerprint=key.fp
        )
        return {spec.key_env: key.value}

    def waiting_on_provider(self, task_id: str, attempt: int) -> bool:
        """Whether the attempt has a request under way through the key proxy: it waits on
        the provider (or on a key), which is a sign of life, however long the answer takes."""
        held = self._leases.get((task_id, attempt))
        if held is None or not held[2] or self.proxy is None:
            return False  # no key, or a direct-mode one: its requests are not seen
        return self.proxy.in_flight(held[1])

    def release(self, task_id: str, attempt: int) -> None:
        held = self._leases.pop((task_id, attempt), None)
        if held is None:
            return
        pool_name, handle, proxied = held
        if proxied:
            assert self.proxy is not None
            self.proxy.revoke(handle)
            if handle in self._proxied:  # its use is journaled once more, then forgotten
                task, n, pool, _ = self._proxied[handle]
                self._proxied[handle] = (task, n, pool, True)
            return
        slot = (pool_name, handle)
        self._holders[slot] = max(0, self._holders.get(slot, 0) - 1)
        self._freed.set()

    def tick(self) -> list[str]:
        """Journal key use since the last tick (events feed `abreast keys` and metrics);
        the warnings it said (a pool's upstream out of reach)."""
        for name, pool in self.pools.items():
            for fp, s in pool.stats(window=False)["keys"].items():
                for status, count in s["statuses"].items():
                    key = (name, fp, int(status))
                    delta = count - self._reported.get(key, 0)
                    if delta:
                        self._reported[key] = count
                        self.journal.stage_event(
                            self.run_id,
                            "api.request",
                            None,
                            pool=name,
                            fingerprint=fp,
                            status=int(status),
                            count=delta,
                        )
                limited = s["limited"]
                if limited > self._limited_reported.get((name, fp), 0):
                    self._limited_reported[(name, fp)] = limited
                    self.journal.stage_event(
                        self.run_id,
                        "api.limited",
                        None,
                        pool=name,
                        fingerprint=fp,
                        limited=limited,
                        limited_s=s["limited_s"],
                    )

        return self._journal_tokens()

    def _journal_tokens(self) -> list[str]:
        """Journal what the provider's answers to each attempt said they used since the
        last tick (`api.usage`, per task and attempt: `abreast report` sums them), and the
        requests that did not reach it; the warnings said."""
        warnings: list[str] = []
        if self.proxy is None:
            return warnings
        for token, (task_id, attempt, pool_name, ended) in list(self._proxied.items()):
            total = self.proxy.used(token)
            delta = total.minus(self._used_reported.get(token, Tokens()))
            if delta:
                self._used_reported[token] = total
                self.journal.stage_event(
                    self.run_id,
                    "api.usage",
                    task_id,
                    attempt=attempt,
                    pool=pool_name,
                    **delta.as_dict(),
                )
            if warning := self._journal_unreached(token, task_id, attempt, pool_name):
                warnings.append(warning)
            if ended:
                del self._proxied[token]
                self._used_reported.pop(token, None)
                self._unreached_reported.pop(token, None)
                self.proxy.forget(token)
        return warnings

    def _journal_unreached(self, token: str, task_id: str, attempt: int, pool: str) -> str | None:
        """Journal the attempt's requests that could not reach the provider since the last
        tick (`api.failed`); the first of a pool's run is a warning: an `upstream:` that is
        wrong, or not reachable from here, fails every agent the same way."""
        assert self.proxy is not None
        count, why = self.proxy.unreached(token)
        delta = count - self._unreached_reported.get(token, 0)
        if delta <= 0:
            return None
        self._unreached_reported[token] = count
        warning = None
        if pool not in self._unreached_said:
            self._unreached_said.add(pool)
            warning = (
                f"{counted(delta, 'request')} of {task_id}'s through the key proxy could not "
                f"reach key pool "
                f"{pool}'s upstream ({self.wf.keys[pool].upstream}): {why}; the agent was "
                f"answered 502 (check `keys.{pool}.upstream`, and that this machine can "
                "reach it)"
            )
        self.journal.stage_event(
            self.run_id,
            "api.failed",
            task_id,
            attempt=attempt,
            pool=pool,
            count=delta,
            reason=why,
            warning=warning,
        )
        return warning

    def over_budget(self) -> list[tuple[str, int, str]]:
        """(task, attempt, why) of each running attempt whose answers have said they used
        its max_tokens (the proxy refuses it from then on): to be killed."""
        out: list[tuple[str, int, str]] = []
        if self.proxy is None:
            return out
        for token, (task_id, attempt, _pool, ended) in self._proxied.items():
            if not ended and (spent_of := self.proxy.budget_spent(token)) is not None:
                spent, budget = spent_of
                why = (
                    f"its answers through the key proxy said it used {spent:,} tokens "
                    f"(input + output), reaching its max_tokens of {budget:,}; it was killed"
                )
                out.append((task_id, attempt, why))
        return out

    def usage(self) -> dict[str, Any]:
        return {name: pool.stats() for name, pool in self.pools.items()}


def _near_limit(pool: KeyPool, key: Any) -> bool:
    """Whether the key's window is nearly full (not known, with the backend gone: no)."""
    assert pool.limit is not None
    try:
        return pool.used(key) >= NEAR_LIMIT * pool.limit[0]
    except CoordUnreachable:
        return False
