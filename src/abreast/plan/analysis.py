"""`abreast analyze`: everything the plan says about a workflow, before running anything."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from abreast.errors import SpecError, SpecProblem
from abreast.gcpause import paused_gc
from abreast.plan.dispatch import Policy, simulate
from abreast.plan.graph import TaskGraph, bottom_levels
from abreast.plan.ownership import nesting_example
from abreast.spec import conditions
from abreast.spec.model import Scalar, Workflow

_EPS = 1e-9


class TaskPlan(NamedTuple):
    id: str
    wave: int
    estimate_s: float
    estimated: bool  # False: no estimate was given, the default was assumed
    earliest_start_s: float
    slack_s: float
    critical: bool
    skipped: bool
    conditional: bool  # its `when:` reads outputs, so only the run can tell
    start_s: float  # in abreast's simulated schedule
    finish_s: float
    # The estimate's source: "given" (in the file), "measured" (the median of its time in
    # the latest runs it succeeded in: `measured_runs` of them) or "assumed" (the default).
    estimate_source: str
    measured_runs: int


@dataclass(frozen=True)
class Estimates:
    sequential_s: float
    groups_s: float
    scheduled_s: float
    critical_path_s: float
    saved_s: float
    saved_pct: float


@dataclass(frozen=True)
class MergeChecks:
    """The checks each task's work passes on its merge before it lands, one merge (or
    batch) at a time, and what they take: not in the estimates, which count the tasks."""

    names: list[str]
    merges: int  # tasks that run (not skipped): each one's work is checked on its merge
    batch: int  # `merge.batch`: up to this many merges checked at once
    each_s: float | None  # one run of the checks: the median of earlier runs'; None: unknown
    measured_runs: int  # the runs `each_s` was measured in

    @property
    def total_s(self) -> float | None:
        """The checks' time for all the merges, one after another (as few batches as can
        be), when each task's work changes files and passes at once."""
        if self.each_s is None:
            return None
        return math.ceil(self.merges / self.batch) * self.each_s

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": self.names,
            "merges": self.merges,
            "batch": self.batch,
            "each_s": self.each_s,
            "measured_runs": self.measured_runs,
            "total_s": self.total_s,
        }


@dataclass
class Analysis:
    workflow: str
    max_parallel: int
    flags: dict[str, Scalar]
    tasks: list[TaskPlan]
    waves: list[list[str]]
    critical_path: list[str]
    estimates: Estimates
    overlaps: list[tuple[tuple[str, str], tuple[str, ...]]]
    skipped: list[str]
    conditional: list[str]
    policy: Policy
    graph: TaskGraph = field(repr=False)
    limits: dict[str, int] = field(default_factory=dict)  # resource -> capacity, where shared
    # (a, b) -> a path like `b.txt/a.txt`, where two tasks' owns meet only through a
    # plain name taken as a directory (see ownership.nesting_example)
    overlap_via: dict[tuple[str, str], str] = field(default_factory=dict)
    merge_checks: MergeChecks | None = None  # with `checks:`, unless `isolation: none`
    # lock -> the tasks whose commands take it with `abreast lock NAME` (not planned for)
    locks_inside: dict[str, list[str]] = field(default_factory=dict)
    # lock -> who else holds it for a while: tasks by `locks:`, "merge checks" by `lock:`
    locks_held: dict[str, list[str]] = field(default_factory=dict)
    # (reviewer, the task it may send back, its max_rounds): time the estimates leave out
    reviews: list[tuple[str, str, int]] = field(default_factory=list)

    def contended_inside(self) -> dict[str, list[str]]:
        """The locks taken inside commands that someone else in the workflow takes too:
        there a task waits, running, for part of its time, which the schedule leaves out."""
        return {
            name: tasks
            for name, tasks in self.locks_inside.items()
            if len(tasks) + len(self.locks_held.get(name, [])) > 1
        }

    @property
    def edges(self) -> list[tuple[str, str, str | None]]:
        """Every dependency as (dep, task, signal or None), in file order."""
        g = self.graph
        ids, waits = g.ids, g.signal_waits
        return [
            (ids[p], ids[v], waits.get((p, v)) if waits else None)
            for v in range(g.n)
            for p in g.preds[v]
        ]

    def start_order(self) -> list[str]:
        """Task ids in the order the simulated schedule starts them (skipped ones left out)."""
        live = [t for t in self.tasks if not t.skipped]
        return [t.id for t in sorted(live, key=lambda t: (t.start_s, -t.finish_s + t.start_s))]

    def to_json(self) -> dict[str, Any]:
        e = self.estimates
        return {
            "workflow": self.workflow,
            "max_parallel": self.max_parallel,
            "flags": self.flags,
            "policy": self.policy.value,
            "tasks": [dict(zip(TaskPlan._fields, t, strict=True)) for t in self.tasks],
            "waves": self.waves,
            "critical_path": self.critical_path,
            "estimates": {
                "sequential_s": e.sequential_s,
                "groups_s": e.groups_s,
                "scheduled_s": e.scheduled_s,
                "critical_path_s": e.critical_path_s,
                "saved_s": e.saved_s,
                "saved_pct": e.saved_pct,
            },
            "overlaps": [
                {
                    "tasks": list(pair),
                    "patterns": list(p),
                    "only_through": self.overlap_via.get(pair),
                }
                for pair, p in self.overlaps
            ],
            "skipped": self.skipped,
            "conditional": self.conditional,
            "edges": [dict(zip(("from", "to", "signal"), e, strict=True)) for e in self.edges],
            "limits": self.limits,
            "merge_checks": self.merge_checks.to_json() if self.merge_checks else None,
            "locks_inside": self.locks_inside,
            "reviews": [
                {"task": task, "sends_back": to, "max_rounds": rounds}
                for task, to, rounds in self.reviews
            ],
        }


def effective_flags(wf: Workflow, overrides: Mapping[str, Scalar] | None) -> dict[str, Scalar]:
    flags = dict(wf.flags)
    flags.update(overrides or {})
    return flags


def skip_decisions(wf: Workflow, flags: Mapping[str, Scalar]) -> tuple[list[bool], list[bool]]:
    """(skipped, conditional) per task: `when:` under these flags, outputs unknown."""
    skipped, conditional = [], []
    problems = []
    for task in wf.tasks.values():
        skip = cond = False
        if task.when is not None:
            expr = conditions.parse(task.when, allow_output=False)
            try:
                skip = not expr.evaluate(flags, outputs=None)
            except conditions.OutputsUnknown:
                cond = True
            except conditions.ConditionError as e:
                problems.append(
                    SpecProblem(
                        f"tasks.{task.id}.when: {task.when!r} fails under "
                        f"flags {dict(flags)!r}: {e}"
                    )
                )
        skipped.append(skip)
        conditional.append(cond)
    if problems:
        raise SpecError(wf.source or wf.name, problems)
    return skipped, conditional


def analyze(
    wf: Workflow,
    *,
    flags: Mapping[str, Scalar] | None = None,
    max_parallel: int | None = None,
    graph: TaskGraph | None = None,
    check_time: tuple[float, int] | None = None,
) -> Analysis:
    """`check_time`: (seconds, runs) of one run of the merge checks, measured in earlier
    runs (plan/history.py)."""
    with paused_gc():
        analysis = _analyze(wf, flags, max_parallel, graph)
    if wf.checks and wf.isolation != "none":
        each, runs = check_time or (None, 0)
        names = [c.name or c.run for c in wf.checks]
        merges = len(analysis.tasks) - len(analysis.skipped)
        analysis.merge_checks = MergeChecks(names, merges, wf.merge.batch, each, runs)
    for tid, task in wf.tasks.items():
        for name in dict.fromkeys(locks_taken(task.run or "")):
            analysis.locks_inside.setdefault(name, []).append(tid)
        for name in task.locks:
            analysis.locks_held.setdefault(name, []).append(tid)
    if wf.isolation != "none":
        for check in wf.checks:
            if check.lock:
                analysis.locks_held.setdefault(check.lock, []).append("merge checks")
    return analysis


_LOCK_CALL = re.compile(r"\babreast\s+lock\s+((?:(?!\s--(?:\s|$)).)*)(?=\s--(?:\s|$))", re.S)
_VALUED = {"--timeout", "--ttl", "--state"}  # `abreast lock`'s options that take a value


def locks_taken(command: str) -> list[str]:
    """The locks a command takes with `abreast lock [OPTIONS] NAME -- CMD`."""
    if "abreast" not in command:  # the common case, without the regular expression
        return []
    names = []
    for call in _LOCK_CALL.finditer(command):
        words = iter(call.group(1).split())
        for word in words:
            if word in _VALUED:
                next(words, None)
            elif not word.startswith("-"):
                names.append(word.strip("'\""))
                break
    return names


def _analyze(
    wf: Workflow,
    flags: Mapping[str, Scalar] | None,
    max_parallel: int | None,
    graph: TaskGraph | None,
) -> Analysis:
    graph = graph or TaskGraph.from_workflow(wf)
    cap = max_parallel or wf.max_parallel
    eff_flags = effective_flags(wf, flags)
    skipped, conditional = skip_decisions(wf, eff_flags)
    n = graph.n
    d = [0.0 if skipped[v] else graph.estimate_s[v] for v in range(n)]
    order, waves, wave = graph.levels()
    succs = graph.succs
    preds = graph.preds

    # Pull-style passes: each task reads its neighbours through C-level max/min.
    earliest = [0.0] * n
    finish_cp = [0.0] * n
    get_finish = finish_cp.__getitem__
    for v in order:
        ps = preds[v]
        e = max(map(get_finish, ps)) if ps else 0.0
        earliest[v] = e
        finish_cp[v] = e + d[v]
    makespan = max(finish_cp, default=0.0)
    latest_start = [0.0] * n
    get_ls = latest_start.__getitem__
    for v in reversed(order):
        ss = succs[v]
        latest_start[v] = (min(map(get_ls, ss)) if ss else makespan) - d[v]
    slack = [ls - es if ls > es else 0.0 for ls, es in zip(latest_start, earliest, strict=True)]
    bottom = bottom_levels(succs, d, order)

    path: list[int] = []
    sources = [v for v in range(n) if not preds[v]]
    if sources:
        v = max(sources, key=lambda u: (bottom[u], -u))
        path.append(v)
        while succs[v]:
            v = max(succs[v], key=lambda u: (bottom[u], -u))
            path.append(v)
    on_path = set(path)

    start, finish = simulate(graph, d, skipped, cap, bottom)
    scheduled = max(finish, default=0.0)
    g_start, g_finish = simulate(graph, d, skipped, cap, bottom, Policy.WAVES, wave)
    groups = max(g_finish, default=0.0)
    policy = Policy.PRIORITY
    if groups + _EPS < scheduled:
        # List scheduling can lose to the level-by-level plan on rare shapes (Graham's
        # anomalies); then the run follows the waves policy, so it is never worse.
        policy, start, finish, scheduled = Policy.WAVES, g_start, g_finish, groups
    sequential = sum(d)
    saved = sequential - scheduled
    ids = graph.ids
    critical = [False] * n
    for v in on_path:
        critical[v] = not skipped[v]
    runs = [graph.measured.get(v, 0) for v in range(n)]
    est_from = [
        "measured" if r else "given" if e else "assumed"
        for r, e in zip(runs, graph.estimated, strict=True)
    ]
    tasks = list(
        map(
            TaskPlan,
            ids,
            wave,
            graph.estimate_s,
            graph.estimated,
            earliest,
            slack,
            critical,
            skipped,
            conditional,
            start,
            finish,
            est_from,
            runs,
        )
    )
    shared = dict(zip(graph.resource_names, graph.capacity, strict=True))
    skipped_ids = {ids[v] for v in range(n) if skipped[v]}
    return Analysis(
        workflow=wf.name,
        max_parallel=cap,
        flags=eff_flags,
        tasks=tasks,
        waves=[[ids[v] for v in w] for w in waves],
        critical_path=[ids[v] for v in path if not skipped[v]],
        estimates=Estimates(
            sequential_s=sequential,
            groups_s=groups,
            scheduled_s=scheduled,
            critical_path_s=makespan,
            saved_s=saved,
            saved_pct=round(100.0 * saved / sequential, 2) if sequential else 0.0,
        ),
        overlaps=[((ids[o.a], ids[o.b]), o.patterns) for o in graph.overlaps],
        skipped=[ids[v] for v in range(n) if skipped[v]],
        conditional=[ids[v] for v in range(n) if conditional[v]],
        policy=policy,
        graph=graph,
        limits=shared,
        overlap_via={
            (ids[o.a], ids[o.b]): via
            for o in graph.overlaps
            if (via := nesting_example(wf.tasks[ids[o.a]].owns, wf.tasks[ids[o.b]].owns))
        },
        reviews=[
            (t.id, t.send_back.to, t.send_back.max_rounds)
            for t in wf.tasks.values()
            if t.send_back is not None and t.id not in skipped_ids
        ],
    )
