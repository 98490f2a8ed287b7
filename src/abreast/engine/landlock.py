"""The lock `abreast land` holds while it lands a run: a file in the run's directory,
flock'ed, so let go when the process ends, however it ends. Light to import (`cleanup`
asks whether a run is being landed)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from abreast.coord.location import StateLocation
from abreast.errors import UsageError

LOCK_FILE = "landing.lock"


@contextlib.contextmanager
def landing_lock(
    location: StateLocation, run_id: str, note: Callable[[str], None] | None
) -> Iterator[None]:
    """Held while `abreast land` lands run `run_id` (a file lock in the run's directory,
    let go when the process ends, however). Two at once both merged and checked, and the
    second failed on git's "already exists" of the first one's checks worktree. With
    `note`, another landing is waited for (said), after which this one finds the result
    landed; without (a resume taking the run up), it is refused."""
    run_dir = location.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            if note is None:
                raise UsageError(
                    f"run {run_id} is being landed by `abreast land` (pid {holder})",
                    hint="let it end first (it merges what the base branch gained and "
                    "runs the merge checks), then try again",
                ) from None
            note(f"waiting for another `abreast land` of run {run_id} (pid {holder}) to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # (and with it the lock)


def being_landed(run_dir: Path) -> int | None:
    """The pid of the `abreast land` landing the run whose directory this is, if one is
    (None: none, or none can be told)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(holder) if holder.isdigit() else 0
    finally:
        os.close(fd)  # (a lock it took with it)
    return None
