"""A run as the journal records it, shaped for people: the dashboard and the report."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from abreast.coord.journal import AttemptRow, EventRow, Journal, RunRow, TaskRow
from abreast.engine.lookup import orchestrator_alive
from abreast.executor.exits import recorded_exits
from abreast.executor.logs import (
    TAIL_HEADING,
    log_tail,
    mask_keys,
    prompt_file,
    telling_line,
    with_last_line,
)
from abreast.executor.process import describe_status
from abreast.spec.durations import listed

MERGE_EVENTS = (
    "merge.queued",
    "merge.checking",
    "merge.waiting",
    "merge.landed",
    "merge.conflict",
    "merge.checks_failed",
    "merge.checked",
    "merge.sent_back",
    "merge.landing",
)


# Events that carry a warning the run said (and its summary repeated), in `warning`.
WARNING_EVENTS = (
    "run.warning",
    "task.signal_missed",
    "api.failed",  # the first of a key pool's requests that could not reach its upstream
    "containment.violation",
    "memory.leak_suspected",
    "work.left_out",
    "check.flaky",
    "check.wrote",
    "merge.conflict",  # only the first with files both sides only added lines to
    "result.restored",  # the integration branch put back while the run ran
)


def warnings(journal: Journal, run_id: str) -> list[tuple[str | None, str]]:
    """(the task, or None, and what was said) of each warning the run said, in order."""
    return [
        (e.task_id, str(e.data["warning"]))
        for e in journal.events(run_id, types=WARNING_EVENTS)
        if e.data.get("warning")
    ]


def retries_due(journal: Journal, run_id: str) -> dict[str, float]:
    """Task -> when its next attempt is due, by its last `task.retrying` (when, and the
    wait): of a task sent back, while it waits."""
    events = journal.events(run_id, types=("task.retrying",))
    return {e.task_id: e.ts + float(e.data.get("delay_s", 0)) for e in events if e.task_id}


def time_left(
    plan: dict[str, Any] | None,
    tasks: list[TaskRow],
    attempts: list[AttemptRow],
    retries: dict[str, float] | None = None,
) -> float | None:
    """What the live view says of a running run's time left (`eta`), from the plan kept
    with it: None where an unfinished task's estimate is the default's guess, or the run
    is of an abreast that kept no such plan. `retries` (`retries_due`): a task waiting for
    its next attempt counts the wait too."""
    from abreast.engine.states import TERMINAL, TaskState
    from abreast.eta import time_left as eta

    if not plan or "assumed" not in plan:
        return None
    estimates, assumed = plan["estimates"], set(plan["assumed"])
    skipped = set(plan.get("skipped", ()))  # by the flags alone: they will take no time
    started: dict[str, float] = {}
    for a in attempts:  # the latest attempt's start, per task
        if a.started_at is not None:
            started[a.task_id] = max(started.get(a.task_id, 0.0), a.started_at)
    index = {t.task_id: v for v, t in enumerate(tasks)}
    left = [0.0] * len(tasks)
    landing = [False] * len(tasks)  # its work still to pass the merge checks
    now = time.time()
    for v, t in enumerate(tasks):
        if TaskState(t.state) in TERMINAL or t.task_id in skipped:
            continue
        landing[v] = True
        if t.state == "integrating":
            continue
        if t.task_id in assumed or t.task_id not in estimates:
            return None
        est = float(estimates[t.task_id])
        if t.state == "running" and t.task_id in started:
            est = max(0.0, est - (now - started[t.task_id]))
        elif t.state == "pending" and t.attempts and retries and t.task_id in retries:
            est += max(0.0, retries[t.task_id] - now)
        left[v] = est
    succs: list[list[int]] = [[] for _ in tasks]
    for x, y in plan.get("edges", []):
        if x in index and y in index:
            succs[index[x]].append(index[y])
    # The plan's waves are a topological order already.
    order = [index[t] for wave in plan.get("waves", []) for t in wave if t in index]
    checks, batch = float(plan.get("check_s") or 0.0), int(plan.get("merge_batch") or 1)
    return eta(left, succs, order, int(plan.get("max_parallel") or 1), landing, checks, batch)


def with_last_words(journal: Journal, a: AttemptRow, masked: set[str]) -> str | None:
    """Why attempt `a` ended, in a line: one that failed with an exit status says its
    log's telling last line too (`exit 1: connection refused`), as the run said it then
    (`masked`: `leased_fingerprints`, for a log a crash left unscrubbed)."""
    line = first_line(a.reason)
    if line and a.state == "failed" and line.startswith("exit "):  # (its log read only then)
        return with_last_line(line, [mask_keys(x, masked) for x in log_tail(log_of(journal, a))])
    return line


def log_of(journal: Journal, a: AttemptRow) -> str | None:
    """Where attempt `a`'s log is: where it was written, or, when the project (its
    `.abreast/` with it) was moved or renamed since, the same file under the journal's
    directory now."""
    return _found(journal, a, a.log, "logs")


def prompt_of(journal: Journal, a: AttemptRow) -> str | None:
    """Where the prompt attempt `a` was given is kept (beside its output), as `log_of`."""
    return _found(journal, a, a.output_file and prompt_file(a.output_file), "outputs")


def check_log_of(journal: Journal, a: AttemptRow) -> str | None:
    """Where the log of attempt `a`'s red merge check is (as `log_of`); None when none of
    its checks was red."""
    logs = [
        str(e.data.get("log") or "")
        for e in journal.events(a.run_id, types=("merge.checks_failed",))
        if e.task_id == a.task_id and e.data.get("attempt") == a.attempt
    ]
    return _found(journal, a, logs[-1], "checks") if logs and logs[-1] else None


def _found(journal: Journal, a: AttemptRow, path: str | None, folder: str) -> str | None:
    if not path or os.path.isdir(os.path.dirname(path)):
        return path
    moved = os.path.join(
        os.path.dirname(journal.path), "runs", a.run_id, folder, os.path.basename(path)
    )
    return moved if os.path.exists(moved) else path


def headline(reason: str | None) -> str:
    """The first line of a reason or feedback, for views of one line per task. A first line
    that ends in ":" (a list follows: the files a task wrote outside its worktree, ...)
    takes the list's first item, so that it says something; feedback with the end of the
    attempt's log (`exit 1`, then its last lines) takes the log's last line."""
    if not reason:
        return ""
    lines = reason.splitlines()
    line = lines[0]
    if line.endswith(":") and len(lines) > 1 and lines[1].strip():
        items = 1  # the list: its lines indented as the first is (a note may follow)
        indent = lines[1][: len(lines[1]) - len(lines[1].lstrip())]
        while indent and items < len(lines) - 1 and lines[items + 1].startswith(indent):
            items += 1
        line += " " + lines[1].strip() + (f" (+{items - 1} more)" if items > 1 else "")
    elif TAIL_HEADING in lines[1:]:
        told = telling_line(lines[lines.index(TAIL_HEADING) + 1 :])
        if told:
            line += f": {told}"
    return line


_QUOTED = re.compile(r"`([^`]+)`")


def fitted(line: str, width: int) -> str:
    """`line` in at most `width` characters, for a table's column: a command quoted in it
    (check `pytest tests/ -x ...` failed (exit 1): 2 failed) is shortened first, so that
    what follows it, the telling part, stays; then the end is cut."""
    if len(line) <= width:
        return line
    quoted = _QUOTED.search(line)
    if quoted:
        over = len(line) - width
        text = quoted.group(1)
        keep = max(8, len(text) - over - 1)
        if keep < len(text):
            line = f"{line[: quoted.start(1)]}{text[:keep]}\u2026{line[quoted.end(1) :]}"
    return line if len(line) <= width else line[: width - 1] + "\u2026"


def first_line(reason: str | None, limit: int = 300) -> str | None:
    """Why an attempt or task ended as it did, in one line (for tooltips and tables)."""
    if not reason:
        return None
    line = headline(reason)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class LockWait:
    """A task's attempt waiting for a lock, with `abreast lock NAME -- CMD` in its
    command: time it ran and did no work."""

    task: str
    attempt: int
    lock: str
    since: float  # Unix seconds
    wait_s: float
    granted: bool  # else it gave up (--timeout), or its attempt ended as it waited:
    cut_short: bool = False  # killed (its timeout, a cancel), or it died


@dataclass(frozen=True)
class OpenWait:
    """A task's attempt waiting for a lock now: `lock.waiting` with no grant or timeout
    after it, in an attempt that has not ended."""

    task: str
    attempt: int
    lock: str
    since: float  # Unix seconds
    held_by: str  # who held the lock as the wait began


def lock_waits(journal: Journal, run_id: str) -> list[LockWait]:
    """The run's tasks' waits for locks inside their attempts (not a merge check's; not
    before an attempt starts, as for `locks:`, which the scheduler plans for)."""
    return _lock_waits(journal, run_id)[0]


def open_waits(journal: Journal, run_id: str) -> list[OpenWait]:
    """Waits for locks inside attempts that go on now (no grant or timeout, and the
    attempt has not ended)."""
    return _lock_waits(journal, run_id)[1]


def _lock_waits(journal: Journal, run_id: str) -> tuple[list[LockWait], list[OpenWait]]:
    """(the waits that ended: by a grant, a timeout, or their attempt's end; those that
    go on). An attempt killed as it waits (its timeout, a cancel, SIGKILL) journals
    neither grant nor timeout: its wait ends with it, and was no work either."""
    done, began = [], {}
    types = ("lock.waiting", "lock.granted", "lock.timeout")
    for e in journal.events(run_id, types=types):
        d = e.data
        if d.get("source") != "abreast lock" or e.task_id is None or "attempt" not in d:
            continue  # journaled before waits said their attempt (or no task's)
        key = (e.task_id, int(d["attempt"]), str(d["lock"]), d.get("since"))
        if e.type == "lock.waiting":
            began[key] = OpenWait(*key[:3], float(d["since"]), str(d.get("held_by") or ""))
            continue
        began.pop(key, None)
        wait = float(d.get("wait_s") or 0.0)
        if wait > 0:
            since = float(d.get("since", e.ts - wait))
            done.append(LockWait(*key[:3], since, wait, e.type == "lock.granted"))
    if began:  # the attempts of the few tasks still waiting, not the run's every one
        ended = {
            (a.task_id, a.attempt): a.ended_at
            for task in {w.task for w in began.values()}
            for a in journal.attempts(run_id, task)
            if a.ended_at is not None
        }
        for key, w in list(began.items()):
            end = ended.get((w.task, w.attempt))
            if end is not None:
                del began[key]
                if end > w.since:
                    done.append(LockWait(*key[:3], w.since, end - w.since, False, True))
        done.sort(key=lambda w: w.since)
    return done, list(began.values())


def ready_waits(journal: Journal, run_id: str) -> dict[str, str]:
    """Why each ready task did not start, as the run last journaled it (`run.waiting`,
    at its heartbeat): `pool 'db' full`, `all 4 slots busy`."""
    said = journal.events(run_id, types=("run.waiting",))
    return {str(k): str(v) for k, v in (said[-1].data.get("tasks") or {}).items()} if said else {}


def waited_s(waits: list[LockWait]) -> dict[str, float]:
    """Each task's seconds waiting for locks in its attempts."""
    out: dict[str, float] = {}
    for w in waits:
        out[w.task] = out.get(w.task, 0.0) + w.wait_s
    return out


@dataclass
class RunData:
    run: RunRow
    tasks: list[TaskRow]
    attempts: list[AttemptRow]
    plan: dict[str, Any] | None
    signals: dict[tuple[str, str], float] = field(default_factory=dict)  # -> when given
    waits: list[LockWait] = field(default_factory=list)  # for locks, inside attempts
    waiting: list[OpenWait] = field(default_factory=list)  # ... not ended (see OpenWait)
    until: float | None = None  # interrupted: until when it was at work (else now or its end)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in (self.plan or {}).get("edges", [])]

    def wall_s(self) -> float:
        end = self.run.finished_at or self.until or time.time()
        return self.run.active_s(self.run.started_at, end)

    def busy_s(self) -> float:
        """The seconds its tasks worked: their attempts' time, less what they waited for
        locks (one at a time, they would not wait for each other)."""
        return sum(a.wall_s or 0.0 for a in self.attempts) - sum(w.wait_s for w in self.waits)

    def task_elapsed(self) -> dict[str, float]:
        """Each task's actual time: from its first start to its end (retries and merging
        included)."""
        now = self.until or time.time()
        out = {}
        for t in self.tasks:
            if t.started_at is not None:
                out[t.task_id] = self.run.active_s(t.started_at, t.finished_at or now)
            else:
                out[t.task_id] = 0.0
        return out

    def actual_critical_path(self) -> tuple[list[str], float]:
        """What the run waited on, as it happened: from the task that ended last, back
        through the dependency each task was released by last (its end; for `needs:
        [x:signal]`, the signal), to a task that waited on none; and the time from that
        first task's start to the last one's end. Never longer than the run, whatever
        waited for slots, retried, or started on a signal; a task that did not run (skipped)
        is passed through, not named."""
        now = time.time()
        start = {t.task_id: t.started_at for t in self.tasks}
        end = {t.task_id: t.finished_at or (now if t.started_at else None) for t in self.tasks}
        waits = {(x, y): s for x, y, s in (self.plan or {}).get("signal_edges", [])}
        preds: dict[str, list[str]] = {}
        for x, y in self.edges:
            preds.setdefault(y, []).append(x)

        def released(dep: str, task: str) -> float | None:
            signal = waits.get((dep, task))
            at = self.signals.get((dep, signal)) if signal else None
            return at if at is not None else end.get(dep)

        ran = [tid for tid, s in start.items() if s is not None]
        if not ran:
            return [], 0.0
        last = max(ran, key=lambda tid: end[tid] or 0.0)
        path, cur, seen = [last], last, {last}
        while True:
            options = [(at, d) for d in preds.get(cur, []) if (at := released(d, cur)) is not None]
            if not options:
                break
            cur = max(options)[1]
            if cur in seen:  # a plan not of this run's tasks: stop rather than loop
                break
            seen.add(cur)
            if start.get(cur) is not None:
                path.append(cur)
        path.reverse()
        return path, self.run.active_s(start[path[0]] or now, end[last] or now)

    def estimated_critical_path(self) -> tuple[list[str], float]:
        plan = self.plan or {}
        return list(plan.get("critical_path", [])), float(plan.get("critical_path_s", 0.0))


# Where the merge queue journals how long checking a merge took (`check_s`).
CHECK_EVENTS = ("merge.checked", "merge.checks_failed", "merge.batch_failed")


def sequential_said(checks_s: float, waited_s: float, fmt: Callable[[float], str]) -> str:
    """` (its merge checks 40s of it; 12s the tasks waited for locks left out)`, after
    what the tasks one at a time would take; "" when there was neither to count."""
    parts = [f"its merge checks {fmt(checks_s)} of it"] if checks_s >= 0.0005 else []
    if waited_s >= 0.0005:
        parts.append(f"{fmt(waited_s)} the tasks waited for locks left out")
    return f" ({'; '.join(parts)})" if parts else ""


def checks_s(journal: Journal, run_id: str) -> float:
    """Seconds the run's merge checks ran (their lock waits aside): time a run of its tasks
    one at a time would spend too, each task's work checked before the next."""
    return sum(
        float(e.data.get("check_s") or 0.0) for e in journal.events(run_id, types=CHECK_EVENTS)
    )


NO_END_RECORDED = "no end recorded: `abreast resume` stops it if it still runs, and runs it again"


def ended_note(code: int) -> str:
    """What an attempt of an interrupted run that ended after its orchestrator died is."""
    return (
        f"{describe_status(code, None)} while abreast was down; `abreast resume` takes its result"
    )


# (task, attempt) -> (exit status, started, ended: None where the line has no time here)
EndedWhileDown = dict[tuple[str, int], tuple[int, float | None, float | None]]


def ended_while_down(journal: Journal, run_id: str) -> EndedWhileDown:
    """The attempts of an interrupted run that ended after its orchestrator died, as their
    shells recorded it (what `abreast resume` will take): (status, started, ended) by
    (task, attempt)."""
    open_ = [a for a in journal.attempts(run_id) if a.ended_at is None and a.status_file]
    out = {}
    for exits_file in {a.status_file for a in open_}:
        ended = recorded_exits(exits_file)
        for a in open_:
            e = ended.get(f"{a.task_id}.{a.attempt}")
            if a.status_file == exits_file and e is not None and not e.stopped_by_shutdown:
                out[(a.task_id, a.attempt)] = (e.status, a.started_at, e.ended_at)
    return out


def interrupted_until(
    journal: Journal,
    row: RunRow,
    down: EndedWhileDown | None = None,
) -> float:
    """Until when an interrupted run was at work: when its orchestrator was last seen at
    it, or the last of its attempts that ended after it died (`down`, if read already)."""
    down = ended_while_down(journal, row.id) if down is None else down
    return max([journal.last_alive(row), *(e[2] for e in down.values() if e[2] is not None)])


def load(journal: Journal, run_id: str, attempts: bool = True) -> RunData | None:
    """The run as journaled; `attempts=False` leaves its attempts out (an empty list)."""
    run = journal.run(run_id)
    if run is None:
        return None
    tries = journal.attempts(run_id) if attempts else []
    plan = run.options.get("plan")
    signals = journal.signal_times(run_id) if plan and plan.get("signal_edges") else {}
    waits, waiting = _lock_waits(journal, run_id) if attempts else ([], [])
    data = RunData(run, journal.tasks(run_id), tries, plan, signals, waits, waiting)
    if attempts and run.state == "running" and not orchestrator_alive(run):
        _as_interrupted(journal, data)
    return data


def _as_interrupted(journal: Journal, data: RunData) -> None:
    """An interrupted run as `status` says it: its attempts that ran on after the
    orchestrator died and ended are `ended` (when, how and how long they took, from the
    exits file), the tasks of those `ended`, the others `running` with no end recorded,
    and the run at work until the last of those ends (not until now)."""
    down = ended_while_down(journal, data.run.id)
    data.until = interrupted_until(journal, data.run, down)
    for i, a in enumerate(data.attempts):
        if a.ended_at is None and (e := down.get((a.task_id, a.attempt))) is not None:
            code, started, end = e
            took = end - started if end is not None and started is not None else None
            data.attempts[i] = dataclasses.replace(
                a, state="ended", ended_at=end, exit_code=code, wall_s=took, reason=ended_note(code)
            )
    data.tasks = interrupted_tasks(data.tasks, down)


def interrupted_tasks(tasks: list[TaskRow], down: EndedWhileDown) -> list[TaskRow]:
    """The tasks of an interrupted run as it is shown: those running whose attempt ended
    after the orchestrator died `ended` (how, when), the others running with no end
    recorded."""
    out = []
    for t in tasks:
        e = down.get((t.task_id, t.attempts)) if t.state == "running" else None
        if t.state != "running":
            out.append(t)
        elif e is None:
            out.append(dataclasses.replace(t, reason=NO_END_RECORDED))
        else:
            out.append(
                dataclasses.replace(
                    t, state="ended", finished_at=e[2], exit_code=e[0], reason=ended_note(e[0])
                )
            )
    return out


def cap_story(journal: Journal, run_id: str) -> dict[str, Any] | None:
    """What the resource monitor did to the run's cap (`run.cap` events): where it
    started, where it is, how low it went and why, how many times it lowered it."""
    caps = journal.events(run_id, types=("run.cap",))
    if not caps:
        return None
    values = [int(e.data.get("cap", 0)) for e in caps]
    low = min(range(len(caps)), key=lambda i: (values[i], -i))  # the latest at the lowest
    asked = int(caps[0].data.get("of", values[0]))  # the run's cap (lowered from the start?)
    return {
        "first": asked,
        "now": values[-1],
        "reason": caps[-1].data.get("reason"),
        "lowest": values[low],
        "lowest_reason": caps[low].data.get("reason"),
        "lowered": sum(b < a for a, b in pairwise([asked, *values])),
    }


def work_changes(journal: Journal, run_id: str) -> dict[str, dict[str, int]]:
    """What each task's work changed (files, lines added, deleted): its latest committed
    attempt's, with worktree isolation (none without)."""
    out = {}
    for ev in journal.events(run_id, types=("work.committed",)):
        if ev.task_id is not None:
            out[ev.task_id] = {k: int(ev.data.get(k, 0)) for k in ("files", "added", "deleted")}
    return out


TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


def token_use(journal: Journal, run_id: str, per: str = "task") -> dict[str, dict[str, int]]:
    """The tokens the run's attempts used, as the provider's answers said through the key
    proxy (api.usage events), by task (`per="pool"`: by key pool); one with none is absent."""
    out: dict[str, dict[str, int]] = {}
    for ev in journal.events(run_id, types=("api.usage",)):
        by = ev.task_id if per == "task" else ev.data.get(per)
        if by is None:
            continue
        sums = out.setdefault(str(by), dict.fromkeys(TOKEN_KINDS, 0))
        for kind in TOKEN_KINDS:
            sums[kind] += int(ev.data.get(kind, 0))
    return out


def count(n: int) -> str:
    """A token count, short: 950, 12.3k, 4.56M."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size * 0.9995:  # (999,600 is 1M, not 1e+03k)
            return f"{n / size:.3g}{unit}"
    return str(n)


def tokens_line(use: dict[str, int]) -> str:
    """`12.3k in, 4.1k out` (and what was read from or written to the provider's cache)."""
    text = f"{count(use['input'])} in, {count(use['output'])} out"
    cached = [
        f"{count(use[kind])} {what}"
        for kind, what in (("cache_read", "read from cache"), ("cache_write", "cached"))
        if use.get(kind)
    ]
    return text + (f" ({', '.join(cached)})" if cached else "")


def attempt_hosts(journal: Journal, run_id: str) -> dict[tuple[str, int], str]:
    """Where each attempt that ran on a Ray node ran (its host), by (task, attempt)."""
    return {
        (str(e.task_id), int(e.data.get("attempt", 0))): str(e.data.get("host"))
        for e in journal.events(run_id, types=("task.ran_on",))
    }


def leased_fingerprints(journal: Journal, run_id: str) -> set[str]:
    """The fingerprints of the keys a run's attempts were leased (direct mode), and of the
    secrets of its tasks' environments (keys/envsecrets.py; those filled in from upstream
    outputs, `secret.masked`): what a live log is masked of
    (`executor.logs.mask_keys`)."""
    row = journal.run(run_id)
    return {
        str(e.data["fingerprint"])
        for e in journal.events(run_id, types=("key.leased", "secret.masked"))
        if e.data.get("fingerprint")
    } | {str(fp) for fp in (row.options.get("masked") or [] if row is not None else [])}


def diff_command(run_id: str, task: str, reason: str | None) -> str:
    """The `abreast diff` that shows a failed task's committed work (only which files, for
    one sent back for writing a key's value into it)."""
    from abreast.integrate.base import KEY_IN_WORK

    names = " --name-only" if reason and reason.startswith(KEY_IN_WORK) else ""
    return f"abreast diff {run_id} {task}{names}"


def failure_lines(
    task: str,
    state: str,
    attempt: int,
    reason: str | None,
    tail: list[str],
    log: str | None,
    diff: str | None = None,
) -> list[str]:
    """One failed task, as the run's summary and `abreast report` show it: the reason
    (a check's output and log included), the end of the task's own log, where that is,
    and (`diff`) the command that shows the work it committed."""
    after = f" after {attempt} attempts" if attempt > 1 else ""
    lines = (reason or "").splitlines() or [""]
    out = [f"  {task} ({state}{after}): {lines[0]}"]
    for line in lines[1:]:
        if line == TAIL_HEADING:
            break  # the engine's copy of the tail below, as it was then
        out.append(f"    {line}")
    if tail:
        out.append("    last lines of the task's log:")
        out += [f"    | {line}" for line in tail]
    if diff:
        out.append(f"    its work: {diff}")
    if log:
        # Nothing to show above because the command wrote nothing (a failing line that
        # prints nothing, such as `false` or a `read` of the empty stdin): said so.
        empty = not tail and os.path.isfile(log) and os.path.getsize(log) == 0
        out.append(f"    task log: {log}{' (empty: the command printed nothing)' if empty else ''}")
    return out


@dataclass(frozen=True)
class FailureView:
    """A failed task as the summary and the report show it (`failure_lines`' arguments)."""

    task: str
    state: str
    attempt: int
    reason: str | None
    tail: tuple[str, ...]
    log: str | None
    diff: str | None = None


FULL_FAILURES = 10  # failures shown whole; those after them, a line each


def failure_groups(failures: Sequence[FailureView]) -> list[list[FailureView]]:
    """The failures, those alike together (the same state, attempts, reason and last lines
    of their logs; one with committed work to show stands alone), in order of the first."""
    groups: dict[tuple[object, ...], list[FailureView]] = {}
    for f in failures:
        key = (f.state, f.attempt, f.reason, f.tail) if f.diff is None else (f.task,)
        groups.setdefault(key, []).append(f)
    return list(groups.values())


def failures_text(failures: Sequence[FailureView], run_id: str) -> list[str]:
    """Every failure, as the run's summary and `abreast report` end: tasks that failed
    alike (the same reason and the same last lines of their logs: sixty agents without
    their API key) as one block naming them all; the first FULL_FAILURES blocks whole,
    the rest a line each (their logs say more), so that a run where everything failed
    does not bury its summary under a thousand lines. A blank line before each block."""
    blocks = failure_groups(failures)
    out: list[str] = []
    for alike in blocks[:FULL_FAILURES]:
        f = alike[0]
        lines = failure_lines(f.task, f.state, f.attempt, f.reason, list(f.tail), f.log, f.diff)
        if len(alike) > 1:
            lines[0] = "  " + named(alike) + lines[0][2 + len(f.task) :]
            lines = [
                "    last lines of each one's log:"
                if x == "    last lines of the task's log:"
                else x
                for x in lines
                if not x.startswith("    task log: ")
            ]
            # After the reason (it may go on for lines: `…, so nothing of it was merged:`
            # and the files) and the log's lines, not inside them.
            lines.append(f"    (the same for these {len(alike)} tasks)")
            if f.log:
                beside = f"{len(alike) - 1} more beside it"
                how = f"`abreast logs {run_id} TASK`"
                lines.append(f"    task logs: {f.log} and {beside} ({how})")
        out += ["", *lines]
    rest = blocks[FULL_FAILURES:]
    if rest:
        many = sum(map(len, rest))
        out += ["", f"  and {many} more, a line each (`abreast logs {run_id} TASK`):"]
    for alike in rest:
        f = alike[0]
        first = next(iter((f.reason or "").splitlines()), "")
        after = f" after {f.attempt} attempts" if f.attempt > 1 else ""
        out.append(f"  {named(alike)} ({f.state}{after}): {first}")
    return out


def named(alike: Sequence[FailureView]) -> str:
    """`a, b, c, d, e and 3 more`: the tasks of a group of failures."""
    return listed([f.task for f in alike], 5)


def changed(c: dict[str, int]) -> str:
    """What a task's work changed, in a few characters: `3 files +120 -4`."""
    return f"{c['files']} file{'' if c['files'] == 1 else 's'} +{c['added']} -{c['deleted']}"


def merge_log(journal: Journal, run_id: str, limit: int = 50) -> list[EventRow]:
    events = journal.events(run_id, types=MERGE_EVENTS)
    return events[-limit:]


# What a merge on the queue is doing, by the latest of its events.
_MERGE_PHASE = {
    "merge.queued": "queued",
    "merge.waiting": "waits for its dependencies to land",
    "merge.checking": "checking",
    "merge.checked": "checked, landing",
    "merge.landing": "landing",
}


def merge_queue_now(
    journal: Journal, run_id: str, integrating: Sequence[str]
) -> list[dict[str, Any]]:
    """The queue as it stands: each task of `integrating` (its work on the merge queue)
    with what its merge is doing and since when (`checking`, in a batch with others)."""
    now: dict[str, tuple[str, float]] = {}
    for e in journal.events(run_id, types=tuple(_MERGE_PHASE)):
        phase = _MERGE_PHASE[e.type]
        if e.type == "merge.waiting" and e.data.get("for_tasks"):
            phase = f"lands after {', '.join(map(str, e.data['for_tasks']))}"
        tasks = e.data.get("tasks") or [e.task_id]
        if e.type == "merge.checking" and len(tasks) > 1:
            phase = f"checking, in a batch of {len(tasks)}"
        for task in tasks:
            now[str(task)] = (phase, e.ts)
    shown = [{"task": t, "phase": now[t][0], "since": now[t][1]} for t in integrating if t in now]
    # What moves first: being checked or landing, then what waits behind it.
    return sorted(
        shown, key=lambda q: (not q["phase"].startswith(("checking", "land")), q["since"])
    )


def saved_phrase(saved_s: float, pct: float, fmt: Callable[[float], str], digits: int = 0) -> str:
    """`saved 12s (40%)`; when the run took longer than its tasks one at a time (tasks so
    short that setting up, merging, checks and waits outweigh the overlap), says so rather
    than `saved 0s`."""
    if saved_s >= 0:
        return f"saved {fmt(saved_s)} ({max(0.0, pct):.{digits}f}%)"
    return (
        f"saved nothing: {fmt(-saved_s)} longer than one at a time (setting tasks up, "
        "landing their work and waiting outweighed running them side by side)"
    )


def carry_on_hint(run_id: str) -> str:
    """The line that says how to carry on a cancelled run (Ctrl-C, `abreast cancel`)."""
    return f"carry on: abreast resume {run_id} (what succeeded stays; the rest runs)"


def retry_hint(run_id: str, failed: int = 1) -> str:
    """The line that says how to run a failed run's `failed` failures again."""
    some = "; --retry TASK for some of them" if failed > 1 else ""
    return (
        f"run again once fixed: abreast resume {run_id} --retry-failed (what failed, and what "
        f"did not run for it; what succeeded stays{some})"
    )
