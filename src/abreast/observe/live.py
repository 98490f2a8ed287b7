"""The live terminal view: a progress bar and one line per running or waiting task."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from abreast.engine.engine import Engine, TaskRun, View
from abreast.engine.states import TaskState
from abreast.eta import about
from abreast.observe.plain import blocked_said, clock, failure_said, retry_when
from abreast.observe.rundata import headline
from abreast.spec.durations import format_duration

_STATE_STYLE = {
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "red",
    TaskState.TIMED_OUT: "red",
    TaskState.BLOCKED: "yellow",
    TaskState.SKIPPED: "dim",
    TaskState.CANCELLED: "yellow",
    TaskState.RUNNING: "cyan",
    TaskState.INTEGRATING: "magenta",
}


def shortened(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut in the middle (its end kept, where ids
    of one family differ)."""
    if len(text) <= width:
        return text
    tail = max(1, (width - 1) // 3)
    return text[: width - 1 - tail] + "\u2026" + text[-tail:]


class LiveView(View):
    """A progress bar and one line per running or waiting task, redrawn in place."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.engine: Engine | None = None
        self._live: Live | None = None
        self._left: float | None = None
        self._left_at = float("-inf")
        self._blocked: list[TaskRun] = []  # said together (observe.plain.blocked_said)

    def begin(self, engine: Engine) -> None:
        self.engine = engine
        self._live = Live(
            console=self.console, get_renderable=self._render, refresh_per_second=4, transient=False
        )
        self._live.start()

    def _render(self) -> Group:
        e = self.engine
        if e is None:
            return Group()
        counts = e.counts()
        total = len(e.tasks)
        done = sum(counts[s] for s in TaskState if s.terminal)
        progress = f"{done}/{total} done  {clock(e.elapsed())}  cap {e.cap()}"
        left = self._time_left(e) if done < total else None
        if left is not None:
            progress += f"  {about(left)} left"
        states = " ".join(
            f"{s.value} {c}" for s, c in counts.items() if c and s is not TaskState.PENDING
        )
        # A narrow terminal shortens the bar (to 10), then cuts the state counts short.
        bar = max(10, min(40, self.console.width - len(progress) - len(states) - 2))
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True, min_width=bar)
        head.add_column(no_wrap=True, min_width=len(progress))
        head.add_column(no_wrap=True, overflow="ellipsis")
        head.add_row(
            ProgressBar(total=total, completed=done, width=bar),
            Text(progress),
            Text(states, style="dim"),
        )
        lines: list[tuple[str, str, str, str, str]] = []  # id, its style, what, how long, style
        now = time.monotonic()
        shown = 0
        for tr in e.tasks:
            if tr.state in (TaskState.RUNNING, TaskState.INTEGRATING) and shown < 20:
                if tr.state is TaskState.INTEGRATING:  # since its attempt ended
                    phase = e.isolation.phase(tr.id)
                    took, what = (
                        now - tr.integrating_since,
                        f"merging: {phase}" if phase else "merging",
                    )
                else:
                    took = now - tr.running.started_mono if tr.running else 0.0
                    what = f"attempt {tr.attempts}"
                    if tr.id in e.lock_waits_now:  # in `abreast lock`, another holds it
                        what += f", waits for lock {e.lock_waits_now[tr.id]}"
                how_long = f"{took:.1f}s" if took < 60 else format_duration(took)
                lines.append((tr.id, _STATE_STYLE[tr.state], what, how_long, ""))
                shown += 1
        running = sum(tr.state in (TaskState.RUNNING, TaskState.INTEGRATING) for tr in e.tasks)
        if running > shown:
            lines.append(("", "dim", f"and {running - shown} more running", "", "dim"))
        for task_id, why in list(e.waiting_reasons().items())[:8]:
            lines.append((task_id, "dim", "waiting", why, "dim"))
        retrying = [tr for tr in e.tasks if tr.state is TaskState.PENDING and tr.retry_at]
        for tr in retrying[:8]:
            due = f"in {max(0.0, (tr.retry_at or 0.0) - time.time()):.1f}s"
            lines.append((tr.id, "yellow", "retry", due, ""))
        if len(retrying) > 8:
            lines.append(("", "dim", f"and {len(retrying) - 8} more to retry", "", "dim"))
        # Ids cut in the middle (`api-client-for-region-eu` and `...-us` stay told apart)
        # to half the width at most; the first two columns are never squeezed further:
        # the last (a waiting task's reason) gives way.
        width = max(10, self.console.width // 2 - 2)
        rows = Table.grid(padding=(0, 2))
        rows.add_column(
            no_wrap=True, min_width=min(width, max((len(x[0]) for x in lines), default=1))
        )
        rows.add_column(no_wrap=True, min_width=max((len(x[2]) for x in lines), default=1))
        rows.add_column(no_wrap=True, overflow="ellipsis")
        for task_id, style, what, more, more_style in lines:
            rows.add_row(
                Text(shortened(task_id, width), style=style),
                Text(what),
                Text(more, style=more_style),
            )
        return Group(head, rows)

    def _time_left(self, e: Engine) -> float | None:
        """`e.time_left()`, worked out once a second (the view redraws four times)."""
        now = time.monotonic()
        if now - self._left_at >= 1.0:
            self._left, self._left_at = e.time_left(), now
        return self._left

    def started(self, tr: TaskRun) -> None:
        pass

    def finished(self, tr: TaskRun) -> None:
        if tr.state is TaskState.BLOCKED:
            self._blocked.append(tr)  # said with the others this wake-up blocks
            return
        self._say_blocked()
        if tr.state is not TaskState.SUCCEEDED:
            style = _STATE_STYLE.get(tr.state, "")
            # as `retrying api in 1.0s: ...` reads: the task, then why
            self.console.print(Text(f"{tr.state.value} {tr.id}: {failure_said(tr)}", style=style))

    def retrying(self, tr: TaskRun, delay_s: float) -> None:
        first = headline(tr.feedback)
        self.console.print(Text(f"retrying {tr.id} {retry_when(delay_s)}: {first}", style="yellow"))

    def note(self, text: str) -> None:
        # Above the live area, where it stays (kept in the area, only the last four were
        # shown, and an earlier one, a timeout or a warning, left the screen for good).
        self.console.print(Text(text, style="dim"))

    def _say_blocked(self) -> None:
        style = _STATE_STYLE.get(TaskState.BLOCKED, "")
        for line in blocked_said(self._blocked):
            self.console.print(Text(f"blocked: {line}", style=style))
        self._blocked = []

    def idle(self) -> None:
        self._say_blocked()

    def end(self) -> None:
        self._say_blocked()
        if self._live:
            self._live.refresh()
            self._live.stop()
