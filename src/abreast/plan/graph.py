"""A workflow's tasks as a dense integer DAG with the resources each task takes.

Resources unify every "at most N at once" rule: the global cap is the
dispatcher's, and pools, agent `max_instances` and task `locks` are counted
resources here. Ownership overlaps are pairwise exclusions (see ownership.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from abreast import dag
from abreast.gcpause import paused_gc
from abreast.plan.history import own_estimate
from abreast.plan.ownership import overlapping_pairs
from abreast.spec.model import Workflow

DEFAULT_ESTIMATE_S = 60.0  # a task without `estimate` (and no defaults.estimate) counts as 1m


@dataclass(frozen=True)
class Overlap:
    a: int
    b: int
    patterns: tuple[str, ...]


@dataclass
class TaskGraph:
    """Tasks 0..n-1 in file order; `preds[v]` are what v needs (signal waits included)."""

    ids: list[str]
    preds: list[list[int]]
    # The subset of preds that v waits on whole (not just for a signal).
    full_preds: list[list[int]]
    estimate_s: list[float]
    estimated: list[bool]  # False where DEFAULT_ESTIMATE_S was assumed
    resource_names: list[str]
    capacity: list[int]
    uses: list[tuple[int, ...]]  # resource indexes each task takes one unit of
    overlaps: list[Overlap]
    # (dep, task) -> signal, where task waits only for dep's signal, not its end.
    signal_waits: dict[tuple[int, int], str]
    succs: list[list[int]] = field(default_factory=list)
    # Tasks without `estimate:` whose estimate was measured in earlier runs: how many.
    measured: dict[int, int] = field(default_factory=dict)

    _levels: tuple[list[list[int]], list[int]] | None = field(default=None, repr=False)

    def levels(self) -> tuple[list[int], list[list[int]], list[int]]:
        """(topological order, waves, wave of each task)."""
        if self._levels is None:
            waves, level = dag.generations(self.preds)
            if min(level, default=0) < 0:
                raise ValueError("graph has a cycle")
            self._levels = (waves, level)
        waves, level = self._levels
        return [v for w in waves for v in w], waves, level

    def __post_init__(self) -> None:
        if not self.succs:
            succs: list[list[int]] = [[] for _ in self.ids]
            for v, ps in enumerate(self.preds):
                for p in ps:
                    succs[p].append(v)
            self.succs = succs

    @property
    def n(self) -> int:
        return len(self.ids)

    def conflicts(self) -> dict[int, tuple[int, ...]]:
        """The tasks each task must never run beside (ownership overlaps); sparse."""
        out: dict[int, list[int]] = {}
        for o in self.overlaps:
            out.setdefault(o.a, []).append(o.b)
            out.setdefault(o.b, []).append(o.a)
        return {v: tuple(c) for v, c in out.items()}

    @classmethod
    def from_workflow(
        cls, wf: Workflow, measured: Mapping[str, tuple[float, int]] | None = None
    ) -> TaskGraph:
        """`measured`: (seconds, runs) of tasks without `estimate:`, from earlier runs
        (plan/history.py); such a task counts as that, not as the default."""
        with paused_gc():
            return cls._build(wf, measured or {})

    @classmethod
    def _build(cls, wf: Workflow, measured: Mapping[str, tuple[float, int]]) -> TaskGraph:
        tasks = list(wf.tasks.values())
        ids = list(wf.tasks)
        index = {tid: i for i, tid in enumerate(ids)}
        cached = wf._dependency_levels
        preds: list[list[int]] = cached[0] if cached else []
        full: list[list[int]] = list(preds)
        signal_waits: dict[tuple[int, int], str] = {}
        for v, task in enumerate(tasks):
            if cached and ":" not in "".join(task.needs):
                continue  # no signal waits: the validator's preds are the whole story
            f = [index[n] for n in task.needs if ":" not in n]
            p = [index[n.partition(":")[0]] for n in task.needs]
            for n in task.needs:
                dep, _, signal = n.partition(":")
                if signal and index[dep] not in f:
                    signal_waits[(index[dep], v)] = signal
            p = list(dict.fromkeys(p))
            f = list(dict.fromkeys(f))
            if cached:
                full[v] = f
            else:
                preds.append(p)
                full.append(f)
        estimates = [t.estimate for t in tasks]
        found: dict[int, int] = {}
        if measured:
            for v, tid in enumerate(ids):
                if tid in measured and not own_estimate(wf, tasks[v]):
                    estimates[v], found[v] = measured[tid]
        estimated = [e is not None for e in estimates]
        estimate = [DEFAULT_ESTIMATE_S if e is None else e for e in estimates]

        res_index: dict[str, int] = {}
        capacity: list[int] = []

        def resource(name: str, cap: int) -> int:
            if name not in res_index:
                res_index[name] = len(capacity)
                capacity.append(cap)
            return res_index[name]

        no_uses: tuple[int, ...] = ()
        uses = [no_uses] * len(tasks)
        for v, task in enumerate(tasks):
            took: list[int] = []
            if task.pools:
                took += [resource("pool:" + x, wf.pools[x]) for x in dict.fromkeys(task.pools)]
            if task.locks:
                took += [resource("lock:" + x, 1) for x in dict.fromkeys(task.locks)]
            if task.run is None and task.agent is not None:
                limit = wf.agents[task.agent].max_instances
                if limit is not None:
                    took.append(resource("agent:" + task.agent, limit))
            if took:
                uses[v] = tuple(took)
        graph = cls(
            ids, preds, full, estimate, estimated, list(res_index), capacity, uses, [], signal_waits
        )
        graph.measured = found
        if cached:
            graph._levels = (cached[1], cached[2])
        owns = [t.owns for t in tasks]
        if any(owns):
            graph.overlaps = [
                Overlap(a, b, pats)
                for a, b, pats in overlapping_pairs(owns)
                if not graph.ordered(a, b)
            ]
        return graph

    def ordered(self, a: int, b: int) -> bool:
        """Whether one of a, b finishes before the other starts, by whole dependencies."""
        return self._reaches(a, b) or self._reaches(b, a)

    def _reaches(self, src: int, dst: int) -> bool:
        # Does dst (transitively) wholly need src?
        stack, seen = [dst], {dst}
        while stack:
            v = stack.pop()
            for p in self.full_preds[v]:
                if p == src:
                    return True
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return False


def bottom_levels(
    succs: Sequence[Sequence[int]], duration: Sequence[float], order: Sequence[int]
) -> list[float]:
    """Longest path from each task to the end, its own duration included (its priority)."""
    level = [0.0] * len(duration)
    get = level.__getitem__
    for v in reversed(order):
        ss = succs[v]
        level[v] = duration[v] + (max(map(get, ss)) if ss else 0.0)
    return level
