"""Process facts and process killing, with pid-reuse protection.

A pid is only ever signalled if its start time (clock ticks since boot, field
22 of /proc/PID/stat) matches the one journaled when it was started; a
process group is signalled only through such a verified leader, or while the
group still holds members that carry the run's marker in their environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

    from abreast.coord.backend import Lease

MARKER_ENV = "ABREAST_RUN_ID"
# A random tag of the run beside its id: a run id may be given (`--run-id ci-42`), and
# another project's run of the same id must not count as this run's processes.
RUN_TAG_ENV = "ABREAST_RUN_TAG"


def start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // _CLK_TCK


def boot_ticks() -> int:
    """Now, in the unit of /proc's start times: clock ticks of CLOCK_BOOTTIME.

    The kernel stamps a process's start time from CLOCK_BOOTTIME when it forks, so a
    child forked between two readings that fall in the same tick started in that tick:
    its start time is known without reading /proc (which costs 0.2 ms for a process
    in the middle of exec). `start_ticks_between` checks that this holds here.
    """
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


_BOOT_TICKS_MATCH_PROC: bool | None = None  # learnt once, on the first spawn


def start_ticks_between(pid: int, before: int, after: int) -> int | None:
    """The start ticks of `pid`, forked by us between the readings `before` and `after`."""
    global _BOOT_TICKS_MATCH_PROC
    if before == after and _BOOT_TICKS_MATCH_PROC:
        return before
    ticks = start_ticks(pid)
    if _BOOT_TICKS_MATCH_PROC is None and ticks is not None and before == after:
        _BOOT_TICKS_MATCH_PROC = ticks == before
    return ticks


def is_same_process(pid: int, ticks: int | None) -> bool:
    return ticks is not None and start_ticks(pid) == ticks


def is_live_process(pid: int, ticks: int | None) -> bool:
    """The same process (start time checked), and not a zombie: a SIGKILLed process
    keeps its /proc entry until it is reaped, which may be never in a container
    without an init that reaps."""
    fields = _stat_fields(pid)
    return (
        ticks is not None
        and fields is not None
        and fields[0] not in (b"Z", b"X")
        and int(fields[19]) == ticks
    )


def group_alive(pgid: int, since: float | None = None) -> bool:
    """Whether any live (non-zombie) process is in the group.

    `killpg(pgid, 0)` answers fast when the group is empty (the usual case); when it
    says "alive" the group may hold only zombies (an init that does not reap, as in a
    container without one), so the members are then read from /proc.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid, since))


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 on of /proc/PID/stat (state, ppid, pgrp, session, ...; start time at
    index 19). The command name (field 2) may hold spaces and parentheses: the split is
    after the last ')'."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data[data.rindex(b")") + 2 :].split()


def _every_stat() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, `_stat_fields`) of every process, in one pass over /proc (none without it)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            yield int(name), fields


# The live processes' groups and sessions, as last read from /proc: (when, pid -> (process
# group, session)). Killing many attempts at once (a cancelled run of 500) polls each
# one's group and session until they are empty; each poll reading all of /proc made that
# quadratic (7 s to cancel 500 `sleep`s), so polls share a reading at most KILL_POLL_AGE
# old and taken after their kill began: one that shows a group and its session empty
# then shows them empty for good (nothing is left in them to start another).
_LIVE: tuple[float, dict[int, tuple[int, int]]] = (float("-inf"), {})
KILL_POLL_AGE = 0.05


def _live_processes(since: float | None = None) -> dict[int, tuple[int, int]]:
    """pid -> (process group, session) of every live (non-zombie) process, read from /proc
    now, or (`since`: a time.monotonic()) as read after `since` and at most
    KILL_POLL_AGE ago."""
    global _LIVE
    taken, table = _LIVE
    now = time.monotonic()
    if since is not None and taken >= since and now - taken <= KILL_POLL_AGE:
        return table
    table = {
        pid: (int(fields[2]), int(fields[3]))  # fields: state, ppid, pgrp, session, ...
        for pid, fields in _every_stat()
        if fields[0] not in (b"Z", b"X")
    }
    _LIVE = (now, table)
    return table


def group_members(pgid: int, since: float | None = None) -> list[int]:
    """Live (non-zombie) pids in process group `pgid`, read from /proc (`since`: see
    `_live_processes`)."""
    return [pid for pid, (group, _) in _live_processes(since).items() if group == pgid]


def members_of_group_or_session(pgid: int) -> list[int]:
    """Live processes in process group `pgid`, and those of session `pgid` that left it."""
    return sorted(set(group_members(pgid)) | set(_session_strays(pgid)))


def children_zombies(parent: int) -> list[tuple[int, int]]:
    """(pid, session id) of the zombie children of `parent` (to reap as a subreaper)."""
    return [
        (pid, int(fields[3]))
        for pid, fields in _every_stat()
        if fields[0] == b"Z" and int(fields[1]) == parent
    ]


def own_output_files() -> set[tuple[int, int]]:
    """(device, inode) of the regular files this process's stdout and stderr write to."""
    out = set()
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.add((st.st_dev, st.st_ino))
    return out


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so none become a stray zombie."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True, slots=True)
class Adopted:
    """A live process the orchestrator adopted (as a subreaper) that an attempt started:
    the attempt ended, or its shell did, and it ran on in a process group or a session of
    its own (`setsid cmd &`, a daemon)."""

    pid: int
    pgid: int
    task_id: str  # a merge check's: the task ids it checks, space-separated
    attempt: int
    name: str
    check: bool = False  # started by a merge check, not by the attempt itself


class Adoptions:
    """Finds the processes of one run's attempts among our children.

    What a task leaves running in a session of its own is out of reach of its process
    group and session; once the process that started it ends, the kernel gives it to the
    nearest subreaper, us. Our children are read from /proc/self/task/PID/children (one
    `pread` of a descriptor held open: a few microseconds), and a child we did not start
    is looked at once (its environment says which run, task and attempt it belongs to).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._own_session = os.getsid(0)
        try:
            self._fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
        except OSError:  # a kernel without CONFIG_PROC_CHILDREN: nothing is found
            self._fd = -1
        # pid -> (start ticks, (task, attempt, check) or None for a process that is not one)
        self._seen: dict[int, tuple[int, tuple[str, int, bool] | None]] = {}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def find(self, tracked: Container[int]) -> list[Adopted]:
        """Live children carrying this run's marker and a task's, other than `tracked`
        (the attempts' own first processes); those of merge checks are marked so."""
        if self._fd < 0:
            return []
        size = 1 << 16  # room for thousands of pids; a bigger buffer costs its allocation
        try:
            while len(data := os.pread(self._fd, size, 0)) == size:
                size *= 4
        except OSError:
            return []
        pids = [int(x) for x in data.split() if int(x) not in tracked]
        for gone in self._seen.keys() - set(pids):
            del self._seen[gone]
        out = []
        for pid in pids:
            fields = _stat_fields(pid)
            if fields is None or fields[0] in (b"Z", b"X"):
                continue
            ticks = int(fields[19])
            seen = self._seen.get(pid)
            if seen is None or seen[0] != ticks:  # new, or the pid was used again
                seen = (ticks, None if int(fields[3]) == self._own_session else self._mark(pid))
                self._seen[pid] = seen
            if seen[1] is not None:
                task, attempt, check = seen[1]
                out.append(Adopted(pid, int(fields[2]), task, attempt, _comm(pid), check))
        return out

    def _mark(self, pid: int) -> tuple[str, int, bool] | None:
        env = _environ(pid)
        if env is None:
            return None
        task, attempt = env.get(b"ABREAST_TASK_ID"), env.get(b"ABREAST_ATTEMPT", b"")
        if env.get(MARKER_ENV.encode()) != self.run_id.encode() or not task:
            return None
        first = attempt.split(b" ")[0]  # a check of a batch: "1 2"
        if not first.isdigit():
            return None
        check = b"ABREAST_CHECK_COMMIT" in env  # a merge check's, of that attempt
        return task.decode(errors="replace"), int(first), check


def _environ(pid: int) -> dict[bytes, bytes] | None:
    """The environment `pid` started with (None if it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return None


def writers_of(files: Container[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """The live processes holding each of `files` ((device, inode)) open for writing,
    among those /proc lets us look into (our user's). One pass over every process's
    descriptors: some milliseconds, for a question asked rarely."""
    out: dict[tuple[int, int], list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in files and _open_for_writing(int(name), fd):
                out.setdefault(key, []).append(int(name))
    return out


def _open_for_writing(pid: int, fd: str) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


def started_by(pid: int, ancestor: int, run_id: str) -> bool:
    """Whether `pid` descends from `ancestor` (orphans of its descendants come back to
    it as a subreaper), or carries the marker of run `run_id` (an attempt's on a Ray
    worker; "": no run yet)."""
    p = pid
    for _ in range(256):
        if p == ancestor:
            return True
        fields = _stat_fields(p)
        if fields is None or p <= 1:
            break
        p = int(fields[1])
    env = _environ(pid) if run_id else None
    return env is not None and env.get(MARKER_ENV.encode()) == run_id.encode()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "?"


def reap_orphans(tracked: Container[int]) -> int:
    """Reap orphans adopted from the tasks' sessions; how many were reaped.

    Only zombies outside our own session: a child in it is one we started ourselves
    (`subprocess`, a check run by asyncio) and its owner waits for it; reaping it here
    would take its exit status (a failed command would read as a success)."""
    reaped = 0
    own_session = os.getsid(0)
    for pid, session in children_zombies(os.getpid()):
        if pid in tracked or session == own_session:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped += 1
        except ChildProcessError:
            pass
    return reaped


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when the group is empty. "No such process" is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def kill_tree(pgid: int, grace_s: float) -> None:
    """TERM the process group, wait up to `grace_s` for it to empty, then KILL what is left.

    Members that left the group but stayed in the session (`setpgid` without `setsid`)
    are signalled one by one the same way. Zombies count as gone.
    """
    import asyncio  # here: the commands that only read the journal import this module

    began = time.monotonic()
    # Strays that left the group in the last moment are TERMed by the next round, KILL.
    signal_tree(pgid, signal.SIGTERM, since=began - KILL_POLL_AGE)
    deadline = began + grace_s
    delay = 0.005
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)  # bounded wait for processes outside our control to exit
        if not group_alive(pgid, began) and not _session_strays(pgid, began):
            return
        delay = min(delay * 2, 0.1)
    signal_tree(pgid, signal.SIGKILL)


def signal_tree(pgid: int, sig: int, since: float | None = None) -> None:
    """Send `sig` to the process group and to the members of its session that left it
    (`since`: see `_live_processes`)."""
    signal_group(pgid, sig)
    _signal_each(_session_strays(pgid, since), sig)


def _session_strays(sid: int, since: float | None = None) -> list[int]:
    """Live processes of session `sid` that moved to another process group (`since`: see
    `_live_processes`)."""
    return [
        pid
        for pid, (group, session) in _live_processes(since).items()
        if session == sid and group != sid
    ]


def _signal_each(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _running(p: psutil.Process) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def trees_stats(pids: Iterable[int]) -> dict[int, tuple[int, float, int]]:
    """`tree_stats` of each of `pids` (those still there), from one pass over /proc: every
    process's parent, CPU time and memory read once (its `stat`), then the I/O and wake-ups
    of the processes in these trees. Asking each tree alone read every process's `stat`
    once per tree (to find its children): with 1500 attempts running, the supervisor's
    tick read 4.5 million files, held the event loop for seconds, and exits were noticed
    that much late."""
    wanted = set(pids)
    if not wanted:
        return {}
    facts: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, rss bytes, CPU s)
    children: dict[int, list[int]] = {}
    for pid, fields in _every_stat():
        # fields: state, ppid, ...; utime, stime, cutime, cstime at 11-14; rss at 21
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        facts[pid] = (ppid, int(fields[21]) * _PAGE_SIZE, ticks / _CLK_TCK)
        children.setdefault(ppid, []).append(pid)
    out: dict[int, tuple[int, float, int]] = {}
    for root in wanted:
        if root not in facts:
            continue
        rss, cpu, io = 0, 0.0, 0
        tree, seen = [root], {root}
        for pid in tree:  # grows as it is walked: the whole tree, parents first
            new = [c for c in children.get(pid, ()) if c not in seen]
            seen.update(new)
            tree += new
            _, mem, used = facts[pid]
            rss += mem
            cpu += used
            io += _activity(pid)
        out[root] = (rss, cpu, io)
    return out


def _activity(pid: int) -> int:
    """Bytes `pid` read and wrote through read/write calls, and the times it woke from a
    wait (0 for what cannot be read: gone, or not ours)."""
    total = 0
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/io", "rb") as f:
        for line in f.read().splitlines()[:2]:  # rchar, wchar
            total += int(line.split()[1])
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/status", "rb") as f,
    ):
        for line in f:
            if line.startswith(b"voluntary_ctxt_switches:"):
                total += int(line.split()[1])
                break
    return total


def tree_stats(pid: int) -> tuple[int, float, int]:
    """(resident bytes, CPU seconds, activity) of `pid`'s whole tree; activity counts the
    bytes read and written through read/write calls and the times a process woke from a
    wait (its voluntary context switches).

    The last two only grow while the tree does something: computes, reads or writes, or
    wakes for a packet (`recv` on a socket is not counted in bytes, and a quiet reader of
    a slow stream uses too little CPU to show). A supervisor compares them over time to
    tell a hung task from a busy one. (0, 0.0, 0) when `pid` is gone.
    """
    return trees_stats([pid]).get(pid, (0, 0.0, 0))


def marked_processes(
    run_id: str, task_id: str | None = None, attempt: int | None = None, tag: str | None = None
) -> list[psutil.Process]:
    """Live processes started for `run_id` (and `task_id`, its `attempt`), found by the
    environment marker; with `tag` (the run's, where it has one), only those of that run
    of the id.

    This finds a run's processes even where the journal never learnt their pid (an
    orchestrator killed between starting a process and committing its pid).
    """
    want = {MARKER_ENV: run_id}
    if tag:
        want[RUN_TAG_ENV] = tag
    if task_id is not None:
        want["ABREAST_TASK_ID"] = task_id
    if attempt is not None:
        want["ABREAST_ATTEMPT"] = str(attempt)
    return _processes_by_env(lambda env: all(env.get(k) == v for k, v in want.items()))


LOCKS_ENV = "ABREAST_LOCKS"  # a task's (or check's) leases: "NAME:TOKEN,NAME:TOKEN"
LOCKS_STORE_ENV = "ABREAST_LOCKS_STORE"  # the coordination store they are leases of
# `abreast lock`'s command: its lease, and the store it is a lease of.
LOCK_ENV = ("ABREAST_LOCK_NAME", "ABREAST_LOCK_TOKEN", "ABREAST_LOCK_STORE")


def leases_env(leases: Iterable[Lease], store_id: str) -> dict[str, str]:
    """What a task or check started under `leases` carries, by which it can be fenced off."""
    return {
        LOCKS_ENV: ",".join(f"{lease.name}:{lease.token}" for lease in leases),
        LOCKS_STORE_ENV: store_id,
    }


def held_here(name: str, store_id: str, env: Mapping[str, str]) -> int | None:
    """The token of the lease of `name` (in store `store_id`) that the process with
    environment `env` was started under, if any: the task's or check's `locks:`, or the
    command of an `abreast lock` around it."""
    if env.get(LOCKS_STORE_ENV) == store_id:
        for item in env.get(LOCKS_ENV, "").split(","):
            held, _, token = item.rpartition(":")
            if held == name and token.isdigit():
                return int(token)
    lock_name, lock_token, store = (env.get(k, "") for k in LOCK_ENV)
    if lock_name == name and store == store_id and lock_token.isdigit():
        return int(lock_token)
    return None


def lease_holders(name: str, token: int, store_id: str) -> list[psutil.Process]:
    """Live processes started holding lease `token` of lock `name` in the coordination
    store `store_id`, by their environment: a task or check started under it
    (`ABREAST_LOCKS`) and all it started, or the command of `abreast lock`
    (`ABREAST_LOCK_NAME`, `ABREAST_LOCK_TOKEN`). Tokens count per store: `tests` token 1
    of another project (another store) is not this lease."""
    held = f"{name}:{token}"
    lock = (name, str(token), store_id)
    return _processes_by_env(
        lambda env: (
            (held in env.get(LOCKS_ENV, "").split(",") and env.get(LOCKS_STORE_ENV) == store_id)
            or tuple(env.get(k) for k in LOCK_ENV) == lock
        )
    )


def fence(name: str, token: int, host: str, store_id: str, grace_s: float = 2.0) -> int:
    """End whatever still holds lease `token` of `name` in store `store_id`, a lease that
    ran out without being given back (its holder stopped, killed or cut off), so that it
    never works beside the lease's next holder. Only where that lease was held on this
    host: elsewhere no process of it can be seen. Returns how many processes it ended."""
    import socket

    if host != socket.gethostname():
        return 0
    return end_lease_holders(name, token, store_id, grace_s)


def end_lease_holders(name: str, token: int, store_id: str, grace_s: float = 2.0) -> int:
    """End the processes here that run under lease `token` of `name` in store `store_id`:
    the lease was lost while they ran. Returns how many. All are stopped before any is
    signalled: a shell whose child died first would otherwise run its next command (`sleep
    20; echo done`: the echo) before its own signal came, unprotected by the lease."""
    return stop_then_kill(lambda: [p.pid for p in lease_holders(name, token, store_id)], grace_s)


def _processes_by_env(match: Callable[[dict[str, str]], bool]) -> list[psutil.Process]:
    import psutil

    me = os.getpid()
    out = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if match(env) and _running(p):
            out.append(p)
    return out


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def freeze(pids: Iterable[int]) -> None:
    """SIGSTOP each: a stopped process does nothing more until it is killed or continued."""
    _signal_each(pids, signal.SIGSTOP)


def freeze_all(find: Callable[[], Iterable[int]]) -> set[int]:
    """SIGSTOP every process `find` names, looking again until no new one appears (one may
    fork while we look): the stopped pids."""
    frozen: set[int] = set()
    while found := set(find()) - frozen:
        freeze(found)
        frozen |= found
    return frozen


def stop_then_kill(find: Callable[[], Iterable[int]], grace_s: float = 2.0) -> int:
    """Kill every process `find` names (`kill_pids`), all of them stopped first: signalled
    one by one, a shell whose child died first would run its next command (`sleep 20;
    echo done`: the echo) before its own signal came. Returns how many were alive."""
    return kill_pids(freeze_all(find), grace_s)


def kill_pids(pids: Iterable[int], grace_s: float = 2.0) -> int:
    """TERM (and CONT, for those `freeze` stopped), wait up to `grace_s`, KILL; returns how
    many of `pids` were alive."""
    live = [p for p in set(pids) if pid_alive(p)]
    _signal_each(live, signal.SIGTERM)
    _signal_each(live, signal.SIGCONT)
    deadline = time.monotonic() + grace_s
    delay = 0.005
    while time.monotonic() < deadline and any(pid_alive(p) for p in live):
        time.sleep(delay)  # bounded wait for processes we no longer supervise
        delay = min(delay * 2, 0.1)
    _signal_each([p for p in live if pid_alive(p)], signal.SIGKILL)
    return len(live)


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed on this machine
    since it booted (`oom_kill` of /proc/vmstat: a cgroup's limit counted as the machine's
    memory); None where that cannot be read."""
    try:
        with open("/proc/vmstat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    at = data.find(b"\noom_kill ")
    if at < 0:
        return None
    end = data.find(b"\n", at + 1)
    try:
        return int(data[at + 10 : end if end > 0 else None])
    except ValueError:
        return None


def describe_status(exit_code: int | None, sig: int | None) -> str:
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if exit_code is None:
        return "ended without a status"
    if exit_code > 128 and exit_code - 128 < 65:
        try:
            return f"exit {exit_code} ({signal.Signals(exit_code - 128).name})"
        except ValueError:
            pass
    if exit_code in _SHELL_STATUS:  # what /bin/sh says it with
        return f"exit {exit_code} ({_SHELL_STATUS[exit_code]})"
    return f"exit {exit_code}"


_SHELL_STATUS = {127: "command not found", 126: "found but not executable"}
