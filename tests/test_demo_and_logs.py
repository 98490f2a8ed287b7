"""`abreast demo` end to end, and following a log while its task runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_abreast
from tests.helpers import ended_after, start_run, wait_for, write_workflow


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = run_abreast("demo", "--plain", "--keep", timeout=120)
    kept = re.search(r"--state sqlite://(\S+)/\.abreast/state\.db", result.out)
    assert kept is not None, result.out
    try:
        state = ["--state", f"sqlite://{kept[1]}/.abreast/state.db"]
        told = run_abreast("logs", "backend", "--prompt", *state)  # critique's output in it
        # The prompt as written, then what its work may change (its `owns`).
        assert told.out == (
            "Implement the backend (the review said APPROVED)\n\n---\nChange only files "
            "matching `backend/**`: other tasks run beside this one, and an attempt that "
            "changes any other file is sent back."
        ), told.out + told.err
    finally:
        shutil.rmtree(kept[1])
    assert result.code == 0, result.out + result.err
    out = result.out
    assert out.splitlines()[1].startswith("run: demo-")
    assert "retry   frontend" in out  # fails once, succeeds on the retry, and says why:
    assert ": exit 1: frontend: the build broke (a flaky dependency)\n" in out  # (its log)
    assert "gate not met: output.confidence >= 0.75" in out
    assert "skipped   performance" in out
    assert "succeeded docs" in out
    assert "saved" in out
    assert "the agents' work, merged and checked: backend/api.py" in out
    assert "8 tasks landed" in out
    assert "git status there is clean" in out


@pytest.mark.parametrize(
    ("example", "landed"), [("auth-epic", 6), ("stage-groups", 9), ("cfn-epic", 6)]
)
def test_the_examples_run_to_the_end_in_a_repository_of_their_own(
    tmp_path: Path, example: str, landed: int
) -> None:
    # As examples/README.md says to: a copy of examples/ made a git repository.
    repo = tmp_path / "examples"
    shutil.copytree(Path(__file__).parent.parent / "examples", repo)
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    ident |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env = {**os.environ, **ident, "EXAMPLE_AGENT_SECONDS": "0.05"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    result = run_abreast(
        "run", f"{example}.yaml", "--plain", "--no-monitor", cwd=repo, env=env, timeout=120
    )
    assert result.code == 0, result.out + result.err
    assert f"{landed} task{'s' if landed != 1 else ''} landed" in result.out


def test_logs_follow_prints_until_the_attempt_ends(tmp_path: Path) -> None:
    wf = tmp_path / "w.json"
    wf.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "follow",
                "isolation": "none",
                "tasks": {"t": {"run": f"echo one; touch {tmp_path}/go; sleep 0.8; echo two"}},
            }
        )
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(wf), "--no-monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        run_id = run.stdout.readline()[5:].strip()
        wait_for((tmp_path / "go").exists, what="the task to start")
        followed = run_abreast(
            "logs", run_id, "t", "-f", "--state", f"sqlite://{tmp_path}/.abreast/state.db"
        )
    finally:
        run.communicate(timeout=30)
    assert followed.code == 0, followed.err
    assert followed.out.split() == ["one", "two"]


def test_logs_follow_waits_for_a_task_that_has_not_started(tmp_path: Path) -> None:
    # `first` holds `later` back until it sees `later`'s follower waiting; `blocked` will
    # never run (its dependency fails), which -f says instead of waiting for ever.
    release = tmp_path / "release"
    wf = write_workflow(
        tmp_path,
        "wait",
        {
            "first": {"run": f"until [ -e {release} ]; do sleep 0.05; done"},
            "later": {"run": "echo later-out", "needs": ["first"]},
            "bad": {"run": "exit 1"},
            "blocked": {"run": "true", "needs": ["bad"]},
        },
    )
    proc, run_id = start_run(wf, cwd=tmp_path)
    follower = subprocess.Popen(
        [sys.executable, "-m", "abreast", "logs", run_id, "later", "-f"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None
        said = follower.stderr.readline()
        assert said == "-- later: not started yet (pending); waiting for it\n"
        release.touch()
        out, err = follower.communicate(timeout=30)
        assert follower.returncode == 0, err
        assert out == "later-out\n"
        proc.communicate(timeout=30)
    finally:
        release.touch()
        for p in (follower, proc):
            if p.poll() is None:
                p.kill()
                p.communicate()
    never = run_abreast("logs", run_id, "blocked", "-f", cwd=tmp_path)
    assert never.code == 2
    assert f"task 'blocked' of run {run_id} never ran: blocked (upstream bad failed)" in never.err


def test_logs_follow_goes_on_into_the_tasks_next_attempts(tmp_path: Path) -> None:
    wf = tmp_path / "w.json"
    script = (
        f'echo "one of $ABREAST_ATTEMPT"; touch {tmp_path}/go; sleep 0.5; '
        'echo "two of $ABREAST_ATTEMPT"; test "$ABREAST_ATTEMPT" = 2'
    )
    task = {"run": script, "retries": 1, "backoff": {"initial": 0.3}}
    wf.write_text(json.dumps({"version": 1, "isolation": "none", "tasks": {"t": task}}))
    run = subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(wf), "--no-monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = ["--state", f"sqlite://{tmp_path}/.abreast/state.db"]
    try:
        assert run.stdout is not None
        run_id = run.stdout.readline()[5:].strip()
        wait_for((tmp_path / "go").exists, what="the task to start")
        followed = run_abreast("logs", run_id, "t", "-f", *state)
        first_only = run_abreast("logs", run_id, "t", "-f", "--attempt", "1", *state)
    finally:
        run.communicate(timeout=30)
    assert followed.code == 0, followed.err
    assert followed.out.splitlines() == ["one of 1", "two of 1", "one of 2", "two of 2"]
    assert followed.err == "-- t: attempt 1 ended (exit 1); attempt 2\n"
    assert first_only.out.splitlines() == ["one of 1", "two of 1"]


def test_logs_of_every_task_at_once_each_line_under_its_tasks_name(tmp_path: Path) -> None:
    # Watching four agents meant four terminals of `abreast logs RUN TASK -f`.
    go = tmp_path / "go"
    wf = write_workflow(
        tmp_path,
        "all",
        {
            "api": {"run": f"echo a1; while [ ! -e {go} ]; do sleep 0.05; done; printf a2"},
            "b": {
                "run": f'echo "b of $ABREAST_ATTEMPT"; while [ ! -e {go} ]; do sleep 0.05; done; '
                'test "$ABREAST_ATTEMPT" = 2',
                "retries": 1,
                "backoff": {"initial": 0.1},
            },
        },
    )
    run, run_id = start_run(wf, cwd=tmp_path)
    follow = subprocess.Popen(
        [sys.executable, "-m", "abreast", "logs", "-f"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with ended_after(follow, run):
        assert follow.stdout is not None
        seen = []
        while not {"api | a1\n", "b   | b of 1\n"} <= set(seen):  # as they were written
            line = follow.stdout.readline()
            assert line, seen
            seen.append(line)
        go.touch()
        rest, err = follow.communicate(timeout=60)
        run.communicate(timeout=60)
    assert follow.returncode == 0, err
    lines = "".join(seen).splitlines() + rest.splitlines()
    # Each task's lines in its order; a last line without a newline is a line too.
    assert [x for x in lines if x.startswith("api | ")] == ["api | a1", "api | a2"]
    assert [x for x in lines if x.startswith("b   | ")] == ["b   | b of 1", "b   | b of 2"]
    assert len(lines) == 4
    assert err == "-- b: attempt 1 ended (exit 1); attempt 2\n"
    # Without -f: the latest attempt of each task, task after task; RUN may be named.
    shown = run_abreast("logs", run_id, "--all", cwd=tmp_path)
    assert shown.out == "api | a1\napi | a2\nb   | b of 2\n"
    assert run_abreast("logs", cwd=tmp_path).out == shown.out
    wrong = run_abreast("logs", "--all", "--attempt", "1", cwd=tmp_path)
    assert wrong.code == 2 and "--attempt is for one task's log" in wrong.err


def test_commands_that_only_read_the_journal_load_neither_engine_nor_models(
    tmp_path: Path,
) -> None:
    """`status`, `logs` and `report` start in about 0.1 s: no pydantic, no asyncio."""
    wf = write_workflow(tmp_path, "light", {"t": {"run": "echo hi"}})
    run = run_abreast("run", str(wf), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.err
    run_id = run.out.splitlines()[0][5:]
    probe = (
        "import sys\n"
        "from abreast.cli import main\n"
        "codes = [main(a) for a in (['status'], ['status', sys.argv[1]], "
        "['logs', sys.argv[1], 't'], ['logs', sys.argv[1], '--all'], ['report', sys.argv[1]])]\n"
        "heavy = sorted(m for m in ('pydantic', 'asyncio', 'abreast.engine.engine', "
        "'abreast.spec.model') if m in sys.modules)\n"
        "print('codes', codes, 'heavy', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, run_id],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hi" in out  # the log was printed
    assert out.strip().endswith("codes [0, 0, 0, 0, 0] heavy []")


def test_a_run_whose_reader_goes_away_carries_on(tmp_path: Path) -> None:
    # `abreast run wf | head -1`: the pipe breaks at the next line; the run must not die.
    tasks = {f"t{i}": {"run": "sleep 0.2", "needs": [f"t{i - 1}"] if i else []} for i in range(3)}
    wf = write_workflow(tmp_path, "pipe", tasks)
    proc, run_id = start_run(wf, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    assert status["state"] == "succeeded"
    assert [t["state"] for t in status["tasks"]] == ["succeeded"] * 3


def test_logs_follow_stops_when_its_reader_goes_away(tmp_path: Path) -> None:
    # `abreast logs RUN TASK -f | grep -m1 ...`: once grep has its line, logs -f ends at
    # its next write instead of following the task to its end.
    chatty = "i=0; while [ $i -lt 600 ]; do echo line $i; i=$((i+1)); sleep 0.1; done"
    wf = write_workflow(tmp_path, "chatty", {"t": {"run": chatty}})
    run, run_id = start_run(wf, cwd=tmp_path)
    try:
        state = f"sqlite://{tmp_path}/.abreast/state.db"
        follow = subprocess.Popen(
            [sys.executable, "-m", "abreast", "logs", run_id, "t", "-f", "--state", state],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follow.stdout is not None and follow.stderr is not None
        assert follow.stdout.readline().startswith("line ")
        follow.stdout.close()  # the reader is gone; the task writes on for a minute
        assert follow.wait(timeout=20) == 0
        assert "Traceback" not in follow.stderr.read()
        follow.stderr.close()
    finally:
        run.send_signal(signal.SIGINT)  # cancel the run
        run.communicate(timeout=30)


def test_validating_and_running_load_pydantic_core_alone(tmp_path: Path) -> None:
    # The workflow models are plain dataclasses checked by pydantic-core: pydantic's model
    # layer (about 70 ms of imports and validator building) stays out of every start-up.
    wf = write_workflow(tmp_path, "light", {"t": {"run": "true", "timeout": "1m"}})
    probe = (
        "import sys\n"
        "from abreast.cli import main\n"
        "codes = [main(a) for a in (['validate', sys.argv[1]], "
        "['run', sys.argv[1], '--plain', '--no-monitor'])]\n"
        "print('codes', codes, 'core', 'pydantic_core' in sys.modules, "
        "'pydantic', 'pydantic' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(wf)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().endswith("codes [0, 0] core True pydantic False"), out


def test_plain_lines_reach_a_pipe_while_the_run_goes_on(tmp_path: Path) -> None:
    # CI's log, `abreast run wf | tee`: stdout is a block-buffered pipe when
    # PYTHONUNBUFFERED is unset, as it is for users. The task waits (20 s at most) for a
    # file this test creates only once it has read the task's start line, so the run
    # succeeds only if that line came while the task was running.
    wait = "i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; [ -e go ]"
    wf = write_workflow(tmp_path, "pipe", {"a": {"run": wait}})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(wf), "--no-monitor", "--plain"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("run: ")
    assert "start   a (attempt 1)" in proc.stdout.readline()
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "succeeded a" in out


def test_commands_close_the_journal_and_coordinator_they_open(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # A journal or coordinator left to the garbage collector says so (ResourceWarning;
    # Python 3.13 warns of any SQLite connection so left).
    import gc
    import warnings

    wf = write_workflow(tmp_path, "tidy", {"a": {"run": "echo hi"}})
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ran = cli("run", str(wf), "--no-monitor", "--plain", "--state", state)
        assert ran.code == 0, ran.err
        run_id = ran.out.splitlines()[0].removeprefix("run: ")
        for args in (
            ("status",),
            ("status", run_id),
            ("status", run_id, "--json"),
            ("logs", run_id, "a"),
            ("report", run_id),
            ("keys", run_id),
            ("cancel", run_id),
            ("resume", run_id),  # refused: it finished
            ("cleanup", "--dry-run"),
            ("status", "no-such-run"),  # refused
        ):
            cli(*args, "--state", state)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_logs_keep_a_character_split_across_reads_whole(tmp_path: Path) -> None:
    # 65535 bytes, then a two-byte character across the 64 KiB boundary of each read.
    path = write_workflow(
        tmp_path, "split", {"t": {"run": "head -c 65535 /dev/zero | tr '\\0' a; printf 'é\\n'"}}
    )
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert ran.code == 0, ran.err
    run_id = ran.out.splitlines()[0][5:]
    shown = run_abreast("logs", run_id, "t", cwd=tmp_path)
    assert shown.code == 0, shown.err
    assert shown.out.endswith("aé\n") and "\ufffd" not in shown.out


def test_logs_shows_a_tasks_bytes_as_they_are(tmp_path: Path) -> None:
    # A task printing bytes that are not UTF-8 (a tool's Latin-1, a binary dump): `abreast
    # logs` printed U+FFFD for each, so `abreast logs RUN TASK > file` was not its output.
    path = write_workflow(
        tmp_path, "bytes", {"bin": {"run": r"printf 'caf\351 \377\376 ok\n\342\202\254\n'"}}
    )
    ran = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path)
    assert ran.code == 0, ran.out + ran.err
    shown = subprocess.run(
        [sys.executable, "-m", "abreast", "logs", "bin"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout
    assert shown == b"caf\xe9 \xff\xfe ok\n\xe2\x82\xac\n", shown
