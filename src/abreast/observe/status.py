"""`abreast status` and `abreast logs`: reading the journal while or after a run goes."""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from abreast.coord.journal import DRAIN_REQUESTED, AttemptRow, Journal, RunRow, TaskRow
from abreast.engine.lookup import orchestrator_alive
from abreast.engine.states import FAILED_STATES, RUN_ENDED, TERMINAL, TaskState
from abreast.errors import UsageError
from abreast.eta import about
from abreast.executor.logs import KeyMasker, open_regular
from abreast.observe import rundata
from abreast.observe.output import reader_gone
from abreast.spec.durations import format_duration

TASK_ROWS = 40  # a run of more tasks has its states counted and only some tasks listed


WARNINGS_SHOWN = 5  # of a run's warnings, `status RUN` says this many (`report`: all)


def run_state(row: RunRow) -> str:
    """The run's state, saying so when a 'running' run has lost its orchestrator."""
    if row.state == "running" and not orchestrator_alive(row):
        return "interrupted"
    return row.state


def stopping(row: RunRow, state: str) -> str | None:
    """What a running run was asked to do: "draining" (`abreast cancel --drain`),
    "cancelling", or None."""
    if state != "running" or not row.cancel_requested:
        return None
    return "draining" if row.cancel_requested == DRAIN_REQUESTED else "cancelling"


def status_json(journal: Journal, row: RunRow) -> dict[str, Any]:
    state = run_state(row)
    tokens = rundata.token_use(journal, row.id)
    tasks = journal.tasks(row.id)
    if state == "interrupted":  # as the text says it: "ended" where an attempt ran on and did
        tasks = rundata.interrupted_tasks(tasks, rundata.ended_while_down(journal, row.id))
    return {
        "run_id": row.id,
        "workflow": row.workflow,
        "state": state,
        "stopping": stopping(row, state),
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "time_left_s": _time_left(journal, row, tasks) if state == "running" else None,
        "tasks": [
            {
                "id": t.task_id,
                "state": t.state,
                "attempts": t.attempts,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "exit_code": t.exit_code,
                "peak_rss_bytes": t.peak_rss_bytes,
                "reason": t.reason,
                "tokens": tokens.get(t.task_id),  # through the key proxy; else null
            }
            for t in tasks
        ],
        "warnings": [  # what the run said as warnings, as its summary and `report` do
            {"task": task, "text": text} for task, text in rundata.warnings(journal, row.id)
        ],
    }


def _time_left(
    journal: Journal, row: RunRow, tasks: list[TaskRow], retries: dict[str, float] | None = None
) -> float | None:
    """(`retries`: `rundata.retries_due`, when the caller has it already)"""
    if retries is None and _sent_back(tasks):
        retries = rundata.retries_due(journal, row.id)
    return rundata.time_left(row.options.get("plan"), tasks, journal.attempts(row.id), retries)


def _last_words(journal: Journal, run_id: str, tasks: list[TaskRow]) -> dict[str, str]:
    """Task -> why it failed with its log's telling last line (`exit 7: it broke`), of the
    tasks that failed with an exit status, as the run said it then."""
    failed = {
        t.task_id for t in tasks if t.state == "failed" and (t.reason or "").startswith("exit ")
    }
    if not failed:
        return {}
    last: dict[str, AttemptRow] = {}
    for a in journal.attempts(run_id):
        if a.task_id in failed:
            last[a.task_id] = a
    masked = rundata.leased_fingerprints(journal, run_id)
    said = {tid: rundata.with_last_words(journal, a, masked) for tid, a in last.items()}
    return {tid: line for tid, line in said.items() if line}


def _sent_back(tasks: list[TaskRow]) -> bool:
    """Whether a task waits for its next attempt (and `task.retrying` is worth reading)."""
    return any(t.state == "pending" and t.attempts for t in tasks)


def runs_json(journal: Journal) -> list[dict[str, Any]]:
    """Every run of the journal, newest first: `abreast status --all --json`."""
    out = []
    for r in journal.runs(None):
        counts = journal.task_states(r.id)
        out.append(
            {
                "run_id": r.id,
                "workflow": r.workflow,
                "state": run_state(r),
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "tasks": sum(counts.values()),
                "task_states": counts,
            }
        )
    return out


def print_runs(journal: Journal, out: TextIO, limit: int | None = 30) -> None:
    runs = journal.runs(limit)
    if not runs:
        out.write("no runs yet\n")
        return
    width = max(len(r.id) for r in runs)
    out.write(f"{'RUN':<{width}}  {'STATE':<11}  {'STARTED':<19}  {'TOOK':>7}  TASKS\n")
    to_land = results_to_land(runs)
    for r in runs:
        state = run_state(r)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
        out.write(
            f"{r.id:<{width}}  {state:<11}  {started}  "
            f"{format_duration(run_took(journal, r, state)):>7}  "
            f"{tasks_done(journal.task_states(r.id))}"  # one GROUP BY, not every task row
            f"{'; result not landed' if r.id in to_land else ''}\n"
        )
    if to_land:
        last = next(r.id for r in runs if r.id in to_land)
        out.write(
            f"(result not landed: the work is in no branch of yours yet; `abreast land {last}` "
            "brings it in, `abreast diff RUN --all` shows it)\n"
        )


def results_to_land(runs: list[RunRow]) -> set[str]:
    """The runs (with worktrees, ended) whose result branch holds work no branch, tag or
    remote-tracking branch of yours has: to be read and landed, or let go. A git call
    each, in its project; none where git cannot say."""
    from abreast.integrate.base import integration_branch
    from abreast.workspace.cleanup import held_nowhere

    found = set()
    for r in runs:
        if r.options.get("isolation") != "worktree" or run_state(r) not in RUN_ENDED:
            continue
        if not Path(r.root).is_dir():
            continue
        ref = f"refs/heads/{integration_branch(r.id)}"
        with contextlib.suppress(OSError, UsageError):  # git gone, the project moved
            if held_nowhere(Path(r.root), ref):
                found.add(r.id)
    return found


def tasks_done(counts: dict[str, int]) -> str:
    """`12/12 done`, `2/3 done, 1 failed`: a run's tasks, from `Journal.task_states`."""
    done = counts.get("succeeded", 0) + counts.get("skipped", 0)
    failed = counts.get("failed", 0) + counts.get("timed_out", 0)
    return f"{done}/{sum(counts.values())} done" + (f", {failed} failed" if failed else "")


def run_took(
    journal: Journal, row: RunRow, state: str, down: rundata.EndedWhileDown | None = None
) -> float:
    """How long the run has been orchestrated: to its end, to now while it runs, or to
    when its orchestrator was last seen at work when it died (not the time since)."""
    end = row.finished_at or time.time()
    if state == "interrupted":
        end = rundata.interrupted_until(journal, row, down)
    return row.active_s(row.started_at, end)


def print_run(journal: Journal, row: RunRow, out: TextIO) -> None:
    state = run_state(row)
    # An interrupted run: its attempts that ran on after its orchestrator died (read once).
    down = rundata.ended_while_down(journal, row.id) if state == "interrupted" else {}
    took = format_duration(run_took(journal, row, state, down))
    out.write(f"run {row.id} ({row.workflow}): {state}, {took}\n")
    if state == "interrupted":
        out.write(f"  its orchestrator is gone; `abreast resume {row.id}` carries on\n")
    elif (asked := stopping(row, state)) == "draining":
        out.write("  draining (abreast cancel --drain): nothing new starts; what runs finishes\n")
    elif asked == "cancelling":
        out.write("  cancelling: what runs is being stopped\n")
    tasks = journal.tasks(row.id)
    failed = sum(TaskState(t.state) in FAILED_STATES for t in tasks)
    if state == "interrupted":  # its attempts that ran on and ended: `ended`
        tasks = rundata.interrupted_tasks(tasks, down)
    retries = rundata.retries_due(journal, row.id) if _sent_back(tasks) else {}
    left = _time_left(journal, row, tasks, retries) if state == "running" else None
    if left is not None:
        out.write(f"  {about(left)} left, by the estimates\n")
    listed = tasks
    if len(tasks) > TASK_ROWS:  # states counted; listed, only the tasks worth a look
        counts = Counter(t.state for t in tasks)
        out.write(f"  {len(tasks)} tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        out.write("\n")
        listed = sorted((t for t in tasks if not _at_rest(t)), key=_listed_first)
    width = max([len(t.task_id) for t in listed[:TASK_ROWS]] + [4])
    if listed:
        out.write(
            f"  {'TASK':<{width}}  {'STATE':<11}  {'TRIES':>5}  {'TIME':>7}  {'PEAK RSS':>9}  "
            "NOTE\n"
        )
    now = time.time()
    integrating = [t.task_id for t in tasks if t.state == "integrating"]
    merging = (
        {  # what each merge on the queue is doing: checking, queued, lands after ...
            q["task"]: q for q in rundata.merge_queue_now(journal, row.id, integrating)
        }
        if integrating
        else {}
    )
    locked = {  # a running attempt waiting for a lock (`abreast lock` in its command)
        (w.task, w.attempt): w
        for w in (rundata.open_waits(journal, row.id) if state == "running" else [])
    }
    ready = {}  # why ready tasks do not start, as the run last said it
    if state == "running" and any(t.state == "ready" for t in tasks):
        ready = rundata.ready_waits(journal, row.id)
    words = _last_words(journal, row.id, tasks)
    reviewing = {}  # a reviewer waiting for the work it sent back: its last send-back
    if any(t.state == "pending" and t.attempts for t in tasks):
        reviewing = {e.task_id: e.data for e in journal.events(row.id, types=("task.sent_back",))}
    for t in listed[:TASK_ROWS]:
        took = "-"
        if t.started_at:
            took = format_duration(row.active_s(t.started_at, t.finished_at or now))
        rss = f"{t.peak_rss_bytes / 1e6:.1f}MB" if t.peak_rss_bytes else "-"
        note = rundata.fitted(words.get(t.task_id) or rundata.headline(t.reason), 80)
        if t.state == "integrating" and (q := merging.get(t.task_id)):
            note = q["phase"]
            if note.startswith("checking"):
                note += f" ({format_duration(max(0.0, now - q['since']))})"
        elif t.state == "ready" and t.task_id in ready:
            note = rundata.fitted(f"waits: {ready[t.task_id]}", 80)
        elif t.state == "running" and (w := locked.get((t.task_id, t.attempts))):
            took_w = format_duration(max(0.0, now - w.since))
            note = rundata.fitted(
                f"waits for the lock {w.lock} ({took_w}), held by {w.held_by}", 80
            )
        elif (
            t.state == "pending"
            and (sent := reviewing.get(t.task_id))
            and sent.get("attempt") == t.attempts
        ):
            note = (
                f"sent {sent.get('to')}'s work back (round {sent.get('round')} of "
                f"{sent.get('max_rounds')}); reviews it again after"
            )
        elif t.state == "pending" and t.attempts and t.feedback:  # sent back, to run again
            due = retries.get(t.task_id) if state == "running" else None
            when = f"retry in {format_duration(due - now)}" if due and due > now else "sent back"
            note = rundata.fitted(f"{when}: {rundata.headline(t.feedback)}", 80)
        out.write(
            f"  {t.task_id:<{width}}  {t.state:<11}  {t.attempts:>5}  {took:>7}  {rss:>9}  {note}\n"
        )
    if len(listed) < len(tasks) or len(listed) > TASK_ROWS:
        more = len(listed) - TASK_ROWS
        rest = f"{more} more not listed; " if more > 0 else ""
        if len(listed) < len(tasks):
            rest += f"{len(tasks) - len(listed)} succeeded, skipped or not started; "
        out.write(f"  ({rest}`abreast status {row.id} --json` has every task)\n")
    if row.summary and row.summary.get("landing"):
        out.write(f"  {row.summary['landing']}\n")
    warned = [text for _, text in rundata.warnings(journal, row.id)]  # as its summary said
    for text in warned[:WARNINGS_SHOWN]:
        out.write(f"  warning: {text}\n")
    if len(warned) > WARNINGS_SHOWN:
        out.write(f"  ({len(warned) - WARNINGS_SHOWN} more warnings: `abreast report {row.id}`)\n")
    if state == "failed" and failed:
        out.write(f"  {rundata.retry_hint(row.id, failed)}\n")
    elif state == "cancelled":
        out.write(f"  {rundata.carry_on_hint(row.id)}\n")


def _at_rest(t: TaskRow) -> bool:
    """Whether a task of a long table goes unlisted: done, skipped, or yet to run at all."""
    return t.state in ("succeeded", "skipped") or (
        t.state in ("pending", "ready") and not t.attempts
    )


# In a long table: what failed first, then what runs, then what waits on them.
_RANK = {"failed": 0, "timed_out": 0, "running": 1, "integrating": 1}


def _listed_first(t: TaskRow) -> int:
    return _RANK.get(t.state, 2)


def watch_plain(
    journal: Journal, current: Callable[[], RunRow], out: TextIO, every_s: float = 1.0
) -> None:
    """`status --watch` where the output is not a terminal (a pipe, a CI log): the run's
    table each time a task's state or attempt changes, and once more when it ends;
    it stops then, or when the reader goes away."""
    shown = None
    while True:
        row = current()
        state = run_state(row)
        seen = (state, [(t.task_id, t.state, t.attempts) for t in journal.tasks(row.id)])
        if seen != shown:
            if shown is not None:
                out.write("\n")
            print_run(journal, row, out)
            out.flush()
            shown = seen
        if state == "running" and not reader_gone(out):
            time.sleep(every_s)  # a viewer re-reading the journal
            continue
        return


def attempt_prompt(journal: Journal, a: AttemptRow) -> str:
    """The prompt attempt `a` was given, as kept beside its output; a UsageError saying
    why there is none."""
    name = f"attempt {a.attempt} of {a.task_id!r}"
    path = rundata.prompt_of(journal, a)
    if not path:
        raise UsageError(f"{name} has no files of its own to read a prompt from")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(
            f"{name} was given no prompt (its task has none), or it is no longer kept "
            "(`abreast cleanup` removed the run's files; runs before abreast kept prompts "
            "have none)"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot read the prompt of {name}: {e}") from None


def find_attempt(
    journal: Journal,
    run_id: str,
    task_id: str,
    attempt: int | None,
    wait: TextIO | None = None,
    command: str = "logs",
) -> AttemptRow:
    """The task's attempt `attempt`, or its latest. With `wait` (`logs -f`), a task of a
    running run that has not started yet is waited for (said once on `wait`). A task the
    run does not have is refused naming a recent run that has it (for `abreast COMMAND`)."""
    known = {t.task_id for t in journal.tasks(run_id)}
    if task_id not in known:
        import difflib

        close = difflib.get_close_matches(task_id, known, n=1)
        hint = "tasks: " + ", ".join(sorted(known))
        if not close:  # the task of another workflow's run, say, the latest being this one
            other = next(
                (
                    r.id
                    for r in journal.runs(20)
                    if r.id != run_id and any(t.task_id == task_id for t in journal.tasks(r.id))
                ),
                None,
            )
            if other is not None:
                hint = (
                    f"run {other} has a task {task_id!r}: `abreast {command} {other} {task_id}`;"
                    f" the tasks of run {run_id}: " + ", ".join(sorted(known))
                )
        raise UsageError(
            f"run {run_id} has no task {task_id!r}"
            + (f"; did you mean {close[0]!r}?" if close else ""),
            hint=hint,
        )
    attempts = journal.attempts(run_id, task_id)
    if not attempts and wait is not None and attempt is None:
        attempts = _wait_for_start(journal, run_id, task_id, wait)
    if not attempts:
        task = _task_row(journal, run_id, task_id)
        if task is not None and task.state in TERMINAL:
            why = f" ({rundata.headline(task.reason)})" if task.reason else ""
            raise UsageError(f"task {task_id!r} of run {run_id} never ran: {task.state}{why}")
        raise UsageError(
            f"task {task_id!r} of run {run_id} has not started yet",
            hint="`abreast logs -f` waits for it to start"
            if command == "logs"
            else f"`abreast status {run_id}` says what it waits for",
        )
    if attempt is None:
        return max(attempts, key=lambda a: a.attempt)
    for a in attempts:
        if a.attempt == attempt:
            return a
    raise UsageError(
        f"task {task_id!r} has no attempt {attempt}",
        hint=f"attempts: {', '.join(str(a.attempt) for a in attempts)}",
    )


def _wait_for_start(journal: Journal, run_id: str, task_id: str, note: TextIO) -> list[AttemptRow]:
    """The task's attempts once it has one, or [] when it will have none (it ended without
    running, or the run is no longer running)."""
    said = False
    while True:
        attempts = journal.attempts(run_id, task_id)
        if attempts:
            return attempts
        run = journal.run(run_id)
        task = _task_row(journal, run_id, task_id)
        if run is None or run_state(run) != "running" or task is None or task.state in TERMINAL:
            return []
        if not said:
            note.write(f"-- {task_id}: not started yet ({task.state}); waiting for it\n")
            note.flush()
            said = True
        time.sleep(0.2)  # a viewer following the journal: nothing to be woken by


def _task_row(journal: Journal, run_id: str, task_id: str) -> TaskRow | None:
    return next((t for t in journal.tasks(run_id) if t.task_id == task_id), None)


def show_log(
    journal: Journal,
    a: AttemptRow,
    out: TextIO,
    follow: bool,
    *,
    next_attempts: bool = False,
    note: TextIO | None = None,
) -> None:
    """Print attempt `a`'s log; with `follow`, as it grows until the attempt ends, and
    with `next_attempts` on into each attempt after it (a retry, a send-back) until the
    task is done, each announced on `note` (stderr: the log on stdout stays the task's)."""
    while True:
        _show_one(journal, a, out, follow)
        if not (follow and next_attempts) or reader_gone(out):
            return
        ended, later = _next_attempt(journal, a)
        if later is None:
            return
        if note is not None:
            why = f" ({rundata.headline(ended.reason)})" if ended.reason else ""
            note.write(f"-- {a.task_id}: attempt {a.attempt} ended{why}; attempt {later.attempt}\n")
            note.flush()
        a = later


def _next_attempt(journal: Journal, a: AttemptRow) -> tuple[AttemptRow, AttemptRow | None]:
    """(`a` as journaled now it has ended, the attempt after it once that starts, or None
    when there will be none: the task is done, or the run is no longer running)."""
    while True:
        attempts = journal.attempts(a.run_id, a.task_id)
        ended = next((x for x in attempts if x.attempt == a.attempt), a)
        later = [x for x in attempts if x.attempt > a.attempt]
        if later:
            return ended, min(later, key=lambda x: x.attempt)
        run = journal.run(a.run_id)
        task = _task_row(journal, a.run_id, a.task_id)
        if run is None or run_state(run) != "running" or task is None or task.state in TERMINAL:
            return ended, None
        time.sleep(0.2)  # a viewer following the journal: nothing to be woken by


def show_check_log(journal: Journal, a: AttemptRow, out: TextIO) -> None:
    """Print the log of attempt `a`'s red merge check: the check's own output, which the
    task's log does not have."""
    path = rundata.check_log_of(journal, a)
    if path is None:
        raise UsageError(
            f"attempt {a.attempt} of {a.task_id!r} has no red check to show",
            hint="its merge checks were green, or did not run (the attempt failed before "
            "its merge, or the workflow has no `checks:`); `abreast logs "
            f"{a.run_id} {a.task_id}` shows the task's own log",
        )
    _show_one(journal, a, out, False, path)


def _show_one(
    journal: Journal, a: AttemptRow, out: TextIO, follow: bool, log: str | None = None
) -> None:
    """Print attempt `a`'s log (or the file `log`, a log of its check)."""
    path = Path(log or rundata.log_of(journal, a) or "")
    # An attempt is journaled before its process starts (and makes its log): a follower
    # waits for the log while the attempt is still to run.
    while follow and not path.exists() and _still_running(journal, a):
        time.sleep(0.1)  # a viewer following a file: nothing to be woken by
    if not path.exists():
        raise UsageError(f"the log of {a.task_id} attempt {a.attempt} is gone: {path}")
    # Incremental: a character split across two reads (a 64 KiB boundary, or a task
    # still writing it) is decoded whole, not as two replacement characters. Bytes that
    # are not UTF-8 are kept as they were (see output.keep_bytes), as `cat` shows them.
    text = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    # A key a direct-mode task printed stays in its log until the attempt ends.
    masker = KeyMasker(rundata.leased_fingerprints(journal, a.run_id))
    try:
        fd = open_regular(str(path))
    except OSError as e:
        raise UsageError(
            f"the log of {a.task_id} attempt {a.attempt} is not a file abreast reads: {path}"
            f" ({'a symlink' if e.errno == errno.ELOOP else e.strerror or e})",
            hint="the task replaced it (with a FIFO, a device or a symlink)",
        ) from None
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(masker.feed(text.decode(chunk)))
                out.flush()
                if reader_gone(out):
                    return  # `logs -f | grep -m1 ...` found what it wanted
                continue
            if not follow:
                out.write(masker.feed(text.decode(b"", final=True)) + masker.flush())
                return
            if not _still_running(journal, a):
                out.write(masker.feed(text.decode(f.read(), final=True)) + masker.flush())
                return
            time.sleep(0.2)  # a viewer following a file: nothing to be woken by


def _still_running(journal: Journal, a: AttemptRow) -> bool:
    """Whether attempt `a` has not ended, in a run still running."""
    current = next(
        (x for x in journal.attempts(a.run_id, a.task_id) if x.attempt == a.attempt), None
    )
    run = journal.run(a.run_id)
    return (
        current is not None
        and current.ended_at is None
        and run is not None
        and run_state(run) == "running"
    )


def dump(data: dict[str, Any] | list[dict[str, Any]], out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")
