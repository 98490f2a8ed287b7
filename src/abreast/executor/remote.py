"""What runs on a Ray node for `--executor ray` (see `ray_exec.py`, the orchestrator's side).

Nothing here imports Ray: these are plain functions that Ray runs in its workers, which
import them from this module (abreast must be installed on every node).

An attempt is started exactly as the local executor starts it (`spawn`: the same wrapper,
its own session, its log and the run's exits file), by a worker that then supervises it:
every second it writes the tree's RSS, CPU and I/O to a small stats file beside the log,
which the orchestrator's supervisor reads for heartbeats and orphan detection. Ray cancels
a running task by raising KeyboardInterrupt in it, between bytecodes (not inside a
blocking call, so the wait is a short poll of a pidfd): the first cancel TERMs the process
group, the second (or the grace period's end) KILLs it. Whatever is left in the group when
its first process ends is ended too, as the local engine does.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import socket
import time

from abreast.executor.local import Launch, own_peak, spawn
from abreast.executor.process import (
    group_alive,
    kill_tree,
    marked_processes,
    signal_tree,
    tree_stats,
)

_POLL_S = 0.1  # how soon a cancel is noticed
_STATS_S = 1.0


def stats_path(launch: Launch) -> str:
    """Where the node writes the attempt's stats: beside its log (a shared filesystem)."""
    return launch.log + ".stats"


def run_attempt(launch: Launch, grace_s: float) -> tuple[int, int, float, str]:
    """Run the attempt to its end on this node: (wait status, peak RSS bytes, wall seconds,
    this host's name)."""
    pid, _ticks = spawn(launch)
    started = time.monotonic()
    parent_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host = socket.gethostname()
    pidfd = os.pidfd_open(pid)
    peak = 0
    next_stats = 0.0
    kill_at: float | None = None  # when the TERM sent on cancel becomes a KILL
    try:
        while True:
            try:
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + _STATS_S
                    peak = max(peak, _write_stats(launch, pid, host))
                if kill_at is not None and now >= kill_at:
                    signal_tree(pid, signal.SIGKILL)
                    kill_at = float("inf")
                if select.select([pidfd], [], [], _POLL_S)[0]:
                    break
            except KeyboardInterrupt:  # ray.cancel
                if kill_at is None:
                    signal_tree(pid, signal.SIGTERM)
                    kill_at = time.monotonic() + grace_s
                else:
                    signal_tree(pid, signal.SIGKILL)
                    kill_at = float("inf")
    finally:
        os.close(pidfd)
    while True:  # a cancel arriving now is too late to matter: the process has ended
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except KeyboardInterrupt:
            kill_at = kill_at or float("inf")
    if group_alive(pid):  # it left processes behind in its group: end them too
        asyncio.run(kill_tree(pid, 0.0 if kill_at is not None else grace_s))
    peak = max(peak, own_peak(parent_maxrss_kib, usage.ru_maxrss))
    return status, peak, time.monotonic() - started, host


def _write_stats(launch: Launch, pid: int, host: str) -> int:
    rss, cpu, io = tree_stats(pid)
    path = stats_path(launch)
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "host": host, "rss": rss, "cpu": cpu, "io": io}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # the supervisor goes by the log's growth alone
    return rss


def read_stats(launch: Launch) -> tuple[int, float, int] | None:
    """What the node last wrote of the attempt's tree; None before its first write."""
    try:
        with open(stats_path(launch), encoding="utf-8") as f:
            data = json.load(f)
        return int(data["rss"]), float(data["cpu"]), int(data["io"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0.0, 0


def probe(paths: list[str]) -> dict[str, object]:
    """What a node says about itself before a run uses it: its host, abreast's version, and
    which of `paths` (the project's root and the run's directory) it cannot see."""
    from abreast import __version__

    return {
        "host": socket.gethostname(),
        "version": __version__,
        "missing": [p for p in paths if not os.path.isdir(p)],
    }


def sweep(run_id: str, task_id: str | None = None, attempt: int | None = None) -> list[int]:
    """Kill this node's processes of `run_id` (a dead orchestrator's attempts), or of one
    attempt (one whose worker was lost): their pids."""
    import psutil

    procs = marked_processes(run_id, task_id, attempt)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    return [p.pid for p in procs]
