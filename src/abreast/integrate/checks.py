"""Running the workflow's `checks` on a merge result, in a scratch worktree, under locks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from abreast.coord.backend import Lease
from abreast.executor.exits import failed_line, said_at, several_lines
from abreast.executor.local import shell_program
from abreast.executor.logs import (
    log_limit_passed,
    log_size,
    log_tail,
    scrub_secrets,
    telling_line,
)
from abreast.executor.process import describe_status, kill_tree, leases_env, tree_stats
from abreast.executor.wrapper import CHECK_BASH, SHELLS
from abreast.spec.commands import bash_word_hints, cannot_start
from abreast.spec.model import Check


@dataclass
class Held:
    """A lock held around a check: its lease, and why it was lost while held (its holder
    then ends what runs under it: the check's result does not count)."""

    lease: Lease
    store_id: str  # the coordination store it is a lease of
    lost: str | None = None


# (lock, holder) -> a context holding it (giving None: held within this process)
LockHolder = Callable[[str, str], AbstractAsyncContextManager["Held | None"]]
LOST_LOCK_TRIES = 3  # runs of a check that lost its lock before it counts as red
LOG_LOOK_S = 0.25  # how often a running check's log size is looked at (a stat)
LIFE_LOOK_S = 1.0  # how often its process tree is looked at for signs of life (as a task's)


@dataclass
class CheckControl:
    """How the merge queue stops checks when the run is cancelled: no check starts once
    `stopped`, and those running (their process groups in `running`) are ended."""

    stopped: bool = False
    running: set[int] = field(default_factory=set)
    max_log: int = 0  # `logs.max_size`: a check whose log passes it is ended (0: no limit)
    # `heartbeat.orphan_after`: a check showing no sign of life that long is ended as hung,
    # unless it has an `orphan_after` of its own (0: never)
    quiet_s: float = 0.0
    # (where it ran, its command) -> what may explain a red check beyond its exit status:
    # files of the user's checkout it names that the scratch worktree has not (a `.venv`)
    why_failed: Callable[[str, str], list[str]] | None = None
    # (fingerprint, value) of the secrets of the checks' environment: not kept in their logs
    masked: list[tuple[str, str]] = field(default_factory=list)

    def stop(self, grace_s: float) -> list[asyncio.Task[None]]:
        self.stopped = True
        return [asyncio.create_task(kill_tree(pgid, grace_s)) for pgid in self.running]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str
    detail: str  # what failed and the tail of its output
    log: str
    wait_s: float  # time spent waiting for the check's lock
    # Checks that were red and then green when run again (their `retries`): flaky, said.
    flaky: tuple[str, ...] = ()
    # Seconds the checks ran, their lock waits aside: what checking this merge took, which
    # a run of the tasks one at a time would take too (set by the merge queue).
    ran_s: float = 0.0
    # Why the red check could not start, whatever the work it checked (its program not on
    # PATH, ...): no task's work can pass it. "" when it started, or may with other work.
    cannot_start: str = ""


class LocalLocks:
    """Locks within this process only (used when no coordination backend is given)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str, holder: str) -> AsyncIterator[Held | None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            yield None


async def run_checks(
    checks: list[Check],
    cwd: Path,
    env: Mapping[str, str],
    log_prefix: str,
    hold: LockHolder,
    holder: str,
    grace_s: float = 5.0,
    tail_lines: int = 30,
    control: CheckControl | None = None,
) -> CheckResult:
    """Run each check in order; stop at the first red one (or when `control` is stopped).
    A red check is run again up to its `retries` times; one green on a later run is
    flaky, and said in the result. A check whose lock was lost while it ran (taken over,
    force-released, not renewable) was ended by the lock's keeper and is run again, up
    to LOST_LOCK_TRIES times."""
    control = control or CheckControl()
    waited = 0.0
    flaky: list[str] = []
    for i, check in enumerate(checks):
        name = check.name or check.run
        runs = check.retries + 1
        first_red = ""
        for n in range(1, runs + 1):
            log = f"{log_prefix}.{i + 1}.log" if n == 1 else f"{log_prefix}.{i + 1}.run{n}.log"
            if control.stopped:
                return CheckResult(False, name, f"check `{name}` not run: cancelled", "", waited)
            ran = await _run_held(check, cwd, env, log, hold, holder, grace_s, control)
            waited += ran.waited
            if ran.lost is not None:
                detail = f"check `{name}` {ran.lost}, {LOST_LOCK_TRIES} times: it has no result"
                return CheckResult(False, name, detail, log, waited, tuple(flaky))
            if ran.why is None:
                if n > 1:
                    flaky.append(
                        f"check `{name}` was red ({first_red}) and green when run again "
                        f"(run {n} of {runs}): flaky?"
                    )
                break
            first_red = first_red or f"{ran.why}; log: {log}"
            if n < runs and not control.stopped:
                continue
            tail = log_tail(log, tail_lines, max_bytes=16384)
            detail = f"check `{name}` failed ({ran.why})"
            if runs > 1:
                detail += f", on each of its {runs} runs"
            told = telling_line(tail)
            if told:  # its last line first (pytest's "1 failed, 2 passed"), for one-line views
                detail += f": {told}"
                if [line.strip() for line in tail if line.strip()] != [told]:
                    detail += "\nthe end of its output:\n" + "\n".join(tail)
            hints, cause = [], ""
            if control.why_failed is not None and ran.why.startswith("exit "):
                hints += await asyncio.to_thread(control.why_failed, str(cwd), check.run)
            sh = check.shell in (None, "sh")
            if ran.why.startswith("exit 127"):
                hints += bash_word_hints(check.run) if sh else []
                path = env.get("PATH", os.defpath)
                cause = await asyncio.to_thread(cannot_start, check.run, cwd, path, sh)
            detail += "".join(f"\n{hint}" for hint in hints)
            return CheckResult(False, name, detail, log, waited, tuple(flaky), cannot_start=cause)
    return CheckResult(True, "", "", "", waited, tuple(flaky))


@dataclass(frozen=True)
class _Ran:
    why: str | None  # why it was red (an exit status, a signal, why it was ended); None: green
    lost: str | None  # why its lock was lost, each of LOST_LOCK_TRIES times (no result)
    waited: float  # for its lock


async def _run_held(
    check: Check,
    cwd: Path,
    env: Mapping[str, str],
    log: str,
    hold: LockHolder,
    holder: str,
    grace_s: float,
    control: CheckControl,
) -> _Ran:
    """One run of a check, holding its lock; run again if the lock was lost meanwhile."""
    waited = 0.0
    lost: str | None = None
    for _ in range(LOST_LOCK_TRIES):
        if control.stopped:
            return _Ran("not run: cancelled", None, waited)
        t0 = time.monotonic()
        ctx = hold(check.lock, holder) if check.lock else contextlib.nullcontext()
        async with ctx as held:
            waited += time.monotonic() - t0
            run_env = env
            if held is not None:  # what runs under the lease can be fenced off
                run_env = {**env, **leases_env([held.lease], held.store_id)}
            code, sig, stopped, at = await _run_one(check, cwd, run_env, log, grace_s, control)
        if control.masked:  # a secret it printed is not kept, nor read back as its tail
            with contextlib.suppress(OSError):
                await asyncio.to_thread(scrub_secrets, log, control.masked)
        lost = held.lost if held is not None else None
        if lost is None:
            red = stopped or code != 0 or sig
            why = stopped or describe_status(code, sig) + said_at(check.run, at)
            return _Ran(why if red else None, None, waited)
    return _Ran(None, lost, waited)


async def _run_one(
    check: Check,
    cwd: Path,
    env: Mapping[str, str],
    log: str,
    grace_s: float,
    control: CheckControl,
) -> tuple[int | None, int | None, str | None, int | None]:
    """Run one check to its end: (exit code, signal, why abreast ended it or None, the
    line of its command that ended it where its shell recorded one)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    shell = check.shell or "sh"
    # bash records the line -e ended a command of several lines at (wrapper.CHECK_BASH)
    at_file = f"{log}.line" if shell == "bash" and several_lines(check.run) else None
    command = ["-c", CHECK_BASH, "abreast-check", check.run, at_file] if at_file else []
    with open(log, "wb") as out:
        if at_file:
            Path(at_file).unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            shell_program(shell),
            *SHELLS[shell][1],  # as a task's command: the first line that fails ends it
            *(command or ["-c", check.run]),
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    control.running.add(proc.pid)  # its own session: the group to end
    try:
        stopped = await _watch(proc, check, log, control)
        if stopped is not None:
            await kill_tree(proc.pid, grace_s)
            await proc.wait()
            return None, None, stopped, None
        code = proc.returncode
        assert code is not None
        if code < 0:
            return None, -code, None, None
        return code, None, None, failed_line(at_file, "check", code) if at_file else None
    finally:
        control.running.discard(proc.pid)
        if at_file:
            Path(at_file).unlink(missing_ok=True)


async def _watch(
    proc: asyncio.subprocess.Process, check: Check, log: str, control: CheckControl
) -> str | None:
    """Wait for the check to end; None when it did, else why it must be ended: past its
    `timeout`, its log past `max_log` bytes (looked at every LOG_LOOK_S), or no sign of
    life (CPU, I/O, wake-ups, output: looked at every LIFE_LOOK_S) for its `orphan_after`
    (else the workflow's): a test that deadlocks held the merge queue, and every task
    after it, for good."""
    loop = asyncio.get_running_loop()
    deadline = None if check.timeout is None else loop.time() + check.timeout
    max_log, quiet_s = control.max_log, check.orphan_after or control.quiet_s
    ended = asyncio.ensure_future(proc.wait())
    sign: tuple[float, int, int] | None = None
    lively = looked = loop.time()
    try:
        while True:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            step = left if not (max_log or quiet_s) else min(LOG_LOOK_S, left or LOG_LOOK_S)
            done, _ = await asyncio.wait({ended}, timeout=step)
            if done:
                return None
            now = loop.time()
            if deadline is not None and now >= deadline:
                return f"timed out after {check.timeout:g}s"
            size = log_size(log)
            if max_log and size > max_log:
                return log_limit_passed(max_log, size, " and it was ended", "check")
            if quiet_s and now - looked >= LIFE_LOOK_S:
                looked = now
                _, cpu, activity = tree_stats(proc.pid)
                if (cpu, activity, size) != sign:
                    sign, lively = (cpu, activity, size), now
                elif now - lively >= quiet_s:
                    return (
                        f"no sign of life (CPU, I/O or output) for {now - lively:.0f}s: hung? "
                        "it was ended (if it may rightly be quiet that long, give the check "
                        "`orphan_after:` longer)"
                    )
    finally:
        ended.cancel()
