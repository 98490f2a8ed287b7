"""The run's `exits` file: how each attempt ended, as its wrapper shell recorded it
(executor/wrapper.py), read by `abreast resume` for the attempts that ended while abreast
was down, and by `abreast status` of an interrupted run. Reads only; light to import."""

from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple

from abreast.executor.logs import open_regular


class Recorded(NamedTuple):
    """How an attempt ended, as its shell recorded it."""

    status: int
    ended_at: float | None  # wall-clock time; None where the line has none of this boot
    # Written in another boot or on another machine (a Ray node) than this one's.
    elsewhere: bool = False

    @property
    def stopped_by_shutdown(self) -> bool:
        """Ended by the signal a machine going down sends everything (TERM, then KILL;
        HUP, INT), in a boot that has ended: the attempt was interrupted, not failed."""
        return self.elsewhere and self.status in _STOPPED


_STOPPED = {128 + 1, 128 + 2, 128 + 9, 128 + 15}  # HUP, INT, KILL, TERM


def recorded_exits(exits_file: str | None) -> dict[str, Recorded]:
    """How attempts ended, by "TASK.ATTEMPT", from the run's exits file: the status, and
    when (wall-clock time), where the line says it of this boot of this machine.

    Each attempt's wrapper shell appends one line when it exits (executor/wrapper.py:
    "TASK.ATTEMPT STATUS UPTIME BOOT_ID"); a line cut short (its writer killed mid-write)
    is ignored, and that attempt counts as interrupted. The time is None for a line of
    another machine (a Ray node) or boot, or one without it.
    """
    out: dict[str, Recorded] = {}
    if not exits_file:
        return out
    try:
        with os.fdopen(open_regular(exits_file), "rb") as f:  # never a FIFO put there
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return out
    boot, booted_at = this_boot()
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        code, *when = rest.split(" ")
        if not code.isdigit():
            continue
        ended_at = None
        if len(when) == 2 and boot and when[1] == boot:
            with contextlib.suppress(ValueError):
                ended_at = booted_at + float(when[0])
        elsewhere = len(when) == 2 and bool(boot) and bool(when[1]) and when[1] != boot
        out[key] = Recorded(int(code), ended_at, elsewhere)
    return out


def failed_line(exits_file: str, key: str, status: int) -> int | None:
    """The line of its command (1 for the first) at which the attempt `key`
    ("TASK.ATTEMPT") ended with `status` under `set -e`, as its bash recorded it
    ("TASK.ATTEMPT line LINE STATUS", executor/wrapper.py); None where none was (sh, a
    command that exited by itself or was killed). The first such line: with `set -E` a
    failure inside a function or subshell is recorded there, then where it was called."""
    try:
        with os.fdopen(open_regular(exits_file), "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    mark = f"{key} line "
    for line in text.splitlines():
        if line.startswith(mark):
            at, _, code = line[len(mark) :].partition(" ")
            if at.isdigit() and code == str(status):
                return int(at)
    return None


def several_lines(command: str) -> bool:
    """Whether `command` has more than one line that is not blank: one whose failure is
    worth saying the line of."""
    return sum(1 for line in command.split("\n") if line.strip()) > 1


def said_at(command: str, at: int | None) -> str:
    """` at line 3 (`grep -q x f`)`: line `at` of `command` (1 for its first), as a
    failure's status is said with it; "" for None or a line it does not have."""
    lines = command.split("\n")
    if at is None or not 0 < at <= len(lines) or not lines[at - 1].strip():
        return ""
    text = lines[at - 1].strip()
    text = text if len(text) <= 60 else text[:59] + "…"
    return f" at line {at} (`{text}`)"


def this_boot() -> tuple[str, float]:
    """This boot's id (as the wrapper reads it), and when it began in wall-clock time as
    /proc/uptime counts from it: ("", 0.0) where either cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return "", 0.0
    return boot, time.time() - up
