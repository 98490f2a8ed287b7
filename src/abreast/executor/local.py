"""The local executor: each attempt is a real process in its own session.

    Launch ──start()──▶ posix_spawn(/bin/sh -c WRAPPER) ──SIGCHLD──▶ on_exit(Exit)

The wrapper opens the attempt's log (stdout and stderr go straight to it: no
pipe a grandchild could hold open; stdin is /dev/null), changes to the task's
directory, appends "TASK.ATTEMPT STATUS" to the run's `exits` file when it ends
(so that `abreast resume` learns how an attempt ended while no orchestrator was
watching; an O_APPEND write this small is atomic), and runs the command
with `eval` in the same shell: one process, no interpolation of anything but
the user's own command (in a shell of its own when the command could end the
shell without the wrapper: `own_shell`). Files are created by the child, after
posix_spawn has returned, so the orchestrator never waits on the disk for them.

Exits are noticed through SIGCHLD on the event loop: on each, the executor reaps
whichever of its own processes have ended (it never waits on a pid it did not
start, so a `subprocess` elsewhere in the process keeps its child's status). No
thread, no polling and no file descriptor per task. Where the loop cannot take
signals (it is not in the main thread), each process gets a pidfd on the loop
instead, or on a kernel without pidfds a thread that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import resource
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from abreast.executor.process import (
    boot_ticks,
    group_alive,
    kill_tree,
    start_ticks_between,
    trees_stats,
)
from abreast.executor.wrapper import OWN_SHELL_WRAPPERS, SHELLS, WRAPPERS, shell_path

_HAS_PIDFD = hasattr(os, "pidfd_open")
# Ignored signals are inherited through exec, and a shell cannot undo an ignore it inherits:
# Python ignores SIGPIPE and SIGXFSZ (a task would see `producer | head` end in EPIPE errors);
# a run started as a script's background job (`abreast run ... &`) ignores SIGINT and
# SIGQUIT, as does a Ray worker on a node started so. A task starts with all four at their
# defaults, on every executor (SIGHUP ignored under nohup stays so, as asked).
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT)


@dataclass(frozen=True)
class Launch:
    run_id: str
    task_id: str
    attempt: int
    command: str
    cwd: str
    env: Mapping[str, str]
    log: str
    exits_file: str  # the run's append-only record of how attempts ended
    shell: str = "sh"  # the task's `shell:`, a key of wrapper.SHELLS
    # What the wrapper is started under, its argv first (executor/protect.py: the user's
    # checkout read-only); () for nothing.
    sandbox: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exit:
    exit_code: int | None
    signal: int | None
    wall_s: float
    maxrss_bytes: int  # from wait4: the process and the children it waited for
    error: str | None = None  # it could not run (a Ray node lost, say): why
    host: str | None = None  # where it ran, when not here (a Ray node)
    ended_at: float | None = None  # when it ended, if not just now (ended while abreast was down)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.signal


@dataclass(eq=False)
class Running:
    launch: Launch
    pid: int
    pgid: int
    ticks: int | None
    started_mono: float
    started_wall: float
    peak_rss_bytes: int = 0
    # Our own peak RSS (KiB) just after it was spawned: see `own_peak`.
    parent_maxrss_kib: int = 0
    _pidfd: int = field(default=-1, repr=False)
    handle: Any = field(default=None, repr=False)  # a remote executor's own (a Ray ObjectRef)


class Executor(Protocol):
    """What the engine asks of an executor; `on_exit(running, exit)` is called on the loop."""

    running: dict[int, Running]

    def start(self, launch: Launch) -> Running: ...
    def kill(self, running: Running, grace_s: float) -> Coroutine[Any, Any, None]: ...
    def stats(self, running: Running) -> tuple[int, float, int] | None: ...
    def leftovers(self, running: Running, since: float | None = None) -> bool: ...
    def sweep(self) -> None: ...
    def close(self) -> None: ...


def quiet_signal_wakeup(loop: asyncio.AbstractEventLoop) -> None:
    """Call after `loop.add_signal_handler` (each call sets it back): when more signals
    come at once than the loop's self-pipe holds (1500 attempts ending in the same
    instant, each a SIGCHLD), Python printed a traceback for each one it could not write
    there ("Exception ignored when trying to write to the signal wakeup fd"), over the
    run's output. The signals left out are SIGCHLDs an exit sweep covers."""
    sock = getattr(loop, "_csock", None)  # the selector loop's self-pipe (CPython's)
    if sock is None:
        return
    with contextlib.suppress(ValueError, OSError):  # not the main thread
        signal.set_wakeup_fd(sock.fileno(), warn_on_full_buffer=False)


class LocalExecutor:
    """Starts attempts and calls `on_exit(running, exit)` from the event loop when one ends."""

    def __init__(self, on_exit: Callable[[Running, Exit], None]) -> None:
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self.running: dict[int, Running] = {}
        self._swept = False  # this loop iteration's SIGCHLD sweep is done
        # Every running attempt's (RSS, CPU s, activity), read in this loop iteration
        self._stats: dict[int, tuple[int, float, int]] | None = None
        try:
            self._loop.add_signal_handler(signal.SIGCHLD, self._reap_ended)
            quiet_signal_wakeup(self._loop)
            self._on_sigchld = True
        except (RuntimeError, ValueError):  # not the main thread: a pidfd per process
            self._on_sigchld = False

    def close(self) -> None:
        """Stop listening for SIGCHLD (processes still running are no longer noticed)."""
        if self._on_sigchld:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._on_sigchld = False

    def start(self, launch: Launch) -> Running:
        pid, ticks = spawn(launch)
        # Read after the spawn: what the child inherited (our peak when it exec'd) is at
        # most this, even if another thread of ours grew meanwhile.
        parent_maxrss = peak_rss_kib()
        now_mono, now_wall = time.monotonic(), time.time()
        running = Running(
            launch, pid, pid, ticks, now_mono, now_wall, parent_maxrss_kib=parent_maxrss
        )
        self.running[pid] = running
        if self._on_sigchld:
            return running
        if _HAS_PIDFD:
            try:
                running._pidfd = os.pidfd_open(pid)
            except OSError:
                running._pidfd = -1
        if running._pidfd >= 0:
            self._loop.add_reader(running._pidfd, self._reap, running)
        else:  # no pidfd (old kernel): one waiting thread per process
            self._loop.run_in_executor(None, self._wait_blocking, running)
        return running

    def kill(self, running: Running, grace_s: float) -> Coroutine[Any, Any, None]:
        """End the attempt's whole process tree (TERM, `grace_s`, KILL)."""
        return kill_tree(running.pgid, grace_s)

    def stats(self, running: Running) -> tuple[int, float, int] | None:
        """(RSS, CPU seconds, I/O bytes) of the attempt's process tree, for the supervisor;
        None while it has not started anywhere yet (a remote executor's queue). The
        supervisor asks for every attempt in one go: the first call of a loop iteration
        reads every running attempt's tree in one pass over /proc, and the others are
        answered from it."""
        if self._stats is None:
            self._stats = trees_stats(r.pid for r in self.running.values())
            self._loop.call_soon(self._forget_stats)
        return self._stats.get(running.pid, (0, 0.0, 0))

    def _forget_stats(self) -> None:
        self._stats = None

    def leftovers(self, running: Running, since: float | None = None) -> bool:
        """Whether the attempt's process group outlived its first process (`since`: a
        reading of /proc taken after that process ended may serve, see group_alive)."""
        return group_alive(running.pgid, since)

    def _reap_ended(self) -> None:
        """SIGCHLD: reap every process of ours that had started before it and has ended.
        Signals coalesce, so one may stand for several exits; it may also be for a child
        that is not ours.

        The work of one loop iteration is bounded, or the loop would not get back to
        its self-pipe, which fills (about 300 signals), and then drops signals, Ctrl-C
        among them. So a process started from within this callback (on_exit starts what
        the exit freed) is left to its own SIGCHLD, and of the calls one iteration makes
        (one per signal read) only the first sweeps: the same sweep would otherwise
        repeat for each, each reaping what the one before started."""
        if self._swept:
            return
        self._swept = True
        self._loop.call_soon(self._next_iteration)
        self.sweep()

    def sweep(self) -> None:
        """Reap every process of ours that has ended (and had started before this call).
        Also called on the engine's tick: should a signal ever be lost, an exit is
        noticed within a tick all the same."""
        if not self._on_sigchld:
            return  # each process has its own pidfd or thread
        before = set(self.running)
        while before:
            # Peek (WNOWAIT) at one ended child: the usual case finds ours at once.
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if found is None:
                return
            if found.si_pid not in before:
                break  # not ours, or started just now: look at ours one by one
            before.discard(found.si_pid)
            self._wait_for(self.running[found.si_pid])  # in `before`, so not reaped yet
        for pid in before:
            running = self.running.get(pid)
            if running is not None:
                self._wait_for(running)

    def _next_iteration(self) -> None:
        # Runs before the next batch of SIGCHLD calls: the loop queues those from its
        # self-pipe reader, one iteration after this was queued.
        self._swept = False

    def _wait_for(self, running: Running) -> None:
        ended = _collect(running)
        if ended is not None:
            self._finish(running, *ended)

    def _reap(self, running: Running) -> None:
        """Its pidfd is readable (where the loop takes no signals)."""
        ended = _collect(running)
        if ended is None:
            return  # spurious wake-up
        self._loop.remove_reader(running._pidfd)
        os.close(running._pidfd)
        self._finish(running, *ended)

    def _wait_blocking(self, running: Running) -> None:
        _, status, usage = os.wait4(running.pid, 0)
        peak = own_peak(running.parent_maxrss_kib, usage.ru_maxrss)
        self._loop.call_soon_threadsafe(self._finish, running, status, peak)

    def _finish(self, running: Running, status: int, maxrss: int) -> None:
        self.running.pop(running.pid, None)
        code = os.waitstatus_to_exitcode(status)
        exit_ = Exit(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            wall_s=time.monotonic() - running.started_mono,
            maxrss_bytes=maxrss,
        )
        self._on_exit(running, exit_)


# Whether the descriptors this process was started with are kept from tasks (see below).
_INHERITED_CLOSED = False


def keep_inherited_fds_from_tasks() -> None:
    """Mark every descriptor above stderr close-on-exec, once per process: a task gets
    stdin, stdout and stderr only, as `subprocess` gives its children. Python opens its
    own descriptors close-on-exec; those abreast was *started* with are not, and passed
    on they are open in every program a task starts (an IDE's socket, a CI runner's
    pipe, a file opened with `3< secrets`), and a daemon a task leaves behind keeps such
    a pipe open after the run, so that whatever reads it never sees its end."""
    global _INHERITED_CLOSED
    if _INHERITED_CLOSED:
        return
    _INHERITED_CLOSED = True
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):  # no /proc: the descriptors up to the soft limit
        fds = list(range(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # closed (the listing's own), or not a descriptor at all
                pass


def shell_program(shell: str) -> str:
    """The program to start for `shell:`; its bare name when it is not found (starting it
    then fails as a command that cannot run: a run checks before it starts)."""
    return shell_path(shell) or SHELLS[shell][0]


# `trap`, `exec`, `.` or `source` as a word (a false match costs one exec, no more).
_OWN_END = re.compile(r"(?:^|[\s;&|(){}`])(?:trap|exec|\.|source)(?=\s)")


@functools.lru_cache(maxsize=256)
def own_shell(command: str) -> bool:
    """Whether `command` is given to a shell of its own, which the wrapper waits for: it
    may end its shell in a way the wrapper would not see (wrapper.OWN_SHELL_WRAPPER)."""
    return _OWN_END.search(command) is not None


def spawn(launch: Launch) -> tuple[int, int | None]:
    """Start the attempt's wrapper in a session of its own: (pid, start ticks)."""
    keep_inherited_fds_from_tasks()
    program = shell_program(launch.shell)
    own = own_shell(launch.command)
    before = boot_ticks()
    pid = os.posix_spawn(
        launch.sandbox[0] if launch.sandbox else program,
        [
            *launch.sandbox,
            program,
            "-c",
            (OWN_SHELL_WRAPPERS if own else WRAPPERS)[launch.shell],
            "abreast-task",
            launch.cwd,
            launch.exits_file,
            launch.command,
            launch.log,
            f"{launch.task_id}.{launch.attempt}",
            *([program] if own else []),  # the command's own shell
        ],
        launch.env,
        setsid=True,
        setsigdef=_RESTORED_SIGNALS,  # (SIGPIPE and SIGXFSZ as subprocess does it)
    )
    return pid, start_ticks_between(pid, before, boot_ticks())


def _collect(running: Running) -> tuple[int, int] | None:
    """(wait status, peak RSS) of `running`, reaped now if it has ended; None if not."""
    try:
        pid, status, usage = os.wait4(running.pid, os.WNOHANG)
    except ChildProcessError:  # reaped by someone else: the status is lost
        return 0, 0
    return None if pid == 0 else (status, own_peak(running.parent_maxrss_kib, usage.ru_maxrss))


def _status_hwm_kib() -> int | None:
    """VmHWM of /proc/self/status: the peak RSS of this process's own memory (KiB)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# getrusage's ru_maxrss is the larger of our own peak and the one we were started with
# (the peak of the process that exec'd us: from a 2 GB IDE or notebook, 2 GB); a child
# starts from our own peak only. While the inherited figure is the larger, ours is read
# from /proc (15 us a spawn), else from getrusage (2 us).
_INHERITED_KIB: int | None = None


def peak_rss_kib() -> int:
    """Our own peak RSS in KiB, what a child we spawn now starts its maxrss from."""
    global _INHERITED_KIB
    got = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if _INHERITED_KIB is None:
        own = _status_hwm_kib()
        _INHERITED_KIB = got if own is not None and got > own else 0
    if got > _INHERITED_KIB:
        return got
    return _status_hwm_kib() or got


def own_peak(parent_maxrss_kib: int, maxrss_kib: int) -> int:
    """The attempt's peak RSS in bytes from wait4, or 0 where wait4 cannot tell it.

    Linux starts a child's maxrss at the peak of the memory it execs from: a child
    spawned (vfork, or fork) from this process reports at least our own peak, whatever
    it used (`true` from a 40 MB orchestrator: 40 MB). A figure above our peak at the
    spawn is the child's own; one at or below it says only "no more than that", and the
    supervisor's samples of the process tree stand instead.
    """
    return maxrss_kib * 1024 if maxrss_kib > parent_maxrss_kib else 0
