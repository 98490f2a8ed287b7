"""`abreast lock NAME -- CMD`: run CMD holding a lease, renewed from here, never from CMD.

    acquire (FIFO, fenced) ─▶ start CMD in its own group (ABREAST_LOCK_TOKEN set)
      every ttl/3: renew ─ lost or not renewed in time ─▶ kill CMD's tree, exit 75
      CMD ends ─▶ release ─▶ exit with CMD's status

A holder that cannot renew before its lease runs out (stopped, cut off from the
backend) stops the protected work rather than assume it still holds the lock:
the renewal deadline is kept on this process's monotonic clock, so even after a
SIGSTOP/SIGCONT it knows at once that its time ran out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from abreast.coord.backend import (
    BACKEND_RETRY_S,
    CoordError,
    Coordinator,
    CoordUnreachable,
    Holder,
    Lease,
)
from abreast.executor.process import LOCK_ENV, fence, members_of_group_or_session, stop_then_kill
from abreast.spec.durations import counted

LOST_EXIT = 75  # EX_TEMPFAIL: the lock was lost and the command killed
TIMEOUT_EXIT = 75


@dataclass
class LockOutcome:
    code: int
    waited_s: float
    lost: bool
    lease: Lease | None


def _acquire(
    coord: Coordinator,
    name: str,
    holder: Holder,
    ttl_s: float,
    timeout_s: float | None,
    waiting: Callable[[], None],
    err: TextIO,
) -> Lease | None:
    """`coord.acquire`, waiting out a backend gone meanwhile (said once), within the
    timeout: the wait for the lock goes on once it answers again."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    said = False
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return coord.acquire(name, holder, ttl_s, left, on_wait=waiting)
        except CoordUnreachable as e:
            if not said:
                err.write(f"abreast lock: waiting for the coordination backend ({e})\n")
                err.flush()
                said = True
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(BACKEND_RETRY_S)


def run_locked(
    coord: Coordinator,
    name: str,
    cmd: Sequence[str],
    *,
    ttl_s: float,
    timeout_s: float | None,
    holder: Holder,
    on_granted: Callable[[Lease, float], None] | None = None,
    on_waiting: Callable[[str], None] | None = None,
) -> LockOutcome:
    """Wait for the lock `name` (up to `timeout_s`), then run CMD holding it, renewing it;
    `on_waiting(who holds it)` is called if it must wait, and `on_granted(lease, seconds
    waited)` once it is held, before CMD starts."""
    err = sys.stderr
    t0 = time.monotonic()
    told = False

    def waiting() -> None:
        nonlocal told
        if not told:
            current = coord.holder(name)
            who = describe(current) if current else "someone"
            err.write(f"abreast lock: waiting for {name!r} (held by {who})\n")
            err.flush()
            told = True
            if on_waiting is not None:
                on_waiting(who)

    lease = _acquire(coord, name, holder, ttl_s, timeout_s, waiting, err)
    waited = time.monotonic() - t0
    if lease is None:
        current = coord.holder(name)
        who = describe(current) if current else "nobody now"
        err.write(
            f"abreast lock: gave up waiting for {name!r} after {waited:.1f}s (held by {who})\n"
        )
        return LockOutcome(TIMEOUT_EXIT, waited, False, None)
    if lease.lapsed is not None:
        _fence(lease.lapsed, coord.store_id, err)
    if on_granted is not None:
        on_granted(lease, waited)
    env = command_env(name, lease.token, coord.store_id)
    # CMD gets a process group of its own, so that losing the lock ends its whole tree and
    # nothing else. At a terminal, a session of its own too (a background group reading
    # the terminal would be stopped; signals are forwarded below). Elsewhere, inside a
    # task above all, it stays in our session: whoever ends that session's processes
    # (the engine, at a timeout or a cancel) ends CMD's too, even if this process is
    # KILLed before it could, and CMD never runs on with the lock expiring under it.
    at_terminal = _at_terminal()
    proc: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        """CMD is in its own process group, out of reach of the terminal's Ctrl-C and of a
        kill of ours: pass it on as it came (pytest, say, ends a Ctrl-C with its summary);
        a second one ends it. One that comes while CMD is being started is passed on as
        soon as it has started."""
        received.append(signum)
        if proc is not None:
            try:
                os.killpg(proc.pid, signum if len(received) == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    # Installed before CMD starts: a TERM between its start and here would end this
    # process and leave CMD running on in its group of its own.
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            start_new_session=at_terminal,
            process_group=None if at_terminal else 0,
        )
    except OSError as e:
        for s, handler in old.items():
            signal.signal(s, handler)
        coord.release(name, lease.token)
        err.write(f"abreast lock: cannot run {cmd[0]!r}: {e.strerror}\n")
        return LockOutcome(127, waited, False, lease)
    for i, signum in enumerate(received):  # what came while it was being started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum if i == 0 else signal.SIGKILL)
    interval = max(0.05, ttl_s / 3)
    last_ok = time.monotonic()  # the lease is ours until last_ok + ttl_s, no longer
    lost = ""
    try:
        while True:
            try:
                code = proc.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                pass
            # Renewed even when late (this process was stopped past the ttl): the backend
            # renews a lease that ran out only if nobody was granted it since.
            try:
                if coord.renew(name, lease.token, ttl_s) is None:
                    lost = "it expired and was taken, or was force-released"
                else:
                    last_ok = time.monotonic()
            except CoordError as e:  # keep trying until the deadline, then give up
                if time.monotonic() - last_ok >= ttl_s:
                    lost = f"not renewed for {time.monotonic() - last_ok:.1f}s (ttl {ttl_s:g}s)"
                else:
                    err.write(f"abreast lock: cannot renew {name!r} yet: {e}\n")
            if lost:
                _kill_tree(proc)
                code = proc.wait()
                err.write(f"abreast lock: lost the lock {name!r} ({lost}); killed the command\n")
                return LockOutcome(LOST_EXIT, waited, True, lease)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    try:
        released = coord.release(name, lease.token)
    except CoordError as e:
        err.write(f"abreast lock: could not release {name!r} ({e}); it expires in {ttl_s:g}s\n")
        released = True  # as far as we know: it was ours until now
    if not released:  # it ran out while CMD ran (we were stopped): someone else holds it
        err.write(
            f"abreast lock: lost the lock {name!r} while the command ran (its lease ran out; "
            f"the next holder ends a command still running then)\n"
        )
        return LockOutcome(LOST_EXIT, waited, True, lease)
    if code < 0:
        code = 128 - code
    return LockOutcome(code, waited, False, lease)


def command_env(name: str, token: int, store_id: str) -> dict[str, str]:
    """The environment CMD runs in: ours, with the task's PYTHONPATH (which the abreast
    shim set aside) and the lease it runs under."""
    from abreast.workspace.pyenv import for_command

    return {
        **for_command(os.environ),
        **dict(zip(LOCK_ENV, (name, str(token), store_id), strict=True)),
    }


def _fence(lapsed: Lease, store_id: str, err: TextIO) -> None:
    """The lease before ours ran out without being given back: end what still holds it."""
    ended = fence(lapsed.name, lapsed.token, lapsed.holder.host, store_id)
    if ended:
        err.write(
            f"abreast lock: the last lease of {lapsed.name!r} ({describe(lapsed)}) ran out "
            f"while its command still ran; ended {counted(ended, 'process', 'processes')} "
            "of it first\n"
        )
        err.flush()


def _at_terminal() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    stop_then_kill(lambda: members_of_group_or_session(proc.pid) or [proc.pid], grace_s=2.0)


def describe(lease: Lease) -> str:
    """Who holds a lease, for messages."""
    h = lease.holder
    parts = []
    if h.run:
        parts.append(f"run {h.run}")
    if h.task:
        parts.append(f"task {h.task}")
    parts.append(f"pid {h.pid} on {h.host}")
    return ", ".join(parts) + f", token {lease.token}"
