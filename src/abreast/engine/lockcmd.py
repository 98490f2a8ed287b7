"""`abreast lock`: finding the backend, checking the arguments, and journaling the wait."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

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
    try:
        outcome = run_locked(coord, name, cmd, ttl_s=ttl_s, timeout_s=timeout_s, holder=holder)
    finally:
        coord.close()
    if run_id and location.journal.exists():
        journal = Journal(location.journal)
        try:
            token = outcome.lease.token if outcome.lease else None
            journal.stage_event(
                run_id,
                "lock.granted" if outcome.lease else "lock.timeout",
                task_id,
                lock=name,
                wait_s=round(outcome.waited_s, 6),
                token=token,
                source="abreast lock",
            )
            if outcome.lost:
                journal.stage_event(run_id, "lock.lost", task_id, lock=name, token=token)
            journal.commit()
        finally:
            journal.close()
    return outcome.code


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
