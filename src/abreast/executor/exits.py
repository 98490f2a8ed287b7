"""The run's `exits` file: how each attempt ended, as its wrapper shell recorded it
(executor/wrapper.py), read by `abreast resume` for the attempts that ended while abreast
was down, and by `abreast status` of an interrupted run. Reads only; light to import."""

from __future__ import annotations

import contextlib
import os
import time

from abreast.executor.logs import open_regular


def recorded_exits(exits_file: str | None) -> dict[str, tuple[int, float | None]]:
    """How attempts ended, by "TASK.ATTEMPT", from the run's exits file: the status, and
    when (wall-clock time), where the line says it of this boot of this machine.

    Each attempt's wrapper shell appends one line when it exits (executor/wrapper.py:
    "TASK.ATTEMPT STATUS UPTIME BOOT_ID"); a line cut short (its writer killed mid-write)
    is ignored, and that attempt counts as interrupted. The time is None for a line of
    another machine (a Ray node) or boot, or one without it.
    """
    out: dict[str, tuple[int, float | None]] = {}
    if not exits_file:
        return out
    try:
        with os.fdopen(open_regular(exits_file), "rb") as f:  # never a FIFO put there
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return out
    boot, booted_at = this_boot()
    for line in text.splitlines():
        key, code, *when = line.split(" ")
        if not code.isdigit():
            continue
        ended_at = None
        if len(when) == 2 and boot and when[1] == boot:
            with contextlib.suppress(ValueError):
                ended_at = booted_at + float(when[0])
        out[key] = (int(code), ended_at)
    return out


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
