"""What runs on a Ray node for `--executor ray` (see `ray_exec.py`, the orchestrator's side).

Nothing here imports Ray: these are plain functions that Ray runs in its workers, which
import them from this module (abreast must be installed on every node).

An attempt is started exactly as the local executor starts it (`spawn`: the same wrapper,
its own session, its log and the run's exits file), by a worker that then supervises it:
every second it writes the tree's RSS, CPU and I/O to a small stats file beside the log,
which the orchestrator's supervisor reads for heartbeats and orphan detection.

The orchestrator asks for a kill by writing a kill file beside the log ("TERM", then
"KILL"), which the worker reads every 0.1 s: TERM ends the process group's tree, and KILL
follows after the grace period, or at once when the file says KILL. Ray's own cancel is
not enough: it raises KeyboardInterrupt in the worker through SIGINT, which does nothing
in a worker that inherited SIGINT ignored (a cluster started as a script's background
job), so the file is the way a kill travels, and Ray's cancel (where it does interrupt,
a prompt to read the file) only takes off Ray's queue an attempt that has not started.
An attempt whose kill file exists before it starts is not started. Whatever is left in
the group when its first process ends is ended too, as the local engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import select
import signal
import socket
import time

from abreast.executor.local import Launch, own_peak, peak_rss_kib, spawn
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


def kill_path(launch: Launch) -> str:
    """Where the orchestrator asks the node to kill the attempt's tree: beside its log."""
    return launch.log + ".kill"


TERM, KILL = 1, 2  # what a kill file asks for


def request_kill(launch: Launch, level: int) -> None:
    """Ask the node running `launch` to TERM its tree (KILL after the grace period), or to
    KILL it at once: the kill file, written whole (never asking for less than it did)."""
    request_kill_at(kill_path(launch), level)


def request_kill_at(path: str, level: int) -> None:
    """`request_kill` by the kill file's path (an attempt's log + ".kill")."""
    if level <= _kill_level(path):
        return
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("KILL\n" if level >= KILL else "TERM\n")
    os.replace(tmp, path)


def _kill_requested(launch: Launch) -> int:
    return _kill_level(kill_path(launch))


def _kill_level(path: str) -> int:
    """What the kill file asks for: 0 (no file), TERM or KILL."""
    try:
        with open(path, encoding="utf-8") as f:
            return KILL if f.read().startswith("KILL") else TERM
    except FileNotFoundError:
        return 0
    except OSError:
        return TERM  # there, but unreadable: a kill was asked for


def env_path(launch: Launch) -> str:
    """Where the orchestrator leaves the attempt's environment for its node: beside its log."""
    return launch.log + ".env"


def write_env(launch: Launch) -> str:
    """The attempt's environment in a file only its owner reads, for its node to take:
    it may hold a leased API key, and whatever the orchestrator's own environment holds,
    which then never travel in the Ray task's arguments (kept by the cluster)."""
    path = env_path(launch)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # one left by an attempt of the same number before a crash
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dict(launch.env), f)
    return path


def _take_env(path: str) -> dict[str, str]:
    """The environment `write_env` left, read once: the file goes as it is read."""
    with open(path, encoding="utf-8") as f:
        env = json.load(f)
    os.unlink(path)
    return {str(k): str(v) for k, v in env.items()}


def run_attempt(
    launch: Launch, grace_s: float, env_file: str | None
) -> tuple[int, int, float, str]:
    """Run the attempt to its end on this node: (wait status, peak RSS bytes, wall seconds,
    this host's name). `env_file`: where its environment is (`write_env`), when `launch`
    came without it."""
    host = socket.gethostname()
    if _kill_requested(launch):  # killed while it waited in Ray's queue
        return signal.SIGTERM, 0, 0.0, host
    if env_file is not None:
        launch = dataclasses.replace(launch, env=_take_env(env_file))
    pid, _ticks = spawn(launch)
    started = time.monotonic()
    parent_maxrss_kib = peak_rss_kib()
    pidfd = os.pidfd_open(pid)
    peak = 0
    next_stats = 0.0
    level = 0  # the kill asked for so far: 0, TERM or KILL
    kill_at = float("inf")  # when the TERM becomes a KILL
    try:
        while True:
            try:
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + _STATS_S
                    peak = max(peak, _write_stats(launch, pid, host))
                asked = _kill_requested(launch)
                if asked > level:  # (level is set once the signal is sent)
                    if asked == TERM:
                        signal_tree(pid, signal.SIGTERM)
                        kill_at = now + grace_s
                    else:
                        kill_at = now
                    level = asked
                if now >= kill_at:
                    signal_tree(pid, signal.SIGKILL)
                    level, kill_at = KILL, float("inf")
                if select.select([pidfd], [], [], _POLL_S)[0]:
                    break
            except KeyboardInterrupt:  # ray.cancel: the kill file says what to do
                continue
    finally:
        os.close(pidfd)
    while True:  # a cancel arriving now is too late to matter: the process has ended
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except KeyboardInterrupt:
            continue
    if group_alive(pid):  # it left processes behind in its group: end them too
        killing = level or _kill_requested(launch)
        asyncio.run(kill_tree(pid, 0.0 if killing else grace_s))
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


def sweep(
    run_id: str, task_id: str | None = None, attempt: int | None = None, tag: str | None = None
) -> list[int]:
    """Kill this node's processes of `run_id` (a dead orchestrator's attempts), or of one
    attempt (one whose worker was lost): their pids. `tag`: the run's (RUN_TAG_ENV)."""
    import psutil

    procs = marked_processes(run_id, task_id, attempt, tag)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    return [p.pid for p in procs]
