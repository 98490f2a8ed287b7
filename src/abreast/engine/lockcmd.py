"""`abreast lock`: finding the backend, checking the arguments, and journaling the wait."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from abreast.coord.backend import CoordError, Holder, open_coordinator
from abreast.coord.journal import Journal
from abreast.coord.location import locate
from abreast.errors import StateError, UsageError
from abreast.executor.locked import run_locked
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
    location = locate(None, state)
    try:
        coord = open_coordinator(location.coord_url)
    except CoordError as e:
        raise StateError(str(e), hint="check --state / ABREAST_STATE") from e
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
