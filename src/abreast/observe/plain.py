"""Plain lines of what happens in a run: for logs, pipes and CI (no terminal library)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from abreast.engine.engine import Engine, TaskRun, View
from abreast.engine.states import TaskState
from abreast.observe.rundata import headline
from abreast.spec.durations import format_duration

# Blocked tasks named a line each up to this many for one reason; more share one line.
BLOCKED_EACH = 5


def by_reason(tasks: Iterable[Any]) -> dict[str, list[str]]:
    """The ids of `tasks` (anything with `id` and `reason`), by reason, in their order."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        out.setdefault(t.reason or "", []).append(t.id)
    return out


def blocked_said(blocked: list[TaskRun]) -> list[str]:
    """What to say of tasks just blocked: a line each (`api: upstream db failed`), or,
    when many share a reason (a failure early in a run of thousands), one line for them
    all (`2999 tasks: upstream t0 failed (t1, t2, t3, t4, t5 and 2994 more)`)."""
    lines = []
    for reason, ids in by_reason(sorted(blocked, key=lambda tr: tr.v)).items():
        if len(ids) <= BLOCKED_EACH:
            lines += [f"{tid}: {reason}" if reason else tid for tid in ids]
            continue
        named = ", ".join(ids[:BLOCKED_EACH]) + f" and {len(ids) - BLOCKED_EACH} more"
        lines.append(f"{len(ids)} tasks: {reason} ({named})")
    return lines


def failure_said(tr: TaskRun) -> str:
    """Why `tr` did not succeed, in a line: its reason's headline, and for an exit status
    its log's telling last line (the engine's `last_words`)."""
    return headline(tr.reason) + (f": {tr.last_words}" if tr.last_words else "")


def retry_when(delay_s: float) -> str:
    """`now` (a gate or conflict sends a task straight back) or `in 1.5s`."""
    return "now" if delay_s <= 0 else f"in {delay_s:.1f}s"


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{seconds % 60:04.1f}"


class PlainView(View):
    """One line per thing that happens; for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.engine: Engine | None = None
        self._blocked: list[TaskRun] = []  # said together, by reason (see _say_blocked)

    def begin(self, engine: Engine) -> None:
        self.engine = engine

    def _line(self, text: str) -> None:
        if self._blocked:
            self._say_blocked()
        self._write(text)

    def _write(self, text: str) -> None:
        t = self.engine.elapsed() if self.engine else 0.0
        self.out.write(f"[{clock(t)}] {text}\n")

    def _say_blocked(self) -> None:
        for line in blocked_said(self._blocked):
            self._write(f"blocked   {line}")
        self._blocked = []

    def started(self, tr: TaskRun) -> None:
        self._line(f"start   {tr.id} (attempt {tr.attempts})")

    def finished(self, tr: TaskRun) -> None:
        if tr.state is TaskState.BLOCKED:
            self._blocked.append(tr)  # said once this wake-up's others are known
            return
        detail = ""
        if tr.state is not TaskState.SUCCEEDED and tr.reason:
            detail = ": " + failure_said(tr)
        took = f" in {format_duration(tr.busy_s)}" if tr.busy_s else ""
        self._line(f"{tr.state.value:<9} {tr.id}{took}{detail}")

    def retrying(self, tr: TaskRun, delay_s: float) -> None:
        self._line(f"retry   {tr.id} {retry_when(delay_s)}: {headline(tr.feedback)}")

    def note(self, text: str) -> None:
        self._line(text)

    def idle(self) -> None:
        # Once per wake-up, not per line: a pipe (CI's log, `| tee`) is block-buffered,
        # and would otherwise show nothing until the run ends.
        if self._blocked:
            self._say_blocked()
        self.out.flush()

    def end(self) -> None:
        if self._blocked:
            self._say_blocked()
        self.out.flush()
