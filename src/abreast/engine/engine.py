"""The engine: one asyncio loop decides everything; the journal hears it first.

    ┌──────────── wake (process exit, timer, signal, cancel, tick) ◀────────────┐
    ▼                                                                            │
  handle events ─▶ admit ready (when:) ─▶ start (Dispatcher) ─▶ commit journal ─▶ act
                                                                   (spawn, kill, report)

Each pass stages every decision (new attempts, state changes, events) and
commits them in one transaction before any process is started or anything is
reported; pids learnt while spawning are committed with the next pass. If the
orchestrator dies between a spawn and that commit, the process still carries
the run's marker in its environment, and `resume` finds it that way.

Task processes wake the loop through SIGCHLD; timeouts, retries and the
resource tick are loop timers; `abreast cancel` and Ctrl-C arrive as SIGTERM
and SIGINT; `abreast signal` as SIGUSR1. Nothing here polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abreast.coord.anchor import StateAnchor, with_side_files
from abreast.coord.backend import Lease, WaitStopped
from abreast.coord.journal import DRAIN_REQUESTED, Journal
from abreast.coord.location import StateLocation
from abreast.engine.monitor import ResourceMonitor
from abreast.engine.ports import PortBook
from abreast.engine.states import FAILED_STATES, TaskState, check_transition
from abreast.engine.supervise import Supervisor, Trouble
from abreast.executor.exits import failed_line, said_at, several_lines
from abreast.executor.local import (
    Executor,
    Exit,
    Launch,
    LocalExecutor,
    Running,
    quiet_signal_wakeup,
)
from abreast.executor.logs import (
    TAIL_HEADING,
    create_new,
    log_size,
    log_tail,
    open_regular,
    prompt_file,
    redact,
    scrub_files,
    telling_line,
    visible,
    visible_name,
)
from abreast.executor.process import (
    Adoptions,
    become_subreaper,
    describe_status,
    kill_tree,
    leases_env,
    oom_kills,
    reap_orphans,
    signal_tree,
)
from abreast.integrate.base import Isolation, Outcome, Verdict
from abreast.plan.analysis import locks_taken
from abreast.plan.dispatch import Dispatcher, Policy
from abreast.plan.graph import TaskGraph
from abreast.spec import conditions
from abreast.spec.durations import counted, format_size
from abreast.spec.loader import MAX_DEPTH, json_depth
from abreast.spec.model import (
    ENV_VALUE_MAX,
    FEEDBACK_MAX_CHARS,
    PROMPT_MAX,
    Scalar,
    Task,
    Workflow,
)

if TYPE_CHECKING:
    from abreast.keys.broker import KeyBroker
    from abreast.observe.events import Sink

JITTER = 0.25  # a retry waits its nominal backoff times a factor in [0.75, 1.25]
WAITING_SAID = 100  # ready tasks whose reason to wait a run.waiting event names, at most
_stop_asked: list[int] = []  # SIGTERMs (SIGHUPs) that came before the engine listened for them
# Why a run is cancelled, by the signal that asked: SIGINT is Ctrl-C, SIGHUP the terminal
# closing (an ssh session dropped, its window shut), SIGTERM `abreast cancel`.
CANCELLED_BY = {signal.SIGINT: "interrupted", signal.SIGHUP: "hangup"}


def _deferred(signum: int, frame: object) -> None:
    if signum not in (signal.SIGTERM, signal.SIGHUP):
        return
    if _stop_asked:  # asked twice: whatever holds the start up, stop now (as a second ^C)
        raise KeyboardInterrupt
    _stop_asked.append(signum)


def hangup_heard() -> bool:
    """Whether the terminal closing (SIGHUP) cancels the run: unless it was ignored when
    abreast started (`nohup abreast run ...`, which asks for the run to go on)."""
    return signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, a Ctrl-C, a TERM (`abreast cancel`) or the terminal closing
    (unless under nohup) calls `handler` with the signal (after the run's loop, whose own
    handlers are gone). In a thread other than the main one (tests driving the engine),
    nothing."""
    loop = asyncio.get_running_loop()
    installed = []
    heard = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hangup_heard() else ())
    for sig in heard:
        try:
            loop.add_signal_handler(sig, handler, sig)
            installed.append(sig)
        except (ValueError, RuntimeError):
            pass
    quiet_signal_wakeup(loop)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _not_json(word: str) -> Any:
    """NaN and Infinity, which Python's JSON reader takes and JSON has not: passed on to a
    dependent (`$ABREAST_INPUTS`), they would break its JSON reader (jq, JSON.parse)."""
    raise ValueError(f"{word} is not a JSON value (write null, or a number)")


def _output_text(raw: bytes) -> str:
    """An output file's text: UTF-8, a byte order mark at its start left out (JSON's RFC
    lets a reader ignore one; PowerShell and Windows editors write it), and UTF-16 with
    its mark (Windows PowerShell's `Out-File`) read as such."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    return raw.decode("utf-8")


def _json_said_at(text: str, e: json.JSONDecodeError) -> str:
    """The line of an output that JSON could not read, where its error is (`; its line 1
    reads: ```json`), and what the usual slip is: the JSON wrapped in a Markdown code
    fence, several objects (one per line) where one is read, a trailing comma."""
    lines = text.split("\n")
    line = lines[e.lineno - 1].strip() if 0 < e.lineno <= len(lines) else ""
    more = "…" if len(line) > 80 else ""
    said = f"; its line {e.lineno} reads: {visible(line[:80])}{more}" if line else ""
    if text.lstrip().startswith("```"):
        return said + " (a Markdown code fence: write the JSON object alone)"
    if e.msg == "Extra data":
        return said + " (more after one JSON value: write one object that holds it all)"
    if e.msg.startswith("Expecting") and text[: e.pos].rstrip().endswith(","):
        return said + " (a comma before a closing } or ]: JSON has no trailing commas)"
    return said


def defer_stop_signals() -> None:
    """From the moment the journal names this process a run's orchestrator, `abreast
    cancel` (SIGTERM) and `abreast signal` (SIGUSR1) are sent to it, and by default
    either would kill it before the engine installs its handlers. Until then a SIGTERM
    is recorded, and acted on as a cancel when the engine starts (so is a cancel request
    in the journal); a SIGUSR1 is dropped (the engine reads journaled signals when it
    starts); a second SIGTERM stops the process at once, as before. A SIGHUP (the
    terminal closed) likewise, unless it is ignored (nohup). A handler, not SIG_IGN:
    processes started meanwhile (git) do not inherit it."""
    _stop_asked.clear()
    signals = [signal.SIGTERM, signal.SIGUSR1] + ([signal.SIGHUP] if hangup_heard() else [])
    with contextlib.suppress(ValueError):  # not the main thread: no signals come here
        for sig in signals:
            signal.signal(sig, _deferred)


# $ABREAST_OUTPUT is for small structured results (conditions, inputs of dependents): it is
# read into memory, journaled and shown. A bigger one fails the attempt, unread.
MAX_OUTPUT_BYTES = 1 << 20
# Nor may it nest deeper than a workflow file may: what reads it (the journal, conditions,
# the dashboard) recurses, and Python's JSON parser gives up near 1000 levels.
MAX_OUTPUT_DEPTH = MAX_DEPTH


@dataclass
class EngineOptions:
    cap: int
    flags: dict[str, Scalar]
    policy: Policy = Policy.PRIORITY
    kill_grace_s: float = 5.0
    tick_s: float = 1.0
    monitor: ResourceMonitor | None = None
    rng: random.Random = field(default_factory=random.Random)
    base_env: dict[str, str] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    sinks: list[Sink] = field(default_factory=list)  # hear every committed event
    fail_fast: bool = False  # the first task to fail stops the run as a drain does
    # One run of the merge checks, measured in earlier runs (0: unknown), and how many
    # merges they check at once: the time left counts them.
    check_s: float = 0.0
    merge_batch: int = 1
    keys: KeyBroker | None = None  # API keys or proxy tokens for attempts
    # (fingerprint, value) of the secrets in the tasks' environments (keys/envsecrets.py):
    # masked, with the keys, in what abreast records of their output.
    masked: list[tuple[str, str]] = field(default_factory=list)
    # Makes the executor on the loop (given the exit callback); None: LocalExecutor.
    executor: Callable[[Callable[[Running, Exit], None]], Executor] | None = None


def prompt_for(prompt: str | None, attempt: int, feedback: str | None, bounds: str = "") -> str:
    """$ABREAST_PROMPT: the task's prompt, what its work may change (`bounds`, with
    worktrees: its `owns`), and on an attempt after one that was sent back, why (an agent
    run as `claude -p "$ABREAST_PROMPT"` reads nothing else)."""
    if not prompt:
        return ""
    if bounds:
        prompt = f"{prompt}\n\n---\n{bounds}"
    if not feedback:
        return prompt
    return (
        f"{prompt}\n\n---\nThis is attempt {attempt}. abreast sent the previous attempt back:"
        f"\n{feedback}"
    )


def failed_at(launch: Launch, status: int | None) -> str:
    """Where in a command of several lines the attempt ended (` at line 3 (`grep -q x
    f`)`), as its shell recorded it (bash only: executor/wrapper.py); "" where that is
    not known or would say nothing (a command of one line)."""
    return failed_in(
        launch.command, launch.shell, launch.exits_file, launch.task_id, launch.attempt, status
    )


def failed_in(
    command: str, shell: str, exits_file: str, task_id: str, attempt: int, status: int | None
) -> str:
    """`failed_at` of an attempt known by these (one that ended while no orchestrator
    watched has no Launch of this one's)."""
    if not status or shell != "bash" or not several_lines(command):
        return ""
    return said_at(command, failed_line(exits_file, f"{task_id}.{attempt}", status))


def with_tail(reason: str, tail: list[str]) -> str:
    """Why an attempt failed, with the last lines of its log: feedback for the next."""
    return reason + (f"\n{TAIL_HEADING}\n" + "\n".join(tail) if tail else "")


def bounded_feedback(text: str) -> str:
    """Feedback short enough for the environment (ABREAST_FEEDBACK, and ABREAST_PROMPT
    after the prompt): its head and its end, which says most (a check's last lines)."""
    if len(text) <= FEEDBACK_MAX_CHARS:
        return text
    head = FEEDBACK_MAX_CHARS // 4
    tail = FEEDBACK_MAX_CHARS - head - 64  # 64: room for the mark
    mark = f"\n[... {len(text) - head - tail:,} characters left out ...]\n"
    return text[:head] + mark + text[-tail:]


@dataclass(eq=False)
class TaskRun:
    """The engine's record of one task in this run."""

    v: int
    task: Task
    state: TaskState = TaskState.PENDING
    attempts: int = 0  # attempts started
    failures: int = 0  # failed attempts, counted against `retries`
    iterations: int = 0  # gate rejections, counted against `max_iterations`
    feedback: str | None = None
    reason: str | None = None
    output: dict[str, Any] | None = None
    prompt: str | None = None  # its prompt with the `${{ }}` values put in, if it has any
    env: dict[str, str] | None = None  # its env's values that had `${{ }}` places, put in
    running: Running | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    peak_rss_bytes: int = 0
    busy_s: float = 0.0  # wall time of all its attempts
    last_log: str | None = None
    last_words: str = ""  # a failed task's: its log's telling last line (`telling_line`)
    retry_at: float | None = None
    killed_for: str | None = None  # why the orchestrator killed the running attempt
    # The machine's count of processes the out-of-memory killer ended, as the engine last
    # read it before this attempt started (Engine._oom_killed).
    ooms_before: int | None = None
    integrating_since: float = 0.0  # when its work went to be integrated (time.monotonic)
    unstarted: bool = False  # failed before an attempt started: its when: or ${{ }} places

    @property
    def id(self) -> str:
        return self.task.id

    def __repr__(self) -> str:
        return f"<TaskRun {self.id} {self.state} attempt={self.attempts}>"


@dataclass
class Failure:
    task_id: str
    state: TaskState
    attempt: int
    reason: str
    log: str | None
    log_tail: list[str]


@dataclass
class RunOutcome:
    run_id: str
    state: str  # succeeded | failed | cancelled
    wall_s: float
    busy_s: float
    failures: list[Failure]
    tasks: list[TaskRun]
    landing: str | None = None
    warnings: list[str] = field(default_factory=list)
    journal_path: Path | None = None
    changes: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> files, +, -
    unlanded: bool = False  # --land was asked and could not be done (`landing` says why)
    # The signal that cancelled the run where it ends the process too: SIGINT (Ctrl-C) or
    # SIGHUP (its terminal closed); 0 for `abreast cancel` and runs not cancelled.
    interrupted: int = 0
    # Seconds its merge checks ran: a run of the tasks one at a time would check each
    # task's work too, so they count in what the run is compared with.
    checks_s: float = 0.0
    # Seconds its tasks waited for locks inside their attempts (`abreast lock`), left out
    # of `busy_s`: one at a time, they would not have waited for each other.
    waited_s: float = 0.0
    # The lowest the resource monitor took the cap to, and why (None: never lowered).
    lowest_cap: tuple[int, str] | None = None

    @property
    def sequential_s(self) -> float:
        """What running the tasks one at a time would take: their attempts and checks."""
        return self.busy_s + self.checks_s

    @property
    def saved_s(self) -> float:
        return self.sequential_s - self.wall_s


class View:
    """What the engine tells the person watching; the terminal views implement it."""

    def begin(self, engine: Engine) -> None: ...
    def started(self, tr: TaskRun) -> None: ...
    def finished(self, tr: TaskRun) -> None: ...
    def retrying(self, tr: TaskRun, delay_s: float) -> None: ...
    def note(self, text: str) -> None: ...
    def idle(self) -> None:
        """The engine has done what it can and waits: show what was said (flush)."""

    def end(self) -> None: ...


class Engine:
    def __init__(
        self,
        wf: Workflow,
        run_id: str,
        location: StateLocation,
        journal: Journal,
        graph: TaskGraph,
        options: EngineOptions,
        *,
        view: View | None = None,
        isolation: Isolation | None = None,
        started_at: float | None = None,
        paused_s: float = 0.0,
    ) -> None:
        self.wf = wf
        self.run_id = run_id
        self.location = location
        self.journal = journal
        self.graph = graph
        self.options = options
        self.view = view or View()
        self.isolation = isolation or Isolation(location.root)
        # What it warned of as it was made (protect not available here, ...), said once the
        # view has begun; those after, as they come.
        self._early_warnings = list(self.isolation.warnings)
        self.isolation.note = self.view.note
        self.run_dir = location.run_dir(run_id)
        self._root = str(location.root)
        self.tasks = [TaskRun(v, task) for v, task in enumerate(wf.tasks.values())]
        self.by_id = {tr.id: tr for tr in self.tasks}
        order, waves, wave = graph.levels()
        self._wave = wave
        self._waves = waves
        self._wave_left = [len(w) for w in waves]
        self._wave_first_start: list[float | None] = [None] * len(waves)
        self._d = Dispatcher(graph, _priorities(graph, order), options.policy, wave)
        self._events: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._parked = False  # the loop waits for `_wake` with nothing left to do
        self._inline_error: BaseException | None = None
        self._cancelling = False
        self._draining = False  # `abreast cancel --drain`, --fail-fast: nothing new starts
        # Why a failure stopped the run (--fail-fast; a check that cannot start): "" if none
        self._stopped: str = ""
        self._interrupted = 0  # the signal the cancel came from (SIGINT, SIGHUP), if one
        self._landing_interrupted = 0  # the same, of a Ctrl-C while the landing was checked
        self._force_kill = False
        self._killing: set[asyncio.Task[None]] = set()
        self._ending_groups: set[int] = set()  # process groups being killed
        self._exited: list[Running] = []  # attempts ended this loop iteration (_after_exit)
        self._adoptions: Adoptions | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._scrubs: set[asyncio.Future[None]] = set()  # files being rid of key values
        self._ports = PortBook()  # held by running attempts of tasks with `ports:`
        self._tick_handle: asyncio.TimerHandle | None = None
        self._last_heartbeat = 0.0
        self._last_cap = 0  # as last journaled (run.cap)
        # At most this many tasks at once since one was ended for want of memory (and why).
        self._memory_cap: int | None = None
        self._memory_why = ""
        self._waiting_said: dict[str, str] = {}  # as last journaled (run.waiting)
        # Tasks whose commands may wait in `abreast lock` (another process journals the
        # wait): task -> the lock its running attempt waits for now, read at each tick.
        self._locks_inside = any(locks_taken(t.run or "") for t in wf.tasks.values())
        self.lock_waits_now: dict[str, str] = {}
        self._lock_waits_said: set[tuple[str, int, float]] = set()
        self.lowest_cap: tuple[int, str] | None = None  # where the monitor lowered it, why
        self._seen_signals: set[tuple[str, str]] = set()
        self._ooms = oom_kills()
        # A file -> the tasks whose work conflicted in it at a merge; a task -> the tasks it
        # is kept apart from for that, and the file (Engine._conflicted_in).
        self._conflicted: dict[str, set[int]] = {}
        self._apart: dict[int, dict[int, str]] = {}
        # Task -> (a task waiting for a signal of it, the signal): said when it ends
        # without having given one.
        self._waited_on: dict[int, list[tuple[int, str]]] = {}
        for (u, v), name in graph.signal_waits.items():
            self._waited_on.setdefault(u, []).append((v, name))
        self.started_at = started_at or time.time()
        self.paused_s = paused_s  # time no orchestrator ran the run (before resumes)
        self._t0 = time.monotonic()
        self._executor: Executor | None = None
        self._adopt: list[tuple[TaskRun, int, Exit]] = []
        # After a resume: tasks whose work goes to the merge queue again, with why
        self._reintegrate: list[tuple[TaskRun, str]] = []
        self._active: set[TaskRun] = set()  # RUNNING or INTEGRATING
        self._terminal_count = 0
        self._conditions: dict[str, conditions.Expression] = {}
        self._skips: frozenset[int] | None = None  # _skipped_by_flags, once asked
        self._anchor: StateAnchor | None = None
        for name in ("logs", "outputs"):
            (self.run_dir / name).mkdir(parents=True, exist_ok=True)
        self._dir = str(self.run_dir)
        self.sup = options.supervisor or Supervisor(wf, run_id, None, journal, lambda _t: None)
        self.sup.note = lambda text: self.view.note(text)
        self._exits = str(self.run_dir / "exits")
        Path(self._exits).touch()

    # -- what the views read -----------------------------------------------------------------

    def counts(self) -> dict[TaskState, int]:
        out = dict.fromkeys(TaskState, 0)
        for tr in self.tasks:
            out[tr.state] += 1
        return out

    def waiting_reasons(self) -> dict[str, str]:
        """Why each ready task is not running, in words."""
        out = {}
        monitor_reason = (
            self.options.monitor.reason(self.options.cap) if (self.options.monitor) else None
        )
        for v, why in self._d.waiting().items():
            if why == "cap":
                text = monitor_reason or f"all {self.cap()} slots busy"
            elif why == "wave":
                text = "waiting for the previous wave (waves policy)"
            elif why.startswith("task:"):
                other = self.tasks[int(why[5:])]
                name = self._apart.get(v, {}).get(other.v)
                text = (
                    f"its work conflicted with {other.id}'s in {visible_name(name)}"
                    if name is not None
                    else f"owns files that {other.id} also owns"
                ) + (", until its work lands" if other.state is TaskState.INTEGRATING else "")
            elif why.startswith("lock:"):
                text = f"waiting for lock {why[5:]!r}"
            elif why.startswith("pool:"):
                text = f"pool {why[5:]!r} full"
            elif why.startswith("agent:"):
                text = f"agent {why[6:]!r} at max_instances"
            else:
                text = why
            out[self.tasks[v].id] = text
        return out

    def cap(self) -> int:
        monitor = self.options.monitor
        cap = monitor.cap(self.options.cap) if monitor else self.options.cap
        return cap if self._memory_cap is None else min(cap, self._memory_cap)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _skipped_by_flags(self) -> frozenset[int]:
        """The tasks whose `when:` reads only flags and is false: sure to be skipped (as
        the planner decides them)."""
        from abreast.errors import SpecError
        from abreast.plan.analysis import skip_decisions

        try:
            skipped, _ = skip_decisions(self.wf, self.options.flags)
        except SpecError:  # a `when:` that fails under the flags: the run says so itself
            return frozenset()
        return frozenset(v for v, skip in enumerate(skipped) if skip)

    def time_left(self) -> float | None:
        """About how long the run has left, by its tasks' estimates (given in the file or
        measured in earlier runs): the longer of its longest chain of unfinished tasks and
        their work spread over the cap, a running attempt counting what its estimate has
        left; a task its `when:` will skip by the flags alone counts nothing; with merge
        checks measured in earlier runs, each task's work still to land counts their time
        (eta.time_left). None when an unfinished task's estimate is only the default's
        guess."""
        g, now = self.graph, time.monotonic()
        left = [0.0] * len(self.tasks)
        landing = [False] * len(self.tasks)  # its work still to pass the merge checks
        if self._skips is None:
            self._skips = self._skipped_by_flags()
        for tr in self.tasks:
            if tr.state.terminal or tr.v in self._skips:
                continue
            landing[tr.v] = True
            if tr.state is TaskState.INTEGRATING:
                continue
            if not g.estimated[tr.v]:
                return None
            est = g.estimate_s[tr.v]
            if tr.state is TaskState.RUNNING and tr.running is not None:
                est = max(0.0, est - (now - tr.running.started_mono))
            elif tr.retry_at is not None:  # sent back: its wait for the next attempt too
                est += max(0.0, tr.retry_at - time.time())
            left[tr.v] = est
        from abreast.eta import time_left

        checks = 0.0 if self.isolation.instant else self.options.check_s
        batch = self.options.merge_batch
        return time_left(left, g.succs, g.levels()[0], self.cap(), landing, checks, batch)

    def _read_lock_waits(self) -> None:
        """Which running attempts wait in `abreast lock` now, for the live view (the
        `abreast lock` process journals its wait: `lock.waiting`)."""
        from abreast.observe.rundata import open_waits

        now = [
            w
            for w in open_waits(self.journal, self.run_id)
            if (tr := self.by_id.get(w.task)) is not None
            and tr.state is TaskState.RUNNING
            and tr.attempts == w.attempt
        ]
        self.lock_waits_now = {w.task: w.lock for w in now}
        for w in now:  # each wait said once as it is seen: a CI's log says it too
            if (w.task, w.attempt, w.since) not in self._lock_waits_said:
                self._lock_waits_said.add((w.task, w.attempt, w.since))
                self.view.note(f"{w.task}: waits for the lock {w.lock}, held by {w.held_by}")

    def _note_waiting(self) -> None:
        """Journal why ready tasks do not start (a pool full, the cap, files another task
        owns), when that changed: `status` and the dashboard say it, as the live view does.
        At the heartbeat only: a wait shorter than that is not worth a word."""
        reasons = self.waiting_reasons()
        if reasons != self._waiting_said:
            self._waiting_said = reasons
            shown = dict(list(reasons.items())[:WAITING_SAID])
            more = len(reasons) - len(shown)
            self.journal.stage_event(self.run_id, "run.waiting", None, tasks=shown, more=more)

    def _note_cap(self) -> None:
        """Journal the cap when it changes (the resource monitor moves it), for watchers."""
        cap = self.cap()
        if cap != self._last_cap:
            self._last_cap = cap
            monitor = self.options.monitor
            why = monitor.reason(self.options.cap) if monitor else None
            if self._memory_cap is not None and cap == self._memory_cap:
                why = self._memory_why
            self.journal.stage_event(
                self.run_id, "run.cap", None, cap=cap, of=self.options.cap, reason=why
            )
            if why and (self.lowest_cap is None or cap < self.lowest_cap[0]):
                # Said at each new low only: a reading that sways about a threshold
                # would otherwise say so every second. Why tasks wait, in a CI's log too.
                self.lowest_cap = (cap, why)
                if why == self._memory_why:
                    self.view.note(f"the cap is lowered: {why}")
                else:
                    self.view.note(f"the resource monitor lowered the cap: {why}")

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        self._anchor = self._make_anchor()
        try:
            return await self._run()
        except Exception:  # the journal cannot be written, say: the run stops here
            left = [tr.id for tr in self.tasks if tr.running is not None]
            if left:  # as after a crash: their results are taken up by resume
                self.view.note(
                    f"left running: {', '.join(left)}; `abreast resume {self.run_id}` takes "
                    f"them up once this is put right, `abreast cancel {self.run_id}` stops them"
                )
            raise
        finally:
            if self._anchor is not None:
                self._anchor.close()

    def _make_anchor(self) -> StateAnchor | None:
        """Links that keep this run's state files reachable if `.abreast/` is removed
        under it (coord/anchor.py); armed now that the journal and coordinator are open."""
        loc = self.location
        files = with_side_files(loc.journal)
        if loc.coord_file is not None:
            files += with_side_files(loc.coord_file)
        shim = loc.bin_dir / "abreast"
        anchor = StateAnchor.for_project(
            loc.root,
            self.run_id,
            [*files, Path(self._exits), shim],
            [self.run_dir / "logs", self.run_dir / "outputs"],
            shared=[shim],
        )
        if anchor is not None:
            anchor.arm()
        return anchor if anchor is not None and anchor.armed else None

    def _check_anchor(self, first_only: bool) -> None:
        if self._anchor is None:
            return
        put_back = self._anchor.check(first_only)
        if put_back:
            self.view.note(
                f"warning: {self.location.journal.parent} was removed while the run was going "
                "(a task running `git clean -x`?); abreast put back the run's journal and "
                "state files, nothing they held is lost; the logs of attempts running then "
                "are gone"
            )
            self.journal.stage_event(
                self.run_id, "state.restored", None, files=[str(p) for p in put_back]
            )

    async def _run(self) -> RunOutcome:
        loop = asyncio.get_running_loop()
        for sink in self.options.sinks:
            await sink.start()
            self.journal.listeners.append(sink)
        make = self.options.executor or LocalExecutor
        self._executor = make(self._process_exited)
        if become_subreaper():  # orphaned descendants of tasks come to us, and are reaped
            self._adoptions = Adoptions(self.run_id)
        installed = self._install_signal_handlers(loop)
        self._on_signals(replay=True)  # a resumed run's, given while nobody listened
        self._conflicts_before()
        self._note_cap()
        if self._locks_inside:
            self._read_lock_waits()
        self._schedule_tick()
        self.view.begin(self)
        for text in self._early_warnings:
            self.view.note(f"warning: {text}")
        for tr, attempt, exit_ in self._adopt:
            self._post("adopt", tr, attempt, exit_)
        for tr, why in self._reintegrate:
            self.view.note(f"{tr.id}: its attempt {tr.attempts} {why}; queueing it again")
            self._spawn_background(self._integrate(tr, tr.attempts))
        self._on_stop_requests()  # `abreast cancel` (the terminal closed) before we listened
        try:
            while True:
                self._pass()
                if self._finished():
                    break
                self.view.idle()
                self._parked = True
                try:
                    await self._wake.wait()
                finally:
                    self._parked = False
                self._wake.clear()
                if self._inline_error is not None:
                    raise self._inline_error
                self._handle_events()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._executor.close()
            if self._tick_handle:
                self._tick_handle.cancel()
            for tr in self.tasks:
                if tr.timer:
                    tr.timer.cancel()
        self._end_left_running(final=True)
        if self._adoptions is not None:
            self._adoptions.close()
        outcome = await self._finish_run()
        for sink in self.options.sinks:
            with contextlib.suppress(Exception):  # after the journal, best effort: a
                await sink.close()  # sink's failure is never the run's end
        self.view.end()
        return outcome

    def _pass(self) -> None:
        """Start what may start: decide, journal the decisions, then act on them."""
        launches = self._decide()
        self._check_anchor(first_only=True)  # what is journaled now must stay reachable
        self.journal.commit()
        for tr, launch in launches:
            self._launch(tr, launch)

    def _post(self, *event: Any) -> None:
        self._events.append(event)
        self._wake.set()

    def _post_and_pass(self, *event: Any) -> None:
        """`_post`, then, if the loop is parked with nothing else to do, its next pass
        right here: a process exit is handled, and the tasks it frees are started, in the
        callback that noticed it instead of an event-loop iteration later. An error is
        handed to the loop, which raises it."""
        if not self._parked or self._wake.is_set():
            self._post(*event)
            return
        self._events.append(event)
        self._parked = False  # while this pass runs, what it posts goes to the loop
        try:
            self._handle_events()
            self._pass()
            if self._finished():
                self._wake.set()
            else:
                self.view.idle()
        except BaseException as e:  # the loop raises it
            self._inline_error = e
            self._wake.set()
        finally:
            self._parked = True  # the loop still waits

    def _handle_events(self) -> None:
        while self._events:
            events, self._events = self._events, []
            for kind, *args in events:
                getattr(self, f"_on_{kind}")(*args)

    def _finished(self) -> bool:
        if self._active or (self._executor and self._executor.running):
            return False
        return self._cancelling or self._draining or self._terminal_count == len(self.tasks)

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self) -> list[tuple[TaskRun, Launch | None]]:
        if self._cancelling or self._draining:
            return []
        self._admit_ready()
        if self._draining:  # a `when:` that could not be evaluated failed a task (--fail-fast)
            return []
        return [
            (self.tasks[v], self._new_attempt(self.tasks[v])) for v in self._d.start(self.cap())
        ]

    def _admit_ready(self) -> None:
        ready = self._d.take_ready()
        while ready:
            for v in ready:
                tr = self.tasks[v]
                if tr.state is not TaskState.PENDING:
                    continue  # restored from the journal, or already decided
                run, why = self._evaluate_when(tr)
                if run and why is None:
                    why = self._render_places(tr)
                if why is not None:
                    tr.unstarted = True  # the file's doing: nothing for its agent to be told
                    self._fail(tr, TaskState.FAILED, why)
                elif not run:
                    when = tr.task.when
                    said = (
                        "turned off (when: false)" if when == "false" else f"when: {when} is false"
                    )
                    self._set(tr, TaskState.SKIPPED, reason=said)
                    self._d.complete(v)
                    self._terminal(tr)
                else:
                    self._set(tr, TaskState.READY)
                    self._d.admit(v)
            ready = self._d.take_ready()

    def _evaluate_when(self, tr: TaskRun) -> tuple[bool, str | None]:
        if tr.task.when is None:
            return True, None
        expr = self._condition(tr.task.when, allow_output=False)
        try:
            return expr.evaluate(self.options.flags, self._outputs(expr)), None
        except conditions.ConditionError as e:
            return False, f"when: {tr.task.when!r} could not be evaluated: {e}" + self._no_output(
                expr.tasks
            )

    def _render_places(self, tr: TaskRun) -> str | None:
        """Put the values of the `${{ }}` places of `tr`'s prompt and env in (`tr.prompt`,
        `tr.env`), now that what they read is known; why not, if one cannot be had."""
        texts = [("prompt", tr.task.prompt, PROMPT_MAX, "a prompt")]
        texts += [
            (f"env.{key}", value, ENV_VALUE_MAX, "an environment variable")
            for key, value in tr.task.env.items()
        ]
        env: dict[str, str] = {}
        for name, source, limit, what in texts:
            if source is None or "${{" not in source:
                continue
            try:
                template = conditions.template(source)  # checked when the file was loaded
            except ValueError as e:  # as it was resumed with --force, say
                return f"{name} {e}"
            assert template is not None
            outputs = self._outputs_read(template.expressions)
            try:
                text = template.render(self.options.flags, outputs)
            except conditions.ConditionError as e:
                return f"{name}: {e}" + self._no_output(
                    frozenset().union(*(x.tasks for x in template.expressions))
                )
            if (size := len(text.encode())) > limit:
                return (
                    f"{name}: with the values of its ${{{{ }}}} put in it is {size:,} bytes, "
                    f"more than {what} may hold ({limit // 1024} KiB): put less of the "
                    "outputs in it (a task can write a large result to a file and name the "
                    "file in its output)"
                )
            if name == "prompt":
                tr.prompt = text
            else:
                env[name[4:]] = text
                self._mask_if_secret(tr, name[4:], text)
        tr.env = env or None
        return None

    def _mask_if_secret(self, tr: TaskRun, name: str, value: str) -> None:
        """An upstream output put in a variable whose name says it is secret (a token a
        task made, `DEPLOY_TOKEN: ${{ outputs.auth.token }}`) is masked as the environment's
        secrets are (keys/envsecrets.py): in what abreast keeps of the task's log, and, by
        its fingerprint journaled before the attempt starts, where a live log is shown."""
        from abreast.keys.envsecrets import MIN_CHARS, secret_name
        from abreast.keys.pool import fingerprint

        masked = self.options.masked
        if len(value) < MIN_CHARS or not secret_name(name) or any(v == value for _, v in masked):
            return
        fp = fingerprint(value)
        masked.append((fp, value))
        masked.sort(key=lambda s: (-len(s[1]), s[1]))  # a value inside another after it
        self.journal.stage_event(self.run_id, "secret.masked", tr.id, variable=name, fingerprint=fp)

    def _no_output(self, read: frozenset[str]) -> str:
        """Why tasks an expression reads have no output, when that is because they were
        skipped (their dependents run, and `outputs` has nothing of theirs)."""
        skipped = [t for t in sorted(read) if self.by_id[t].state is TaskState.SKIPPED]
        if not skipped:
            return ""
        return (
            f"; {', '.join(skipped)} {'was' if len(skipped) == 1 else 'were'} skipped (its "
            f"`when:` was false), so there is no output to read: test "
            f"`'{skipped[0]}' in outputs` first"
        )

    def _condition(self, source: str, *, allow_output: bool) -> conditions.Expression:
        expr = self._conditions.get(source)
        if expr is None:
            expr = self._conditions[source] = conditions.parse(source, allow_output=allow_output)
        return expr

    def _outputs(self, expr: conditions.Expression) -> dict[str, Any]:
        """Succeeded tasks' outputs, for `expr`: none when it reads none (a flag test),
        so that a workflow of many conditional tasks does not cost O(tasks) each."""
        return self._outputs_read([expr])

    def _outputs_read(self, exprs: list[conditions.Expression]) -> dict[str, Any]:
        """The succeeded tasks' outputs that `exprs` read: none when none reads outputs,
        only the named tasks' when each reads them by name, else every task's."""
        reading = [x for x in exprs if x.reads_outputs]
        if not reading:
            return {}
        if all(x.by_name for x in reading):
            return self._succeeded_outputs(
                frozenset().union(*(x.tasks | x.probed for x in reading))
            )
        return self._succeeded_outputs()

    def _succeeded_outputs(self, only: frozenset[str] | None = None) -> dict[str, Any]:
        """The outputs of the tasks that succeeded (`only`: of those of these names)."""
        if only is None:
            runs: Iterable[TaskRun] = self.tasks
        else:
            runs = [tr for name in only if (tr := self.by_id.get(name)) is not None]
        return {tr.id: tr.output or {} for tr in runs if tr.state is TaskState.SUCCEEDED}

    def _new_attempt(self, tr: TaskRun) -> Launch | None:
        tr.attempts += 1
        n = tr.attempts
        now = time.time()
        if tr.started_at is None:
            tr.started_at = now
        w = self._wave[tr.v]
        if self._wave_first_start[w] is None:
            self._wave_first_start[w] = now
        log, output = self._paths(tr.id, n)
        tr.last_log = log
        tr.timed_out = False
        tr.ooms_before = self._ooms
        self._set(tr, TaskState.RUNNING, attempts=n, started_at=tr.started_at)
        self.journal.stage_new_attempt(
            self.run_id,
            tr.id,
            n,
            state="running",
            started_at=now,
            log=log,
            status_file=self._exits,
            output_file=output,
            feedback=tr.feedback,
        )
        self.journal.stage_event(self.run_id, "task.started", tr.id, ts=now, attempt=n)
        needs_keys = self.options.keys is not None and self.options.keys.pool_of(tr.task)
        if (
            not self.isolation.instant
            or needs_keys
            or (tr.task.locks and self.sup.coord is not None)
        ):
            return None  # prepared asynchronously (locks, a worktree); launched when ready
        return self._launch_spec(tr, n, self._root, log, output)

    def _paths(self, task_id: str, n: int) -> tuple[str, str]:
        """(log, output file) of attempt `n`: plain strings, on the hot path."""
        d, name = self._dir, f"{task_id}.{n}"
        return f"{d}/logs/{name}.log", f"{d}/outputs/{name}.json"

    def _launch_spec(
        self,
        tr: TaskRun,
        n: int,
        cwd: str,
        log: str,
        output: str,
        extra_env: dict[str, str] | None = None,
    ) -> Launch:
        task = tr.task
        command = task.run if task.run is not None else self.wf.agents[str(task.agent)].run
        env = dict(self.options.base_env)
        base_path = env.get("PATH")
        if not self.isolation.instant:
            env.update(self.isolation.env_for(cwd))
        if task.run is None and task.agent is not None:
            env.update(self.wf.agents[task.agent].env)
        env.update(task.env)
        if tr.env:
            env.update(tr.env)  # values read from upstream outputs
        if env.get("PATH") is not base_path:  # an `env:` set its own: `abreast` stays found
            env["PATH"] = self._shim_first(env["PATH"])
        if extra_env:
            env.update(extra_env)  # the leased key, or the proxy's address and token
        told = task.prompt if tr.prompt is None else tr.prompt
        bounds = self.isolation.bounds(tr.id) if told else ""
        feedback = tr.feedback
        if not self.isolation.instant and (carried := self.isolation.carried(tr.id, n)):
            feedback = f"{feedback}\n\n{carried}" if feedback else carried
        prompt = prompt_for(told, n, feedback, bounds)
        env.update(
            {
                "ABREAST_RUN_ID": self.run_id,
                "ABREAST_TASK_ID": tr.id,
                "ABREAST_ATTEMPT": str(n),
                "ABREAST_OUTPUT": output,
                "ABREAST_STATE": self.location.coord_url,
                "ABREAST_PROMPT": prompt,
                "ABREAST_FEEDBACK": feedback or "",
            }
        )
        if prompt:  # what the attempt was told, for `abreast logs TASK --prompt`
            with os.fdopen(create_new(prompt_file(output)), "w", encoding="utf-8") as f:
                f.write(prompt)
        if not self.isolation.instant:
            env["ABREAST_WORKTREE"] = cwd  # where `abreast signal` snapshots its files from
        if task.ports:
            ports = self._ports.take(tr.id, task.ports)
            env["ABREAST_PORT"] = str(ports[0])
            env["ABREAST_PORTS"] = " ".join(map(str, ports))
        inputs = self._inputs(tr)
        if inputs:
            path = output.removesuffix(".json") + ".inputs.json"
            with os.fdopen(create_new(path), "w", encoding="utf-8") as f:
                json.dump(inputs, f)
            env["ABREAST_INPUTS"] = path
        # Not on a Ray node: what protects this machine's checkout is not there.
        sandbox = self.isolation.sandbox if self.options.executor is None else ()
        return Launch(
            self.run_id, tr.id, n, command, cwd, env, log, self._exits, task.shell, sandbox
        )

    def _shim_first(self, path: str) -> str:
        """PATH with the directory of the `abreast` tasks call first, when the run's
        environment has it (engine/runs.py `_abreast_shim`)."""
        shim = str(self.location.bin_dir)
        base = self.options.base_env.get("PATH", "")
        if base.startswith(shim + os.pathsep) and not path.startswith(shim + os.pathsep):
            return f"{shim}{os.pathsep}{path}"
        return path

    def _inputs(self, tr: TaskRun) -> dict[str, Any]:
        """The JSON outputs of the tasks `tr` needs whole that wrote one, by task id: what
        $ABREAST_INPUTS names (a task waiting only for a signal has no output to read yet)."""
        out: dict[str, Any] = {}
        for need in tr.task.needs:
            if ":" not in need and (dep := self.by_id[need]).output:
                out[need] = dep.output
        return out

    # -- acting ------------------------------------------------------------------------------

    def _launch(
        self, tr: TaskRun, launch: Launch | None, leases: list[Lease] | None = None
    ) -> None:
        if launch is None:
            self._spawn_background(self._prepare_and_launch(tr, tr.attempts))
            return
        assert self._executor is not None
        try:
            running = self._executor.start(launch)
        except OSError as e:
            self.sup.release_unused(leases or [])
            self._post("exit", None, tr, Exit(None, None, 0.0, 0), f"could not start: {e}")
            return
        tr.running = running
        tr.killed_for = None
        executor, keys, n = self._executor, self.options.keys, launch.attempt
        self.sup.started(
            tr.id,
            n,
            running.pid,
            launch.log,
            leases or [],
            lambda: executor.stats(running),
            None if keys is None else lambda: keys.waiting_on_provider(tr.id, n),
            max_rss=tr.task.max_memory,
        )
        self.journal.stage_attempt(
            self.run_id,
            tr.id,
            launch.attempt,
            pid=running.pid or None,  # 0: on another machine (Ray): not a pid here
            pgid=running.pgid or None,
            start_ticks=running.ticks,
            workdir=launch.cwd,
        )
        if tr.task.timeout:
            tr.timer = asyncio.get_running_loop().call_later(
                tr.task.timeout, self._post, "timeout", tr, running
            )
        self.view.started(tr)

    async def _prepare_and_launch(self, tr: TaskRun, n: int) -> None:
        leases: list[Lease] = []
        keys = self.options.keys
        pool = keys.pool_of(tr.task) if keys else None
        key_env: dict[str, str] = {}

        def give_back() -> None:
            self.sup.release_unused(leases)
            if keys is not None:
                keys.release(tr.id, n)

        try:
            if tr.task.locks and self.sup.coord is not None:
                leases = await self.sup.acquire_locks(tr.id, n, tr.task.locks)
            if keys is not None and pool is not None:
                key_env = await keys.lease(tr.id, n, pool, tr.task.max_tokens)
            if self.isolation.instant:
                cwd = self.isolation.root
            else:
                cwd = await self.isolation.prepare(tr.id, n)
        except Exception as e:  # the attempt fails with the reason; the run goes on
            give_back()
            if isinstance(e, WaitStopped) and self._draining:
                self._post("not_started", tr, n)
            else:
                self._post("exit", None, tr, Exit(None, None, 0.0, 0), f"could not prepare: {e}")
            return
        if self._cancelling or tr.attempts != n:
            give_back()
            self._post("exit", None, tr, Exit(None, None, 0.0, 0), "cancelled before start")
            return
        if self._draining:  # it waited (a lock, a key, its worktree) and has started nothing
            give_back()
            self._post("not_started", tr, n)
            return
        if leases:  # by which a task still running when its leases run out is fenced off
            assert self.sup.coord is not None  # it granted them
            key_env = {**key_env, **leases_env(leases, self.sup.coord.store_id)}
        launch = self._launch_spec(tr, n, str(cwd), *self._paths(tr.id, n), key_env)
        self.journal.commit()  # where it runs, and from which commit, before it runs
        self._launch(tr, launch, leases)
        self._wake.set()  # the pid is staged; let the loop commit it

    def _on_not_started(self, tr: TaskRun, n: int) -> None:
        """Attempt `n` was still being prepared (waiting for a lock or a key, its worktree
        being made) when the run drained: it started nothing, so it is not a failure and
        spends no retry; the task is cancelled, for `abreast resume` to run."""
        if tr.attempts != n or tr.state is not TaskState.RUNNING:
            return
        if self._cancelling:
            self._on_exit(None, tr, Exit(None, None, 0.0, 0), "cancelled before start")
            return
        self.journal.stage_attempt(
            self.run_id,
            tr.id,
            n,
            state="interrupted",
            ended_at=time.time(),
            reason=self._not_started(again=False),
        )
        self._d.release(tr.v)
        self._release(tr, keep=False)
        self._set(tr, TaskState.CANCELLED, reason=self._not_started(again=n > 1))
        self._terminal(tr)

    def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """What escapes a task's preparation or landing (each settles its own failures:
        the journal that cannot be written, a full disk) is the run's end, raised by the
        loop as its own errors are; left unread, it left the task running for ever and
        printed asyncio's "Task exception was never retrieved" traceback."""
        self._background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._inline_error is None:
            self._inline_error = task.exception()
        self._wake.set()

    def _process_exited(self, running: Running, exit_: Exit) -> None:
        tr = self.by_id[running.launch.task_id]
        self._post_and_pass("exit", running, tr, exit_, exit_.error)

    # -- events ------------------------------------------------------------------------------

    def _on_exit(
        self, running: Running | None, tr: TaskRun, exit_: Exit, start_error: str | None
    ) -> None:
        if running is not None and tr.running is not running:
            return  # a stale process of an earlier attempt
        if tr.timer:
            tr.timer.cancel()
            tr.timer = None
        tr.running = None
        if tr.task.ports:
            self._ports.give_back(tr.id)
        if running is not None:
            self._after_exit(running)
        n = tr.attempts
        sampled = self.sup.ended(tr.id)
        if self.options.keys is not None:
            self.options.keys.release(tr.id, n)
        secrets = self._secrets()
        files = [tr.last_log, self._paths(tr.id, n)[1]] if tr.last_log and secrets else []
        if files:  # one too short to hold any (most: nothing printed) needs no thread
            shortest = min(len(value.encode()) for _, value in secrets)
            files = [f for f in files if log_size(f) >= shortest]
        if files:  # a key or secret it printed stays in no file of it
            scrub = asyncio.to_thread(scrub_files, files, secrets)
            future = asyncio.ensure_future(scrub)
            self._scrubs.add(future)
            future.add_done_callback(self._scrubs.discard)
        peak = max(exit_.maxrss_bytes, running.peak_rss_bytes if running else 0, sampled)
        tr.peak_rss_bytes = max(tr.peak_rss_bytes, peak)
        tr.busy_s += exit_.wall_s
        if exit_.host is not None:
            self.journal.stage_event(self.run_id, "task.ran_on", tr.id, attempt=n, host=exit_.host)
        tr.exit_code, tr.signal = exit_.exit_code, exit_.signal
        stuck = ""  # why another attempt would not start either
        if self.isolation.instant or not exit_.ok or start_error is not None:
            self._d.release(tr.v)  # else the slot is held until the work is settled
        if start_error is not None:
            reason = start_error
        elif tr.killed_for:
            reason = tr.killed_for
        elif tr.timed_out:
            reason = f"timed out after {tr.task.timeout:g}s; its process tree was killed"
            if exit_.signal == signal.SIGKILL and not self._force_kill:
                # (Its end took the grace as well: a 1s timeout ended after 6s, unsaid.)
                reason += f" (it ignored TERM: KILLed {self.options.kill_grace_s:g}s later)"
        elif exit_.ok:
            reason = ""
        else:
            reason = describe_status(exit_.exit_code, exit_.signal)
            if running is not None:
                reason += failed_at(running.launch, exit_.exit_code)
            else:  # it ended while abreast was down: as its wrapper recorded it all the same
                task = tr.task
                command = task.run if task.run is not None else self.wf.agents[str(task.agent)].run
                reason += failed_in(command, task.shell, self._exits, tr.id, n, exit_.exit_code)
            out_of_memory = self._oom_killed(tr, exit_, peak)
            if out_of_memory:
                reason += out_of_memory
                self._fewer_at_once(tr)
            if running is not None:
                reason = "\n".join([reason, *self._failure_hints(running.launch)])
                if exit_.exit_code == 127 and tr.failures < tr.task.retries:
                    stuck = self._not_retried(running.launch)
                    reason += stuck
                if running.launch.sandbox:
                    reason += self._read_only_hint(tr)
        self.journal.stage_attempt(
            self.run_id,
            tr.id,
            n,
            state="succeeded" if not reason else "failed",
            ended_at=exit_.ended_at or time.time(),
            exit_code=exit_.exit_code,
            signal=exit_.signal,
            peak_rss_bytes=peak,
            wall_s=exit_.wall_s,
            reason=reason or None,
        )
        self.journal.stage_task(
            self.run_id,
            tr.id,
            exit_code=exit_.exit_code,
            signal=exit_.signal,
            peak_rss_bytes=tr.peak_rss_bytes,
        )
        if self._cancelling:
            self._release(tr, keep=True)
            self._set(tr, TaskState.CANCELLED, reason="cancelled")
            self._terminal(tr)
            return
        if reason:
            self._attempt_failed(
                tr, reason, timed_out=tr.timed_out, with_log=start_error is None, retry=not stuck
            )
            return
        self._attempt_succeeded(tr)

    def _oom_killed(self, tr: TaskRun, exit_: Exit, peak: int) -> str:
        """For an attempt ended by a KILL abreast did not send (its shell's status 137, or
        the signal itself), where the kernel's out-of-memory killer ended a process on
        this machine while it ran: said, with what the attempt held, since tasks side by
        side share the memory. The count is read at each tick (once a second) rather than
        as each attempt starts, which is on the way of every start; a kill of the second
        before it started reads as one while it ran: "most likely"."""
        killed = exit_.signal == signal.SIGKILL or exit_.exit_code == 128 + signal.SIGKILL
        if not killed or exit_.host is not None:  # (this machine's count: not a Ray node's)
            return ""
        before, now = tr.ooms_before, oom_kills()
        if before is None or now is None or now <= before or self._force_kill:
            return ""
        ended = counted(now - before, "process", "processes")
        held = f" (its processes held up to {format_size(peak)})" if peak else ""
        return (
            f": out of memory, most likely: the kernel's out-of-memory killer ended {ended} "
            f"on this machine while it ran{held}\ntasks side by side share the memory: lower "
            "max_parallel, or set `max_memory` on the task that grows, to have abreast end it "
            "first and say so"
        )

    def _fewer_at_once(self, tr: TaskRun) -> None:
        """`tr` ran out of memory: its retry, beside as many others, would likely meet the
        same end, so one task fewer at once from now on (its slot was given back already)."""
        side_by_side = len(self._d.running) + 1
        if side_by_side > 1 and side_by_side - 1 < self.cap():
            self._memory_cap = side_by_side - 1
            self._memory_why = (
                f"{tr.id} ran out of memory with {side_by_side} tasks at once: at most "
                f"{side_by_side - 1} from now on (cap {self._memory_cap} of {self.options.cap})"
            )
            self._note_cap()

    def _read_only_hint(self, tr: TaskRun) -> str:
        """For a failed attempt of a protected checkout (`main_checkout: protect`) whose
        log says it met the checkout's read-only mount: where to write instead (said to
        the agent too, on its next attempt)."""
        root = str(self.isolation.root.resolve())
        tail = self._log_tail(tr)
        if not any("Read-only file system" in line and root in line for line in tail):
            return ""
        return (
            f"\n{root} (the project's checkout) is read-only to tasks (containment: "
            "main_checkout: protect): write in the task's working directory, its own "
            "worktree, by relative paths"
        )

    @staticmethod
    def _not_retried(launch: Launch) -> str:
        """For an attempt that ended with exit 127: why another would not start either (its
        program not on PATH, ...), said as not retried; "" when it might."""
        from abreast.spec.commands import cannot_start

        path = launch.env.get("PATH", os.defpath)
        cause = cannot_start(launch.command, Path(launch.cwd), path, launch.shell == "sh")
        return (
            f"\nnot retried, whatever its retries: its command cannot start ({cause})"
            if cause
            else ""
        )

    def _failure_hints(self, launch: Launch) -> list[str]:
        """What may explain a failed attempt beyond its exit status: a file its command
        names that is in the user's checkout and not where it ran (never committed), or
        that is beside the workflow file rather than at the root, where commands run; a
        script it runs saved with Windows line endings."""
        from abreast.spec.commands import (
            bash_word_hints,
            beside_text,
            beside_workflow,
            command_paths,
            crlf_script,
            crlf_text,
        )

        hints = (
            [] if self.isolation.instant else self.isolation.why_failed(launch.cwd, launch.command)
        )
        script = crlf_script(Path(launch.cwd), launch.command)
        if script is not None:
            hints.append(crlf_text(script))
        if launch.shell == "sh":  # `source` "not found", `[[` quietly false in an `if`
            hints += bash_word_hints(launch.command)
        if self.wf.source is not None:
            paths = command_paths(launch.command)
            found = beside_workflow(Path(self._root), Path(self.wf.source).parent, paths)
            hints += [beside_text(path, there) for path, there in found]
        return hints[:3]

    def _on_adopt(self, tr: TaskRun, attempt: int, exit_: Exit) -> None:
        """An attempt that ended while no orchestrator watched: take its recorded status."""
        self.view.note(
            f"{tr.id}: attempt {attempt} ended while abreast was down "
            f"({describe_status(exit_.exit_code, exit_.signal)}); taking its result"
        )
        self._on_exit(None, tr, exit_, None)

    def _attempt_succeeded(self, tr: TaskRun) -> None:
        output, problem = self._read_output(tr)
        if problem:
            self._reject(tr, problem)
            self._attempt_failed(tr, problem, timed_out=False, with_log=False)
            return
        tr.output = output
        if tr.task.gate is not None:
            ok, why = self._check_gate(tr)
            if not ok:
                self._reject(tr, f"gate not met: {why}")
                tr.iterations += 1
                self.journal.stage_task(self.run_id, tr.id, iterations=tr.iterations)
                if tr.iterations < tr.task.max_iterations:
                    self._send_back(tr, f"gate not met: {why}", kind="gate", delay_s=0.0)
                else:
                    self._fail(
                        tr,
                        TaskState.FAILED,
                        f"gate still not met after {tr.iterations} iterations: {why}"
                        if tr.iterations > 1
                        else f"gate not met (max_iterations: 1): {why}",
                    )
                return
        if self.isolation.instant:
            self._succeed(tr)
            return
        # Its output journaled now, not only once it lands: a resume that lands its work
        # (the orchestrator died with it on the merge queue) hands it on all the same.
        self._set(tr, TaskState.INTEGRATING, output=tr.output)
        tr.integrating_since = time.monotonic()
        self._spawn_background(self._settle_and_integrate(tr, tr.attempts))

    async def _settle_and_integrate(self, tr: TaskRun, n: int) -> None:
        try:
            verdict = await self.isolation.settle(tr.id, n)
        except Exception as e:  # reported as the task's failure, not the run's
            verdict = Verdict(Outcome.FAILED, f"could not take in its work: {e}", kind="error")
        self._post("settled", tr)
        if verdict is None:
            await self._integrate(tr, n)
        else:
            self._post("verdict", tr, n, verdict)

    def _on_settled(self, tr: TaskRun) -> None:
        # Its work is committed: the slot is free for the next task, but not for a task
        # whose `owns` overlaps its own until that work lands (or does not).
        self._d.hold(tr.v)

    async def _integrate(self, tr: TaskRun, n: int) -> None:
        try:
            verdict = await self.isolation.integrate(tr.id, n)
        except Exception as e:  # reported as the task's failure, not the run's
            verdict = Verdict(Outcome.FAILED, f"integration failed: {e}", kind="error")
        self._post("verdict", tr, n, verdict)

    def _on_verdict(self, tr: TaskRun, n: int, verdict: Verdict) -> None:
        if tr.attempts != n or tr.state is not TaskState.INTEGRATING:
            return
        if verdict.outcome is Outcome.LANDED:
            self._succeed(tr)
        elif self._cancelling:
            self._release(tr, keep=True)
            self._set(tr, TaskState.CANCELLED, reason="cancelled")
            self._terminal(tr)
        elif verdict.outcome is Outcome.SEND_BACK:
            self._reject(tr, verdict.detail)
            self.journal.stage_event(
                self.run_id,
                "merge.sent_back",
                tr.id,
                attempt=n,
                kind=verdict.kind,
                detail=verdict.detail[:2000],
            )
            if verdict.kind == "resume":  # its work was lost (its worktree gone), by no
                # fault of the task's: run again, no retry spent (it failed with none left)
                self._send_back(tr, verdict.detail, kind="resume", delay_s=0.0)
            else:
                self._attempt_failed(tr, verdict.detail, timed_out=False, with_log=False)
            if verdict.files:
                self._conflicted_in(tr, verdict.files)
        else:
            self._reject(tr, verdict.detail)
            self._fail(tr, TaskState.FAILED, verdict.detail)
            if verdict.stops_run:  # no other task's work could land either
                self.journal.stage_event(
                    self.run_id, "merge.held_back", tr.id, attempt=n, why=verdict.stops_run
                )
                self._on_drain(verdict.stops_run, f"{verdict.stops_run}, so no work can land")

    def _conflicts_before(self) -> None:
        """A resumed run's merge conflicts before it stopped: the tasks they keep apart
        stay apart (said again, as each pair is)."""
        if self.isolation.instant:
            return
        for e in self.journal.events(self.run_id, types=("merge.conflict",)):
            tr = self.by_id.get(e.task_id or "")
            files = e.data.get("files")
            if tr is not None and isinstance(files, list) and files:
                self._conflicted_in(tr, tuple(str(f) for f in files))

    def _conflicted_in(self, tr: TaskRun, files: tuple[str, ...]) -> None:
        """`tr`'s work conflicted at its merge in `files`: from now on it does not run
        beside a task whose work conflicted in one of them too. Side by side, their next
        attempts would start from the same head and conflict again, one landing a round,
        until their retries ran out; one after the other, each starts from the work of
        the one before. (Not a pair where one waits for the other's signal: its merge
        waits for that task's end.)"""
        peers: dict[int, str] = {}
        for name in files:
            group = self._conflicted.setdefault(name, set())
            for u in group:
                peers.setdefault(u, name)
            group.add(tr.v)
        if tr.state.terminal:  # no attempt of it is to come
            return
        waits = self.graph.signal_waits
        kept_apart = []
        for u, name in peers.items():
            if (u, tr.v) in waits or (tr.v, u) in waits or self.tasks[u].state.terminal:
                continue
            if self._d.exclude(u, tr.v):
                self._apart.setdefault(tr.v, {})[u] = name
                self._apart.setdefault(u, {})[tr.v] = name
                kept_apart.append(self.tasks[u].id)
        if kept_apart:
            *others, last = [*kept_apart, tr.id]
            shown = ", ".join(map(visible_name, files[:3])) + (" …" if len(files) > 3 else "")
            self.view.note(
                f"{', '.join(others)} and {last} run one after the other from now on: their "
                f"work conflicted in {shown}"
            )

    def _reject(self, tr: TaskRun, why: str) -> None:
        """The attempt's process succeeded but its work was not taken (bad output, gate not
        met, conflict, red check, files it does not own): the attempt is journaled as failed,
        with why, so that timelines and reports do not show it as a success."""
        self.journal.stage_attempt(
            self.run_id, tr.id, tr.attempts, state="failed", reason=why[:2000]
        )

    def _read_output(self, tr: TaskRun) -> tuple[dict[str, Any], str | None]:
        path = self._paths(tr.id, tr.attempts)[1]
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return {}, None  # no output is an empty output
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EINVAL):  # a symlink; a FIFO or a device
                what = "a symlink" if e.errno == errno.ELOOP else "a FIFO or a device"
                return {}, f"$ABREAST_OUTPUT is {what}, not a file; write a regular file there"
            return {}, f"could not read $ABREAST_OUTPUT: {e}"
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read(MAX_OUTPUT_BYTES + 1)  # no more, whatever fstat said before
            if len(raw) > MAX_OUTPUT_BYTES:
                size = max(os.stat(path).st_size, len(raw))
                return {}, (
                    f"wrote {size:,} bytes to $ABREAST_OUTPUT; an output may be at most "
                    f"{MAX_OUTPUT_BYTES:,} bytes (1 MiB): write large results to files "
                    "and put their paths in the output"
                )
            text = _output_text(raw)
        except UnicodeDecodeError as e:
            return {}, (
                f"$ABREAST_OUTPUT is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                f"{e.start}): write the JSON in UTF-8"
            )
        except OSError as e:
            return {}, f"could not read $ABREAST_OUTPUT: {e}"
        if not text.strip():
            return {}, None
        # A direct-mode key or a secret of its environment it wrote: journaled, shown and
        # passed on without it (and the file rid of it with its log, as the attempt ended).
        text = redact(text, self._secrets())
        try:
            data = json.loads(text, parse_constant=_not_json)
            too_deep = json_depth(data) > MAX_OUTPUT_DEPTH
        except json.JSONDecodeError as e:
            return {}, f"wrote invalid JSON to $ABREAST_OUTPUT: {e}" + _json_said_at(text, e)
        except ValueError as e:  # NaN; or a number of over 4300 digits
            return {}, f"wrote invalid JSON to $ABREAST_OUTPUT: {e}"
        except RecursionError:  # nested far deeper still
            too_deep = True
        if too_deep:
            return {}, (
                f"wrote JSON nested over {MAX_OUTPUT_DEPTH} levels deep to $ABREAST_OUTPUT; "
                "an output is for small structured results"
            )
        if not isinstance(data, dict):
            return {}, (f"wrote {type(data).__name__} to $ABREAST_OUTPUT; it must be a JSON object")
        return data, None

    def _check_gate(self, tr: TaskRun) -> tuple[bool, str]:
        gate = str(tr.task.gate)
        expr = self._condition(gate, allow_output=True)
        try:
            ok = expr.evaluate(self.options.flags, self._outputs(expr), tr.output or {})
        except conditions.ConditionError as e:
            seen = f"; its output: {json.dumps(tr.output)[:300]}" if tr.output else ""
            return False, f"{gate} could not be evaluated: {e}{seen}"
        shown = json.dumps(tr.output)[:300]
        return ok, f"{gate} is false for output {shown}"

    def _attempt_failed(
        self, tr: TaskRun, reason: str, *, timed_out: bool, with_log: bool, retry: bool = True
    ) -> None:
        tr.failures += 1
        tail = self._log_tail(tr) if with_log else []
        detail = with_tail(reason, tail)
        self.journal.stage_task(self.run_id, tr.id, failures=tr.failures)
        if retry and tr.failures <= tr.task.retries:
            nominal = tr.task.backoff.delay_s(tr.failures)
            delay = nominal * self.options.rng.uniform(1 - JITTER, 1 + JITTER)
            self._send_back(tr, detail, kind="retry", delay_s=delay)
            return
        final = TaskState.TIMED_OUT if timed_out else TaskState.FAILED
        if reason.startswith("exit "):  # said with the failure as it happens
            tr.last_words = telling_line(tail)
        self._fail(tr, final, reason)

    def _send_back(self, tr: TaskRun, feedback: str, *, kind: str, delay_s: float) -> None:
        """Run the task again after `delay_s`, telling it why in ABREAST_FEEDBACK. While
        the run drains, its next attempt is left to `abreast resume`, told the same."""
        self._d.release(tr.v)  # no slot is held while it waits
        self._release(tr, keep=False)
        feedback = bounded_feedback(feedback)
        tr.feedback = feedback
        if self._draining:
            why = self._not_started(again=True)
            self._set(tr, TaskState.CANCELLED, feedback=feedback, reason=why)
            self._terminal(tr)
            return
        tr.retry_at = time.time() + delay_s
        self._set(tr, TaskState.PENDING, feedback=feedback)
        self.journal.stage_event(
            self.run_id,
            "task.retrying",
            tr.id,
            attempt=tr.attempts,
            kind=kind,
            delay_s=round(delay_s, 3),
            reason=feedback[:2000],
        )
        self.view.retrying(tr, delay_s)
        tr.timer = asyncio.get_running_loop().call_later(delay_s, self._post, "retry_due", tr)

    def _on_retry_due(self, tr: TaskRun) -> None:
        tr.timer = None
        tr.retry_at = None
        if self._cancelling or tr.state is not TaskState.PENDING:
            return
        self._set(tr, TaskState.READY)
        self._d.retry(tr.v)

    def _on_timeout(self, tr: TaskRun, running: Running) -> None:
        if tr.running is not running:
            return
        tr.timed_out = True
        self.view.note(f"{tr.id}: timed out after {tr.task.timeout:g}s; killing its tree")
        self._kill(running)

    def _kill(self, running: Running) -> None:
        if running.pgid > 1 and running.pgid in self._ending_groups and not self._force_kill:
            # Already being ended (a cancel, a timeout): its TERM was sent and its KILL
            # follows the grace. A second TERM (its first process exited, leaving the rest
            # of the group) is a second Ctrl-C to those that count them: `abreast lock`
            # KILLed its command at once, with no time to end cleanly.
            return
        grace = 0.0 if self._force_kill else self.options.kill_grace_s
        assert self._executor is not None
        self._killing_group(running.pgid, self._executor.kill(running, grace))

    def _kill_ending_groups(self) -> None:
        """KILL now the groups being ended with a grace (an attempt whose shell died at the
        first TERM, leaving a process that ignores it): their `kill_tree` then sees them
        gone and ends."""
        for pgid in list(self._ending_groups):
            if pgid > 1:  # a local process group (a Ray attempt has none here: 0)
                signal_tree(pgid, signal.SIGKILL)

    def _killing_group(self, pgid: int, kill: Coroutine[Any, Any, None]) -> None:
        """Run `kill` (of process group `pgid`) to its end; the run's end waits for it."""
        self._ending_groups.add(pgid)
        task = asyncio.create_task(kill)
        self._killing.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._killing.discard(task)
            self._ending_groups.discard(pgid)

        task.add_done_callback(done)

    def _after_exit(self, running: Running) -> None:
        """What an ended attempt left running is looked for once the exits of this loop
        iteration are all in: each look reads /proc, and 500 attempts cancelled at once
        looked 500 times, each time at every process (3 s of a 2-core machine)."""
        self._exited.append(running)
        if len(self._exited) == 1:
            asyncio.get_running_loop().call_soon(self._look_after_exits)

    def _look_after_exits(self) -> None:
        exited, self._exited = self._exited, []
        if not exited or self._executor is None:
            return
        since = time.monotonic()  # after these exits: one reading of /proc serves them all
        for running in exited:
            if self._executor.leftovers(running, since):
                self._kill(running)  # it left processes behind in its group: end them too
        self._end_left_running()

    def _end_left_running(self, *, final: bool = False) -> None:
        """End what attempts that have ended left running in a process group or session of
        their own (`setsid server &`, a daemon): out of reach of the attempt's group, it
        would outlive the attempt and the run. Noted and journaled (orphan.cleaned). What
        merge checks left is the queue's while the run goes, and ended at its end
        (`final`)."""
        if self._adoptions is None or self._executor is None:
            return
        left: dict[tuple[str, int, bool], list[str]] = {}
        for proc in self._adoptions.find(self._executor.running):
            if proc.check and not final:
                continue
            tr = self.by_id.get(proc.task_id)
            if tr is not None and tr.running is not None and tr.attempts == proc.attempt:
                continue  # its attempt still runs: they end with it
            if proc.pgid in self._ending_groups or proc.pgid <= 1:
                continue
            grace = 0.0 if self._force_kill else self.options.kill_grace_s
            self._killing_group(proc.pgid, kill_tree(proc.pgid, grace))
            left.setdefault((proc.task_id, proc.attempt, proc.check), []).append(proc.name)
        for (task_id, attempt, check), names in left.items():
            listed = ", ".join(sorted(set(names)))
            whose = f"the merge check of {task_id}" if check else f"its attempt {attempt}"
            self.view.note(
                f"{task_id}: ending {counted(len(names), 'process', 'processes')} {whose} "
                "left running in a "
                f"session or process group of its own ({listed})"
            )
            if check:
                self.journal.stage_event(
                    self.run_id, "orphan.cleaned", reason="left_running", check_of=task_id
                )
            elif task_id in self.by_id:
                self.sup.orphan_cleaned(task_id, attempt, "left_running")

    def _on_drain(self, why: str, stopped: str = "") -> None:
        """`abreast cancel --drain`: start nothing new (no task, no retry, no send-back);
        what runs (and what is on the merge queue) finishes and lands; the run then ends
        cancelled, for `abreast resume` to carry on. A cancel meanwhile stops it all.
        `stopped`: why a failure stops the run (`--fail-fast`, a check that cannot start),
        which then ends failed, for `abreast resume --retry-failed`."""
        if self._cancelling or self._draining:
            return
        self._draining = True
        self.sup.stop_attempt_waits()  # an attempt waiting for a lock has started nothing
        going = [tr.id for tr in self.tasks if tr in self._active and not self._preparing(tr)]
        self.journal.stage_run(self.run_id, cancel_requested=DRAIN_REQUESTED)  # for `status`
        self.journal.stage_event(self.run_id, "run.draining", reason=why, running=going)
        waiting = f"waiting for {', '.join(going)} to finish" if going else "nothing is running"
        if not stopped:
            self.view.note(
                f"draining ({why}): no new tasks; {waiting}; `abreast resume {self.run_id}` "
                "runs the rest (Ctrl-C stops them now)"
            )
        else:
            self._stopped = stopped
            self.view.note(f"stopping: {stopped}; no new tasks; {waiting}")
        for tr in self.tasks:
            if tr.state in (TaskState.PENDING, TaskState.READY):
                if tr.timer:  # a retry waiting out its backoff
                    tr.timer.cancel()
                    tr.timer = None
                self._set(tr, TaskState.CANCELLED, reason=self._not_started(bool(tr.attempts)))
                self._terminal(tr)

    @staticmethod
    def _preparing(tr: TaskRun) -> bool:
        """Whether its attempt is still being prepared: nothing of it runs yet."""
        return tr.state is TaskState.RUNNING and tr.running is None

    def _not_started(self, again: bool) -> str:
        """Why a task did not start (`again`: its next attempt did not) once the run
        drained: asked to, or stopped by a failure (--fail-fast)."""
        what = "its next attempt was not started" if again else "not started"
        if self._stopped:
            return f"{what}: {self._stopped}"
        return f"{what}: the run was drained (abreast cancel --drain); abreast resume runs it"

    def _on_cancel(self, why: str) -> None:
        if self._cancelling:
            self._force_kill = True
            self.view.note("killing everything now")
            self._kill_ending_groups()
            for running in list(self._executor.running.values() if self._executor else []):
                self._kill(running)
            self.isolation.abort(0.0)
            return
        self._cancelling = True
        self._interrupted = next((sig for sig, w in CANCELLED_BY.items() if w == why), 0)
        # Nothing waits on a lock held elsewhere, nor on a check, until it is done.
        self.sup.stop_waiting()
        self.isolation.abort(self.options.kill_grace_s)
        self.view.note(
            f"cancelling ({why}): no new tasks; stopping running ones (again to kill at once)"
        )
        self.journal.stage_run(self.run_id, cancel_requested=1)
        self.journal.stage_event(self.run_id, "run.cancelling", reason=why)
        for tr in self.tasks:
            if tr.timer:
                tr.timer.cancel()
                tr.timer = None
            if tr.running is not None:
                self._kill(tr.running)
            elif tr.state in (TaskState.PENDING, TaskState.READY):
                self._set(tr, TaskState.CANCELLED, reason="cancelled before it started")
                self._terminal(tr)

    def _on_signals(self, replay: bool = False) -> None:
        """Signals journaled since the last look (SIGUSR1). With `replay`, at the start of
        a resumed run: those given before it stopped, of which only the ones that release
        something now (read by nobody before the crash) are journaled and said again."""
        for task_id, name in self.journal.signals(self.run_id):
            if (task_id, name) in self._seen_signals or task_id not in self.by_id:
                continue
            self._seen_signals.add((task_id, name))
            released = self._d.signal(self.by_id[task_id].v, name)
            if replay and not released:
                continue
            self.journal.stage_event(
                self.run_id,
                "task.signal",
                task_id,
                signal=name,
                released=[self.tasks[v].id for v in released],
            )
            if released:
                self.view.note(
                    f"{task_id} signalled {name!r}: "
                    + ", ".join(self.tasks[v].id for v in released)
                    + " may start"
                )

    def _on_stop_requests(self) -> None:
        """Act on a request to stop: `abreast cancel` (`--drain`) journaled one (typed on
        another machine, or before this process listened for SIGTERM), or a SIGTERM
        (SIGHUP) came before it listened."""
        if self._cancelling:
            return
        if _stop_asked:
            hangup = signal.SIGHUP in _stop_asked
            _stop_asked.clear()
            self._on_cancel(CANCELLED_BY[signal.SIGHUP] if hangup else "abreast cancel")
            return
        asked = self.journal.cancel_requested(self.run_id)
        if asked == DRAIN_REQUESTED:
            self._on_drain("abreast cancel --drain")
        elif asked:
            self._on_cancel("abreast cancel")

    def _on_wake(self) -> None:
        """SIGUSR1: something was journaled for this run (`abreast signal`, `abreast
        cancel --drain`)."""
        self._on_signals()
        self._on_stop_requests()

    def _on_tick(self) -> None:
        self._check_anchor(first_only=False)
        self._on_signals()  # from tasks on other machines, which cannot send SIGUSR1 here
        self._on_stop_requests()
        if self._executor:
            self._executor.sweep()
            reap_orphans(self._executor.running)
            self._end_left_running()
        monitor = self.options.monitor
        if monitor:
            monitor.update()
        self._ooms = oom_kills()  # read each tick, not each start: see _oom_killed
        troubles = self.sup.tick()
        if self.options.keys is not None:
            self._key_warnings(self.options.keys.tick())
            troubles += [
                Trouble(task_id, why, "token_limit")
                for task_id, n, why in self.options.keys.over_budget()
                if self.by_id[task_id].attempts == n
            ]
        for trouble in troubles:
            tr = self.by_id[trouble.task_id]
            if tr.running is None or tr.killed_for:
                continue
            tr.killed_for = trouble.reason
            self.view.note(f"{tr.id}: {trouble.reason}")
            if trouble.kind == "no_activity":
                self.sup.orphan_cleaned(tr.id, tr.attempts, trouble.kind)
            self._kill(tr.running)
        now = time.time()
        if now - self._last_heartbeat >= self.wf.heartbeat.interval:
            self._last_heartbeat = now
            self.journal.stage_run(self.run_id, heartbeat_at=now)
            self._note_waiting()
        self._note_cap()
        if self._locks_inside:
            self._read_lock_waits()
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        self._tick_handle = asyncio.get_running_loop().call_later(
            self.options.tick_s, self._post, "tick"
        )

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed = []
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGINT: lambda: self._post("cancel", CANCELLED_BY[signal.SIGINT]),
            signal.SIGTERM: lambda: self._post("cancel", "abreast cancel"),
            signal.SIGUSR1: lambda: self._post("wake"),
        }
        if hangup_heard():  # else nohup asked for the run to go on
            handlers[signal.SIGHUP] = lambda: self._post("cancel", CANCELLED_BY[signal.SIGHUP])
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (ValueError, RuntimeError):
                pass  # not the main thread (tests driving the engine): no signal handling
        quiet_signal_wakeup(loop)
        return installed

    # -- transitions -------------------------------------------------------------------------

    def _set(self, tr: TaskRun, state: TaskState, **fields: Any) -> None:
        check_transition(tr.id, tr.state, state)
        tr.state = state
        if state is TaskState.RUNNING or state is TaskState.INTEGRATING:
            self._active.add(tr)
        else:
            self._active.discard(tr)
        if "reason" in fields:
            tr.reason = fields["reason"]
        self.journal.stage_task(self.run_id, tr.id, state=state.value, **fields)
        if state is TaskState.READY:
            self.journal.stage_event(self.run_id, "task.ready", tr.id)

    def _release(self, tr: TaskRun, *, keep: bool) -> None:
        if tr.attempts and not self.isolation.instant:
            self.isolation.finished(tr.id, tr.attempts, keep=keep)

    def _succeed(self, tr: TaskRun) -> None:
        if tr.task.send_back is not None and self._sends_back(tr):
            return
        self._release(tr, keep=False)
        tr.feedback = None
        self._set(tr, TaskState.SUCCEEDED, output=tr.output, reason=None)
        if tr.v in self._waited_on:
            self._signals_not_given(tr)
        self._d.complete(tr.v)
        self._terminal(tr)

    def _sends_back(self, tr: TaskRun) -> bool:
        """`tr`, a reviewing task whose attempt succeeded, sends the work of the task it
        reviews back when its `send_back.when` holds: that task runs again told why, then
        `tr` again (and what else waits for that task, which waited for `tr` too). True
        when `tr` does not succeed now: it sent the work back, or failed (the condition
        could not be read, or it still would send the work back after its max_rounds)."""
        back = tr.task.send_back
        assert back is not None
        to = self.by_id[back.to]
        if to.state is not TaskState.SUCCEEDED:
            return False  # skipped by its `when:`: no work to send back
        own = tr.output or {}
        expr = self._condition(str(back.when), allow_output=True)
        try:
            if not expr.evaluate(self.options.flags, self._outputs(expr), own):
                return False
            text = json.dumps(own, indent=2)
            if back.feedback is not None:
                said = self._condition(str(back.feedback), allow_output=True)
                value = said.value(self.options.flags, self._outputs(said), own)
                text = conditions.as_text(value)
        except conditions.ConditionError as e:
            self._reject(tr, f"send_back could not be evaluated: {e}")
            self._fail(tr, TaskState.FAILED, f"send_back could not be evaluated: {e}")
            return True
        rounds = 0  # since the run started, or a resume took it up again (--retry-failed)
        for ev in self.journal.events(self.run_id, types=("task.sent_back", "run.resumed")):
            if ev.type == "run.resumed" and tr.id in ev.data.get("retried", ()):
                rounds = 0
            elif ev.task_id == tr.id:
                rounds += 1
        if rounds >= back.max_rounds:
            why = (
                f"still sent {to.id}'s work back after {rounds} "
                f"round{'s' if rounds != 1 else ''} (send_back.max_rounds: {back.max_rounds}): "
                f"{text}"
            )
            self._reject(tr, why)
            self._fail(tr, TaskState.FAILED, why[:2000])
            return True
        n = rounds + 1
        self.journal.stage_event(
            self.run_id,
            "task.sent_back",
            tr.id,
            to=to.id,
            attempt=tr.attempts,
            round=n,
            max_rounds=back.max_rounds,
            feedback=text[:2000],
        )
        self._release(tr, keep=False)
        # Its next attempt is told what it asked for, to check that it was done.
        tr.feedback = bounded_feedback(
            f"round {n + 1} of the review: the previous attempt sent {to.id}'s work back, "
            f"asking for:\n{text}\n{to.id} has done its work again since: review it anew"
        )
        self._set(tr, TaskState.PENDING, reason=None, feedback=tr.feedback)
        # The work it reviewed runs again, from the integration head that holds it.
        to.feedback = bounded_feedback(
            f"{tr.id} reviewed this task's work and sent it back (round {n} of "
            f"{back.max_rounds}):\n{text}"
        )
        check_transition(to.id, to.state, TaskState.PENDING)
        to.finished_at = None
        self._taken_again(to, TaskState.PENDING, feedback=to.feedback)  # retries anew
        self._terminal_count -= 1
        self._wave_left[self._wave[to.v]] += 1
        self._d.send_back(tr.v, to.v)
        self._set(to, TaskState.READY)
        self.view.note(f"{tr.id} sent {to.id}'s work back (round {n} of {back.max_rounds})")
        return True

    def _signals_not_given(self, tr: TaskRun) -> None:
        """Say each signal of `tr`, which succeeded, that tasks waited for and it never
        gave: they start only now, at its end, not beside it as the workflow meant (its
        command lacks `abreast signal NAME`, or that failed unseen). Signals journaled
        just before it ended are read first."""
        self._on_signals()
        waiting: dict[str, list[str]] = {}
        for v, name in self._waited_on[tr.v]:
            waiter = self.tasks[v]
            if (tr.id, name) not in self._seen_signals and waiter.state is TaskState.PENDING:
                waiting.setdefault(name, []).append(waiter.id)
        for name, ids in waiting.items():
            which = ", ".join(ids)
            text = (
                f"{tr.id} ended without giving its signal {name!r}: {which}, waiting for it, "
                f"started only then, not beside {tr.id} (run `abreast signal {name}` in "
                f"{tr.id}'s command once what {which} needs is there)"
            )
            self.journal.stage_event(
                self.run_id, "task.signal_missed", tr.id, signal=name, waiting=ids, warning=text
            )
            self.sup.warnings.append(text)
            self.view.note(f"warning: {text}")

    def _key_warnings(self, said: list[str]) -> None:
        for text in said:  # journaled by the key broker
            self.sup.warnings.append(text)
            self.view.note(f"warning: {text}")

    def _fail(self, tr: TaskRun, state: TaskState, reason: str) -> None:
        self._release(tr, keep=True)
        self._set(tr, state, reason=reason)
        self._terminal(tr)
        for v in self._d.fail(tr.v):
            blocked = self.tasks[v]
            if blocked.state in (TaskState.PENDING, TaskState.READY):
                self._set(blocked, TaskState.BLOCKED, reason=f"upstream {tr.id} {state}")
                self._terminal(blocked)
        if self.options.fail_fast:  # as make without -k: no new work after a failure
            stopped = f"{tr.id} {state.value} and the run stops at its first failure (--fail-fast)"
            self._on_drain(f"--fail-fast: {tr.id} {state.value}", stopped)

    def _terminal(self, tr: TaskRun) -> None:
        self._terminal_count += 1
        if not self.isolation.instant:
            self.isolation.task_ended(tr.id)
        now = time.time()
        tr.finished_at = now
        self.journal.stage_task(self.run_id, tr.id, finished_at=now)
        self.journal.stage_event(
            self.run_id,
            "task.finished",
            tr.id,
            ts=now,
            state=tr.state.value,
            attempts=tr.attempts,
            exit_code=tr.exit_code,
            signal=tr.signal,
            duration_s=round(tr.busy_s, 6),
            peak_rss_bytes=tr.peak_rss_bytes,
            reason=(tr.reason or "")[:2000] or None,
            **({"before_start": True} if tr.unstarted else {}),
        )
        self.view.finished(tr)
        w = self._wave[tr.v]
        self._wave_left[w] -= 1
        if self._wave_left[w] == 0:
            members = [self.tasks[v] for v in sorted(self._waves[w])]
            first = self._wave_first_start[w] or now
            self.journal.stage_event(
                self.run_id,
                "group.completed",
                None,
                ts=now,
                group=w,
                duration=round((now - first) * 1000),  # milliseconds, as in seed 004
                stagesCompleted=sum(t.state is TaskState.SUCCEEDED for t in members),
                tasks=[t.id for t in members],
            )

    async def _wait_for_kills(self) -> None:
        """Wait for the groups being ended (up to their grace). A Ctrl-C (or TERM, or the
        terminal closing) meanwhile is "kill at once", as it is while the run goes: it
        ended abreast then, and the processes waited for ran on after it."""

        def now(_signum: int) -> None:
            self.view.note("killing everything now")
            self._kill_ending_groups()

        with on_stop_signals(now):
            await asyncio.gather(*self._killing, return_exceptions=True)

    async def _close_isolation(self, success: bool) -> str | None:
        """The isolation's end, which may take a while: with `--land`, the merge checks
        run on the result merged with what base gained since the run started. A Ctrl-C or
        TERM (`abreast cancel`) meanwhile ends those checks (nothing more is landed), and
        the run's heartbeat goes on."""
        if self.isolation.instant:
            return await self.isolation.close(success=success)

        def stop(signum: int) -> None:
            self.view.note("cancelling: the merge checks are ended, nothing more lands")
            self.isolation.abort(self.options.kill_grace_s)
            if signum != signal.SIGTERM:  # Ctrl-C, the terminal closed: abreast ends by it
                self._landing_interrupted = signum

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.options.tick_s)
                self.journal.stage_run(self.run_id, heartbeat_at=time.time())
                self.journal.commit()

        beating = asyncio.create_task(beat())
        try:
            with on_stop_signals(stop):
                return await self.isolation.close(success=success)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    def _log_tail(self, tr: TaskRun) -> list[str]:
        """The last lines of the attempt's log, as abreast records and shows them: a key
        the task was leased, or a secret of its environment, printed there, becomes its
        fingerprint."""
        tail = log_tail(tr.last_log)
        secrets = self._secrets()
        return [redact(line, secrets) for line in tail] if secrets else tail

    def _secrets(self) -> list[tuple[str, str]]:
        """(fingerprint, value) of what no record of a task's output may hold: the keys of
        the run's pools and the secrets of the tasks' environments."""
        keys = self.options.keys
        return self.options.masked + keys.secrets() if keys is not None else self.options.masked

    # -- the end -----------------------------------------------------------------------------

    async def _finish_run(self) -> RunOutcome:
        self._look_after_exits()  # the last exits' leftovers, before the kills are awaited
        if self._killing:
            await self._wait_for_kills()
        if self._scrubs:
            await asyncio.gather(*self._scrubs, return_exceptions=True)
        busy = sum(tr.busy_s for tr in self.tasks)
        if self._draining and not self._cancelling:
            for tr in self.tasks:
                if not tr.state.terminal:  # ready since the drain began: not started
                    self._set(tr, TaskState.CANCELLED, reason=self._not_started(again=False))
                    self._terminal(tr)
        if self._cancelling:
            state = "cancelled"
        elif self._stopped:
            state = "failed"
        elif self._draining and any(tr.state is TaskState.CANCELLED for tr in self.tasks):
            state = "cancelled"
        elif all(tr.state in (TaskState.SUCCEEDED, TaskState.SKIPPED) for tr in self.tasks):
            state = "succeeded"
        else:
            state = "failed"
        failures = [
            Failure(tr.id, tr.state, tr.attempts, tr.reason or "", tr.last_log, self._log_tail(tr))
            for tr in self.tasks
            if tr.state in FAILED_STATES
        ]
        landing = await self._close_isolation(state == "succeeded")
        changes, checks = {}, 0.0
        if not self.isolation.instant:  # what each task's work changed, for the summary
            from abreast.observe.rundata import checks_s, work_changes

            self.journal.commit()  # the merge queue's last verdicts, read back here
            changes = work_changes(self.journal, self.run_id)
            checks = checks_s(self.journal, self.run_id)
        if self.options.keys is not None:  # the last requests, before the run is finished
            self._key_warnings(self.options.keys.tick())
        # What the tasks waited for locks (`abreast lock` in their commands) was no work:
        # one at a time, they would not have waited for each other.
        from abreast.observe.rundata import lock_waits

        by_attempt: dict[str, float] = {}
        for w in lock_waits(self.journal, self.run_id):
            key = f"{w.task}.{w.attempt}"
            by_attempt[key] = by_attempt.get(key, 0.0) + w.wait_s
        waited = sum(by_attempt.values())
        busy -= waited
        now = time.time()
        # Landing included (the run's end is its finished_at); pauses before a resume not.
        wall = max(0.0, now - self.started_at - self.paused_s)
        sequential = busy + checks
        saved = sequential - wall

        summary = {
            "wall_s": round(wall, 3),
            "busy_s": round(busy, 3),
            "checks_s": round(checks, 3),
            "waited_s": round(waited, 3),  # for locks, inside attempts: not in busy_s
            # ... by "TASK.ATTEMPT": what the estimates measured from this run leave out
            "lock_waits": {k: round(v, 3) for k, v in by_attempt.items()},
            "saved_s": round(saved, 3),
            "landing": landing,
            "counts": {s.value: c for s, c in self.counts().items() if c},
        }
        self.journal.stage_run(self.run_id, state=state, finished_at=now, summary=summary)
        self.journal.stage_event(
            self.run_id,
            "workflow.performance",
            ts=now,
            sequentialTime=round(sequential, 3),
            parallelTime=round(wall, 3),
            timeSaved=round(saved, 3),
            percentageSaved=round(100 * saved / sequential, 1) if sequential > 0 else 0.0,
        )
        self.journal.stage_event(self.run_id, "run.finished", ts=now, state=state)
        self.journal.commit()
        return RunOutcome(
            self.run_id,
            state,
            wall,
            busy,
            failures,
            self.tasks,
            landing,
            list(self.sup.warnings) + self.isolation.warnings,
            self.journal.path,
            changes,
            unlanded=self.isolation.unlanded,
            interrupted=self._interrupted if state == "cancelled" else self._landing_interrupted,
            checks_s=checks,
            waited_s=waited,
            lowest_cap=self.lowest_cap,
        )

    # -- resume ------------------------------------------------------------------------------

    def restore(
        self,
        rows: dict[str, dict[str, Any]],
        interrupted: dict[str, tuple[int, Exit | None]],
        retry: frozenset[str] = frozenset(),
        redo: frozenset[str] = frozenset(),
        redo_feedback: str | None = None,
    ) -> None:
        """Load task states from the journal. `interrupted`: task -> (attempt, how it ended
        if a status file says so, else None: it is re-run as a new attempt). `retry`: failed
        tasks to run again (`resume --retry-failed`), with their retries and iterations
        anew and why they failed as feedback; the tasks they blocked wait for them again.
        `redo`: tasks that succeeded, run again with `redo_feedback` (`resume --redo`);
        the tasks that need them are left as they ended."""
        order, _, _ = self.graph.levels()
        held = self.journal.held_back(self.run_id) if retry else set()
        unstarted = self._failed_before_start() if retry else set()
        for v in order:
            tr = self.tasks[v]
            row = rows.get(tr.id)
            if row is None:
                continue
            tr.attempts = row["attempts"]
            tr.failures = row["failures"]
            tr.iterations = row["iterations"]
            tr.output = row["output"]
            tr.feedback = row["feedback"]
            tr.started_at = row["started_at"]
            tr.busy_s = row.get("busy_s", 0.0)
            tr.peak_rss_bytes = row["peak_rss_bytes"] or 0
            tr.exit_code, tr.signal = row["exit_code"], row["signal"]
            state = TaskState(row["state"])
            if tr.attempts:
                tr.last_log = self._paths(tr.id, tr.attempts)[0]
            if state is TaskState.SUCCEEDED and tr.id in redo:
                self._redo(tr, redo_feedback)
            elif state in (TaskState.SUCCEEDED, TaskState.SKIPPED):
                tr.state = state
                tr.finished_at = row["finished_at"]
                self._d.complete(v)
                self._wave_left[self._wave[v]] -= 1
            elif state in FAILED_STATES and tr.id in retry:
                if tr.id in held and self.isolation.can_resume_integration(tr.id, tr.attempts):
                    self._check_again(tr)
                else:
                    told = tr.id not in unstarted
                    self._retry_failed(tr, row["reason"] or f"it {state}", told=told)
            elif state in FAILED_STATES:
                tr.state = state
                tr.finished_at = row["finished_at"]
                tr.reason = row["reason"]
                self._wave_left[self._wave[v]] -= 1
                for b in self._d.fail(v):
                    self.tasks[b].state = TaskState.BLOCKED
                    self.tasks[b].reason = f"upstream {tr.id} {state}"
            elif state is TaskState.BLOCKED:
                if tr.state is not TaskState.BLOCKED:  # what blocked it runs again
                    self.journal.stage_task(
                        self.run_id, tr.id, state="pending", reason=None, finished_at=None
                    )
            elif state is TaskState.INTEGRATING and self.isolation.can_resume_integration(
                tr.id, tr.attempts
            ):
                tr.state = TaskState.INTEGRATING
                tr.integrating_since = time.monotonic()  # its merge starts again now
                self._active.add(tr)
                self._d.hold(v)  # a task whose owns overlaps its own waits for it to land
                self._reintegrate.append((tr, "was on the merge queue"))
            elif tr.id in interrupted:
                attempt, exit_ = interrupted[tr.id]
                if exit_ is not None and attempt == tr.attempts:
                    tr.state = TaskState.RUNNING
                    self._active.add(tr)
                    self._adopt.append((tr, attempt, exit_))
                else:
                    tr.state = TaskState.PENDING
                    self.journal.stage_task(
                        self.run_id, tr.id, state="pending", reason="interrupted"
                    )
            else:  # pending, ready, or cancelled by a cancelled run: run it (again)
                tr.state = TaskState.PENDING
                self.journal.stage_task(self.run_id, tr.id, state="pending", reason=None)
        for tr in self.tasks:
            if tr.state is TaskState.BLOCKED:
                self._wave_left[self._wave[tr.v]] -= 1
            if tr.state.terminal:
                self._terminal_count += 1

    def _check_again(self, tr: TaskRun) -> None:
        """`resume --retry-failed` of a task whose work was held back: the work, kept on
        its branch, goes to the merge queue again (its checks now fixed), not redone."""
        self._taken_again(tr, TaskState.INTEGRATING)
        tr.integrating_since = time.monotonic()
        self._active.add(tr)
        self._d.hold(tr.v)
        self._reintegrate.append((tr, "succeeded, and its checks could not start then"))
        self.journal.stage_attempt(self.run_id, tr.id, tr.attempts, state="succeeded", reason=None)

    def _failed_before_start(self) -> set[str]:
        """The tasks that ended failed before an attempt of theirs started (a `when:` or a
        prompt's `${{ }}` that could not be had): no attempt of theirs failed."""
        ends = {
            e.task_id: e.data for e in self.journal.events(self.run_id, types=("task.finished",))
        }
        return {task for task, d in ends.items() if task is not None and d.get("before_start")}

    def _retry_failed(self, tr: TaskRun, reason: str, *, told: bool) -> None:
        """A failed task runs again (`resume --retry-failed`): as a new attempt, with its
        retries and iterations anew, told why the last one failed (`told`; not when the
        task failed before it started, by its workflow file's doing)."""
        tail = self._log_tail(tr) if tr.last_log else []
        tr.feedback = bounded_feedback(with_tail(reason, tail)) if told else None
        self._taken_again(tr, TaskState.PENDING, feedback=tr.feedback)

    def _redo(self, tr: TaskRun, feedback: str | None) -> None:
        """A task that succeeded runs again (`resume --redo`), as a new attempt from the
        files its work is in, told so and what the user says of it."""
        text = (
            "the previous attempt succeeded, and its work is in the files this attempt "
            "starts from; the user asks for the task to be done again (abreast resume --redo)"
        )
        tr.feedback = bounded_feedback(text + (f":\n{feedback}" if feedback else ""))
        self.journal.stage_event(self.run_id, "task.redo", tr.id, feedback=feedback)
        self._taken_again(tr, TaskState.PENDING, feedback=tr.feedback)

    def _taken_again(self, tr: TaskRun, state: TaskState, **fields: Any) -> None:
        """A task taken up again, in `state`, its retries and iterations anew: a failed
        one by a resume, or one whose work its review sent back."""
        tr.failures = tr.iterations = 0
        tr.state = state
        self.journal.stage_task(
            self.run_id,
            tr.id,
            state=state.value,
            reason=None,
            finished_at=None,
            failures=0,
            iterations=0,
            **fields,
        )


def _priorities(graph: TaskGraph, order: list[int]) -> list[float]:
    from abreast.plan.graph import bottom_levels

    return bottom_levels(graph.succs, graph.estimate_s, order)
