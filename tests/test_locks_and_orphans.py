"""The test lock, fencing, heartbeats and orphans, cleanup: on SQLite and on a real Redis."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from abreast.coord.backend import open_coordinator
from abreast.executor.process import marked_processes
from tests.conftest import RedisServer, free_port, redis_server_binary, run_abreast
from tests.helpers import PY, intervals, max_concurrency, pid_alive, query, wait_for

# Binds one TCP port for a while, like a test suite's server; records its interval and
# whether the port was free.
BIND = """
import json, os, socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
start = time.monotonic()
s = socket.socket()
try:
    s.bind(("127.0.0.1", port)); s.listen(); ok = True
except OSError as e:
    ok = e.errno
time.sleep(0.15)
s.close()
end = time.monotonic()
with open(out, "w") as f:
    json.dump({"start": start, "end": end, "ok": ok, "token": os.environ["ABREAST_LOCK_TOKEN"]}, f)
"""


def end_stopped(proc: subprocess.Popen[str]) -> None:
    """End a process this test started, SIGSTOPped or not, and reap it (its pipes read)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.communicate()


def lock_argv(state: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "abreast", "lock", "tests", "--state", state, *extra, "--"]


def test_ten_processes_holding_the_test_lock_never_overlap(tmp_path: Path, coord_url: str) -> None:
    script = tmp_path / "bind.py"
    script.write_text(BIND)
    port = free_port()
    procs = [
        subprocess.Popen(
            [*lock_argv(coord_url), PY, str(script), str(port), str(tmp_path / f"r{i}.json")],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(10)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 10, errors
    runs = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(10)]
    assert all(r["ok"] is True for r in runs), "EADDRINUSE: two holders at once"
    spans = sorted((r["start"], r["end"]) for r in runs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert len({r["token"] for r in runs}) == 10  # a fresh fencing token per grant


def test_exit_status_passes_through_and_bad_use_is_explained(tmp_path: Path) -> None:
    state = f"sqlite://{tmp_path}/state.db"
    result = subprocess.run([*lock_argv(state), "sh", "-c", "exit 7"], check=False)
    assert result.returncode == 7
    missing = run_abreast("lock", "tests", "--state", state)
    assert missing.code == 2 and "needs a command to run" in missing.err
    bad = run_abreast("lock", "../x", "--state", state, "--", "true")
    assert bad.code == 2 and "lock name '../x' is not allowed" in bad.err
    ttl = run_abreast("lock", "t", "--ttl", "soon", "--state", state, "--", "true")
    assert ttl.code == 2 and "is not a duration" in ttl.err


# Says when its handlers are in place, then waits. On SIGINT, "handle" ends with its own
# status; "shrug" notes it in the ready file and goes on waiting.
CATCHER = """
import signal, sys, time
def on_int(*_):
    if sys.argv[2] == "shrug":
        open(sys.argv[1], "a").write("INT\\n")
        return
    print("interrupted, cleaning up", flush=True)
    sys.exit(3)
signal.signal(signal.SIGINT, on_int)
open(sys.argv[1], "w").close()
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("mode", "signals", "code"),
    [
        ("handle", [signal.SIGINT], 3),  # Ctrl-C reaches CMD as Ctrl-C
        ("shrug", [signal.SIGINT, signal.SIGINT], 128 + signal.SIGKILL),  # the second ends it
        ("shrug", [signal.SIGHUP], 128 + signal.SIGHUP),  # the terminal closed
    ],
)
def test_signals_reach_the_locked_command_and_it_never_outlives_the_lock(
    tmp_path: Path, mode: str, signals: list[int], code: int
) -> None:
    state = f"sqlite://{tmp_path}/state.db"
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [*lock_argv(state), sys.executable, "-c", CATCHER, str(ready), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(ready.exists, what="the command to start")
        (child,) = children_of(holder.pid)
        for i, sig in enumerate(signals):
            holder.send_signal(sig)
            if i + 1 < len(signals):  # the next once this one has arrived
                wait_for(lambda: "INT" in ready.read_text(), what="the command to get it")
        out, _ = holder.communicate(timeout=20)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    assert holder.returncode == code
    assert ("interrupted, cleaning up" in out) == (mode == "handle")
    wait_for(lambda: not pid_alive(child), what="the command to be gone")
    coord = open_coordinator(state)
    try:
        assert coord.holder("tests") is None  # released, not left to expire
    finally:
        coord.close()


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(x) for x in out.split()]


def test_waiting_gives_up_after_timeout_and_says_who_holds_it(tmp_path: Path) -> None:
    state = f"sqlite://{tmp_path}/state.db"
    holder = subprocess.Popen([*lock_argv(state), "sleep", "5"])
    coord = open_coordinator(state)
    try:
        wait_for(lambda: coord.holder("tests") is not None, what="the first holder")
        t0 = time.monotonic()
        waited = run_abreast("lock", "tests", "--timeout", "0.5", "--state", state, "--", "true")
        assert time.monotonic() - t0 >= 0.5
        assert waited.code == 75
        assert "gave up waiting for 'tests'" in waited.err
        assert f"pid {holder.pid}" in waited.err
    finally:
        coord.close()
        holder.terminate()
        holder.wait(timeout=10)


def test_a_stopped_holder_loses_the_lock_and_the_next_holder_ends_its_command_first(
    tmp_path: Path, coord_url: str
) -> None:
    marker = tmp_path / "cmd.pid"
    first = subprocess.Popen(
        [*lock_argv(coord_url, "--ttl", "1"), "sh", "-c", f"echo $$ > {marker}; sleep 60"],
        stderr=subprocess.PIPE,
        text=True,
    )
    coord = open_coordinator(coord_url)
    try:
        wait_for(marker.exists, what="the first holder's command")
        old = coord.holder("tests")
        assert old is not None
        os.kill(first.pid, signal.SIGSTOP)  # the holder, not its command, stops renewing
        t0 = time.monotonic()
        second = subprocess.run(
            [*lock_argv(coord_url), "sh", "-c", "echo second"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 0 and "second" in second.stdout
        assert time.monotonic() - t0 >= 0.5  # granted only once the stopped lease ran out
        assert not coord.validate("tests", old.token)  # fencing refuses the old token
        # The old command never ran beside the new one: the new holder ended it first.
        assert not pid_alive(int(marker.read_text()))
        assert (
            "ran out while its command still ran; ended 2 processes" in second.stderr
        )  # sh, sleep
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=30)
        assert first.returncode == 75
        assert "lost the lock 'tests'" in err
    finally:
        end_stopped(first)
        coord.close()


def test_fencing_a_lapsed_lease_spares_the_same_lock_and_token_of_another_store(
    tmp_path: Path,
) -> None:
    # Another project's `tests` lock, token 1 there too, held by a command that runs on.
    # Tokens count per store (in SQLite from 1; Redis's start from its clock): ending the
    # lapsed lease here must leave that one alone.
    coord_url = f"sqlite://{tmp_path}/one/state.db"
    other_url = f"sqlite://{tmp_path}/other/state.db"
    other_pid = tmp_path / "other.pid"
    other = subprocess.Popen(
        [*lock_argv(other_url), "sh", "-c", f"echo $$ > {other_pid}; exec sleep 60"],
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = tmp_path / "cmd.pid"
    first = subprocess.Popen(
        [*lock_argv(coord_url, "--ttl", "1"), "sh", "-c", f"echo $$ > {marker}; exec sleep 60"],
        stderr=subprocess.PIPE,
        text=True,
    )
    coord, theirs = open_coordinator(coord_url), open_coordinator(other_url)
    try:
        wait_for(lambda: marker.exists() and other_pid.exists(), what="both commands")
        held, other_held = coord.holder("tests"), theirs.holder("tests")
        assert held is not None and other_held is not None
        assert held.token == other_held.token and coord.store_id != theirs.store_id
        os.kill(first.pid, signal.SIGSTOP)  # its lease lapses
        second = subprocess.run(
            [*lock_argv(coord_url), "true"], capture_output=True, text=True, timeout=30, check=False
        )
        assert second.returncode == 0, second.stderr
        assert "ended 1 process of it first" in second.stderr  # the sleep: exec'd sh
        assert not pid_alive(int(marker.read_text()))
        assert pid_alive(int(other_pid.read_text()))  # the other project's holder runs on
        assert theirs.holder("tests") == other_held
    finally:
        # The commands first (they hold the pipes communicate() reads to the end).
        for pid_file in (marker, other_pid):
            if pid_file.exists() and pid_alive(int(pid_file.read_text())):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        for proc in (first, other):
            end_stopped(proc)
        coord.close()
        theirs.close()


def run_json(root: Path, spec: dict, *args: str, env: dict | None = None) -> subprocess.Popen:  # type: ignore[type-arg]
    path = root / "w.json"
    path.write_text(json.dumps({"version": 1, "isolation": "none", **spec}))
    return subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_tasks_calling_abreast_lock_inside_a_parallel_run_serialise(
    tmp_path: Path, coord_url: str
) -> None:
    rec = tmp_path / "record.py"
    rec.write_text(
        "import json,os,sys,time\ns=time.monotonic();time.sleep(0.4);"
        "json.dump({'task':os.environ['ABREAST_TASK_ID'],'start':s,"
        "'end':time.monotonic()},open(sys.argv[1]+'/'+os.environ['ABREAST_TASK_ID']"
        "+'.json','w'))"
    )
    (tmp_path / "rec").mkdir()
    inner = f"{PY} -m abreast lock tests -- {PY} {rec} {tmp_path}/rec"
    proc = run_json(
        tmp_path,
        {"name": "inner", "max_parallel": 2, "tasks": {"a": {"run": inner}, "b": {"run": inner}}},
        "--state",
        coord_url,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    spans = intervals(tmp_path)
    assert set(spans) == {"a", "b"}
    assert max_concurrency(spans) == 1


def holder_and_waiter(root: Path, name: str, hold_s: float, **wait: Any) -> subprocess.Popen:  # type: ignore[type-arg]
    """A run of two tasks: `hold` holds the lock `tests` (`abreast lock`) for `hold_s`,
    and `wait` (with `wait`'s settings) asks for it once `hold` has it."""
    hold = f"{PY} -m abreast lock tests -- sh -c 'touch held; sleep {hold_s}'"
    waits = f"while [ ! -e held ]; do sleep 0.02; done; {PY} -m abreast lock tests -- true"
    return run_json(
        root,
        {
            "name": name,
            "max_parallel": 2,
            "tasks": {"hold": {"run": hold}, "wait": {"run": waits, **wait}},
        },
    )


def test_time_a_task_waits_for_a_lock_is_shown_and_not_counted_as_its_work(
    tmp_path: Path,
) -> None:
    # "One task at a time it would take" summed each attempt's time, waits for
    # `abreast lock` included: one at a time, no task waits for another's lock, so the
    # saving claimed was too large by every wait; and no view showed a task waiting.
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer
    from tests.test_observe import chromium

    proc = holder_and_waiter(tmp_path, "waits", hold_s=1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    db = tmp_path / ".abreast" / "state.db"
    ((run_id, summary),) = query(db, "SELECT id, summary FROM runs")
    granted = {
        task: json.loads(d)
        for task, d in query(db, "SELECT task_id, data FROM events WHERE type = 'lock.granted'")
    }
    waited = granted["wait"]
    assert waited["attempt"] == 1 and waited["source"] == "abreast lock"
    assert waited["wait_s"] > 0.5, waited  # hold held it a second
    assert granted["hold"]["wait_s"] < 0.5
    walls = sum(w for (w,) in query(db, "SELECT wall_s FROM attempts"))
    total_wait = waited["wait_s"] + granted["hold"]["wait_s"]
    summary = json.loads(summary)
    assert summary["waited_s"] == pytest.approx(total_wait, abs=0.002)
    assert summary["busy_s"] == pytest.approx(walls - total_wait, abs=0.002)
    ((perf,),) = query(db, "SELECT data FROM events WHERE type = 'workflow.performance'")
    assert json.loads(perf)["sequentialTime"] == pytest.approx(summary["busy_s"], abs=0.002)
    assert "the tasks waited for locks left out" in out, out
    # Nor is it in the estimate measured from this run (it was: wait "took" a second).
    assert summary["lock_waits"]["wait.1"] == pytest.approx(waited["wait_s"], abs=0.002)
    plan = json.loads(run_abreast("analyze", "w.json", "--format", "json", cwd=tmp_path).out)
    estimate = {t["id"]: t["estimate_s"] for t in plan["tasks"]}["wait"]
    (wait_wall,) = query(db, "SELECT wall_s FROM attempts WHERE task_id = 'wait'")[0]
    assert estimate == pytest.approx(wait_wall - waited["wait_s"], abs=0.002)

    report = json.loads(run_abreast("report", "--json", cwd=tmp_path).out)
    (shown,) = [w for w in report["lock_waits"] if w["task"] == "wait"]  # hold's: ~0s
    assert (shown["task"], shown["attempt"], shown["lock"], shown["granted"]) == (
        "wait",
        1,
        "tests",
        True,
    )
    assert shown["end_s"] - shown["start_s"] == pytest.approx(waited["wait_s"], abs=0.01)
    busy = {t["id"]: t["busy_s"] for t in report["tasks"]}
    (wall,) = query(db, "SELECT wall_s FROM attempts WHERE task_id = 'wait'")[0]
    assert busy["wait"] == pytest.approx(wall - waited["wait_s"], abs=0.002)
    assert report["sequential_s"] == pytest.approx(summary["busy_s"], abs=0.01)
    lines = run_abreast("report", cwd=tmp_path).out.splitlines()
    (row,) = [line for line in lines if line.startswith("    wait ")]
    assert "......" in row, row  # the wait, drawn over its attempt
    assert any(line.endswith("  . waiting for a lock") for line in lines), lines  # legend
    page = tmp_path / "r.html"
    assert run_abreast("report", "--html", str(page), cwd=tmp_path).code == 0
    assert "class='waiting'><title>wait attempt 1: waited" in page.read_text()

    server = DashboardServer(locate(tmp_path / "w.json", None))
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
            snap = json.loads(r.read())
        driver = chromium(tmp_path / "chromium-profile")
        try:
            driver.get(f"{server.url}runs/{run_id}")
            drawn = "return document.querySelectorAll('#timeline rect.waiting').length"
            wait_for(lambda: driver.execute_script(drawn) > 0, what="the wait on the timeline")
            title, width = driver.execute_script(
                "const r = document.querySelector('#timeline rect.waiting[data-wait=\"wait.1\"]');"
                "return [r.textContent, r.width.baseVal.value]"
            )
            assert title.startswith("wait attempt 1: waited ") and "for the lock tests" in title
            assert width > 100, width  # about a second of a run of about a second
            summary_line = driver.find_element("id", "summary").text
            assert "waiting for locks left out" in summary_line, summary_line
        finally:
            driver.quit()
    finally:
        server.stop()
    (seen,) = [w for w in snap["waits"] if w["task"] == "wait"]
    assert (seen["task"], seen["lock"]) == ("wait", "tests")
    assert seen["until"] - seen["since"] == pytest.approx(waited["wait_s"], abs=0.01)
    assert snap["run"]["busy_s"] == pytest.approx(summary["busy_s"], abs=0.01)


def test_a_task_waiting_for_a_lock_says_so_while_it_waits(tmp_path: Path) -> None:
    # A task stuck in `abreast lock tests` showed only as running, its time going up.
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    go = tmp_path / "go"
    holder = subprocess.Popen(
        [*lock_argv(state), "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"]
    )
    coord = open_coordinator(f"sqlite://{tmp_path}/.abreast/coord.db")
    run = None
    try:
        wait_for(lambda: coord.holder("tests") is not None, what="the holder outside the run")
        inner = f"{PY} -m abreast lock tests -- true"
        run = run_json(tmp_path, {"name": "waits", "tasks": {"t": {"run": inner}}})
        wait_for(lambda: len(coord.waiters("tests")) == 1, what="the run's task to queue")
        db = tmp_path / ".abreast" / "state.db"
        wait_for(
            lambda: query(db, "SELECT 1 FROM events WHERE type = 'lock.waiting'"),
            what="the wait journaled",
        )
        (run_id,) = query(db, "SELECT id FROM runs")[0]
        (row,) = [
            line
            for line in run_abreast("status", run_id, cwd=tmp_path).out.splitlines()
            if line.startswith("  t ")
        ]
        assert "running" in row and "waits for the lock tests (" in row, row
        assert f"held by pid {holder.pid}" in row, row
        from abreast.coord.journal import Journal
        from abreast.observe import rundata

        with Journal(db) as journal:
            data = rundata.load(journal, run_id)
        assert data is not None and [(w.task, w.attempt, w.lock) for w in data.waiting] == [
            ("t", 1, "tests")
        ]
        from abreast.coord.location import locate
        from abreast.observe.dashboard import DashboardServer

        server = DashboardServer(locate(tmp_path / "w.json", None))
        server.start()
        try:
            with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
                (now,) = json.loads(r.read())["waits"]
        finally:
            server.stop()
        assert (now["task"], now["lock"], now["until"]) == ("t", "tests", None)
        assert f"pid {holder.pid}" in now["held_by"]
        go.touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, out + err
        with Journal(db) as journal:
            data = rundata.load(journal, run_id)
        assert data is not None and data.waiting == []  # the grant ended it
        assert [(w.task, w.granted) for w in data.waits] == [("t", True)]
    finally:
        go.touch()
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        coord.close()
        holder.wait(timeout=10)


def test_a_wait_for_a_lock_cut_short_by_its_attempts_end_is_a_wait_not_work(
    tmp_path: Path,
) -> None:
    # A task killed (its timeout) while `abreast lock` waited journaled no grant and no
    # timeout: its wait was counted as its work, and its `lock.waiting` stayed open.
    proc = holder_and_waiter(tmp_path, "cut", hold_s=4, timeout="1.5s")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    db = tmp_path / ".abreast" / "state.db"
    ((run_id, summary),) = query(db, "SELECT id, summary FROM runs")
    ((ended,),) = query(db, "SELECT ended_at FROM attempts WHERE task_id = 'wait'")
    assert query(db, "SELECT state FROM tasks WHERE task_id = 'wait'") == [("timed_out",)]
    ((data,),) = query(db, "SELECT data FROM events WHERE type = 'lock.waiting'")
    since = json.loads(data)["since"]
    assert not query(
        db,
        "SELECT 1 FROM events WHERE task_id = 'wait' AND type != 'lock.waiting'"
        " AND type LIKE 'lock.%'",
    )  # killed: it journaled nothing more
    ((hold_granted,),) = query(db, "SELECT data FROM events WHERE type = 'lock.granted'")
    summary = json.loads(summary)
    cut = ended - since
    assert cut > 0.5, cut  # most of its 1.5 s
    assert summary["waited_s"] == pytest.approx(cut + json.loads(hold_granted)["wait_s"], abs=0.01)
    from abreast.coord.journal import Journal
    from abreast.observe import rundata

    with Journal(db) as journal:
        run_data = rundata.load(journal, run_id)
    assert run_data is not None and run_data.waiting == []  # no wait goes on in an ended attempt
    (w,) = [w for w in run_data.waits if w.task == "wait"]
    assert (w.attempt, w.lock, w.granted, w.cut_short) == (1, "tests", False, True)
    report = json.loads(run_abreast("report", "--json", cwd=tmp_path).out)
    (shown,) = [w for w in report["lock_waits"] if w["task"] == "wait"]
    assert shown["attempt_ended"] is True and shown["granted"] is False
    page = tmp_path / "r.html"
    assert run_abreast("report", "--html", str(page), cwd=tmp_path).code == 0
    assert "for the lock tests, until its attempt ended" in page.read_text()


def test_status_and_the_dashboard_say_why_a_ready_task_does_not_start(tmp_path: Path) -> None:
    # The live view at the terminal said "pool 'db' full"; `status` in another, and the
    # dashboard, showed only "ready".
    go = tmp_path / "go"
    hold = f"while [ ! -e {go} ]; do sleep 0.05; done"
    run = run_json(
        tmp_path,
        {
            "name": "pooled",
            "pools": {"db": 1},
            "heartbeat": {"interval": 0.2},
            "tasks": {
                "migrate": {"run": hold, "pools": ["db"]},
                "seed": {"run": "true", "pools": ["db"]},
            },
        },
    )
    try:
        db = tmp_path / ".abreast" / "state.db"
        assert run.stdout is not None
        run_id = run.stdout.readline().removeprefix("run: ").strip()

        def seed_row() -> str:
            lines = run_abreast("status", run_id, cwd=tmp_path).out.splitlines()
            return next((line for line in lines if line.startswith("  seed ")), "")

        wait_for(lambda: "waits: pool 'db' full" in seed_row(), what="why seed waits")
        assert seed_row().split()[1] == "ready"
        from abreast.coord.location import locate
        from abreast.observe.dashboard import DashboardServer

        server = DashboardServer(locate(tmp_path / "w.json", None))
        server.start()
        try:
            with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
                tasks = {t["id"]: t for t in json.loads(r.read())["tasks"]}
        finally:
            server.stop()
        assert tasks["seed"]["waits_for"] == "pool 'db' full"
        assert tasks["migrate"]["waits_for"] is None  # it runs
        go.touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, out + err
        said = [
            json.loads(d)
            for (d,) in query(db, "SELECT data FROM events WHERE type = 'run.waiting'")
        ]
        assert said[0] == {"tasks": {"seed": "pool 'db' full"}, "more": 0}
        assert "pool" not in seed_row()  # once it ran, nothing is said of its wait
    finally:
        go.touch()
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_a_locked_command_inside_a_task_dies_with_the_task_even_if_abreast_lock_is_killed(
    tmp_path: Path,
) -> None:
    # CMD shrugs off SIGTERM; a second Ctrl-C on the run KILLs the task's processes at
    # once, `abreast lock` among them, before it can end CMD itself.
    pid_file = tmp_path / "cmd.pid"
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: open(sys.argv[1], 'a').write(' TERM'))\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    inner = f"{PY} -m abreast lock tests -- {PY} {stubborn} {pid_file}"
    proc = run_json(tmp_path, {"name": "inner", "tasks": {"a": {"run": inner}}})
    cmd_pid = 0
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", what="CMD to start")
        cmd_pid = int(pid_file.read_text().split()[0])
        proc.send_signal(signal.SIGINT)
        try:
            wait_for(lambda: "TERM" in pid_file.read_text(), what="CMD to be asked to end")
        except AssertionError as e:  # seen once in CI: say what the run and task said
            proc.kill()
            out, err = proc.communicate()
            logs = "".join(p.read_text() for p in tmp_path.rglob("a.*.log"))
            raise AssertionError(
                f"{e}\nrun stdout:\n{out}\nrun stderr:\n{err}\nlog:\n{logs}"
            ) from e
        proc.send_signal(signal.SIGINT)  # the second: no more grace
        proc.communicate(timeout=30)
        wait_for(lambda: not pid_alive(cmd_pid), timeout=10, what="CMD to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pipe in (proc.stdout, proc.stderr):  # closed even when a wait above failed
            if pipe is not None:
                pipe.close()
        if cmd_pid and pid_alive(cmd_pid):
            os.kill(cmd_pid, signal.SIGKILL)


def test_a_task_whose_orchestrator_died_never_works_beside_the_locks_next_holder(
    tmp_path: Path,
) -> None:
    # Run 1's task holds `tests` and runs on after its orchestrator is SIGKILLed; nobody
    # renews the lease. Run 2's task gets the lock once it runs out, and must find run
    # 1's task gone: its supervisor ends what still holds the lapsed lease first.
    pid_file = tmp_path / "first.pid"
    first = run_json(
        tmp_path,
        {
            "name": "first",
            "locks": {"tests": {"ttl": 1}},
            "tasks": {"a": {"run": f"echo $$ > {pid_file}; sleep 60", "locks": ["tests"]}},
        },
    )
    first_pid = 0
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="a")
        first_pid = int(pid_file.read_text())
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        assert pid_alive(first_pid)  # the task runs on, unwatched, holding `tests`
        alive = f"ps -o stat= -p {first_pid} | grep -qv Z"  # a zombie is no longer working
        second = run_json(
            tmp_path,
            {
                "name": "second",
                "locks": {"tests": {"ttl": 30}},
                "tasks": {
                    "b": {
                        "run": f"if {alive}; then echo beside; else echo alone; fi > b.out",
                        "locks": ["tests"],
                    }
                },
            },
        )
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, out + err
        assert (tmp_path / "b.out").read_text() == "alone\n"
        fenced = query(
            tmp_path / ".abreast" / "state.db",
            "SELECT data FROM events WHERE type = 'lock.fenced'",
        )
        assert len(fenced) == 1
        data = json.loads(fenced[0][0])
        assert data["lock"] == "tests" and data["ended"] >= 2  # its shell and its sleep
        assert data["lapsed_holder"]["run"].startswith("first-")
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        if first_pid and pid_alive(first_pid):
            os.killpg(first_pid, signal.SIGKILL)  # the task leads its own group


def test_a_cancelled_run_stops_waiting_for_a_lock_held_elsewhere(tmp_path: Path) -> None:
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    holder = subprocess.Popen([*lock_argv(state), "sleep", "60"])
    coord = open_coordinator(f"sqlite://{tmp_path}/.abreast/coord.db")
    run = None
    try:
        wait_for(lambda: coord.holder("tests") is not None, what="the holder outside the run")
        held = coord.holder("tests")
        run = run_json(
            tmp_path,
            {
                "name": "waits",
                "locks": {"tests": {"ttl": 30}},
                "tasks": {"t": {"run": "echo ran > ran", "locks": ["tests"]}},
            },
        )
        wait_for(lambda: len(coord.waiters("tests")) == 1, what="the run's task to queue")
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
        assert run.returncode == -signal.SIGINT, out + err
        assert "t  cancelled" in out
        assert coord.holder("tests") == held  # it did not wait for the lock to be free
        assert coord.waiters("tests") == []  # and left the queue
        assert not (tmp_path / "ran").exists()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        coord.close()
        holder.terminate()
        holder.wait(timeout=10)


def test_task_locks_serialise_across_two_runs(tmp_path: Path, coord_url: str) -> None:
    rec = tmp_path / "record.py"
    rec.write_text(
        "import json,os,sys,time\ns=time.monotonic();time.sleep(0.5);"
        "json.dump({'task':os.environ['ABREAST_RUN_ID'],'start':s,"
        "'end':time.monotonic()},open(sys.argv[1]+'/'+os.environ['ABREAST_RUN_ID']"
        "+'.json','w'))"
    )
    (tmp_path / "rec").mkdir()
    runs = []
    for i in range(2):
        root = tmp_path / f"p{i}"
        root.mkdir()
        runs.append(
            run_json(
                root,
                {
                    "name": f"p{i}",
                    "locks": {"tests": {"ttl": "5s"}},
                    "tasks": {"t": {"run": f"{PY} {rec} {tmp_path}/rec", "locks": ["tests"]}},
                },
                "--state",
                coord_url,
            )
        )
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    spans = intervals(tmp_path)
    assert len(spans) == 2
    assert max_concurrency(spans) == 1


def test_abreast_lock_on_a_lock_already_held_here_runs_under_that_lease(
    tmp_path: Path, coord_url: str
) -> None:
    """A task holding `tests` by `locks:` whose script calls `abreast lock tests -- CMD`
    (and `abreast lock` nested in itself) would wait for itself until its timeout."""
    show = "echo $ABREAST_LOCKS $ABREAST_LOCK_TOKEN > {}"
    inner = f"{PY} -m abreast lock tests -- sh -c '{show.format(tmp_path / 'task.txt')}'"
    proc = run_json(
        tmp_path,
        {
            "name": "reenter",
            "locks": {"tests": {"ttl": "1m"}},
            "tasks": {"t": {"run": inner, "locks": ["tests"], "timeout": "60s"}},
        },
        "--state",
        coord_url,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    held, token = (tmp_path / "task.txt").read_text().split()
    assert held == f"tests:{token}"  # the command ran under the task's own lease
    log = next(tmp_path.glob("**/logs/t.1.log")).read_text()
    assert f"'tests' is already held here (token {token})" in log
    assert "waiting for" not in log

    nested = subprocess.run(
        [*lock_argv(coord_url), *lock_argv(coord_url), "sh", "-c", "exit 7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert nested.returncode == 7, nested.stderr
    # A lease that is no longer current is not run under, nor waited for.
    stale = subprocess.run(
        [
            *lock_argv(coord_url),
            "sh",
            "-c",
            f"ABREAST_LOCK_TOKEN=999 {shlex.join(lock_argv(coord_url))} true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stale.returncode == 75, stale.stderr
    assert "was held here (token 999), but that lease has been lost" in stale.stderr


def test_a_silent_task_is_an_orphan_killed_and_retried(tmp_path: Path) -> None:
    script = tmp_path / "hang.sh"
    script.write_text(
        '#!/bin/sh\necho $$ >> pids\nif [ "$ABREAST_ATTEMPT" = 1 ]; then sleep 60; fi\necho done\n'
    )
    script.chmod(0o755)
    proc = run_json(
        tmp_path,
        {
            "name": "orph",
            "heartbeat": {"interval": "0.2s", "orphan_after": "1s"},
            "tasks": {"quiet": {"run": str(script), "retries": 1, "backoff": {"initial": 0.05}}},
        },
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "orphan: no sign of life" in out
    # What to do if the quiet was rightful.
    assert "give it `orphan_after: D` (or raise `heartbeat.orphan_after`, for every task)" in out
    first = int((tmp_path / "pids").read_text().split()[0])
    assert not pid_alive(first)
    db = tmp_path / ".abreast" / "state.db"
    events = query(db, "SELECT task_id, data FROM events WHERE type = 'orphan.cleaned'")
    assert len(events) == 1
    assert json.loads(events[0][1])["reason"] == "no_activity"


def test_a_task_may_be_quiet_longer_or_shorter_than_the_others(tmp_path: Path) -> None:
    # One step that rightly waits in silence (a deploy, a long sleep) made every task's
    # hang detection slower: `heartbeat.orphan_after` was the only threshold.
    proc = run_json(
        tmp_path,
        {
            "name": "quiet",
            "heartbeat": {"interval": "0.2s", "orphan_after": "1s"},
            "tasks": {
                "patient": {"run": "sleep 2.5; echo waited", "orphan_after": "1m"},
                "hung": {"run": "sleep 60"},
                # Stricter than the others: killed before the workflow's threshold.
                "brisk": {"run": "sleep 60", "orphan_after": "0.3s"},
            },
        },
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert re.search(r"succeeded patient in 2\.\d+s", out), out
    assert "failed    hung" in out and "give it `orphan_after: D`" in out
    brisk = re.search(
        r"failed    brisk in (\S+): orphan: .* \(if it may rightly be quiet that "
        r"long, raise its `orphan_after`\)",
        out,
    )
    assert brisk is not None and brisk.group(1).endswith("ms"), out  # well before 1s


def test_memory_growth_over_the_limit_is_reported(tmp_path: Path) -> None:
    proc = run_json(
        tmp_path,
        {
            "name": "mem",
            "memory": {"growth_limit": 1},
            "heartbeat": {"interval": "0.1s"},
            "tasks": {
                "t": {"run": f"{PY} -c 'import time; x = bytearray(10**7); time.sleep(1.5)'"}
            },
        },
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    db = tmp_path / ".abreast" / "state.db"
    rows = query(db, "SELECT data FROM events WHERE type = 'memory.leak_suspected'")
    assert rows, out
    assert "warning: orchestrator memory grew by" in out
    peak = query(db, "SELECT peak_rss_bytes FROM tasks WHERE task_id = 't'")[0][0]
    assert peak > 10**7  # the task's 10 MB showed in its peak RSS


def test_cleanup_force_after_sigkill_leaves_nothing(tmp_path: Path, coord_url: str) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("x\n")
    (tmp_path / ".gitignore").write_text("w.json\n*.pid\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(tmp_path),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "init",
        ],
        check=True,
    )
    (tmp_path / "w.json").write_text(
        json.dumps(
            {
                "version": 1,
                "name": "dead",
                "isolation": "worktree",
                "locks": {"tests": {"ttl": "1h"}},
                "tasks": {
                    "a": {"run": f"echo $$ > {tmp_path}/a.pid; sleep 60", "locks": ["tests"]},
                    "b": {"run": f"echo $$ > {tmp_path}/b.pid; sleep 60"},
                },
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abreast",
            "run",
            str(tmp_path / "w.json"),
            "--no-monitor",
            "--plain",
            "--state",
            coord_url,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline()[5:].strip()
    wait_for(
        lambda: (tmp_path / "a.pid").exists() and (tmp_path / "b.pid").exists(),
        what="both tasks to start",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    coord = open_coordinator(coord_url)
    assert coord.holder("tests") is not None  # the dead run still holds its lease
    links = tmp_path / ".git" / "abreast" / "anchors" / run_id  # coord/anchor.py
    assert (links / "2-state.db").is_file()
    dry = run_abreast("cleanup", "--dry-run", "--state", coord_url, cwd=tmp_path)
    assert "release lock 'tests'" in dry.out
    assert "kill 4 processes still running" in dry.out  # each task's shell and its sleep
    assert f"remove the links to its state files in {links}" in dry.out
    done = run_abreast("cleanup", "--force", "--state", coord_url, cwd=tmp_path)
    assert done.code == 0, done.err
    assert f"{run_id} (its orchestrator is gone): did" in done.out
    assert marked_processes(run_id) == []
    for name in ("a", "b"):
        assert not pid_alive(int((tmp_path / f"{name}.pid").read_text()))
    assert coord.holder("tests") is None
    assert coord.heartbeats(f"attempt:{run_id}/") == []
    listed = subprocess.run(
        ["git", "-C", str(tmp_path), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert listed.count("\n") == 1
    assert not links.parent.exists()
    coord.close()


def test_resume_gives_back_the_locks_the_dead_orchestrator_held(
    tmp_path: Path, coord_url: str
) -> None:
    # t held `tests` (ttl 1h) when its orchestrator was killed. Run again by resume, it
    # must have the lock at once, not wait an hour for its own dead attempt's lease.
    path = tmp_path / "w.json"
    run = f'[ "$ABREAST_ATTEMPT" = 1 ] || exit 0; touch {tmp_path}/started; sleep 60'
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "relock",
                "isolation": "none",
                "locks": {"tests": {"ttl": "1h"}},
                "tasks": {"t": {"run": run, "locks": ["tests"]}},
            }
        )
    )
    argv = [PY, "-m", "abreast", "run", str(path), "--no-monitor", "--plain", "--state", coord_url]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline()[5:].strip()
    wait_for(lambda: (tmp_path / "started").exists(), what="t to start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = run_abreast(
        "resume", run_id, "--state", coord_url, "--no-monitor", "--plain", cwd=tmp_path
    )
    assert resumed.code == 0, resumed.out + resumed.err
    assert "released lock 'tests' (token " in resumed.out
    assert "held by t): its holder died with the orchestrator" in resumed.out
    assert "waits for the lock" not in resumed.out
    coord = open_coordinator(coord_url)
    try:
        assert coord.holder("tests") is None  # and given back again at the end
    finally:
        coord.close()


@pytest.mark.slow
def test_cleanup_leaves_the_lease_of_a_live_run_of_another_project_with_the_same_id(
    tmp_path: Path, redis_url: str
) -> None:
    """Run ids can be chosen (`--run-id ci-42` in every CI job): cleaning up one project's
    ended ci-42 must not release the lock another project's live ci-42 holds through the
    same Redis."""
    spec = {"name": "p", "locks": {"tests": {"ttl": "1h"}}}
    ended, live = tmp_path / "ended", tmp_path / "live"
    for root in (ended, live):
        root.mkdir()
    first = run_json(
        ended, {**spec, "tasks": {"t": {"run": "true"}}}, "--run-id", "ci-42", "--state", redis_url
    )
    assert first.communicate(timeout=60) and first.returncode == 0
    started = live / "started"
    holder = run_json(
        live,
        {**spec, "tasks": {"t": {"run": f"touch {started}; sleep 60", "locks": ["tests"]}}},
        "--run-id",
        "ci-42",
        "--state",
        redis_url,
    )
    coord = open_coordinator(redis_url)
    try:
        wait_for(started.exists, what="the live run's task to start")
        held = coord.holder("tests")
        assert held is not None and held.holder.run == "ci-42"
        done = run_abreast("cleanup", "--state", redis_url, cwd=ended)
        assert done.code == 0, done.err
        assert f"pid {held.holder.pid} is alive) to run out by its ttl" in done.out
        still = coord.holder("tests")
        assert still is not None and still.token == held.token
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=60)
        coord.close()


def test_redis_restart_during_a_run(tmp_path: Path, own_redis: RedisServer) -> None:
    server = own_redis
    inner = f"{PY} -m abreast lock tests -- sleep 0.3"
    tasks = {f"t{i}": {"run": inner, "retries": 2, "backoff": {"initial": 0.2}} for i in range(8)}
    proc = run_json(
        tmp_path, {"name": "restart", "max_parallel": 2, "tasks": tasks}, "--state", server.url
    )
    time.sleep(0.8)  # let some tasks take and release the lock first
    server.stop()
    time.sleep(0.5)  # the backend is really gone for a while
    server.start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    coord = open_coordinator(server.url)
    after = coord.acquire(
        "tests",
        __import__("abreast.coord.backend", fromlist=["Holder"]).Holder.here(),
        ttl_s=5,
        timeout_s=5,
    )
    assert after is not None
    assert after.token > 10**12  # seeded from the clock: never a token seen before
    assert coord.leases() == [after]
    coord.close()


def test_a_redis_outage_longer_than_the_wait_is_waited_out_not_failed(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    # Redis gone for longer than ABREAST_REDIS_WAIT: a task waiting for its lock failed
    # ("could not prepare: ... Connection refused"), and every later call to Redis held
    # the orchestrator for the whole wait again (with the default 15 s: a run frozen,
    # deaf to Ctrl-C, until Redis came back). Now the lock's wait waits the outage out,
    # and the run carries on with what needs no Redis.
    server = own_redis
    first_in, first_go, free_go = tmp_path / "first-in", tmp_path / "first-go", tmp_path / "free-go"

    def gated(gate: Path, mark: Path | None = None) -> str:
        touch = f"touch {mark}; " if mark else ""
        return f"{touch}while [ ! -e {gate} ]; do sleep 0.05; done"

    tasks = {
        "first": {"run": gated(first_go, first_in), "locks": ["tests"]},
        "second": {"run": "true", "locks": ["tests"], "needs": ["free"]},  # asks while gone
        "free": {"run": gated(free_go)},
    }
    spec = {"name": "outage", "max_parallel": 3, "locks": {"tests": {"ttl": "1m"}}}
    env = {**os.environ, "ABREAST_REDIS_WAIT": "1s"}
    proc = run_json(tmp_path, {**spec, "tasks": tasks}, "--state", server.url, env=env)
    journal = tmp_path / ".abreast" / "state.db"
    try:
        wait_for(first_in.exists, what="first to hold the lock")
        wait_for(
            lambda: (
                query(journal, "SELECT count(*) FROM events WHERE type = 'task.started'") == [(2,)]
            ),
            what="first and free to start",
        )
        server.stop()
        free_go.touch()  # a task that needs no Redis ends, and is seen to, meanwhile
        wait_for(
            lambda: (
                query(journal, "SELECT state FROM tasks WHERE task_id = 'free'") == [("succeeded",)]
            ),
            timeout=30,
            what="free's end to be taken in while Redis is gone",
        )
        first_go.touch()
        time.sleep(2)  # Redis stays gone for twice the wait, second waiting for its lock
        assert query(journal, "SELECT state FROM tasks WHERE task_id = 'second'") != [("failed",)]
        server.start()
        out, err = proc.communicate(timeout=60)
    finally:
        first_go.touch()
        free_go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert "second: waits for the coordination backend, to take the lock 'tests'" in out, out


def test_abreast_lock_waits_out_a_redis_outage_while_it_waits_for_its_lock(
    tmp_path: Path,
    own_redis: RedisServer,
) -> None:
    # `abreast lock tests -- pytest` inside a task, waiting in line, with Redis gone
    # longer than ABREAST_REDIS_WAIT: it ended with an error (exit 2), failing the task.
    from abreast.coord.backend import Holder

    server = own_redis
    coord = open_coordinator(server.url)
    held = coord.acquire("tests", Holder.here(), ttl_s=300)
    assert held is not None
    coord.close()
    waiter = subprocess.Popen(
        [PY, "-m", "abreast", "lock", "tests", "--state", server.url, "--", "true"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ABREAST_REDIS_WAIT": "0.5s"},
    )
    try:
        assert waiter.stderr is not None
        assert waiter.stderr.readline().startswith("abreast lock: waiting for 'tests'")
        server.stop()
        said = waiter.stderr.readline()
        assert said.startswith("abreast lock: waiting for the coordination backend ("), said
        assert waiter.poll() is None  # still waiting, Redis gone for longer than its wait
        server.start()  # empty: the lock is free
        _out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err


def test_a_redis_found_gone_fails_calls_at_once_until_it_answers_again(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    # Each call to a Redis gone tried again for the whole wait: an orchestrator making a
    # few calls a second was held for minutes by a 15 s wait. The first call that finds
    # it gone waits; the next ones fail at once, until a look (a PING, once a second)
    # finds it back.
    from abreast.coord.backend import CoordUnreachable
    from abreast.coord.redis_coord import RedisCoordinator

    server = own_redis
    coord = RedisCoordinator(server.url, wait_s=3.0)
    try:
        coord.heartbeat("k")
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(CoordUnreachable):
            coord.heartbeat("k")
        assert time.monotonic() - t0 >= 2.5  # tried again for the wait (a restart)
        t0 = time.monotonic()
        for _ in range(5):
            with pytest.raises(CoordUnreachable, match="Connection refused"):
                coord.heartbeat("k")
        assert time.monotonic() - t0 < 1.5  # not the wait again, five times over
        server.start()
        wait_for(lambda: _answers(coord), timeout=10, what="a call to succeed again")
        assert [h.key for h in coord.heartbeats()] == ["k"]
    finally:
        coord.close()


def _answers(coord: Any) -> bool:
    from abreast.coord.backend import CoordUnreachable

    try:
        coord.heartbeat("k")
    except CoordUnreachable:
        return False
    return True


def test_unreachable_state_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps({"version": 1, "isolation": "none", "tasks": {"a": {"run": "true"}}})
    )
    url = f"redis://127.0.0.1:{port}/0"

    def run(wait: str) -> tuple[float, object]:
        env = {**os.environ, "ABREAST_REDIS_WAIT": wait}
        began = time.monotonic()
        result = run_abreast("run", str(path), "--state", url, cwd=tmp_path, env=env, timeout=120)
        return time.monotonic() - began, result

    took, result = run("1.5s")
    assert result.code == 2
    assert "Traceback" not in result.err
    # Said at once (the tries that follow take the wait), then given up.
    note, error = result.err.splitlines()[:2]
    assert note.startswith(f"abreast: cannot reach Redis at {url} yet (")
    assert note.endswith("); trying again for up to 1.5s (ABREAST_REDIS_WAIT sets how long)")
    assert error.startswith("abreast: error: cannot reach Redis")
    assert took >= 1.5  # it did try for the wait given
    # 0: no wait, no note.
    _, result = run("0")
    assert result.code == 2
    assert result.err.startswith(f"abreast: error: cannot reach Redis at {url}: ")
    # A wait that is not a duration is refused, saying what to write.
    _, result = run("soon")
    assert result.code == 2
    assert result.err.startswith("abreast: error: ABREAST_REDIS_WAIT='soon': ")
    assert "like 90s" in result.err and "hint:" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / ".abreast").exists() or not list((tmp_path / ".abreast").glob("*.db"))


def test_a_run_waits_for_a_redis_that_starts_after_it(tmp_path: Path) -> None:
    # A CI service coming up beside the run: the run says it is waiting, keeps trying,
    # and runs once Redis answers.
    server = RedisServer(redis_server_binary(), tmp_path)
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps({"version": 1, "isolation": "none", "tasks": {"a": {"run": "echo ran > a"}}})
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(path), "--plain", "--state", server.url],
        cwd=tmp_path,
        env={**os.environ, "ABREAST_REDIS_WAIT": "60s"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        note = proc.stderr.readline()  # said before the first retry
        assert "yet (" in note and "trying again for up to 1m" in note, note
        server.start()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        assert (tmp_path / "a").read_text() == "ran\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()


def test_a_check_that_loses_its_lock_is_ended_and_run_again(tmp_path: Path) -> None:
    # The check's lock is force-released while it runs (an operator, or a takeover): the
    # check must not go on unprotected; it is ended, and run again under the lock.
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "0"]):
        subprocess.run(
            ["git", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t",
            },
        )
    runs, done = tmp_path / "check-runs", tmp_path / "check-done"
    check = f'echo run >> {runs}; [ "$(wc -l < {runs})" -gt 1 ] || sleep 20; echo done >> {done}'
    (repo / "w.json").write_text(
        json.dumps(
            {
                "version": 1,
                "name": "lost",
                "locks": {"tests": {"ttl": 1.5}},
                "checks": [{"run": check, "lock": "tests"}],
                "tasks": {"t": {"run": "echo x > x.txt"}},
            }
        )
    )
    run = subprocess.Popen(
        [PY, "-m", "abreast", "run", "w.json", "--plain", "--no-monitor"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    coord = open_coordinator(f"sqlite://{repo}/.abreast/coord.db")
    try:
        wait_for(lambda: runs.exists(), timeout=30, what="the check to start")
        assert coord.force_release("tests") is not None
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        coord.close()
    assert run.returncode == 0, out + err
    assert runs.read_text() == "run\nrun\n"  # ended, then run again
    assert done.read_text() == "done\n"  # the first never finished its work unprotected
    events = [r[0] for r in query(repo / ".abreast" / "state.db", "SELECT type FROM events")]
    assert "lock.lost" in events
    assert not marked_processes(out.splitlines()[0][5:])  # nothing of the run is left


def test_a_run_says_whom_its_tasks_and_checks_wait_for(tmp_path: Path) -> None:
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "0"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    holder = subprocess.Popen([*lock_argv(state), "sleep", "60"])
    coord = open_coordinator(f"sqlite://{tmp_path}/.abreast/coord.db")
    run = None
    try:
        wait_for(lambda: coord.holder("tests") is not None, what="the holder outside the run")
        run = run_json(
            tmp_path,
            {
                "name": "says",
                "isolation": "worktree",
                "locks": {"tests": {"ttl": 30}},
                "checks": [{"run": "true", "lock": "tests"}],
                "tasks": {"a": {"run": "true", "locks": ["tests"]}, "b": {"run": "echo b > b"}},
            },
        )
        wait_for(lambda: len(coord.waiters("tests")) == 2, what="a and b's check to queue")
        holder.terminate()
        holder.wait(timeout=10)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, out + err
        assert f"a: waits for the lock 'tests', held by pid {holder.pid} on" in out
        assert f"b: its checks wait for the lock 'tests', held by pid {holder.pid} on" in out
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        coord.close()
        if holder.poll() is None:
            holder.terminate()
            holder.wait(timeout=10)


def test_a_holder_stopped_past_its_ttl_with_nobody_waiting_keeps_the_lock(
    tmp_path: Path, coord_url: str
) -> None:
    # A laptop that slept, an orchestrator stopped (Ctrl-Z, a debugger) for longer than a
    # lock's ttl, while its task held the lock for its whole attempt: on waking, the task
    # was killed ("not renewed within the ttl") though nobody had been granted the lock
    # meanwhile, and `abreast lock`'s command the same. Both keep it now.
    go, started, lock_started = tmp_path / "go", tmp_path / "started", tmp_path / "lock-started"
    wait_go = f"while [ ! -e {go} ]; do sleep 0.05; done"
    proc = run_json(
        tmp_path,
        {
            "name": "sleepy",
            "locks": {"tests": {"ttl": "1s"}},
            "tasks": {"qa": {"locks": ["tests"], "run": f"touch {started}; {wait_go}"}},
        },
        "--state",
        coord_url,
    )
    abreast_lock = [sys.executable, "-m", "abreast", "lock", "db", "--state", coord_url]
    locker = subprocess.Popen(
        [*abreast_lock, "--ttl", "1", "--", "sh", "-c", f"touch {lock_started}; {wait_go}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    coord = open_coordinator(coord_url)
    try:
        wait_for(lambda: started.exists() and lock_started.exists(), what="both holders")
        leases = [coord.holder("tests"), coord.holder("db")]
        assert leases[0] is not None and leases[1] is not None
        os.kill(proc.pid, signal.SIGSTOP)
        os.kill(locker.pid, signal.SIGSTOP)
        lapsed = max(lease.expires_at for lease in leases if lease) + 0.3
        while coord.now() < lapsed:
            time.sleep(0.05)  # the ttl must pass while they are stopped: there is no event
        assert not coord.validate("tests", leases[0].token)
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(locker.pid, signal.SIGCONT)
        # Each renews the lease it never lost: valid again, under the same token.
        wait_for(
            lambda: all(coord.validate(x.name, x.token) for x in leases if x),
            what="the leases renewed",
        )
        go.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        _, lock_err = locker.communicate(timeout=30)
        assert locker.returncode == 0, lock_err
    finally:
        for p in (proc, locker):
            end_stopped(p)
        coord.close()
