"""Crash and resume: SIGKILL the orchestrator anywhere; `resume` loses and repeats nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abreast.executor.process import marked_processes
from tests.conftest import run_abreast
from tests.helpers import pid_alive, query, start_run, wait_for, write_workflow


def started_while_a_runs(
    tmp_path: Path, name: str, tasks: dict[str, Any], **top: Any
) -> tuple[subprocess.Popen[str], str]:
    """A run of `tasks` in the background, once its task a (whose command touches
    a.started) has started: (the orchestrator, the run id)."""
    proc, run_id = start_run(write_workflow(tmp_path, name, tasks, **top), cwd=tmp_path)
    wait_for(lambda: (tmp_path / "a.started").exists(), what="a to start")
    return proc, run_id


def crash_workflow(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A DAG of `n` tasks that each sleep a little, then count their success once."""
    rng = random.Random(seed)
    (root / "counts").mkdir()
    tasks = {}
    for i in range(n):
        needs = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        tasks[f"t{i}"] = {
            "run": f"sleep {rng.uniform(0.05, 0.5):.2f} && "
            f'echo "$ABREAST_ATTEMPT" >> {root}/counts/$ABREAST_TASK_ID',
            "needs": needs,
        }
    path = root / "w.json"
    path.write_text(
        json.dumps(
            {"version": 1, "name": "crash", "isolation": "none", "max_parallel": 3, "tasks": tasks}
        )
    )
    return path


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)  # reaps it and closes its pipes


def counts(root: Path, n: int) -> dict[str, int]:
    out = {}
    for i in range(n):
        f = root / "counts" / f"t{i}"
        out[f"t{i}"] = len(f.read_text().split()) if f.exists() else 0
    return out


@pytest.mark.parametrize(("seed", "after_done"), [(1, 0), (2, 3), (3, 6), (4, 9)])
def test_sigkill_anywhere_then_resume_runs_every_task_exactly_once(
    tmp_path: Path, seed: int, after_done: int
) -> None:
    n = 12
    path = crash_workflow(tmp_path, n, seed)
    proc, run_id = start_run(path)
    wait_for(lambda: sum(counts(tmp_path, n).values()) >= after_done, what="tasks to finish")
    time.sleep(random.Random(seed).uniform(0, 0.1))  # a random instant, on purpose
    kill9(proc)
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
    assert resumed.code == 0, resumed.out + resumed.err
    assert counts(tmp_path, n) == {f"t{i}": 1 for i in range(n)}
    status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
    assert status["state"] == "succeeded"
    assert all(t["state"] == "succeeded" for t in status["tasks"])
    assert marked_processes(run_id) == []


def test_resume_kills_strays_and_reruns_what_was_running(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "strays",
                "isolation": "none",
                "tasks": {
                    "long": {
                        "run": f"echo $$ >> {tmp_path}/pids; sleep 2; echo done >> {tmp_path}/done"
                    },
                },
            }
        )
    )
    proc, run_id = start_run(path)
    wait_for(lambda: (tmp_path / "pids").exists(), what="the task to start")
    kill9(proc)
    first_pid = int((tmp_path / "pids").read_text().split()[0])
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
    assert status["state"] == "interrupted"
    shown = run_abreast("status", run_id, "--state", state).out
    assert re.search(
        r"\n  long +running +1 .* no end recorded: `abreast resume` stops it if it still "
        r"runs, and runs it again\n",
        shown,
    ), shown
    # No RUN: the one run whose orchestrator died.
    resumed = run_abreast("resume", "--state", state, "--no-monitor", "--plain")
    assert resumed.code == 0, resumed.err
    assert run_id in resumed.out
    assert "killed 2 stray process" in resumed.out  # the shell and its sleep
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2 and pids[0] == first_pid
    assert (tmp_path / "done").read_text().split() == ["done"]
    attempts = run_abreast("logs", run_id, "long", "--attempt", "2", "--state", state)
    assert attempts.code == 0


def test_an_attempt_killed_by_cancel_is_not_said_to_have_ended_nor_taken_by_resume(
    tmp_path: Path,
) -> None:
    # `abreast cancel` of a crashed run kills what still runs; an agent that cleans up on
    # TERM exits with a status of its own, which its shell records. Read after the kill,
    # that was said as an end ("t ended meanwhile"), and the resume took it as the
    # attempt's failure.
    graceful = (
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then trap "exit 3" TERM; touch started; '
        "while :; do sleep 0.05; done; fi"
    )
    path = write_workflow(tmp_path, "graceful", {"t": {"run": graceful, "retries": 0}})
    proc, run_id = start_run(path, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")
    kill9(proc)
    cancelled = run_abreast("cancel", run_id, cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    assert "ended meanwhile" not in cancelled.out, cancelled.out
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    assert re.search(r"(?m)^t\.1 3 ", exits.read_text())  # what its shell said of the kill
    shown = run_abreast("status", run_id, cwd=tmp_path).out
    assert "cancelled while its orchestrator was gone" in shown, shown
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "start   t (attempt 2)" in resumed.out


def test_an_attempt_killed_by_resume_is_rerun_not_failed_by_its_exit_status(
    tmp_path: Path,
) -> None:
    # An agent that cleans up on TERM exits with a status of its own; the wrapper records it
    # like any exit. Resume's own kill must not be taken for the attempt's result.
    graceful = (
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then trap "exit 143" TERM; touch started; '
        "while :; do sleep 0.05; done; fi"
    )
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "graceful",
                "isolation": "none",
                "tasks": {"t": {"run": graceful}},
            }
        )
    )
    proc, run_id = start_run(path)
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")
    kill9(proc)
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
    assert resumed.code == 0, resumed.out + resumed.err
    status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
    assert status["tasks"][0]["state"] == "succeeded"
    assert status["tasks"][0]["attempts"] == 2


@pytest.mark.parametrize(
    ("own_trap", "end", "status"),
    [
        (False, "", 0),
        (True, "", 0),
        (True, "; exit 0", 0),  # its own trap, then an exit of its own
        (True, "; false", 1),  # ... or a line that fails (set -e)
        (False, "; exec true", 0),  # the shell replaced: no trap of any kind runs
    ],
)
def test_an_attempt_that_ended_while_abreast_was_down_is_not_rerun(
    tmp_path: Path, own_trap: bool, end: str, status: int
) -> None:
    # A script that cleans up in an EXIT trap of its own replaced the one that records
    # its status: run again on resume, though it had finished (and so was one that ends
    # in `exec`, or exits itself under its own trap).
    trap = f"trap 'echo x >> {tmp_path}/cleaned' EXIT; " if own_trap else ""
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "adopt",
                "isolation": "none",
                "tasks": {
                    "a": {"run": f"{trap}echo x >> {tmp_path}/a; sleep 0.5{end}"},
                    "b": {"run": f"echo x >> {tmp_path}/b", "needs": ["a"]},
                },
            }
        )
    )
    proc, run_id = start_run(path)
    wait_for(lambda: (tmp_path / "a").exists(), what="a to start")
    kill9(proc)
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    wait_for(lambda: f"a.1 {status}" in exits.read_text(), what="a to finish on its own")
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
    assert resumed.code == status, resumed.out + resumed.err
    assert "ended while abreast was down" in resumed.out
    assert (tmp_path / "a").read_text().split() == ["x"]
    assert (tmp_path / "b").exists() == (status == 0)
    if status == 0:
        assert (tmp_path / "b").read_text().split() == ["x"]
    if own_trap:
        assert (tmp_path / "cleaned").read_text().split() == ["x"]  # its trap still ran


def test_an_attempt_that_failed_while_abreast_was_down_says_its_line(tmp_path: Path) -> None:
    """A bash command of several lines that failed while no orchestrator watched: the
    resume says at which line, as the orchestrator that started it would have."""
    run = (
        "touch a.started\nwhile [ ! -e go ]; do sleep 0.05; done\ngrep -q NOPE a.started\necho done"
    )
    tasks = {"a": {"run": run, "shell": "bash"}}
    proc, run_id = started_while_a_runs(tmp_path, "down", tasks)
    kill9(proc)
    (tmp_path / "go").touch()
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    wait_for(lambda: "a.1 1" in exits.read_text(), what="a to fail on its own")
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 1, resumed.out + resumed.err
    assert "a (failed): exit 1 at line 3 (`grep -q NOPE a.started`)" in resumed.out


def test_an_attempt_that_ended_while_abreast_was_down_took_its_own_time_not_the_wait(
    tmp_path: Path,
) -> None:
    # After a crash its attempts go on. One that ended while abreast was down was said to
    # have taken until the resume (a task of a second "took" the night), while the run's
    # wall time left that time out: "saved 99%". The wrapper now records when it ended.
    proc, run_id = started_while_a_runs(
        tmp_path,
        "down",
        {"a": {"run": "touch a.started; sleep 0.5"}, "b": {"run": "true", "needs": ["a"]}},
    )
    kill9(proc)
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    wait_for(lambda: exits.exists() and "a.1 0" in exits.read_text(), what="a to end")
    # As if the crash and a's end were `gap` ago: the journal's times and the line's
    # (seconds since boot: the gap is kept under this machine's uptime).
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    gap = min(3600.0, uptime * 0.9)
    db = tmp_path / ".abreast" / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for table, cols in (
            ("runs", ("started_at", "heartbeat_at")),
            ("tasks", ("started_at",)),
            ("attempts", ("started_at",)),
            ("events", ("ts",)),
        ):
            sets = ", ".join(f"{c} = {c} - {gap}" for c in cols)
            conn.execute(
                f"UPDATE {table} SET {sets} WHERE {'id' if table == 'runs' else 'run_id'} = ?",
                (run_id,),
            )
    key, code, up, boot = exits.read_text().split()
    exits.write_text(f"{key} {code} {float(up) - gap:.2f} {boot}\n")
    # Before the resume, `status` says so (it said `running`, for ever longer).
    shown = run_abreast("status", run_id, cwd=tmp_path).out
    assert re.search(
        r"\n  a +ended +1 +(\d+ms|\d+(\.\d+)?s) +- +exit 0 while abreast was down; "
        r"`abreast resume` takes its result\n",
        shown,
    ), shown
    took = re.search(rf"run {run_id} \(down\): interrupted, (\d+ms|\d+(\.\d+)?s)\n", shown)
    assert took, shown
    seconds = float(took[1][:-2]) / 1000 if took[1].endswith("ms") else float(took[1][:-1])
    assert 0.4 < seconds < 30, shown  # to a's end, not to the crash (nor to now)
    said = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    assert [(t["id"], t["state"], t["exit_code"]) for t in said["tasks"]] == [
        ("a", "ended", 0),
        ("b", "pending", None),
    ]
    # ... and so do the report (its wall time ran to now, a "running" for as long) ...
    report = run_abreast("report", run_id, cwd=tmp_path).out
    assert re.search(r"\n  a +ended +1 +(\d+ms|\d+(\.\d+)?s) +(\d+ms|\d+(\.\d+)?s) ", report)
    assert re.search(r"\n  wall (\d+ms|\d+(\.\d+)?s)[; ]", report), report  # not 1h2m
    # ... and the dashboard (a's bar ran on to now, the run's timeline with it).
    from tests.test_observe import chromium, get, serve_dashboard

    dashboard, port = serve_dashboard(tmp_path)
    try:
        code, body = get(f"http://127.0.0.1:{port}/api/runs/{run_id}")
        assert code == 200, body
        snap = json.loads(body)
        (a,) = [t for t in snap["tasks"] if t["id"] == "a"]
        assert a["state"] == "ended", a
        assert a["reason"] == "exit 0 while abreast was down; `abreast resume` takes its result"
        (attempt,) = [x for x in snap["attempts"] if x["task"] == "a"]
        assert attempt["state"] == "ended" and attempt["exit_code"] == 0
        assert 0.4 < attempt["ended_at"] - attempt["started_at"] < 30, attempt
        assert snap["run"]["until"] == pytest.approx(attempt["ended_at"], abs=0.01)
        driver = chromium(tmp_path / "chromium-profile")
        try:
            driver.get(f"http://127.0.0.1:{port}/runs/{run_id}")
            shown_state = (  # the DAG's box of a
                "const n = document.querySelector('[data-task=\"a\"]');"
                "return n && n.getAttribute('data-state');"
            )
            wait_for(lambda: driver.execute_script(shown_state) == "ended", what="a as ended")
        finally:
            driver.quit()
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    [(wall_s, ended_at)] = query(db, "SELECT wall_s, ended_at FROM attempts WHERE task_id = 'a'")
    assert 0.4 < wall_s < 30, wall_s  # sleep 0.5, not the gap
    assert ended_at < time.time() - gap + 30
    assert re.search(r"succeeded a in (\d+ms|\d+(\.\d+)?s)\n", resumed.out), resumed.out
    # The run was at work while a ran, orchestrator or not: its wall time has it.
    wall = json.loads(query(db, "SELECT summary FROM runs")[0][0])["wall_s"]
    assert 0.4 < wall < 30, wall
    assert re.search(r"critical path: a -> b took \d+(\.\d+)?m?s\n", resumed.out), resumed.out


def test_an_attempt_stopped_by_the_machine_going_down_runs_again_not_failed(
    tmp_path: Path,
) -> None:
    # A machine shut down cleanly TERMs everything: the wrapper recorded 143 for the
    # attempt, and the resume after the reboot took it as the attempt's failure (no
    # retries left: failed, "exit 143 (SIGTERM)"). Its line says the boot it was written
    # in: one that has ended is a shutdown, and the attempt was interrupted, not failed.
    # (And a line cut short by the shutdown, without its status, is passed over.)
    proc, run_id = started_while_a_runs(
        tmp_path,
        "reboot",
        {"a": {"run": "touch a.started; test -e go || sleep 60; echo x >> a.count", "retries": 0}},
    )
    db = tmp_path / ".abreast" / "state.db"
    wait_for(lambda: query(db, "SELECT pgid FROM attempts") != [(None,)], what="a journaled")
    kill9(proc)
    [(pid, pgid)] = query(db, "SELECT pid, pgid FROM attempts")
    os.killpg(pgid, signal.SIGKILL)  # (what the shutdown took down, as it went)
    wait_for(lambda: not pid_alive(pid), what="a's shell to be gone")
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    with exits.open("a") as f:  # as its shell wrote them, TERMed in the boot before
        f.write("a.1 143 3601.50 5f1c32a0-0000-4000-8000-000000000000\nb.1")
    (tmp_path / "go").touch()
    shown = run_abreast("status", run_id, cwd=tmp_path).out
    assert "no end recorded" in shown, shown
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "start   a (attempt 2)" in resumed.out
    assert "ended while abreast was down" not in resumed.out
    assert (tmp_path / "a.count").read_text() == "x\n"


def test_cancel_of_a_crashed_run_says_what_ended_meanwhile_and_resume_takes_it(
    tmp_path: Path,
) -> None:
    # After a crash, `abreast cancel` marked every task "cancelled while its orchestrator
    # was gone", though one had ended with its work done (resume took it all the same:
    # the cancel said nothing of it), and the run "ended" at the cancel, the time between
    # counted as the run's.
    from abreast.executor.exits import recorded_exits

    proc, run_id = started_while_a_runs(
        tmp_path,
        "gone",
        {"a": {"run": "touch a.started; sleep 0.3; echo x >> a.count"}, "b": {"run": "true"}},
        max_parallel=1,
    )
    kill9(proc)
    exits = tmp_path / ".abreast" / "runs" / run_id / "exits"
    wait_for(lambda: exits.exists() and "a.1 0" in exits.read_text(), what="a to end")
    cancelled = run_abreast("cancel", run_id, cwd=tmp_path)
    assert cancelled.code == 0, cancelled.err
    assert cancelled.out.endswith(
        f"; a ended meanwhile: `abreast resume {run_id}` takes its result\n"
    ), cancelled.out
    shown = run_abreast("status", run_id, cwd=tmp_path).out
    assert re.search(r"\n  a +cancelled .* exit 0 while abreast was down; `abreast resume`", shown)
    db = tmp_path / ".abreast" / "state.db"
    [(finished,)] = query(db, "SELECT finished_at FROM runs")
    [(_, a_end, _)] = recorded_exits(str(exits)).values()
    assert a_end is not None and finished == pytest.approx(a_end, abs=0.05)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "a: attempt 1 ended while abreast was down (exit 0); taking its result" in resumed.out
    assert (tmp_path / "a.count").read_text() == "x\n"  # not run again


def test_a_signal_nobody_read_before_the_crash_releases_its_waiters_on_resume(
    tmp_path: Path,
) -> None:
    # a signals while its orchestrator is stopped (journaled; SIGUSR1 pending), then the
    # orchestrator dies without reading it. On resume a runs again and signals "again",
    # which wakes nobody: b must start from the journaled signal, not wait for a's end,
    # which here waits for b.
    t = tmp_path
    waits_for_b = f"for i in $(seq 100); do [ -e {t}/b-ran ] && exit 0; sleep 0.05; done; exit 1"
    path = write_workflow(
        t,
        "replay",
        {
            "a": {
                "run": f"touch {t}/a-started; while [ ! -e {t}/go ]; do sleep 0.02; done; "
                f"abreast signal ready && touch {t}/signalled && {waits_for_b}",
                "signals": ["ready"],
            },
            "b": {"run": f"touch {t}/b-ran", "needs": ["a:ready"]},
        },
    )
    proc, run_id = start_run(path)
    wait_for(lambda: (t / "a-started").exists(), what="a to start")
    proc.send_signal(signal.SIGSTOP)
    (t / "go").touch()
    wait_for(lambda: (t / "signalled").exists(), what="a to signal")
    kill9(proc)
    assert not (t / "b-ran").exists()
    state = f"sqlite://{t}/.abreast/state.db"
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
    assert resumed.code == 0, resumed.out + resumed.err
    assert "a signalled 'ready': b may start" in resumed.out
    status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
    assert {x["id"]: x["state"] for x in status["tasks"]} == {"a": "succeeded", "b": "succeeded"}


@contextlib.contextmanager
def in_background(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`argv` started with its output piped; killed on the way out if it still runs (the
    test failed)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def slow_to_stop_after_a_crash(t: Path) -> tuple[str, str, list[str]]:
    """A run whose orchestrator was SIGKILLed while its one task ran: a task that takes
    its 2 s of grace over SIGTERM (touching t/termed when it gets it), so that a resume
    spends that long stopping it. Each attempt appends a line to t/runs; attempt 2 just
    succeeds. Returns (run id, --state, argv of `abreast resume RUN` for Popen)."""
    path = write_workflow(
        t,
        "slow-to-stop",
        {
            "slow": {
                "run": f'echo x >> {t}/runs; [ "$ABREAST_ATTEMPT" = 1 ] || exit 0; '
                f"trap 'touch {t}/termed' TERM; touch {t}/started; "
                "while :; do sleep 0.05 || :; done"
            }
        },
    )
    proc, run_id = start_run(path)
    wait_for(lambda: (t / "started").exists(), what="the task to start")
    kill9(proc)
    state = f"sqlite://{t}/.abreast/state.db"
    argv = [sys.executable, "-m", "abreast", "resume", run_id, "--state", state]
    return run_id, state, [*argv, "--no-monitor", "--plain"]


def test_two_resumes_at_once_one_takes_the_run_up_the_other_is_refused(tmp_path: Path) -> None:
    # The first resume claims the run before it stops the dead orchestrator's strays; a
    # second resume started meanwhile must not take the run up too (it would run every
    # task a second time).
    t = tmp_path
    run_id, state, argv = slow_to_stop_after_a_crash(t)
    with in_background(argv) as first:
        wait_for(lambda: (t / "termed").exists(), what="the first resume to TERM the stray")
        second = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
        assert second.code == 2, second.out + second.err
        assert "is still running" in second.err or "was taken up by" in second.err
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert (t / "runs").read_text().split() == ["x", "x"]  # attempt 1, and one attempt 2


def test_cancel_while_resume_takes_the_run_up_cancels_it(tmp_path: Path) -> None:
    # `abreast cancel` reaches the resuming process before its engine listens (it is still
    # stopping the strays): the run ends cancelled, with nothing started again, rather
    # than the resume dying of the SIGTERM and leaving the run interrupted.
    t = tmp_path
    run_id, state, argv = slow_to_stop_after_a_crash(t)
    with in_background(argv) as resume:
        wait_for(lambda: (t / "termed").exists(), what="resume to TERM the stray")
        cancel = run_abreast("cancel", run_id, "--state", state)
        assert cancel.code == 0, cancel.err
        assert f"(pid {resume.pid}) to cancel" in cancel.out
        out, err = resume.communicate(timeout=60)
    assert ": cancelled in" in out, out + err
    status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
    assert status["state"] == "cancelled"
    assert (t / "runs").read_text().split() == ["x"]  # attempt 2 never started


def test_resume_waits_for_a_cleanup_at_work_and_sees_what_it_forgot(tmp_path: Path) -> None:
    # While `abreast cleanup` holds the journal (here: this test, as cleanup would), a
    # resume of a cancelled run waits, saying for whom; the cleanup forgets the run
    # meanwhile; the resume then says so instead of running a run that is gone.
    from abreast.coord.journal import Journal

    t = tmp_path
    path = write_workflow(t, "waits", {"a": {"run": f"touch {t}/started; sleep 30"}})
    proc, run_id = start_run(path)
    wait_for(lambda: (t / "started").exists(), what="a to start")
    proc.send_signal(signal.SIGINT)
    assert ": cancelled in" in proc.communicate(timeout=30)[0]
    (t / "started").unlink()
    db = t / ".abreast" / "state.db"
    err = t / "resume.err"
    with Journal(db) as journal, journal.exclusive(), err.open("w") as err_file:
        resume = subprocess.Popen(
            [sys.executable, "-m", "abreast", "resume", run_id, "--state", f"sqlite://{db}"],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
        try:
            wait_for(lambda: "waiting for" in err.read_text(), what="resume to wait")
            assert f"waiting for pid {os.getpid()} " in err.read_text()
            assert journal.forget_run(run_id, time.time() + 1)
        except BaseException:
            resume.kill()
            raise
    out, _ = resume.communicate(timeout=30)
    assert resume.returncode == 2, out + err.read_text()
    assert f"run {run_id} was forgotten by `abreast cleanup --older-than` just now" in (
        err.read_text()
    )
    assert not (t / "started").exists()  # nothing ran


def test_the_process_waited_for_is_named_without_its_arguments(tmp_path: Path) -> None:
    # What a waiting resume prints of the process holding the journal: its command, not
    # its arguments, which may carry a password.
    import psutil

    from abreast.engine.lookup import described_process

    script = tmp_path / "abreast"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), "cleanup", "--state", "redis://:sekrit@127.0.0.1:1"])
    try:
        wait_for(
            lambda: str(script) in psutil.Process(proc.pid).cmdline(), what="the script's exec"
        )
        assert described_process(proc.pid) == f"pid {proc.pid} (abreast cleanup)"
    finally:
        proc.kill()
        proc.wait()


def test_resume_refuses_a_changed_workflow_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    spec = {
        "version": 1,
        "name": "chg",
        "isolation": "none",
        "tasks": {"a": {"run": f"touch {tmp_path}/started; sleep 30"}},
    }
    path.write_text(json.dumps(spec))
    proc, run_id = start_run(path)
    wait_for(lambda: (tmp_path / "started").exists(), what="a to start")
    kill9(proc)
    spec["tasks"]["a"]["run"] = "true"
    path.write_text(json.dumps(spec))
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    refused = run_abreast("resume", run_id, "--state", state)
    assert refused.code == 2
    assert "changed since run" in refused.err and "--force" in refused.err
    forced = run_abreast("resume", run_id, "--state", state, "--force", "--no-monitor")
    assert forced.code == 0, forced.err


def test_resume_refuses_a_run_whose_orchestrator_lives(tmp_path: Path) -> None:
    path = write_workflow(tmp_path, "alive", {"a": {"run": f"touch {tmp_path}/started; sleep 30"}})
    proc, run_id = start_run(path)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="a to start")
        state = f"sqlite://{tmp_path}/.abreast/state.db"
        refused = run_abreast("resume", run_id, "--state", state)
        assert refused.code == 2
        assert "is still running" in refused.err
        assert f"abreast cancel {run_id}" in refused.err
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def test_resume_of_a_run_whose_orchestrator_is_on_another_machine_says_where(
    tmp_path: Path,
) -> None:
    # A journal on a shared filesystem: this machine cannot tell whether a process there
    # lives. It said "still running (orchestrator pid N)" with `abreast cancel` as the way.
    path = write_workflow(tmp_path, "away", {"a": {"run": "true"}})
    proc, run_id = start_run(path)
    assert proc.communicate(timeout=30)[0].count(": succeeded in") == 1
    db = tmp_path / ".abreast" / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE runs SET state = 'running', host = 'other' WHERE id = ?", (run_id,))
        conn.commit()
    refused = run_abreast("resume", run_id, "--state", f"sqlite://{db}")
    assert refused.code == 2
    assert f"run {run_id} runs on other (orchestrator pid " in refused.err
    assert "hint: resume it on other" in refused.err


def test_an_orchestrator_killed_but_not_yet_reaped_counts_as_dead(tmp_path: Path) -> None:
    # A SIGKILLed orchestrator stays a zombie until its parent reaps it (in a container
    # without an init that reaps, forever); its /proc entry and start time remain.
    path = write_workflow(
        tmp_path, "zombie", {"a": {"run": f"touch {tmp_path}/started; sleep 0.5"}}
    )
    proc, run_id = start_run(path)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="a to start")
        proc.send_signal(signal.SIGKILL)
        stat = Path(f"/proc/{proc.pid}/stat")
        wait_for(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", what="a zombie")
        state = f"sqlite://{tmp_path}/.abreast/state.db"
        status = json.loads(run_abreast("status", run_id, "--json", "--state", state).out)
        assert status["state"] == "interrupted"
        resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
        assert resumed.code == 0, resumed.err
    finally:
        proc.communicate(timeout=10)  # reaped only now


def test_resume_serves_metrics_and_the_dashboard_of_the_whole_run(tmp_path: Path) -> None:
    import urllib.request

    from tests.conftest import free_port

    gate = f"while [ ! -f {tmp_path}/go ]; do sleep 0.05; done"
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "watched",
                "isolation": "none",
                "tasks": {"first": {"run": "true"}, "second": {"run": gate, "needs": ["first"]}},
            }
        )
    )
    proc, run_id = start_run(path)
    state_db = tmp_path / ".abreast" / "state.db"

    def second_started() -> bool:
        out = run_abreast("status", run_id, "--json", "--state", f"sqlite://{state_db}").out
        return any(
            t["id"] == "second" and t["state"] == "running" for t in json.loads(out)["tasks"]
        )

    wait_for(second_started, what="the second task to start")
    kill9(proc)
    mport = free_port()
    resumed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abreast",
            "resume",
            run_id,
            "--state",
            f"sqlite://{state_db}",
            "--no-monitor",
            "--plain",
            "--metrics-port",
            str(mport),
            "--dashboard",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert resumed.stdout is not None
        lines = [resumed.stdout.readline() for _ in range(3)]  # run:, metrics:, dashboard:
        page = next(line.split(" ", 1)[1].strip() for line in lines if "dashboard:" in line)
        assert page.endswith(f"/runs/{run_id}")
        dash = page.removesuffix(f"runs/{run_id}")

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        # Replayed from the start of the run: the task that succeeded before the crash too.
        wait_for(
            lambda: (
                'parallel_sprint_duration_seconds{sprint_id="first",status="succeeded"}' in scrape()
                and 'abreast_tasks{state="running"} 1.0' in scrape()
            ),
            what="the resumed run's metrics",
        )
        with urllib.request.urlopen(dash + f"api/runs/{run_id}", timeout=5) as r:
            snapshot = json.loads(r.read())
        assert {t["id"]: t["state"] for t in snapshot["tasks"]}["first"] == "succeeded"
        (tmp_path / "go").touch()
        out, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, out + err
    finally:
        (tmp_path / "go").touch()
        if resumed.poll() is None:
            resumed.communicate(timeout=60)


def test_a_cancelled_run_carries_on_with_resume_and_a_finished_one_does_not(
    tmp_path: Path,
) -> None:
    n = 12
    path = crash_workflow(tmp_path, n, seed=5)
    proc, run_id = start_run(path)
    wait_for(lambda: sum(counts(tmp_path, n).values()) >= 3, what="tasks to finish")
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=30)
    assert ": cancelled in" in out
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    done_before = {t for t, c in counts(tmp_path, n).items() if c}
    assert 3 <= len(done_before) < n
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain")
    assert resumed.code == 0, resumed.out + resumed.err
    # What had finished is not run again; what was cancelled runs (once) now.
    assert counts(tmp_path, n) == {f"t{i}": 1 for i in range(n)}
    refused = run_abreast("resume", run_id, "--state", state)
    assert refused.code == 2
    assert "already finished (succeeded)" in refused.err


def test_another_projects_run_of_the_same_id_is_not_this_runs_strays(tmp_path: Path) -> None:
    # `--run-id ci-42` in two projects (a CI host's jobs each at build 42): cleaning up
    # or cancelling one project's run must not end the other's tasks, which carry the
    # same ABREAST_RUN_ID.
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        root.mkdir()
    pid_file = tmp_path / "two.pid"
    gone = write_workflow(one, "gone", {"a": {"run": f"echo $$ > {tmp_path}/one.pid; sleep 60"}})
    dead, _ = start_run(gone, "--run-id", "ci-42", cwd=one)
    wait_for(lambda: (tmp_path / "one.pid").exists(), what="project one's task")
    dead.kill()  # its orchestrator dies; its task runs on, a stray of project one
    dead.communicate()
    live = write_workflow(two, "live", {"a": {"run": f"echo $$ > {pid_file}; sleep 60"}})
    proc, run_id = start_run(live, "--run-id", "ci-42", cwd=two)
    try:
        assert run_id == "ci-42"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="a")
        theirs, mine = int(pid_file.read_text()), int((tmp_path / "one.pid").read_text())
        assert {p.pid for p in marked_processes("ci-42")} >= {theirs, mine}  # same marker
        listed = run_abreast("cleanup", "--dry-run", cwd=one)
        # its task's shell and sleep
        assert "kill 2 processes still running" in listed.out, listed.out
        cancelled = run_abreast("cancel", "ci-42", cwd=one)
        assert cancelled.code == 0, cancelled.err
        assert "2 stray processes killed" in cancelled.out
        assert not pid_alive(mine)
        assert pid_alive(theirs)  # project two's run goes on
    finally:
        proc.terminate()  # abreast's own cancel: ends its task
        proc.communicate(timeout=30)
    wait_for(lambda: not pid_alive(theirs), what="project two's task to end")


def test_resume_force_goes_on_with_the_file_as_it_is_now(tmp_path: Path) -> None:
    # The file changed while the run was down: `gone` removed, `b` added. With --force the
    # run goes on as the file says, and the journal says so too: `b` has a task row (it
    # used to run with none, so that `status` never showed it), `gone` is skipped with
    # why (it used to stay pending in a run that succeeded).
    started, pid_file = tmp_path / "started", tmp_path / "a.pid"
    first = f"[ -e {started} ] && exit 0; touch {started}; echo $$ > {pid_file}; sleep 60"
    path = write_workflow(
        tmp_path, "changed", {"a": {"run": first}, "gone": {"run": "true", "needs": ["a"]}}
    )
    proc, run_id = start_run(path, cwd=tmp_path)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="a")
    proc.kill()
    proc.communicate()
    path.unlink()
    missing = run_abreast("resume", run_id, "--force", cwd=tmp_path)
    assert missing.code == 2 and f"is gone: {path}" in missing.err
    assert "put it back at that path" in missing.err
    write_workflow(
        tmp_path, "changed", {"a": {"run": first}, "b": {"run": "echo b", "needs": ["a"]}}
    )
    refused = run_abreast("resume", run_id, cwd=tmp_path)
    assert refused.code == 2 and "changed since run" in refused.err
    resumed = run_abreast("resume", run_id, "--force", "--plain", "--no-monitor", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "b: added to" in resumed.out and "gone: removed from" in resumed.out
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    tasks = {t["id"]: (t["state"], t["reason"]) for t in status["tasks"]}
    assert tasks == {
        "a": ("succeeded", None),
        "gone": ("skipped", "removed from the workflow file before the run was resumed"),
        "b": ("succeeded", None),
    }
    assert run_abreast("logs", run_id, "b", cwd=tmp_path).out == "b\n"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()  # a later resume needs no --force
    assert query(tmp_path / ".abreast" / "state.db", "SELECT file_sha256 FROM runs") == [(sha,)]


def test_the_time_between_a_cancel_and_its_resume_is_not_the_runs(tmp_path: Path) -> None:
    # Cancelled on Friday, resumed on Monday: the run "took" the weekend, its summary's
    # wall time had the weekend in it (so "saved 0s"), and so did `status` and `report`.
    proc, run_id = started_while_a_runs(
        tmp_path,
        "pause",
        {"a": {"run": "touch a.started; sleep 30"}, "b": {"run": "true", "needs": ["a"]}},
    )
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    db = tmp_path / ".abreast" / "state.db"
    # As if all that happened three days ago: the run's, tasks' and attempts' times.
    gap = 3 * 86400
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for table, cols in (
            ("runs", ("started_at", "finished_at", "heartbeat_at")),
            ("tasks", ("started_at", "finished_at")),
            ("attempts", ("started_at", "ended_at")),
        ):
            key = "id" if table == "runs" else "run_id"
            sets = ", ".join(f"{c} = {c} - {gap}" for c in cols)
            conn.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", (run_id,))
    path = tmp_path / "w.json"
    path.write_text(path.read_text().replace("sleep 30", "sleep 1"))
    state = f"sqlite://{db}"
    resumed = run_abreast(
        "resume", run_id, "--state", state, "--no-monitor", "--plain", "--force", cwd=tmp_path
    )
    assert resumed.code == 0, resumed.out + resumed.err
    took = re.search(r": succeeded in (\S+)", resumed.out)
    assert took and took[1].endswith("s") and "m" not in took[1] and "h" not in took[1], took
    assert re.search(r"critical path: a -> b took \d+(\.\d+)?s\n", resumed.out), resumed.out
    status = run_abreast("status", run_id, "--state", state).out
    assert re.match(rf"run {run_id} \(pause\): succeeded, \d+(\.\d+)?m?s\n", status), status
    wall = json.loads(query(db, "SELECT summary FROM runs")[0][0])["wall_s"]
    assert wall < 60, wall
    report = run_abreast("report", run_id, "--state", state).out
    assert re.search(r"wall \d+(\.\d+)?m?s;", report) and "d" not in report.split("wall ")[1][:8]
    timeline = json.loads(run_abreast("report", run_id, "--json", "--state", state).out)
    ends = [bar["end_s"] for bar in timeline["timeline"]]
    assert len(ends) == 3 and max(ends) < 60, ends  # a's two attempts and b, no 3-day gap


def test_a_review_that_sent_work_back_carries_on_after_a_sigkill(tmp_path: Path) -> None:
    """The orchestrator dies while the work a review sent back runs again: the resume runs
    it again told why, then the review, whose rounds count those before the crash."""
    impl = (
        'echo "$ABREAST_ATTEMPT" >> work.txt; printf %s "$ABREAST_FEEDBACK" > fb.txt; '
        'if [ "$ABREAST_ATTEMPT" = 2 ]; then touch again.started; sleep 60; fi'
    )
    review = (
        'n=$(wc -l < work.txt); ok=false; [ "$n" -ge 4 ] && ok=true; '
        'echo "{\\"ok\\": $ok, \\"asks\\": \\"more than $n\\"}" > "$ABREAST_OUTPUT"'
    )
    back = {"to": "impl", "when": "not output.ok", "feedback": "output.asks", "max_rounds": 2}
    tasks = {"impl": {"run": impl}, "review": {"needs": ["impl"], "run": review, "send_back": back}}
    proc, run_id = start_run(write_workflow(tmp_path, "rv", tasks), cwd=tmp_path)
    wait_for(lambda: (tmp_path / "again.started").exists(), what="impl to run again")
    kill9(proc)
    status = run_abreast("status", run_id, cwd=tmp_path).out
    assert "sent impl's work back (round 1 of 2); reviews it again after" in status
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    # attempt 2 was cut short; 3 is told why, as 2 was; the review's second send-back is
    # its round 2 of 2, and it approves the work with four lines
    assert (tmp_path / "work.txt").read_text() == "1\n2\n3\n4\n"
    assert "review sent impl's work back (round 2 of 2)" in resumed.out
    assert (tmp_path / "fb.txt").read_text() == (
        "review reviewed this task's work and sent it back (round 2 of 2):\nmore than 3"
    )


def test_retry_failed_goes_by_the_fixed_file(tmp_path: Path) -> None:
    # The usual fix for a failed task is in the workflow file itself (a wrong command, a
    # task that should not be there). `resume --retry-failed` goes by the file as it is
    # now (said; no --force needed: the run's end told the user to run it once fixed):
    # the fixed task runs again, one removed is skipped (not left failed in a run that
    # succeeded), the task it blocked runs, and succeeded ones do not.
    ran = tmp_path / "ran"
    tasks: dict[str, Any] = {
        "a": {"run": f"echo a >> {ran}"},
        "b": {"run": "exit 7"},
        "gone": {"run": "exit 1"},
        "d": {"needs": ["a", "b", "gone"], "run": f"echo d >> {ran}"},
    }
    path = write_workflow(tmp_path, "fix", tasks)
    first = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path)
    assert first.code == 1
    run_id = first.out.splitlines()[0][5:]
    tasks["b"]["run"] = f"echo b >> {ran}"
    del tasks["gone"]
    tasks["d"]["needs"] = ["a", "b"]
    write_workflow(tmp_path, "fix", tasks)
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", "--no-monitor", cwd=tmp_path)
    assert again.code == 0, again.out + again.err
    assert f"note: w.json changed since run {run_id} started; going by it" in again.err
    assert "gone: removed from" in again.out
    assert sorted(ran.read_text().split()) == ["a", "b", "d"]
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    states = {t["id"]: (t["state"], t["attempts"], t["reason"]) for t in status["tasks"]}
    assert states == {
        "a": ("succeeded", 1, None),
        "b": ("succeeded", 2, None),
        "gone": ("skipped", 1, "removed from the workflow file before the run was resumed"),
        "d": ("succeeded", 1, None),
    }
    assert status["state"] == "succeeded"


def test_a_task_that_failed_before_it_started_is_not_told_a_previous_attempt_failed(
    tmp_path: Path,
) -> None:
    # A prompt naming an output field that is not there fails the task before its agent
    # runs. After the fix, `resume --retry-failed` gave the agent's first attempt "This is
    # attempt 1. abreast sent the previous attempt back: prompt: ${{ ... }} has no field"
    # (there was none; the error was the file's). A task whose attempt failed is still told.
    agent = 'printf %s "$ABREAST_PROMPT" > "$ABREAST_TASK_ID.prompt"; [ -e fixed ]'
    tasks: dict[str, Any] = {
        "plan": {"run": 'echo \'{"notes": "use sqlite"}\' > "$ABREAST_OUTPUT"'},
        "review": {"agent": "a", "needs": ["plan"], "prompt": "Notes: ${{ outputs.plan.note }}"},
        "other": {"agent": "a", "prompt": "Other"},
    }
    spec = {"agents": {"a": {"run": agent}}}
    path = write_workflow(tmp_path, "told", tasks, **spec)
    first = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path)
    assert first.code == 1
    assert "outputs.plan has no field 'note'" in first.out, first.out
    run_id = first.out.splitlines()[0][5:]
    tasks["review"]["prompt"] = "Notes: ${{ outputs.plan.notes }}"
    write_workflow(tmp_path, "told", tasks, **spec)
    (tmp_path / "fixed").touch()
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", "--no-monitor", cwd=tmp_path)
    assert again.code == 0, again.out + again.err
    assert (tmp_path / "review.prompt").read_text() == "Notes: use sqlite"
    told = (tmp_path / "other.prompt").read_text()
    assert told.startswith("Other\n\n---\nThis is attempt 2. abreast sent the previous"), told
    assert "exit 1" in told, told


def test_resume_takes_the_workflow_file_where_it_was_moved(tmp_path: Path) -> None:
    # A workflow file renamed or moved since the run started (`git mv abreast.yaml
    # ci/flow.yaml`) left its run unresumable: "the workflow file ... is gone: put it back".
    ran = tmp_path / "ran"
    path = write_workflow(
        tmp_path, "moved", {"a": {"run": f"echo a >> {ran}"}, "b": {"run": "exit 7"}}
    )
    first = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path)
    assert first.code == 1
    run_id = first.out.splitlines()[0][5:]
    (tmp_path / "ci").mkdir()
    moved = tmp_path / "ci" / "flow.json"
    path.rename(moved)
    gone = run_abreast("resume", run_id, "--retry-failed", "--plain", cwd=tmp_path)
    assert gone.code == 2
    assert f"or give where it is now: `abreast resume {run_id} --file PATH`" in gone.err
    for bad, said in (
        ("ci/nosuch.json", "--file ci/nosuch.json: no such file"),
        (str(Path(__file__)), f"not in the project of run {run_id} ({tmp_path.resolve()})"),
    ):
        refused = run_abreast("resume", run_id, "--retry-failed", "--file", bad, cwd=tmp_path)
        assert refused.code == 2 and said in refused.err, refused.err
    moved.write_text(moved.read_text().replace("exit 7", f"echo b >> {ran}"))
    again = run_abreast(
        "resume",
        run_id,
        "--retry-failed",
        "--file",
        "ci/flow.json",
        "--plain",
        "--no-monitor",
        cwd=tmp_path,
    )
    assert again.code == 0, again.out + again.err
    assert sorted(ran.read_text().split()) == ["a", "b"]
    # The run's file is where it is now: a later resume (or status) finds it there.
    assert query(tmp_path / ".abreast" / "state.db", "SELECT file FROM runs") == [
        (str(moved.resolve()),)
    ]


def test_a_run_whose_env_names_variables_can_be_resumed_after_a_crash(tmp_path: Path) -> None:
    # `env: {X: "${HOME}"}`: expanding it made a copy of the workflow that had forgotten
    # its file, so the run was journaled with no file and no checksum; after a crash
    # `abreast resume` said ".: is a directory, not a workflow file", and never that the
    # file changed.
    started, pid_file, out = tmp_path / "started", tmp_path / "a.pid", tmp_path / "out"
    first = f"[ -e {started} ] || {{ touch {started}; echo $$ > {pid_file}; sleep 60; }}"
    first += f'; echo "$X" > {out}'
    path = write_workflow(tmp_path, "env", {"a": {"run": first, "env": {"X": "${HOME}"}}})
    proc, run_id = start_run(path, cwd=tmp_path)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="a")
    proc.kill()
    proc.communicate()
    db = tmp_path / ".abreast" / "state.db"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert query(db, "SELECT file, file_sha256 FROM runs") == [(str(path), sha)]
    resumed = run_abreast("resume", run_id, "--plain", "--no-monitor", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert out.read_text() == os.environ["HOME"] + "\n"


def test_run_only_runs_the_tasks_named_and_what_they_need_and_resume_keeps_to_them(
    tmp_path: Path,
) -> None:
    # `abreast run --only api` while working on one part of a workflow: `api`, what it
    # needs (`schema`, and `auth` for its signal), nothing else — after a crash too.
    ran, pid_file, started = tmp_path / "ran", tmp_path / "api.pid", tmp_path / "started"
    api = f"[ -e {started} ] || {{ touch {started}; echo $$ > {pid_file}; sleep 60; }}"
    tasks = {
        "schema": {"run": f"echo schema >> {ran}"},
        "auth": {"run": f"abreast signal ready; echo auth >> {ran}", "signals": ["ready"]},
        "api": {"needs": ["schema", "auth:ready"], "run": f"{api}; echo api >> {ran}"},
        "ui": {"needs": ["api"], "run": f"echo ui >> {ran}"},
        "docs": {"run": f"echo docs >> {ran}"},
    }
    path = write_workflow(tmp_path, "only", tasks)
    wrong = run_abreast("run", str(path), "--only", "apl", cwd=tmp_path)
    assert wrong.code == 2 and "has no task 'apl'; did you mean 'api'?" in wrong.err
    assert not (tmp_path / ".abreast" / "state.db").exists()  # nothing journaled
    proc, run_id = start_run(path, "--only", "api", cwd=tmp_path)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="api")
    proc.kill()
    _, err = proc.communicate()
    assert "running 3 of 5 tasks (schema, auth, api: those named and what they need)" in err
    resumed = run_abreast("resume", run_id, "--plain", "--no-monitor", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert sorted(ran.read_text().split()) == ["api", "auth", "schema"]
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    assert [t["id"] for t in status["tasks"]] == ["schema", "auth", "api"]
    assert status["state"] == "succeeded"


def test_tasks_blocked_before_a_crash_say_why_in_the_resumed_runs_summary(
    tmp_path: Path,
) -> None:
    # The summary of the resumed run said "blocked: after (None)".
    pid_file, started = tmp_path / "slow.pid", tmp_path / "started"
    slow = f"[ -e {started} ] || {{ touch {started}; echo $$ > {pid_file}; sleep 60; }}"
    tasks = {"bad": {"run": "exit 1"}, "after": {"needs": ["bad"], "run": "true"}}
    path = write_workflow(tmp_path, "why", {**tasks, "slow": {"run": slow}})
    proc, run_id = start_run(path, cwd=tmp_path)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="slow")
    db = tmp_path / ".abreast" / "state.db"
    wait_for(lambda: query(db, "SELECT state FROM tasks WHERE task_id = 'after'") == [("blocked",)])
    proc.kill()
    proc.communicate()
    resumed = run_abreast("resume", run_id, "--plain", "--no-monitor", cwd=tmp_path)
    assert resumed.code == 1
    assert "blocked: after (upstream bad failed)" in resumed.out, resumed.out


def test_a_run_killed_before_its_first_heartbeat_did_not_take_0s(tmp_path: Path) -> None:
    # `status` counted an interrupted run to its last heartbeat, which for one killed in
    # its first seconds is its start: "interrupted, 0s" beside a task that took 0.5s.
    from abreast.spec.durations import parse_duration

    pid_file = tmp_path / "slow.pid"
    slow = f"echo $$ > {pid_file}; exec sleep 60"
    tasks = {"quick": {"run": "sleep 0.5"}, "slow": {"run": slow}}
    path = write_workflow(tmp_path, "early", tasks, heartbeat={"interval": "1h"})
    proc, run_id = start_run(path, cwd=tmp_path)
    db = tmp_path / ".abreast" / "state.db"
    done = [("succeeded",)]
    try:
        wait_for(lambda: query(db, "SELECT state FROM tasks WHERE task_id = 'quick'") == done)
        proc.kill()
        proc.communicate()
        shown = run_abreast("status", run_id, cwd=tmp_path).out.splitlines()[0]
        took = parse_duration(shown.rsplit(", ", 1)[1])
        assert shown.startswith(f"run {run_id} (early): interrupted, ") and took >= 0.5, shown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the task it left running


def test_retry_failed_after_a_crash_with_nothing_failed_is_a_plain_resume(
    tmp_path: Path,
) -> None:
    # `abreast resume --retry-failed` typed after any stop: a crashed run with no failed
    # task was refused ("has no failed task to run again ... leave out --retry-failed").
    started, pid_file = tmp_path / "started", tmp_path / "a.pid"
    first = f"[ -e {started} ] && exit 0; touch {started}; echo $$ > {pid_file}; sleep 60"
    path = write_workflow(tmp_path, "crash", {"a": {"run": first}})
    proc, run_id = start_run(path, cwd=tmp_path)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="a")
    proc.kill()
    proc.communicate()
    resumed = run_abreast("resume", "--retry-failed", "--plain", "--no-monitor", cwd=tmp_path)
    assert resumed.code == 0, resumed.out + resumed.err
    assert resumed.out.startswith(f"run: {run_id}\n")


def test_resume_retry_runs_again_only_the_failed_tasks_it_names(tmp_path: Path) -> None:
    # Two of a run's tasks failed: one for a cause now fixed, one still broken (or left
    # for later). `--retry-failed` ran both again; `--retry a` runs a (and what it
    # blocked), leaves b failed and not run, and refuses a name that did not fail.
    fixed = tmp_path / "fixed"
    tally = f"echo $ABREAST_TASK_ID >> {tmp_path}/ran; "
    path = write_workflow(
        tmp_path,
        "pick",
        {
            "ok": {"run": tally + "true"},
            "a": {"run": tally + f"test -e {fixed}"},
            "b": {"run": tally + "exit 4"},
            "after_a": {"run": tally + "true", "needs": ["a"]},
            "after_b": {"run": tally + "true", "needs": ["b"]},
        },
    )
    first = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path)
    assert first.code == 1, first.out + first.err
    run_id = re.search(r"^run: (\S+)$", first.out, re.M)[1]  # type: ignore[index]
    assert "what succeeded stays; --retry TASK for some of them)" in first.out  # 2 failed
    fixed.touch()
    for args, message in (
        (["--retry", "after_a"], "--retry after_a: after_a did not fail, it is blocked"),
        (["--retry", "ok"], "--retry ok: ok succeeded, so there is nothing to run again"),
        (["--retry", "aa"], f"--retry aa: run {run_id} has no task 'aa'"),
        (["--retry", "a", "--retry-failed"], "--retry and --retry-failed together"),
        (["--retry", ","], "--retry names no task"),
    ):
        refused = run_abreast("resume", run_id, *args, cwd=tmp_path)
        assert refused.code == 2 and message in refused.err, (args, refused.err)
        assert "Traceback" not in refused.err
        assert "its failed tasks: a, b" in refused.err or "together" in message or "," in args
    assert "did you mean 'a'?" in run_abreast("resume", run_id, "--retry", "aa", cwd=tmp_path).err
    ran = (tmp_path / "ran").read_text().split()
    assert sorted(ran) == ["a", "b", "ok"]  # nothing ran for a refusal
    again = run_abreast("resume", "--retry", "a", "--plain", "--no-monitor", cwd=tmp_path)
    assert again.code == 1, again.out + again.err  # b is still failed
    assert again.out.startswith(f"run: {run_id}\n") and "a: failed; run again\n" in again.out
    assert (tmp_path / "ran").read_text().split()[3:] == ["a", "after_a"]
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    tasks = {t["id"]: (t["state"], t["attempts"]) for t in status["tasks"]}
    assert tasks == {
        "ok": ("succeeded", 1),
        "a": ("succeeded", 2),
        "b": ("failed", 1),
        "after_a": ("succeeded", 1),
        "after_b": ("blocked", 0),
    }
    assert status["state"] == "failed"
    later = run_abreast("status", run_id, cwd=tmp_path).out  # one left: no "some of them"
    assert f"abreast resume {run_id} --retry-failed (what failed" in later
    assert "what succeeded stays)" in later and "for some of them" not in later
    done = run_abreast("resume", run_id, "--retry", "b", "--plain", "--no-monitor", cwd=tmp_path)
    assert done.code == 1 and "b (failed after 2 attempts): exit 4" in done.out, done.out + done.err
