"""What the orchestrator does for each running attempt besides waiting for it to end.

- **Leases.** A task's `locks:` are acquired (FIFO, fenced) before its attempt
  starts, renewed from here every third of their TTL, and released when it ends.
  If a renewal fails, or cannot happen before the lease would run out, the
  attempt is killed: its protected work must not go on unprotected.
- **Heartbeats and orphans.** Every interval, the supervisor looks at each
  attempt's process tree (CPU time, bytes read and written, log size) and
  heartbeats `attempt:<run>/<task>/<n>` while it shows signs of life (or has an API
  request under way through the key proxy). An attempt
  with none for `heartbeat.orphan_after` (hung, stopped, waiting forever) is an
  orphan: killed, its leases released, retried or failed. The run heartbeats as
  `run:<run>`.
- **Memory.** Peak RSS per attempt; the orchestrator's own RSS and, with Redis,
  `used_memory` are sampled; growth over `memory.growth_limit` in a run raises
  `memory.leak_suspected` once per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from abreast.coord.backend import (
    BACKEND_RETRY_S,
    CoordError,
    Coordinator,
    CoordUnreachable,
    Holder,
    Lease,
    WaitStopped,
    open_coordinator,
)
from abreast.coord.journal import Journal
from abreast.executor.locked import describe
from abreast.executor.logs import log_limit_passed, log_size
from abreast.executor.process import end_lease_holders, fence, tree_stats
from abreast.integrate.checks import Held
from abreast.spec.durations import format_size
from abreast.spec.model import Workflow

_FAILED = object()  # a backend call that raised (as opposed to answering None)


@dataclass
class Watch:
    """What the supervisor knows of one running attempt."""

    key: str
    pid: int
    log: str
    leases: list[Lease] = field(default_factory=list)
    # (RSS, CPU s, I/O bytes) of the attempt's tree: its executor's, else read here by pid;
    # None while it has not started yet (waiting in a remote executor's queue)
    stats: Callable[[], tuple[int, float, int] | None] | None = None
    # True while the attempt waits on something outside its tree (an API request through
    # the key proxy): a sign of life its process tree cannot show
    waiting: Callable[[], bool] | None = None
    last_renew: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    last_sign: tuple[float, int, int] = (0.0, 0, 0)
    last_beat: float = 0.0
    peak_rss: int = 0
    max_rss: int | None = None  # the task's `max_memory`


@dataclass
class Trouble:
    task_id: str
    reason: str  # for the task's failure and feedback
    kind: str  # orphan: "no_activity"; lease: "lock_lost"


class Supervisor:
    def __init__(
        self,
        wf: Workflow,
        run_id: str,
        coord: Coordinator | None,
        journal: Journal,
        note: Callable[[str], None],
    ) -> None:
        self.wf = wf
        self.run_id = run_id
        self.coord = coord
        self.journal = journal
        self.note = note
        self.watches: dict[str, Watch] = {}
        self.warnings: list[str] = []
        self.orphans = 0
        self.lock_wait_s: dict[str, float] = {}
        self._memory_base: dict[str, int] = {}
        self._memory_warned: set[str] = set()
        self._last_run_beat = 0.0
        self._coord_down_noted = False
        self._stop_waits = threading.Event()  # set when the run cancels: see stop_waiting
        self._stop_attempt_waits = threading.Event()  # ... or drains: see stop_attempt_waits

    # -- leases ------------------------------------------------------------------------------

    async def acquire_locks(self, task_id: str, attempt: int, locks: list[str]) -> list[Lease]:
        """Take the task's locks, in name order (so two tasks never wait on each other)."""
        leases = []
        for name in sorted(set(locks)):
            ttl = self.wf.locks[name].ttl
            holder = Holder.here(run=self.run_id, task=task_id, suffix=f":{attempt}")
            t0 = time.monotonic()
            lease, fenced = await asyncio.to_thread(
                self._acquire_blocking,
                name,
                holder,
                ttl,
                self._stop_attempt_waits,
                self._say(f"{task_id}: waits for"),
            )
            waited = time.monotonic() - t0
            self.lock_wait_s[name] = self.lock_wait_s.get(name, 0.0) + waited
            self._journal_grant(lease, fenced, task_id, attempt=attempt, wait_s=round(waited, 6))
            leases.append(lease)
        return leases

    def stop_waiting(self) -> None:
        """The run is cancelling: every wait for a lock, now or later, gives up at once
        (raising WaitStopped) instead of holding the run until the lock is free."""
        self._stop_waits.set()
        self._stop_attempt_waits.set()

    def stop_attempt_waits(self) -> None:
        """The run is draining: attempts waiting for their locks give up (WaitStopped), as
        they have started nothing yet; merge checks still wait, for what ran to land."""
        self._stop_attempt_waits.set()

    def _say(self, what: str) -> Callable[[str], None]:
        """A note for the view, callable from a worker thread: `what` + the rest."""
        loop = asyncio.get_running_loop()

        def say(rest: str) -> None:
            loop.call_soon_threadsafe(self.note, f"{what} {rest}")

        return say

    def _acquire_blocking(
        self,
        name: str,
        holder: Holder,
        ttl_s: float,
        stop: threading.Event,
        say: Callable[[str], None] | None = None,
    ) -> tuple[Lease, int]:
        """(the lease, how many processes still holding the lease before it were ended: that
        lease ran out without being given back, and they must not work beside ours). If it
        has to wait, `say` hears once whom for; once `stop` is set it gives up."""
        said: set[str] = set()  # what `say` heard already: each once
        while True:
            # A backend gone (Redis restarting, or down) is waited out here, said once, for
            # as long as it takes: the attempt or the merge is not failed for it.
            try:
                lease, store_id = self._acquire_once(name, holder, ttl_s, stop, said, say)
                break
            except CoordUnreachable as e:
                if "backend" not in said and say is not None:
                    said.add("backend")
                    say(f"the coordination backend, to take the lock {name!r} ({e})")
                if stop.wait(BACKEND_RETRY_S):
                    lease = None
                    break
        if lease is None:
            raise WaitStopped(f"stopped waiting for the lock {name!r}: the run is stopping")
        lapsed = lease.lapsed
        fenced = fence(lapsed.name, lapsed.token, lapsed.holder.host, store_id) if lapsed else 0
        return lease, fenced

    def _acquire_once(
        self,
        name: str,
        holder: Holder,
        ttl_s: float,
        stop: threading.Event,
        said: set[str],
        say: Callable[[str], None] | None,
    ) -> tuple[Lease | None, str]:
        """One wait in line for `name` (None if `stop` ended it), and the store's id; a
        connection of its own, as this waits in a worker thread."""
        coord = open_coordinator(self._url(), wait_s=0)

        def waiting() -> None:
            if "holder" in said or say is None:
                return
            said.add("holder")
            current = coord.holder(name)
            say(f"the lock {name!r}, held by {describe(current) if current else 'another'}")

        try:
            return coord.acquire(name, holder, ttl_s, on_wait=waiting, stop=stop), coord.store_id
        finally:
            coord.close()

    def _journal_grant(self, lease: Lease, fenced: int, task_id: str | None, **data: Any) -> None:
        self.journal.stage_event(
            self.run_id, "lock.granted", task_id, lock=lease.name, token=lease.token, **data
        )
        if lease.lapsed is not None:
            h = lease.lapsed.holder
            self.journal.stage_event(
                self.run_id,
                "lock.fenced",
                task_id,
                lock=lease.name,
                lapsed_token=lease.lapsed.token,
                lapsed_holder={"run": h.run, "task": h.task, "pid": h.pid, "host": h.host},
                ended=fenced,
            )

    def _url(self) -> str:
        assert self.coord is not None
        return self.coord.url

    @contextlib.asynccontextmanager
    async def hold(self, name: str, holder_id: str) -> AsyncIterator[Held]:
        """Hold `name` around a block (a check), renewing it meanwhile. If the lease is lost
        (taken over or force-released, or not renewable before it runs out), what runs
        under it is ended at once and `Held.lost` says why: the block's work was not
        protected to the end."""
        ttl = self.wf.locks[name].ttl if name in self.wf.locks else 60.0
        task = holder_id.split("/")[1] if "/" in holder_id else None
        holder = Holder.here(run=self.run_id, task=task, suffix=":check")
        lease, fenced = await asyncio.to_thread(
            self._acquire_blocking,
            name,
            holder,
            ttl,
            self._stop_waits,
            self._say(f"{task or holder_id}: its checks wait for"),
        )
        self._journal_grant(lease, fenced, None, holder=holder_id)
        stop = asyncio.Event()
        assert self.coord is not None  # _acquire_blocking needs it too
        held = Held(lease, self.coord.store_id)

        async def keep() -> None:
            renewed = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=ttl / 3)
                if stop.is_set() or self.coord is None:
                    continue
                got = self._coord(self.coord.renew, name, lease.token, ttl)
                if got is None:
                    why = "it was taken over or force-released"
                elif got is _FAILED and time.monotonic() - renewed >= ttl:
                    why = f"not renewed for its ttl ({ttl:g}s): the backend is unreachable"
                else:
                    renewed = time.monotonic() if got is not _FAILED else renewed
                    continue
                held.lost = f"lost its lock {name!r} while it ran ({why})"
                self.journal.stage_event(
                    self.run_id, "lock.lost", None, lock=name, token=lease.token, holder=holder_id
                )
                await asyncio.to_thread(end_lease_holders, name, lease.token, held.store_id)
                return

        keeper = asyncio.create_task(keep())
        try:
            yield held
        finally:
            stop.set()
            await keeper
            if self.coord is not None:
                with contextlib.suppress(CoordError):
                    self.coord.release(name, lease.token)
            self.journal.stage_event(
                self.run_id, "lock.released", None, lock=name, token=lease.token, holder=holder_id
            )

    # -- attempts ------------------------------------------------------------------------------

    def started(
        self,
        task_id: str,
        attempt: int,
        pid: int,
        log: str,
        leases: list[Lease],
        stats: Callable[[], tuple[int, float, int] | None] | None = None,
        waiting: Callable[[], bool] | None = None,
        max_rss: int | None = None,
    ) -> None:
        key = self._attempt_key(task_id, attempt)
        self.watches[task_id] = Watch(key, pid, log, leases, stats, waiting, max_rss=max_rss)

    def _attempt_key(self, task_id: str, attempt: int) -> str:
        """The coordinator key an attempt's heartbeat is kept under."""
        return f"attempt:{self.run_id}/{task_id}/{attempt}"

    def ended(self, task_id: str) -> int:
        """The attempt is over: release its leases, drop its heartbeat. Returns its peak RSS
        as sampled."""
        w = self.watches.pop(task_id, None)
        if w is None:
            return 0
        if self.coord is not None:
            for lease in w.leases:
                try:
                    self.coord.release(lease.name, lease.token)
                except CoordError:
                    pass  # it expires by itself
                self.journal.stage_event(
                    self.run_id, "lock.released", task_id, lock=lease.name, token=lease.token
                )
            if w.last_beat:  # most attempts end before their first heartbeat
                with contextlib.suppress(CoordError):
                    self.coord.forget(w.key)
        return w.peak_rss

    def forget_attempts(self, attempts: list[tuple[str, int]]) -> None:
        """Drop the heartbeats of attempts a dead orchestrator watched (resume ended them),
        so that nothing later takes them for orphans or `cleanup` for leftovers."""
        if self.coord is None:
            return
        for task_id, attempt in attempts:
            with contextlib.suppress(CoordError):
                self.coord.forget(self._attempt_key(task_id, attempt))

    def release_unused(self, leases: list[Lease]) -> None:
        """Leases taken for an attempt that then never started."""
        if self.coord is None:
            return
        for lease in leases:
            with contextlib.suppress(CoordError):
                self.coord.release(lease.name, lease.token)

    # -- every tick ----------------------------------------------------------------------------

    def tick(self) -> list[Trouble]:
        now = time.monotonic()
        interval = self.wf.heartbeat.interval
        orphan_after = self.wf.heartbeat.orphan_after
        trouble: list[Trouble] = []
        for task_id, w in self.watches.items():
            sampled = w.stats() if w.stats else tree_stats(w.pid)
            if sampled is None:  # not started yet: waiting is not being quiet
                w.last_activity = now
                sampled = (0, 0.0, 0)
            rss, cpu, io = sampled
            w.peak_rss = max(w.peak_rss, rss)
            if w.max_rss is not None and rss > w.max_rss:
                why = (
                    f"its process tree used {format_size(rss)} of memory, over its "
                    f"max_memory of {format_size(w.max_rss)}; it was killed"
                )
                trouble.append(Trouble(task_id, why, "memory_limit"))
                continue
            size = log_size(w.log)
            limit = self.wf.logs.max_size
            if limit and size > limit:
                why = log_limit_passed(limit, size, "; its process tree was killed", "task")
                trouble.append(Trouble(task_id, why, "log_limit"))
                continue
            sign = (cpu, io, size)
            if sign != w.last_sign or (w.waiting is not None and w.waiting()):
                w.last_sign = sign
                w.last_activity = now
            quiet = now - w.last_activity
            task = self.wf.tasks.get(task_id)
            own = task.orphan_after if task is not None else None
            if quiet >= (own or orphan_after):
                cure = (
                    "raise its `orphan_after`"
                    if own
                    else "give it `orphan_after: D` (or raise `heartbeat.orphan_after`, "
                    "for every task)"
                )
                trouble.append(
                    Trouble(
                        task_id,
                        f"orphan: no sign of life (CPU, I/O, output or an API request) "
                        f"for {quiet:.0f}s; its process tree was killed (if it may rightly "
                        f"be quiet that long, {cure})",
                        "no_activity",
                    )
                )
                continue
            if self.coord is not None and now - w.last_beat >= interval and quiet < interval * 2:
                w.last_beat = now
                info = {"pid": w.pid, "rss": rss, "quiet_s": round(quiet, 1)}
                self._coord(self.coord.heartbeat, w.key, info)
            lost = self._renew(w, now)
            if lost:
                trouble.append(Trouble(task_id, lost, "lock_lost"))
        if self.coord is not None and time.time() - self._last_run_beat >= interval:
            self._last_run_beat = time.time()
            self._coord(self.coord.heartbeat, f"run:{self.run_id}", {"pid": os.getpid()})
        self._memory()
        return trouble

    def _renew(self, w: Watch, now: float) -> str:
        """Renew the attempt's leases when a third of their TTL passed; why they are lost, or
        "" while they are still held."""
        if not w.leases or self.coord is None:
            return ""
        ttl = min(lease.expires_at - lease.since for lease in w.leases)
        if now - w.last_renew < ttl / 3:
            return ""
        # Renewed even when late (the orchestrator was stopped past the ttl): the backend
        # renews a lease that ran out only if nobody was granted it since, so no one else
        # held it meanwhile.
        renewed_all = True
        for lease in w.leases:
            lease_ttl = lease.expires_at - lease.since
            got = self._coord(self.coord.renew, lease.name, lease.token, lease_ttl)
            if got is _FAILED:
                renewed_all = False  # the backend is down: try again until the deadline
            elif got is None:
                return (
                    f"lost its lock {lease.name!r}: it was taken over or force-released; "
                    "its process tree was killed"
                )
        if renewed_all:
            w.last_renew = now
        elif now - w.last_renew >= ttl:
            return (
                f"lost its lock{'s' if len(w.leases) != 1 else ''} "
                f"{', '.join(le.name for le in w.leases)}: not renewed "
                f"within the ttl ({ttl:g}s), the coordination backend unreachable; its "
                "process tree was killed"
            )
        return ""

    def _coord(self, call: Callable[..., Any], *args: Any) -> Any:
        """A best-effort call to the backend: a lost connection is noted, not fatal."""
        try:
            result = call(*args)
        except CoordError as e:
            if not self._coord_down_noted:
                self._coord_down_noted = True
                self.note(f"coordination backend unreachable ({e}); retrying")
            return _FAILED
        if self._coord_down_noted:
            self._coord_down_noted = False
            self.note("coordination backend reachable again")
        return result

    def _memory(self) -> None:
        import psutil

        samples = {"orchestrator": psutil.Process().memory_info().rss}
        if self.coord is not None:
            used = self._coord(self.coord.memory_bytes)
            if isinstance(used, int):
                samples["redis"] = int(used)
        limit = self.wf.memory.growth_limit
        for source, value in samples.items():
            base = self._memory_base.setdefault(source, value)
            growth = value - base
            if growth > limit and source not in self._memory_warned:
                self._memory_warned.add(source)
                text = (
                    f"{source} memory grew by {growth / 1e6:.0f} MB during the run "
                    f"(limit {limit / 1e6:.0f} MB): a leak?"
                )
                self.warnings.append(text)
                self.note(text)
                self.journal.stage_event(
                    self.run_id,
                    "memory.leak_suspected",
                    None,
                    source=source,
                    growth_bytes=growth,
                    limit_bytes=limit,
                    baseline_bytes=base,
                    now_bytes=value,
                    warning=text,
                )

    def close(self) -> None:
        """The run is over (or the orchestrator stops): its run heartbeat goes too."""
        if self.coord is not None:
            with contextlib.suppress(CoordError):
                self.coord.forget(f"run:{self.run_id}")
            self.coord.close()

    def orphan_cleaned(self, task_id: str, attempt: int, reason: str) -> None:
        self.orphans += 1
        self.journal.stage_event(
            self.run_id, "orphan.cleaned", task_id, attempt=attempt, reason=reason
        )
