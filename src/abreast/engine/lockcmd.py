"""`abreast lock`: finding the backend, checking the arguments, and journaling the wait."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
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
    run_id = os.environ.get("ABREAST_RUN_ID")
    task_id = os.environ.get("ABREAST_TASK_ID")
    holder = Holder.here(run=run_id, task=task_id)
    since = time.time()
    where = _inside(os.environ)

    def journaled(kind: str, **data: Any) -> None:
        """The wait, in the journal of the run this runs in (if any): as soon as the lock
        is granted, so that the dashboard and metrics see it while CMD runs."""
        if not (run_id and location.journal.exists()):
            return
        try:
            journal = Journal(location.journal)
            try:
                journal.stage_event(
                    run_id, kind, task_id, lock=name, source="abreast lock", **where, **data
                )
                journal.commit()
            finally:
                journal.close()
        except sqlite3.Error as e:  # the lock and CMD matter more than the record
            sys.stderr.write(f"abreast lock: could not journal {kind} ({e})\n")

    def granted(lease: Lease, waited: float) -> None:
        journaled("lock.granted", wait_s=round(waited, 6), since=round(since, 6), token=lease.token)

    try:
        outcome = run_locked(
            coord, name, cmd, ttl_s=ttl_s, timeout_s=timeout_s, holder=holder, on_granted=granted
        )
    finally:
        coord.close()
    if outcome.lease is None:
        journaled("lock.timeout", wait_s=round(outcome.waited_s, 6), since=round(since, 6))
    elif outcome.lost:
        journaled("lock.lost", token=outcome.lease.token)
    return outcome.code


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
