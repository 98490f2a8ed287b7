"""Process facts: start times that guard every kill against pid reuse."""

from __future__ import annotations

import os
import signal

from abreast.executor.process import (
    boot_ticks,
    is_same_process,
    start_ticks,
    start_ticks_between,
)


def test_start_ticks_known_at_spawn_equal_those_proc_reports() -> None:
    pids = []
    try:
        for _ in range(30):
            before = boot_ticks()
            pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "exec sleep 60"], {}, setsid=True)
            after = boot_ticks()
            pids.append((pid, start_ticks_between(pid, before, after)))
        for pid, ticks in pids:
            assert ticks == start_ticks(pid)
            assert is_same_process(pid, ticks)
            assert not is_same_process(pid, (ticks or 0) + 1)
    finally:
        for pid, _ in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)


def test_a_gone_process_has_no_start_time() -> None:
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
    assert start_ticks(pid) is None
    assert not is_same_process(pid, boot_ticks())
