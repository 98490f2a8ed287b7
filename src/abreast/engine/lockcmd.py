"""`abreast lock`: finding the backend, checking the arguments, and journaling the wait."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from abreast.coord.backend import CoordError, Holder, Lease, open_coordinator
from abreast.coord.journal import Journal
from abreast.coord.location import locate
from abreast.errors import StateError, UsageError
from abreast.executor.locked import LOST_EXIT, command_env, describe, run_locked
from abreast.executor.process import held_here
from abreast.spec.durations import parse_duration

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


def lock_command(
    name: str, cmd: Sequence[str], *, ttl: str, timeout: str | None, state: str | None
) -> int:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"lock name {name!r} is not allowed",
            hint="use letters, digits, '_', '.' and '-' (max 63)",
        )
    if not cmd:
        raise UsageError(
            "abreast lock needs a command to run", hint=f"abreast lock {name} -- pytest -q"
        )
    try:
        ttl_s = parse_duration(ttl)
        timeout_s = None if timeout is None else parse_duration(timeout)
    except ValueError as e:
        raise UsageError(f"abreast lock: {e}") from None
    if ttl_s <= 0:
        raise UsageError(f"--ttl {ttl!r}: must be more than zero")
    # Inside a task, the coordinator of the run it is part of (or, outside one, the
    # user's ABREAST_STATE).
    location = locate(None, state or os.environ.get("ABREAST_STATE"))
    try:
        coord = open_coordinator(location.coord_url)
    except CoordError as e:
        raise StateError(str(e), hint="check --state / ABREAST_STATE") from e
    held = held_here(name, coord.store_id, os.environ)
    if held is not None:  # a task with `locks: [NAME]`, or a command of `abreast lock NAME`
        try:
            current = coord.holder(name)
        finally:
            coord.close()
        return _under_held_lease(name, held, current, coord.store_id, cmd)
    run_id = os.environ.get("ABREAST_RUN_ID", "")
    task_id = os.environ.get("ABREAST_TASK_ID")
    holder = Holder.here(run=run_id or None, task=task_id)
    said = {"source": "abreast lock", "lock": name, **_inside(os.environ)}
    since = round(time.time(), 6)  # the wait's key: its grant or timeout ends its waiting

    def granted(lease: Lease, waited: float) -> None:
        # As soon as it is granted: the dashboard and metrics see the wait while CMD runs.
        with _run_journal(run_id, location.journal) as journal:
            if journal is not None:
                wait = {"wait_s": round(waited, 6), "since": since}
                journal.stage_event(
                    run_id, "lock.granted", task_id, token=lease.token, **said, **wait
                )

    def waiting(who: str) -> None:
        # While it waits, `status` and the dashboard say what for.
        with _run_journal(run_id, location.journal) as journal:
            if journal is not None:
                journal.stage_event(
                    run_id, "lock.waiting", task_id, held_by=who, since=since, **said
                )

    try:
        outcome = run_locked(
            coord,
            name,
            cmd,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            holder=holder,
            on_granted=granted,
            on_waiting=waiting,
        )
    finally:
        coord.close()
    if outcome.lease is None:
        with _run_journal(run_id, location.journal) as journal:
            if journal is not None:
                wait = {"wait_s": round(outcome.waited_s, 6), "since": since}
                journal.stage_event(run_id, "lock.timeout", task_id, **said, **wait)
    elif outcome.lost:
        with _run_journal(run_id, location.journal) as journal:
            if journal is not None:
                journal.stage_event(run_id, "lock.lost", task_id, token=outcome.lease.token, **said)
    return outcome.code


@contextlib.contextmanager
def _run_journal(run_id: str, path: Path) -> Iterator[Journal | None]:
    """The journal of the run this runs in (None outside one), committed after the block;
    one it cannot write is said, not raised: the lock and CMD matter more than the record."""
    journal = None
    try:
        if run_id and path.exists():
            journal = Journal(path)
    except sqlite3.Error as e:
        sys.stderr.write(f"abreast lock: could not open the run's journal ({e})\n")
    if journal is None:
        yield None
        return
    try:
        yield journal
        journal.commit()
    except sqlite3.Error as e:
        sys.stderr.write(f"abreast lock: could not journal the lock's use ({e})\n")
    finally:
        journal.close()


def _inside(env: Mapping[str, str]) -> dict[str, Any]:
    """What of the run this runs in: a task's attempt (`{"attempt": 2}`), whose time
    waiting is no work of its; a merge check's (`{"check": True}`); else nothing."""
    if "ABREAST_CHECK_COMMIT" in env:
        return {"check": True}
    attempt = env.get("ABREAST_ATTEMPT", "")
    return {"attempt": int(attempt)} if attempt.isdigit() else {}


def _under_held_lease(
    name: str, token: int, current: Lease | None, store_id: str, cmd: Sequence[str]
) -> int:
    """`abreast lock NAME` where NAME is already held, by the task this runs in (its
    `locks:`, or a check's `lock:`) or by an `abreast lock NAME` around it: waiting would
    wait for itself until the timeout. The lease is the enclosing holder's to renew and
    give back; CMD runs under it, in place of this process, while it is still current."""
    err = sys.stderr
    if current is None or current.token != token:
        who = describe(current) if current else "nobody now"
        err.write(
            f"abreast lock: {name!r} was held here (token {token}), but that lease has "
            f"been lost (held by {who}); not running the command\n"
        )
        return LOST_EXIT
    err.write(f"abreast lock: {name!r} is already held here (token {token}); running under it\n")
    err.flush()
    try:
        env = command_env(name, token, store_id)
        os.execvpe(cmd[0], list(cmd), env)  # noqa: S606 - CMD is argv, as `abreast lock` takes it
    except OSError as e:
        err.write(f"abreast lock: cannot run {cmd[0]!r}: {e.strerror}\n")
        return 127
