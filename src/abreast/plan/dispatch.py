"""Which tasks may start now: a pure, incremental core the engine and the simulator share.

The caller drives it the way `graphlib.TopologicalSorter` is driven:

    d = Dispatcher(graph, priority)
    for t in d.take_ready(): d.admit(t)     # or d.complete(t) to skip it
    for t in d.start(cap): ...run t...       # highest priority first, within every limit
    d.release(t)                             # its process ended: slot and resources back
    d.complete(t) / d.fail(t)                # dependents may go on / are blocked

A ready task that cannot start yet is parked on what stops it (a full resource,
a running task it conflicts with, or an unfinished earlier wave under the
"waves" policy) and comes back only when that thing frees, so one decision costs
O(log n) however many tasks wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from heapq import heappop, heappush

from abreast.gcpause import paused_gc
from abreast.plan.graph import TaskGraph

# Task states inside the dispatcher.
_WAITING, _READY, _RUNNING, _DONE, _BLOCKED = range(5)


class Policy(StrEnum):
    PRIORITY = "priority"  # list scheduling by longest remaining path
    WAVES = "waves"  # the same, but a wave starts only when the previous one is done


class Dispatcher:
    def __init__(
        self,
        graph: TaskGraph,
        priority: Sequence[float],
        policy: Policy = Policy.PRIORITY,
        wave: Sequence[int] | None = None,
    ) -> None:
        n = graph.n
        self._graph = graph
        # Heap entries: (-priority, task); ties go to the task earlier in the file.
        self._key = [(-priority[v], v) for v in range(n)]
        self._succs = graph.succs
        self._unmet = [len(p) for p in graph.preds]
        self._signal_waits = graph.signal_waits
        self._satisfied: set[tuple[int, int]] = set()
        self._uses = graph.uses
        self._free = list(graph.capacity)
        self._conflicts = graph.conflicts()
        self._heap: list[tuple[float, int]] = []
        self._parked_on_resource: list[list[int]] = [[] for _ in graph.capacity]
        self._parked_on_task: dict[int, list[int]] = {}
        self._running: set[int] = set()
        # Ended, their work still to land: they keep the tasks they conflict with waiting.
        self._holding: set[int] = set()
        self._state = bytearray(n)
        self._newly_ready = [v for v in range(n) if self._unmet[v] == 0]
        for v in self._newly_ready:
            self._state[v] = _READY
        self._barrier = policy is Policy.WAVES
        self._wave: list[int] = []
        self._unfinished_in_wave: list[int] = []
        self._parked_on_wave: list[list[int]] = []
        self._open_wave = 0
        if self._barrier:
            if wave is None:
                raise ValueError("the waves policy needs each task's wave")
            self._wave = list(wave)
            self._unfinished_in_wave = [0] * (max(wave, default=-1) + 1)
            for w in wave:
                self._unfinished_in_wave[w] += 1
            self._parked_on_wave = [[] for _ in self._unfinished_in_wave]
            self._advance_waves()

    def __repr__(self) -> str:
        return (
            f"<Dispatcher running={len(self._running)} queued={len(self._heap)} "
            f"done={self._state.count(_DONE)}/{len(self._state)}>"
        )

    # -- what the caller asks --------------------------------------------------------------

    def take_ready(self) -> list[int]:
        """Tasks whose dependencies are now met, each returned once; admit or complete each."""
        out, self._newly_ready = self._newly_ready, []
        return out

    @property
    def running(self) -> frozenset[int]:
        return frozenset(self._running)

    def is_done(self, v: int) -> bool:
        return self._state[v] == _DONE

    def waiting(self) -> dict[int, str]:
        """Why each admitted task is not running: 'cap', 'wave', a resource name, or 'task:N'."""
        out: dict[int, str] = {}
        for _, v in self._heap:
            if self._state[v] == _READY:
                out[v] = "cap"
        for r, vs in enumerate(self._parked_on_resource):
            for v in vs:
                out[v] = self._graph.resource_names[r]
        for u, vs in self._parked_on_task.items():
            for v in vs:
                out[v] = f"task:{u}"
        for vs in self._parked_on_wave:
            for v in vs:
                out[v] = "wave"
        return out

    # -- what the caller tells -------------------------------------------------------------

    def admit(self, v: int) -> None:
        """`v` (from take_ready) is to run: queue it by priority."""
        heappush(self._heap, self._key[v])

    def start(self, cap: int) -> list[int]:
        """Start as many queued tasks as `cap` running tasks and every limit allow."""
        out: list[int] = []
        heap, running, state = self._heap, self._running, self._state
        free, conflicts = self._free, self._conflicts
        while len(running) < cap and heap:
            v = heappop(heap)[1]
            if state[v] != _READY:
                continue  # blocked meanwhile, or a stale duplicate
            if self._barrier and self._wave[v] > self._open_wave:
                self._parked_on_wave[self._wave[v]].append(v)
                continue
            uses = self._uses[v]
            if uses:
                full = -1
                for r in uses:
                    if free[r] == 0:
                        full = r
                        break
                if full >= 0:
                    self._parked_on_resource[full].append(v)
                    continue
            if conflicts and v in conflicts:
                clash = -1
                for u in conflicts[v]:
                    if u in running or u in self._holding:
                        clash = u
                        break
                if clash >= 0:
                    self._parked_on_task.setdefault(clash, []).append(v)
                    continue
            for r in uses:
                free[r] -= 1
            running.add(v)
            state[v] = _RUNNING
            out.append(v)
        return out

    def release(self, v: int) -> None:
        """`v`'s process has ended: give back its slot and resources (and, of one that
        held its exclusions while its work landed, those)."""
        self._unhold(v)
        if v not in self._running:
            return
        self._running.discard(v)
        for r in self._uses[v]:
            self._free[r] += 1
            self._requeue(self._parked_on_resource[r])
            self._parked_on_resource[r] = []
        if self._parked_on_task:
            self._requeue(self._parked_on_task.pop(v, []))
        self._state[v] = _READY  # until completed, failed or retried

    def hold(self, v: int) -> None:
        """`v`'s process has ended and its work is to land: its slot and resources are
        given back, but the tasks it conflicts with (their `owns` overlap) wait until it
        lands or fails (complete, fail, retry or release): started now, they would start
        from work without its own and conflict with it at their merge."""
        if not (self._conflicts and v in self._conflicts):
            self.release(v)
            return
        if v in self._running:
            self.release(v)
        self._holding.add(v)

    def exclude(self, u: int, v: int) -> bool:
        """From now on `u` and `v` do not run side by side, as tasks whose `owns` overlap
        (their work conflicted at a merge: run together again, it would again). False if
        they were kept apart already."""
        conflicts = self._conflicts
        if u == v or v in conflicts.get(u, ()):
            return False
        conflicts[u] = (*conflicts.get(u, ()), v)
        conflicts[v] = (*conflicts.get(v, ()), u)
        return True

    def _unhold(self, v: int) -> None:
        if self._holding and v in self._holding:
            self._holding.discard(v)
            self._requeue(self._parked_on_task.pop(v, []))

    def complete(self, v: int) -> None:
        """`v` succeeded (or was skipped): its dependents may go on."""
        self._unhold(v)
        state = self._state
        if state[v] == _RUNNING:
            self.release(v)
        state[v] = _DONE
        satisfied, unmet, newly = self._satisfied, self._unmet, self._newly_ready
        for s in self._succs[v]:
            if satisfied and (v, s) in satisfied:
                continue
            unmet[s] -= 1
            if unmet[s] == 0 and state[s] == _WAITING:
                state[s] = _READY
                newly.append(s)
        if self._barrier:
            self._finished_in_wave(v)

    def signal(self, v: int, name: str) -> list[int]:
        """`v` announced `name`: tasks that wait only for that signal may go on. Nothing
        once `v` has ended: its end let them go already (a signal read late, or read again
        from the journal on resume, must not count twice)."""
        released: list[int] = []
        if self._state[v] == _DONE:
            return released
        for s in self._succs[v]:
            if self._signal_waits.get((v, s)) == name and (v, s) not in self._satisfied:
                self._satisfied.add((v, s))
                self._unmet[s] -= 1
                if self._state[s] != _WAITING:
                    continue  # ended before (a resumed run's signal, read again)
                if self._unmet[s] == 0:
                    self._state[s] = _READY
                    self._newly_ready.append(s)
                released.append(s)
        return released

    def fail(self, v: int) -> list[int]:
        """`v` failed for good: every task downstream that has not started is blocked."""
        self._unhold(v)
        if self._state[v] == _RUNNING:
            self.release(v)
        self._state[v] = _DONE
        if self._barrier:
            self._finished_in_wave(v)
        blocked = []
        stack = list(self._succs[v])
        while stack:
            s = stack.pop()
            if self._state[s] in (_WAITING, _READY):
                self._state[s] = _BLOCKED
                blocked.append(s)
                if self._barrier:
                    self._finished_in_wave(s)
                stack.extend(self._succs[s])
        return blocked

    def retry(self, v: int) -> None:
        """`v` will run again (a retry or a route-back): queue it anew."""
        self._unhold(v)
        if self._state[v] == _RUNNING:
            self.release(v)
        self._state[v] = _READY
        self.admit(v)

    def send_back(self, r: int, t: int) -> None:
        """`r` ended sending the work of `t` (done; `r` needs it) back: `t` runs again, and
        `r` and every other task that waits for `t` wait for it again."""
        self._unhold(r)
        state, unmet = self._state, self._unmet
        if state[r] == _RUNNING:
            self.release(r)
        state[r] = _WAITING
        for s in self._succs[t]:
            if (t, s) not in self._satisfied and state[s] == _WAITING:
                unmet[s] += 1
        if self._barrier:
            self._unfinished_in_wave[self._wave[t]] += 1
        state[t] = _READY
        self.admit(t)

    # -- inside ----------------------------------------------------------------------------

    def _requeue(self, vs: list[int]) -> None:
        key, heap = self._key, self._heap
        for u in vs:
            heappush(heap, key[u])

    def _finished_in_wave(self, v: int) -> None:
        self._unfinished_in_wave[self._wave[v]] -= 1
        self._advance_waves()

    def _advance_waves(self) -> None:
        while (
            self._open_wave < len(self._unfinished_in_wave)
            and self._unfinished_in_wave[self._open_wave] == 0
        ):
            self._open_wave += 1
            if self._open_wave < len(self._parked_on_wave):
                self._requeue(self._parked_on_wave[self._open_wave])
                self._parked_on_wave[self._open_wave] = []


def simulate(
    graph: TaskGraph,
    duration: Sequence[float],
    skipped: Sequence[bool],
    cap: int,
    priority: Sequence[float],
    policy: Policy = Policy.PRIORITY,
    wave: Sequence[int] | None = None,
) -> tuple[list[float], list[float]]:
    """(start, finish) of every task when run with these estimates; skipped tasks take no time."""
    with paused_gc():
        if any(graph.uses) or graph.overlaps:
            return _simulate(graph, duration, skipped, cap, priority, policy, wave)
        # Only the cap limits: the same schedule, computed without the general machinery.
        if policy is Policy.WAVES:
            if wave is None:
                raise ValueError("the waves policy needs each task's wave")
            return _simulate_waves_free(graph, duration, skipped, cap, priority, wave)
        return _simulate_free(graph, duration, skipped, cap, priority)


def _simulate_free(
    graph: TaskGraph,
    duration: Sequence[float],
    skipped: Sequence[bool],
    cap: int,
    priority: Sequence[float],
) -> tuple[list[float], list[float]]:
    n = graph.n
    start = [0.0] * n
    finish = [0.0] * n
    succs = graph.succs
    unmet = [len(p) for p in graph.preds]
    heap: list[tuple[float, int]] = []
    events: list[tuple[float, int]] = []
    now = 0.0
    running = 0
    any_skipped = any(skipped)

    def became_ready(v: int) -> None:
        # A skipped task completes the moment it is ready, taking no slot.
        stack = [v]
        while stack:
            u = stack.pop()
            if any_skipped and skipped[u]:
                start[u] = finish[u] = now
                for s in succs[u]:
                    unmet[s] -= 1
                    if unmet[s] == 0:
                        stack.append(s)
            else:
                heappush(heap, (-priority[u], u))

    for v in range(n):
        if unmet[v] == 0:
            became_ready(v)
    while True:
        while running < cap and heap:
            v = heappop(heap)[1]
            start[v] = now
            end = finish[v] = now + duration[v]
            heappush(events, (end, v))
            running += 1
        if not events:
            break
        now, v = heappop(events)
        done = [v]
        while events and events[0][0] <= now:
            done.append(heappop(events)[1])
        for v in done:
            running -= 1
            for s in succs[v]:
                unmet[s] -= 1
                if unmet[s] == 0:
                    became_ready(s)
    return start, finish


def _simulate_waves_free(
    graph: TaskGraph,
    duration: Sequence[float],
    skipped: Sequence[bool],
    cap: int,
    priority: Sequence[float],
    wave: Sequence[int],
) -> tuple[list[float], list[float]]:
    # Wave by wave: each wave's tasks, by priority, each on the slot that frees first.
    n = graph.n
    start = [0.0] * n
    finish = [0.0] * n
    by_wave: list[list[int]] = [[] for _ in range(max(wave, default=-1) + 1)]
    for v in range(n):
        by_wave[wave[v]].append(v)
    now = 0.0
    for members in by_wave:
        live = sorted((v for v in members if not skipped[v]), key=lambda v: (-priority[v], v))
        slots = [now] * min(cap, len(live))
        end_of_wave = now
        for v in live:
            t = heappop(slots)
            start[v] = t
            finish[v] = t + duration[v]
            heappush(slots, finish[v])
            end_of_wave = max(end_of_wave, finish[v])
        for v in members:
            if skipped[v]:
                start[v] = finish[v] = now
        now = end_of_wave
    return start, finish


def _simulate(
    graph: TaskGraph,
    duration: Sequence[float],
    skipped: Sequence[bool],
    cap: int,
    priority: Sequence[float],
    policy: Policy,
    wave: Sequence[int] | None,
) -> tuple[list[float], list[float]]:
    n = graph.n
    start = [0.0] * n
    finish = [0.0] * n
    d = Dispatcher(graph, priority, policy, wave)
    events: list[tuple[float, int]] = []
    now = 0.0
    any_skipped = any(skipped)
    admit, complete, take_ready = d.admit, d.complete, d.take_ready
    while True:
        ready = take_ready()
        while ready:
            for v in ready:
                if any_skipped and skipped[v]:
                    start[v] = finish[v] = now
                    complete(v)
                else:
                    admit(v)
            ready = take_ready()
        for v in d.start(cap):
            start[v] = now
            end = finish[v] = now + duration[v]
            heappush(events, (end, v))
        if not events:
            break
        now, v = heappop(events)
        complete(v)
        while events and events[0][0] <= now:
            complete(heappop(events)[1])
    return start, finish
