"""Process facts (start times that guard every kill against pid reuse), and how the
local executor and the orphan reaper collect exits without taking anyone else's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from abreast.executor.local import Exit, Launch, LocalExecutor, Running
from abreast.executor.process import (
    boot_ticks,
    children_zombies,
    is_same_process,
    reap_orphans,
    start_ticks,
    start_ticks_between,
)
from tests.helpers import wait_for


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


def _launch(d: Path, task_id: str, command: str) -> Launch:
    return Launch(
        "r", task_id, 1, command, str(d), dict(os.environ), f"{d}/{task_id}.log", f"{d}/exits"
    )


def _zombie(pid: int) -> bool:
    return pid in [p for p, _ in children_zombies(os.getpid())]


async def _run_all(d: Path, commands: dict[str, str], before: float = 10.0) -> dict[str, Exit]:
    """Start `commands` through a LocalExecutor and collect how each ended."""
    done: dict[str, Exit] = {}
    all_ended = asyncio.Event()

    def on_exit(running: Running, exit_: Exit) -> None:
        done[running.launch.task_id] = exit_
        if len(done) == len(commands):
            all_ended.set()

    executor = LocalExecutor(on_exit)
    try:
        for task_id, command in commands.items():
            executor.start(_launch(d, task_id, command))
        await asyncio.wait_for(all_ended.wait(), before)
    finally:
        executor.close()
    assert not executor.running
    return done


def test_the_executor_reaps_its_own_processes_and_no_other(tmp_path: Path) -> None:
    # A child of ours that the executor did not start has ended and waits to be reaped
    # by its owner when the executor's processes end (SIGCHLD for each).
    other = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    wait_for(lambda: _zombie(other.pid), what="the other child to end")
    done = asyncio.run(
        _run_all(tmp_path, {"ok": "true", "five": "exit 5", "term": "kill -TERM $$"})
    )
    assert (done["ok"].exit_code, done["five"].exit_code) == (0, 5)
    assert done["term"].signal == signal.SIGTERM and done["term"].exit_code is None
    assert other.wait(timeout=10) == 3  # its status was left to it


def test_a_sweep_notices_an_exit_whose_signal_was_lost(tmp_path: Path) -> None:
    # The engine's tick sweeps, so an exit is noticed even if its SIGCHLD never is.
    async def scenario() -> dict[str, Exit]:
        done: dict[str, Exit] = {}
        executor = LocalExecutor(
            lambda running, exit_: done.update({running.launch.task_id: exit_})
        )
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)  # "lost"
            running = executor.start(_launch(tmp_path, "six", "exit 6"))
            wait_for(lambda: _zombie(running.pid), what="the process to end")
            await asyncio.sleep(0)  # a loop iteration: nothing notices it by itself
            assert not done
            executor.sweep()
        finally:
            executor.close()
        return done

    assert asyncio.run(scenario())["six"].exit_code == 6


def test_many_exits_at_once_neither_flood_the_loop_nor_drop_a_signal(tmp_path: Path) -> None:
    # Each exit frees another process that ends at once: the SIGCHLD callback must not
    # reap what it started itself, or one callback runs them all while signals pile up
    # in the loop's self-pipe (about 300 fit; then they are dropped, Ctrl-C among them).
    async def scenario() -> tuple[int, int, int]:
        left = 400
        most_in_one_iteration = 0
        in_this_iteration = 0
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()

        def new_iteration() -> None:
            nonlocal in_this_iteration
            in_this_iteration = 0

        def on_exit(running: Running, exit_: Exit) -> None:
            nonlocal left, in_this_iteration, most_in_one_iteration
            if in_this_iteration == 0:
                loop.call_soon(new_iteration)
            in_this_iteration += 1
            most_in_one_iteration = max(most_in_one_iteration, in_this_iteration)
            left -= 1
            if left >= 4:
                executor.start(_launch(tmp_path, f"t{left}", "true"))
            if not executor.running:
                finished.set()

        executor = LocalExecutor(on_exit)
        try:
            for i in range(4):
                executor.start(_launch(tmp_path, f"first{i}", "true"))
            await asyncio.wait_for(finished.wait(), 60)
        finally:
            executor.close()
        return left, most_in_one_iteration, len(executor.running)

    left, most, running = asyncio.run(scenario())
    assert (left, running) == (0, 0)  # every exit was noticed
    # One sweep a loop iteration, of the processes started before it: at most 4 here.
    assert most <= 4, f"{most} exits handled in one loop iteration"


def test_every_running_trees_facts_come_from_one_pass_over_proc(tmp_path: Path) -> None:
    # The supervisor asked psutil for each attempt's tree, and each ask read every
    # process's /proc/PID/stat to find the children: with 1500 attempts its tick read
    # millions of files on the event loop, and exits were noticed seconds late.
    import psutil

    from abreast.executor.process import tree_stats, trees_stats

    busy = tmp_path / "busy"
    trees = [
        subprocess.Popen(["/bin/sh", "-c", f"sleep 60 & sleep 60 & echo $$ > {busy}.{i}; wait"])
        for i in range(3)
    ]
    worker = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    try:
        wait_for(lambda: all(Path(f"{busy}.{i}").exists() for i in range(3)), what="trees")
        wait_for(lambda: len(psutil.Process(trees[2].pid).children()) == 2, what="children")
        roots = [t.pid for t in trees] + [worker.pid, 999_999_999]
        got = trees_stats(roots)
        assert sorted(got) == sorted(roots[:4])  # a pid that is not there is left out
        for t in trees:
            rss, _, activity = got[t.pid]
            shell = psutil.Process(t.pid).memory_info().rss
            assert rss > shell  # the shell and its two sleeping children
            assert activity > 0
        wait_for(lambda: tree_stats(worker.pid)[1] > 0.05, what="the busy loop's CPU")
        before = trees_stats([worker.pid])[worker.pid][1]
        wait_for(lambda: tree_stats(worker.pid)[1] > before, what="more CPU")

        # Answered from one pass per loop iteration by the executor too.
        async def both() -> tuple[object, object]:
            executor = LocalExecutor(lambda running, exit_: None)
            try:
                a = executor.start(_launch(tmp_path, "a", "sleep 60"))
                b = executor.start(_launch(tmp_path, "b", "sleep 60"))
                wait_for(  # both past their exec (a tree mid-exec can read an RSS of 0)
                    lambda: all(psutil.Process(r.pid).children() for r in (a, b)),
                    what="a's and b's sleep",
                )
                first = executor.stats(a), executor.stats(b)
                for r in (a, b):
                    os.killpg(r.pgid, signal.SIGKILL)
                return first
            finally:
                executor.close()

        sa, sb = asyncio.run(both())
        assert sa[0] > 0 and sb[0] > 0  # type: ignore[index]
    finally:
        for proc in [*trees, worker]:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


def test_a_reading_of_proc_is_shared_only_when_taken_after_the_kill_began() -> None:
    # Cancelling 500 attempts polled each one's group by reading all of /proc (7 s, and a
    # minute for 1500); polls now share a reading, but only one taken after they began:
    # an older one may not hold a process that is there now.
    from abreast.executor.process import KILL_POLL_AGE, group_alive, group_members

    group_members(1)  # a reading, now
    before = time.monotonic()
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert group_members(proc.pid, since=before - 1) == []  # the older reading, shared
        began = time.monotonic()
        assert group_members(proc.pid, since=began) == [proc.pid]  # read again
        assert group_alive(proc.pid, since=began)
        proc.kill()
        proc.wait()
        assert not group_alive(proc.pid, since=time.monotonic())
        time.sleep(KILL_POLL_AGE * 2)
        assert group_members(proc.pid, since=began) == []  # too old to share: read again
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_more_signals_than_the_loop_holds_print_no_traceback() -> None:
    # 1500 attempts ending in the same instant are more SIGCHLDs than the loop's self-pipe
    # holds (about 300), and Python printed "Exception ignored when trying to write to the
    # signal wakeup fd" and a traceback for each one left out, over the run's output.
    # The executor, and the engine after its own handlers, turn that warning off.
    import sys

    from abreast.executor.local import quiet_signal_wakeup

    def flood(quiet: bool) -> list[str]:
        said: list[str] = []  # each of what Python printed "Exception ignored ..." for

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            executor = LocalExecutor(lambda running, exit_: None)
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)  # as the engine does after
            if quiet:
                quiet_signal_wakeup(loop)
            try:
                for _ in range(2000):  # delivered at once, the loop never getting to read
                    os.kill(os.getpid(), signal.SIGCHLD)
            finally:
                loop.remove_signal_handler(signal.SIGUSR1)
                executor.close()

        hook = sys.unraisablehook
        sys.unraisablehook = lambda u: said.append(u.exc_type.__name__)
        try:
            asyncio.run(scenario())
        finally:
            sys.unraisablehook = hook
        return said

    assert "BlockingIOError" in flood(False)  # the self-pipe full: what was printed
    assert flood(True) == []


def test_off_the_main_thread_the_executor_watches_each_process_instead(tmp_path: Path) -> None:
    result: dict[str, dict[str, Exit]] = {}

    def in_thread() -> None:
        result["done"] = asyncio.run(_run_all(tmp_path, {"seven": "exit 7", "ok": "true"}))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive()
    assert result["done"]["seven"].exit_code == 7
    assert result["done"]["ok"].exit_code == 0


def test_orphan_reaping_takes_zombies_of_other_sessions_only() -> None:
    # In our session: a child some code of ours started (a check, a git command) and
    # will wait for. Reaping it would lose its status: Popen would then report 0.
    ours = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    # In a session of its own, as a task's orphaned descendant is.
    adopted = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "exit 4"], {}, setsid=True)
    wait_for(lambda: _zombie(ours.pid) and _zombie(adopted), what="both to end")
    reap_orphans(set())
    assert not _zombie(adopted)  # reaped
    assert ours.wait(timeout=10) == 3
