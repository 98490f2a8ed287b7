"""A run as the journal records it, shaped for people: the dashboard and the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from abreast import dag
from abreast.coord.journal import AttemptRow, EventRow, Journal, RunRow, TaskRow

MERGE_EVENTS = (
    "merge.queued",
    "merge.landed",
    "merge.conflict",
    "merge.checks_failed",
    "merge.checked",
    "merge.sent_back",
    "merge.landing",
)


def first_line(reason: str | None, limit: int = 300) -> str | None:
    """Why an attempt or task ended as it did, in one line (for tooltips and tables)."""
    if not reason:
        return None
    line = reason.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class RunData:
    run: RunRow
    tasks: list[TaskRow]
    attempts: list[AttemptRow]
    plan: dict[str, Any] | None

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in (self.plan or {}).get("edges", [])]

    def wall_s(self) -> float:
        end = self.run.finished_at or time.time()
        return max(0.0, end - self.run.started_at)

    def busy_s(self) -> float:
        return sum(a.wall_s or 0.0 for a in self.attempts)

    def task_elapsed(self) -> dict[str, float]:
        """Each task's actual time: from its first start to its end (retries and merging
        included)."""
        now = time.time()
        out = {}
        for t in self.tasks:
            if t.started_at is not None:
                out[t.task_id] = max(0.0, (t.finished_at or now) - t.started_at)
            else:
                out[t.task_id] = 0.0
        return out

    def actual_critical_path(self) -> tuple[list[str], float]:
        """The longest chain of dependencies by actual task times."""
        return longest_path([t.task_id for t in self.tasks], self.edges, self.task_elapsed())

    def estimated_critical_path(self) -> tuple[list[str], float]:
        plan = self.plan or {}
        return list(plan.get("critical_path", [])), float(plan.get("critical_path_s", 0.0))


def load(journal: Journal, run_id: str, attempts: bool = True) -> RunData | None:
    """The run as journaled; `attempts=False` leaves its attempts out (an empty list)."""
    run = journal.run(run_id)
    if run is None:
        return None
    tries = journal.attempts(run_id) if attempts else []
    return RunData(run, journal.tasks(run_id), tries, run.options.get("plan"))


def longest_path(
    ids: list[str], edges: list[tuple[str, str]], weight: dict[str, float]
) -> tuple[list[str], float]:
    index = {tid: i for i, tid in enumerate(ids)}
    preds: list[list[int]] = [[] for _ in ids]
    for a, b in edges:
        if a in index and b in index:
            preds[index[b]].append(index[a])
    waves, level = dag.generations(preds)
    if min(level, default=0) < 0:
        return [], 0.0
    best = [0.0] * len(ids)
    prev = [-1] * len(ids)
    for v in (v for w in waves for v in w):
        base, via = 0.0, -1
        for p in preds[v]:
            if best[p] > base:
                base, via = best[p], p
        best[v] = base + weight.get(ids[v], 0.0)
        prev[v] = via
    if not ids:
        return [], 0.0
    v = max(range(len(ids)), key=lambda i: best[i])
    total = best[v]
    path = []
    while v >= 0:
        path.append(ids[v])
        v = prev[v]
    return path[::-1], total


def merge_log(journal: Journal, run_id: str, limit: int = 50) -> list[EventRow]:
    events = journal.events(run_id, types=MERGE_EVENTS)
    return events[-limit:]
