"""The end of a run, in words: per-task outcome, time saved, and every failure together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TextIO

from abreast.engine.engine import RunOutcome
from abreast.engine.states import TaskState
from abreast.executor.logs import with_last_line
from abreast.observe.plain import by_reason
from abreast.observe.rundata import (
    FailureView,
    carry_on_hint,
    changed,
    diff_command,
    failure_groups,
    failures_text,
    headline,
    named,
    retry_hint,
    saved_phrase,
    sequential_said,
)
from abreast.spec.durations import format_duration

TABLE_LIMIT = 40  # above this many tasks, states are counted instead of listed


def summarize(outcome: RunOutcome, out: TextIO) -> None:
    w = out.write
    w(f"\nrun {outcome.run_id}: {outcome.state} in {format_duration(outcome.wall_s)}\n")
    tasks = outcome.tasks
    if len(tasks) <= TABLE_LIMIT:
        width = max(len(t.id) for t in tasks)
        for t in tasks:
            took = format_duration(t.busy_s) if t.busy_s else "-"
            tries = f"{t.attempts} attempt{'s' if t.attempts != 1 else ''}" if t.attempts else ""
            work = outcome.changes.get(t.id)
            what = f"{tries:<11} {changed(work)}" if work else tries
            w(f"  {t.id:<{width}}  {t.state.value:<11} {took:>8}  {what}".rstrip() + "\n")
    else:
        counts: dict[str, int] = {}
        for t in tasks:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        w("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n")
    if sum(1 for t in tasks if t.attempts) == 1:  # nothing could have run beside it
        w(f"  wall {format_duration(outcome.wall_s)} (one task ran)\n")
    elif outcome.busy_s > 0:
        pct = 100 * outcome.saved_s / outcome.sequential_s
        checked = sequential_said(outcome.checks_s, outcome.waited_s, format_duration)
        w(
            f"  wall {format_duration(outcome.wall_s)}; one task at a time it would take "
            f"{format_duration(outcome.sequential_s)}{checked}; "
            f"{saved_phrase(outcome.saved_s, pct, format_duration)}\n"
        )
    if outcome.lowest_cap is not None:  # why tasks waited with slots seemingly free
        why = outcome.lowest_cap[1]
        who = (
            "the cap was lowered"
            if "ran out of memory" in why
            else "the resource monitor lowered the cap"
        )
        w(f"  {who}; at its lowest: {why}\n")
    if outcome.landing:
        w(f"  {outcome.landing}\n")
    for warning in outcome.warnings:
        w(f"  warning: {warning}\n")
    if on_github_actions():
        for warning in outcome.warnings:  # annotations on the job and the pull request
            w(f"::warning title=abreast::{_gh_data(warning)}\n")
    report_failures(outcome, out)
    if outcome.state == "cancelled" and not outcome.failures:
        w(f"\n  {carry_on_hint(outcome.run_id)}\n")


def report_failures(outcome: RunOutcome, out: TextIO) -> None:
    if not outcome.failures:
        blocked = [t for t in outcome.tasks if t.state is TaskState.BLOCKED]
        if not blocked:
            return
    w = out.write
    n = len(outcome.failures)
    if n:
        w(f"\n{n} task{'s' if n != 1 else ''} failed:\n")
    views = [
        FailureView(
            f.task_id,
            f.state.value,
            f.attempt,
            f.reason,
            tuple(f.log_tail),
            f.log,
            diff_command(outcome.run_id, f.task_id, f.reason)
            if f.task_id in outcome.changes
            else None,
        )
        for f in outcome.failures
    ]
    text = failures_text(views, outcome.run_id)
    if text:
        w("\n".join(text) + "\n")
    if on_github_actions():  # a group alike as one (GitHub shows 10 errors of a step)
        for alike in failure_groups(views):
            f = alike[0]
            w(github_error(named(alike), f.state, f.attempt, f.reason, f.tail))
    blocked = [t for t in outcome.tasks if t.state is TaskState.BLOCKED]
    if blocked:
        w("\n" + "".join(f"  blocked: {line}\n" for line in blocked_lines(blocked)))
    if n and outcome.state == "failed":
        w(f"\n  {retry_hint(outcome.run_id, n)}\n")
    elif n:  # cancelled: a resume carries it on, and can take the failures up too
        w(
            f"\n  carry on: abreast resume {outcome.run_id} (with --retry-failed, what "
            "failed runs again too)\n"
        )


def blocked_lines(blocked: Sequence[Any], most: int = 10) -> list[str]:
    """The blocked tasks, a line for each reason (`upstream t0 failed`) naming at most
    `most` of them: a failure early in a run of thousands blocks thousands."""
    lines = []
    for reason, ids in by_reason(blocked).items():
        named = ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")
        lines.append(f"{named} ({reason})" if reason else named)
    return lines


def on_github_actions() -> bool:
    """Whether this runs in a GitHub Actions job, whose log reads workflow commands."""
    return os.environ.get("GITHUB_ACTIONS") == "true"


def github_error(
    tasks: str, state: str, attempt: int, reason: str | None, tail: Sequence[str] = ()
) -> str:
    """A GitHub Actions workflow command that shows failed tasks (their names) as an error
    annotation (on the job's summary and the pull request), the reason's first line as the
    message (`exit 1`, with the telling last line of the task's log)."""
    first = with_last_line(headline(reason) or state, tail)
    after = f" (after {attempt} attempts)" if attempt > 1 else ""
    title = f"abreast: {tasks} {state}"
    return f"::error title={_gh_property(title)}::{_gh_data(first + after)}\n"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")
