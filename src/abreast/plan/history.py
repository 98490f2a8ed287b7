"""Estimates measured in earlier runs: for a task without `estimate:`, how long it took.

A task without an estimate counted as one minute, however long it had taken every time
before: the run's priorities (longest remaining work first) and `analyze` went by a
guess the journal could correct. Now such a task counts as the median time of its
succeeded attempt in the most recent runs of the same workflow (its `name:`) in the same
project where it succeeded, up to `RUNS` of them; so does one whose estimate is the
blanket one of `defaults:`. The journal is read, never written: nothing is created
where there is none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from abreast.coord.location import StateLocation
    from abreast.spec.model import Task, Workflow

RUNS = 5  # the most recent runs a task succeeded in that its estimate is the median of
_LOOK_BACK = 20  # runs of the workflow read for them


def measured(
    journal: Path, workflow: str, root: str, tasks: Iterable[str]
) -> dict[str, tuple[float, int]]:
    """task id -> (median seconds, how many runs), for each of `tasks` that succeeded in
    one of the latest runs of `workflow` in project `root`; {} without a journal."""
    wanted = set(tasks)
    # What an attempt waited for a lock inside its command (`abreast lock tests -- ...`)
    # was no work of its: one at a time, it would not have waited (a run's summary has
    # those waits, by attempt).
    rows = _read(
        journal,
        "SELECT r.started_at, t.task_id, a.wall_s, json_extract(r.summary, '$.lock_waits.'"
        " || json_quote(t.task_id || '.' || a.attempt)) FROM runs r"
        " JOIN tasks t ON t.run_id = r.id"
        " JOIN attempts a ON a.run_id = t.run_id AND a.task_id = t.task_id"
        " AND a.attempt = t.attempts WHERE t.state = 'succeeded' AND a.wall_s IS NOT NULL"
        " AND r.id IN (SELECT id FROM runs WHERE workflow = ? AND root = ?"
        " AND finished_at IS NOT NULL ORDER BY started_at DESC LIMIT ?)",
        (workflow, root, _LOOK_BACK),
    )
    times: dict[str, list[tuple[float, float]]] = {}
    for started_at, task_id, wall_s, waited in rows:
        if task_id in wanted:
            work = max(0.0, float(wall_s) - float(waited or 0.0))
            times.setdefault(task_id, []).append((-started_at, work))
    out = {}
    for task_id, found in times.items():
        latest = [s for _, s in sorted(found)[:RUNS]]
        out[task_id] = (_median(latest), len(latest))
    return out


def checks_sha(wf: Workflow) -> str | None:
    """A fingerprint of the merge checks' commands (not the commands: they may hold a
    secret), journaled with a run; None without checks."""
    if not wf.checks:
        return None
    import hashlib

    said = json.dumps([[c.run, c.shell, c.retries] for c in wf.checks])
    return hashlib.sha256(said.encode()).hexdigest()[:16]


def check_time(journal: Path, wf: Workflow, root: str) -> tuple[float, int] | None:
    """(median seconds of one run of the merge checks, how many runs it is measured in):
    the check runs in the latest `RUNS` runs of the workflow in project `root` that
    checked merges with the same checks. None without any."""
    sha = checks_sha(wf)
    if sha is None:
        return None
    rows = _read(
        journal,
        "SELECT r.started_at, r.id, json_extract(e.data, '$.check_s') FROM runs r"
        " JOIN events e ON e.run_id = r.id"
        " WHERE e.type IN ('merge.checked', 'merge.checks_failed', 'merge.batch_failed')"
        " AND json_extract(e.data, '$.check_s') > 0"
        " AND r.id IN (SELECT id FROM runs WHERE workflow = ? AND root = ?"
        " AND json_extract(options, '$.checks_sha') = ?"
        " AND finished_at IS NOT NULL ORDER BY started_at DESC LIMIT ?)",
        (wf.name, root, sha, _LOOK_BACK),
    )
    latest = sorted({(-started, run) for started, run, _ in rows})[:RUNS]
    kept = {run for _, run in latest}
    times = [float(s) for _, run, s in rows if run in kept]
    return (_median(times), len(kept)) if times else None


def _median(values: list[float]) -> float:
    ordered, n = sorted(values), len(values)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _read(journal: Path, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
    """The rows of `sql` on the journal, opened read-only; none without one, or from a
    journal of an older schema, or one being written."""
    if not journal.is_file():
        return []
    try:
        db = sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return []
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def for_workflow(wf: Workflow, location: StateLocation) -> dict[str, tuple[float, int]]:
    """`measured` for the tasks of `wf` that give no estimate of their own (none, or the
    one of `defaults`), from the project's journal."""
    tasks = [tid for tid, t in wf.tasks.items() if not own_estimate(wf, t)]
    if not tasks:
        return {}
    return measured(location.journal, wf.name, str(location.root), tasks)


def own_estimate(wf: Workflow, task: Task) -> bool:
    """Whether `task` gives an estimate of its own, which a measured one never replaces.
    One equal to `defaults`' is taken for that one, a blanket guess (the merged file
    cannot tell them apart)."""
    return task.estimate is not None and task.estimate != wf.defaults.estimate
