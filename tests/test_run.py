"""`abreast run`: real processes, a real journal; timing is observed, never asserted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_abreast
from tests.helpers import (
    PY,
    disk_in_a_namespace,
    ended_after,
    engine_for,
    ignored_signals,
    intervals,
    max_concurrency,
    pairs_overlapping,
    pid_alive,
    query,
    reaper,
    start_run,
    wait_for,
    write_recorder,
    write_workflow,
)


def workflow(root: Path, tasks: dict[str, Any], **top: Any) -> Path:
    data = {"version": 1, "name": "t", "isolation": "none", **top, "tasks": tasks}
    path = root / "w.json"
    path.write_text(json.dumps(data))
    return path


def journal(root: Path, sql: str) -> list[Any]:
    """The rows of `sql` on the run's journal."""
    return query(root / ".abreast" / "state.db", sql)


def run_id_of(out: str) -> str:
    first = out.splitlines()[0]
    assert first.startswith("run: ")
    return first[5:]


def test_dependencies_are_respected_and_parallelism_is_real(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rec = write_recorder(tmp_path)
    tasks = {f"w{i}": {"run": f"{rec} 0.4"} for i in range(6)}
    tasks["after"] = {"run": f"{rec} 0.1", "needs": ["w0", "w5"]}
    path = workflow(tmp_path, tasks, max_parallel=3)
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out + result.err
    spans = intervals(tmp_path)
    assert max_concurrency({k: v for k, v in spans.items() if k != "after"}) == 3
    assert spans["after"][0] >= max(spans["w0"][1], spans["w5"][1])
    assert "wall" in result.out and "succeeded" in result.out


def test_the_cap_is_never_exceeded_and_sequential_means_one(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rec = write_recorder(tmp_path)
    path = workflow(tmp_path, {f"t{i}": {"run": f"{rec} 0.15"} for i in range(5)}, max_parallel=4)
    assert cli("run", str(path), "--sequential", "--no-monitor").code == 0
    assert max_concurrency(intervals(tmp_path)) == 1


def test_abreast_parallel_0_runs_one_at_a_time(tmp_path: Path) -> None:
    rec = write_recorder(tmp_path)
    path = workflow(tmp_path, {f"t{i}": {"run": f"{rec} 0.15"} for i in range(4)})
    result = run_abreast(
        "run", str(path), "--no-monitor", env={**os.environ, "ABREAST_PARALLEL": "0"}
    )
    assert result.code == 0, result.err
    assert max_concurrency(intervals(tmp_path)) == 1


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ABREAST_PARALLEL", "banana", "ABREAST_PARALLEL='banana' is not understood"),
        ("ABREAST_MAX_PARALLEL", "x", "ABREAST_MAX_PARALLEL='x': must be a whole number from 1"),
        ("ABREAST_MAX_PARALLEL", "0", "ABREAST_MAX_PARALLEL='0': must be a whole number from 1"),
        ("ABREAST_MAX_PARALLEL", "10001", "'10001': must be a whole number from 1 to 10000"),
    ],
)
def test_a_bad_parallelism_variable_is_refused_before_anything_starts(
    name: str, value: str, message: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = workflow(tmp_path, {"a": {"run": f"touch {marker}"}})
    result = run_abreast("run", str(path), "--no-monitor", env={**os.environ, name: value})
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err
    assert not marker.exists()
    assert not (tmp_path / ".abreast" / "runs").exists()  # no run journaled


def test_pools_singletons_and_overlapping_owners_never_overlap(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rec = write_recorder(tmp_path)
    tasks = {
        "db1": {"run": f"{rec} 0.3", "pools": ["db"]},
        "db2": {"run": f"{rec} 0.3", "pools": ["db"]},
        "solo1": {"agent": "solo"},
        "solo2": {"agent": "solo"},
        "own1": {"run": f"{rec} 0.3", "owns": ["src/**"]},
        "own2": {"run": f"{rec} 0.3", "owns": ["src/auth/*.py"]},
        "free": {"run": f"{rec} 0.3"},
    }
    path = workflow(
        tmp_path,
        tasks,
        max_parallel=7,
        pools={"db": 1},
        agents={"solo": {"run": f"{rec} 0.3", "max_instances": 1}},
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    spans = intervals(tmp_path)
    for pair in (["db1", "db2"], ["solo1", "solo2"], ["own1", "own2"]):
        assert pairs_overlapping(spans, pair) == [], pair
    assert max_concurrency(spans) >= 3  # the rest did run side by side


def test_timeout_kills_the_whole_tree_within_the_grace_period(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "forker.sh"
    # A grandchild holding stdout, another in the background, and the shell itself: all
    # must go. Each records its pid first.
    script.write_text(
        "#!/bin/sh\n"
        f"sleep 300 & echo $! >> {tmp_path}/pids\n"
        f"(sleep 300; echo never) & echo $! >> {tmp_path}/pids\n"
        f"echo $$ >> {tmp_path}/pids\n"
        "wait\n"
    )
    script.chmod(0o755)
    path = workflow(tmp_path, {"slow": {"run": str(script), "timeout": 1}})
    t0 = time.monotonic()
    result = cli("run", str(path), "--no-monitor")
    took = time.monotonic() - t0
    assert result.code == 1
    assert "slow (timed_out): timed out after 1s" in result.out
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 3
    assert not [p for p in pids if pid_alive(p)]
    assert took < 1 + 5 + 3  # timeout + grace + start-up, generously


def test_a_timeout_whose_task_ignores_term_says_it_was_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    # A 1s timeout ended after 6s (TERM ignored, KILL after the 5s grace), unsaid.
    import asyncio

    from abreast.engine.engine import EngineOptions

    wf = workflow(
        tmp_path,
        {
            "stubborn": {"run": "trap '' TERM; sleep 30", "timeout": 1, "retries": 0},
            "polite": {"run": "sleep 30", "timeout": 1, "retries": 0},
        },
    )
    options = EngineOptions(cap=2, flags={}, kill_grace_s=0.3)
    with engine_for(wf, tmp_path / "state.db", options) as engine:
        outcome = asyncio.run(asyncio.wait_for(engine.run(), 30))
    assert outcome.state == "failed"
    reasons = dict(query(tmp_path / "state.db", "SELECT task_id, reason FROM tasks"))
    assert reasons["stubborn"] == (
        "timed out after 1s; its process tree was killed (it ignored TERM: KILLed 0.3s later)"
    )
    assert reasons["polite"] == "timed out after 1s; its process tree was killed"


def test_a_command_given_a_shell_of_its_own_ends_and_says_as_one_in_the_wrappers_shell(
    tmp_path: Path,
) -> None:
    # A command with `trap`, `exec`, `.` or `source` runs in a shell of its own, which the
    # attempt's shell waits for (so that its status is recorded whatever it does): TERMed
    # by a timeout it still cleans up in its trap, its log says no more than before, `$$`
    # is its own shell, and its errors reach its log.
    (tmp_path / "env.sh").write_text("X=1\n")
    path = workflow(
        tmp_path,
        {
            "cleans": {
                "run": "trap 'echo cleaned > cleaned.txt; exit 0' TERM; sleep 300 & wait",
                "timeout": 1,
            },
            "sourced": {"run": ". ./env.sh && sleep 300", "timeout": 1},
            "itself": {"run": ". ./env.sh; kill -TERM $$; touch survived.txt"},
            "missing": {"run": ". ./env.sh; no-such-program-here"},
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1
    assert (tmp_path / "cleaned.txt").read_text() == "cleaned\n"
    assert not (tmp_path / "survived.txt").exists()
    assert "itself (failed): killed by SIGTERM" in result.out, result.out
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {
        "cleans": "timed_out",
        "sourced": "timed_out",
        "itself": "failed",
        "missing": "failed",
    }
    logs = tmp_path / ".abreast" / "runs" / run_id_of(result.out) / "logs"
    assert (logs / "sourced.1.log").read_text() == ""  # no "Terminated" of the waiting shell
    assert "no-such-program-here: not found" in (logs / "missing.1.log").read_text()


def test_processes_a_task_leaves_in_a_session_of_their_own_are_ended_with_it(
    tmp_path: Path,
) -> None:
    # `setsid` puts a process out of reach of the attempt's process group and session:
    # it outlived the task and the run (a server, a watcher, holding ports and files).
    pids = tmp_path / "pids"

    def daemon(name: str) -> str:  # records its pid, then sleeps in a session of its own
        return f"setsid sh -c 'echo {name} $$ >> {pids}; exec sleep 300' </dev/null >/dev/null 2>&1"

    wait_for_it = f"until grep -q %s {pids} 2>/dev/null; do sleep 0.01; done"
    path = workflow(
        tmp_path,
        {
            # ends at once, its daemon running
            "done": {"run": f"{daemon('done')} & {wait_for_it % 'done'}"},
            # its daemon's parent (a subshell) ends first; the task itself times out
            "slow": {
                "run": f"({daemon('slow')} &); {wait_for_it % 'slow'}; sleep 300",
                "timeout": 1,
            },
            # runs on: its own daemon is left alone while it does
            "after": {
                "needs": ["done"],
                "run": f"{daemon('after')} & {wait_for_it % 'after'}; sleep 0.5; "
                f"kill -0 $(grep after {pids} | cut -d' ' -f2)",
            },
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert "slow (timed_out)" in result.out
    for task in ("done", "slow", "after"):
        assert (
            f"{task}: ending 1 process its attempt 1 left running in a session or process"
            " group of its own (" in result.out
        ), result.out
    recorded = dict(line.split() for line in pids.read_text().splitlines())
    assert sorted(recorded) == ["after", "done", "slow"]
    assert [name for name, pid in recorded.items() if pid_alive(int(pid))] == []
    db = tmp_path / ".abreast" / "state.db"
    events = query(db, "SELECT task_id, data FROM events WHERE type = 'orphan.cleaned'")
    assert sorted((t, json.loads(d)["reason"]) for t, d in events) == [
        ("after", "left_running"),
        ("done", "left_running"),
        ("slow", "left_running"),
    ]
    states = dict(query(db, "SELECT task_id, state FROM tasks"))
    assert states == {"done": "succeeded", "slow": "timed_out", "after": "succeeded"}


def test_retry_with_backoff_succeeds_on_attempt_2(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "flaky": {
                "run": 'echo "attempt $ABREAST_ATTEMPT feedback=[$ABREAST_FEEDBACK]"; '
                'test "$ABREAST_ATTEMPT" -ge 2 || { echo boom >&2; exit 3; }',
                "retries": 2,
                "backoff": {"initial": 0.3, "factor": 2, "max": 1},
            }
        },
    )
    t0 = time.monotonic()
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    assert time.monotonic() - t0 >= 0.3 * 0.75  # waited the backoff (jitter at most -25%)
    run_id = run_id_of(result.out)
    log2 = cli("logs", run_id, "flaky", "--state", f"sqlite://{tmp_path}/.abreast/state.db")
    assert "attempt 2 feedback=[exit 3" in log2.out
    assert "boom" in log2.out  # the failed attempt's log tail reached the retry
    rows = journal(tmp_path, "SELECT attempt, state, exit_code FROM attempts ORDER BY attempt")
    assert rows == [(1, "failed", 3), (2, "succeeded", 0)]


def test_a_command_that_cannot_start_is_not_retried(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # An agent's CLI not installed failed each of its attempts the same way, a backoff
    # apart (1s, 2s, 4s ...), before the task failed. A command that started and then
    # did not find a program (a later one, or one the task installs) is retried.
    backoff = {"initial": 0.05, "factor": 1, "max": 0.05}
    path = workflow(
        tmp_path,
        {
            "agent": {"run": "claude-not-installed -p hi", "retries": 3, "backoff": backoff},
            "later": {"run": "echo go; not-installed-either", "retries": 2, "backoff": backoff},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    assert (
        "  agent (failed): exit 127 (command not found)\n    not retried, whatever its retries: "
        "its command cannot start (`claude-not-installed` is not on the PATH it runs with)"
    ) in result.out
    rows = journal(tmp_path, "SELECT task_id, count(*) FROM attempts GROUP BY task_id ORDER BY 1")
    assert rows == [("agent", 1), ("later", 3)]


def test_a_command_not_found_is_said_so(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, {"agent": {"run": "claude-not-installed -p hi"}})
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    assert "agent (failed): exit 127 (command not found)" in result.out
    assert "claude-not-installed: not found" in result.out  # the shell's own words, from the log
    # One task: nothing could have run beside it, so no "saved nothing: ... longer".
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    report = cli("report", run_id_of(result.out), "--state", state).out
    for said in (result.out, report):
        assert re.search(r"\n  wall \S+ \(one task ran\)\n", said), said


def test_a_command_of_several_lines_stops_at_the_first_that_fails(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """As a CI step's script: `pytest` then `echo done` is a failure when the tests fail,
    not a success because the last line was; a line allowed to fail says so (`|| true`)."""
    path = workflow(
        tmp_path,
        {
            "tests": {"run": "echo collecting\nexit_3() { return 3; }\nexit_3\ntouch after.txt"},
            "lenient": {"run": "grep -q absent /dev/null || true\ntouch lenient.txt"},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1, result.out
    assert "tests (failed): exit 3" in result.out
    assert "| collecting" in result.out
    assert not (tmp_path / "after.txt").exists()
    assert (tmp_path / "lenient.txt").exists()
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {"tests": "failed", "lenient": "succeeded"}


def test_tasks_given_to_bash_have_its_words_and_a_pipeline_fails_with_any_command(
    tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "env.sh").write_text("X=from-env\n")
    path = workflow(
        tmp_path,
        {
            "words": {
                "run": 'arr=(a b); [[ ${#arr[@]} == 2 ]] && source ./env.sh && echo "$X" > x.txt'
            },
            "piped": {"run": "false | cat"},
            "sh": {"run": "false | cat; touch sh.txt", "shell": "sh"},  # a pipeline: cat's status
        },
        defaults={"shell": "bash"},
    )
    result = cli("run", str(path), "--no-monitor")
    assert (tmp_path / "x.txt").read_text() == "from-env\n", result.out
    assert (tmp_path / "sh.txt").exists()
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {"words": "succeeded", "piped": "failed", "sh": "succeeded"}


def test_a_command_of_several_lines_given_to_bash_says_the_line_it_failed_at(
    tmp_path: Path,
) -> None:
    # A line that prints nothing (`grep -q`, `test -f`) ends the command under -e: its
    # log's last line is an earlier line's, and was said alone as the failure.
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "lib.sh").write_text("echo lib\nfalse\n")
    lines = "echo building\necho compiled 42 files\ngrep -q NOPE a.txt\necho done\n"
    path = workflow(
        tmp_path,
        {
            "silent": {"run": lines},
            # A failure with -e off is the command's to handle: not the line it ended at.
            "handled": {"run": "set +e\ngrep -q NOPE a.txt\nset -e\n\n(exit 3)\n"},
            # Given to a shell of its own (it sets a trap); its trap's output ends the log.
            "trapped": {"run": "trap 'echo bye' EXIT\ntest -f nope.txt\necho two\n"},
            "retried": {
                "run": 'echo "$ABREAST_FEEDBACK" > "feedback.$ABREAST_ATTEMPT"\n'
                '[ "$ABREAST_ATTEMPT" = 2 ]\n',
                "retries": 1,
                "backoff": {"initial": 0},
            },
            # A line of a file it sources is not a line of its command: not said.
            "sourced": {"run": "echo one\necho two\n. ./lib.sh\necho four\n"},
            # A function's line, with -E (the trap inherited), is the command's.
            "function": {"run": "set -E\nf() {\n  false\n}\nf\n"},
            "one_line": {"run": "grep -q NOPE a.txt"},  # the line is the command
            "sh": {"run": lines, "shell": "sh"},  # dash: no ERR trap, so not known
        },
        defaults={"shell": "bash"},
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1, result.err
    reasons = dict(journal(tmp_path, "SELECT task_id, reason FROM tasks"))
    assert reasons["silent"] == "exit 1 at line 3 (`grep -q NOPE a.txt`)", result.out
    assert reasons["handled"] == "exit 3 at line 5 (`(exit 3)`)"
    assert reasons["trapped"] == "exit 1 at line 2 (`test -f nope.txt`)"
    assert reasons["retried"] is None  # succeeded at its second attempt
    told = (tmp_path / "feedback.2").read_text()
    assert told.startswith('exit 1 at line 2 (`[ "$ABREAST_ATTEMPT" = 2 ]`)'), told
    assert reasons["one_line"] == reasons["sh"] == reasons["sourced"] == "exit 1"
    assert reasons["function"] == "exit 1 at line 3 (`false`)"
    assert "silent (failed): exit 1 at line 3 (`grep -q NOPE a.txt`)" in result.out
    [(run_id,)] = journal(tmp_path, "SELECT id FROM runs")
    status = run_abreast("status", run_id, cwd=tmp_path)
    assert "exit 1 at line 3 (`grep -q NOPE a.txt`): compiled 42 files" in status.out


def test_an_agents_shell_is_its_tasks_unless_a_task_sets_its_own(
    tmp_path: Path,
) -> None:
    # An agent's command written for bash (`source ~/.nvm/nvm.sh && ...`): said once, on
    # the agent, over `defaults.shell`; a task of it that says `shell:` keeps its own.
    path = workflow(
        tmp_path,
        {
            "a": {"agent": "bashy", "prompt": "p"},
            "b": {"agent": "bashy", "prompt": "p", "shell": "sh"},
            "c": {"agent": "plain", "prompt": "p"},
            "d": {"run": "false | cat; touch d.txt"},  # sh: the pipeline is cat's
        },
        defaults={"shell": "sh"},
        agents={
            "bashy": {
                "run": 'false | cat; [[ -n "$ABREAST_PROMPT" ]] && touch "$ABREAST_TASK_ID.txt"',
                "shell": "bash",
            },
            "plain": {"run": 'false | cat; touch "$ABREAST_TASK_ID.txt"'},
        },
    )
    dry = run_abreast("run", str(path), "--dry-run", cwd=tmp_path)
    assert dry.code == 0, dry.err
    assert "task a uses it" not in dry.err  # given to bash, which has `[[`
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states["a"] == "failed", result.out  # bash: the pipeline fails (pipefail)
    assert not (tmp_path / "a.txt").exists()
    assert states["c"] == states["d"] == "succeeded", result.out
    assert (tmp_path / "c.txt").exists() and (tmp_path / "d.txt").exists()
    probe = subprocess.run(["/bin/sh", "-c", "[[ 1 ]]"], capture_output=True, check=False)
    if probe.returncode != 0:
        assert states["b"] == "failed"  # sh: `[[` not found (exit 127)
        assert not (tmp_path / "b.txt").exists()
        assert "task b uses it" in dry.err
    check = run_abreast("schema", cwd=tmp_path)
    assert '"shell"' in json.dumps(json.loads(check.out)["$defs"]["Agent"]), check.out[:400]


def test_bash_words_given_to_sh_are_noted_before_the_run_and_said_with_the_failure(
    tmp_path: Path,
) -> None:
    probe = subprocess.run(["/bin/sh", "-c", "[[ 1 ]]"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("/bin/sh here is bash, which has them")
    # In dash `if [[ ... ]]` is quietly false ("[[: not found", and the task succeeds
    # having done nothing); `source` fails as a command not found.
    (tmp_path / "env.sh").write_text("X=1\n")
    path = workflow(
        tmp_path,
        {
            "cond": {"run": "if [[ -e env.sh ]]; then touch seen.txt; fi"},
            "env": {"run": "echo start\nsource ./env.sh"},
            "fine": {"run": "echo '[[ source' # source", "shell": "sh"},
        },
    )
    said = "note: /bin/sh here has no `[[` (a word of bash), and task cond uses it: write `[ ... ]`"
    dry = run_abreast("run", str(path), "--dry-run", cwd=tmp_path)
    assert said in dry.err, dry.err
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1
    assert said in result.err and "instead, or give it to bash (`shell: bash` on it" in result.err
    assert "no `source` (a word of bash), and task env uses it: write `. FILE`" in result.err
    assert result.err.count("note: /bin/sh here") == 2  # nothing of `fine`'s quoted words
    assert "is not on PATH" not in result.err  # not a program to install
    failure = result.out[result.out.index("env (failed): exit 127") :]
    assert failure.splitlines()[1] == (
        "    /bin/sh here has no `source` (a word of bash): write `. FILE` instead, or give "
        "the command to bash (`shell: bash` on it, or in `defaults` for every task and check)"
    )


def test_a_run_given_to_a_shell_that_is_not_installed_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    path = workflow(tmp_path, {"a": {"run": "true"}, "b": {"run": "true", "shell": "bash"}})
    result = run_abreast("run", str(path), cwd=tmp_path, env={**os.environ, "PATH": str(empty)})
    assert result.code == 2, result.out + result.err
    assert "error: task b is given to bash (`shell: bash`), and there is no bash on PATH" in (
        result.err
    )
    assert "hint: install it, or leave out `shell:` for /bin/sh" in result.err
    assert "run: " not in result.out
    db = tmp_path / ".abreast" / "state.db"
    assert not db.exists() or journal(tmp_path, "SELECT count(*) FROM runs") == [(0,)]


def test_exhausted_retries_fail_with_one_report_and_block_dependents(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "bad": {
                "run": "echo working; echo 'it broke' >&2; exit 7",
                "retries": 1,
                "backoff": {"initial": 0.05, "max": 0.05},
            },
            "worse": {"run": "kill -9 $$"},
            "fine": {"run": "true"},
            "after": {"run": "true", "needs": ["bad"]},
            "later": {"run": "true", "needs": ["after"]},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    out = result.out
    assert "2 tasks failed:" in out
    assert "bad (failed after 2 attempts): exit 7" in out
    assert "| it broke" in out
    # ... and as it happened, its log's last line with its exit status.
    assert re.search(r"\] failed    bad in \S+: exit 7: it broke\n", out), out
    assert "worse (failed): killed by SIGKILL" in out
    # `abreast status` says it the same way, from the journal and the kept log.
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    told = cli("status", run_id_of(out), "--state", state).out
    assert re.search(r"\n  bad +failed +2 .*  exit 7: it broke\n", told), told
    assert re.search(r"\n  worse +failed +1 .*  killed by SIGKILL\n", told), told
    assert "blocked: after, later (upstream bad failed)\n" in out  # one line a reason
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {
        "bad": "failed",
        "worse": "failed",
        "fine": "succeeded",
        "after": "blocked",
        "later": "blocked",
    }


def test_many_failures_are_grouped_and_cut_short_in_the_summary_and_report(
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    # Forty agents without their API key each failed alike: the summary repeated the same
    # reason and last lines forty times (a thousand lines, the run's first cause far out
    # of sight). Alike failures are now one block naming them all; after ten blocks, the
    # rest take a line each.
    alike = {f"agent{i:02}": {"run": "echo 'error: ANTHROPIC_API_KEY is not set'; exit 2"}
             for i in range(40)}  # fmt: skip
    apart = {f"own{i:02}": {"run": "echo I am $ABREAST_TASK_ID; exit 1"} for i in range(12)}
    path = workflow(tmp_path, {**alike, **apart})
    result = cli("run", str(path), "--no-monitor", "--plain")
    assert result.code == 1
    run_id = run_id_of(result.out)
    logs = tmp_path / ".abreast" / "runs" / run_id / "logs"
    block = (
        "  agent00, agent01, agent02, agent03, agent04 and 35 more (failed): exit 2\n"
        "    last lines of each one's log:\n"
        "    | error: ANTHROPIC_API_KEY is not set\n"
        "    (the same for these 40 tasks)\n"
        f"    task logs: {logs}/agent00.1.log and 39 more beside it "
        f"(`abreast logs {run_id} TASK`)\n"
    )
    assert "52 tasks failed:\n\n" + block in result.out, result.out
    summary = result.out[result.out.index("52 tasks failed:") :]  # (each said as it failed)
    assert summary.count("ANTHROPIC_API_KEY is not set") == 1
    for i in range(9):  # ten blocks whole: the alike one and nine others
        assert f"  own{i:02} (failed): exit 1\n    last lines of the task's log:\n" in result.out
    brief = "".join(f"  own{i:02} (failed): exit 1\n" for i in range(9, 12))
    assert f"  and 3 more, a line each (`abreast logs {run_id} TASK`):\n{brief}" in result.out
    assert "I am own11" not in summary
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    report = cli("report", run_id, "--state", state).out
    assert block in report and report.count("ANTHROPIC_API_KEY is not set") == 1


def test_a_failed_task_that_printed_nothing_is_said_to_have_an_empty_log(
    tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    # `exit 1` and a path to an empty file read as if the log had been lost; `read` gets
    # end of file (stdin is empty) and fails without a word.
    path = workflow(tmp_path, {"mute": {"run": "read answer"}, "said": {"run": "echo no; false"}})
    result = cli("run", str(path), "--no-monitor", "--plain")
    assert result.code == 1
    logs = tmp_path / ".abreast" / "runs" / run_id_of(result.out) / "logs"
    assert (
        f"  mute (failed): exit 1\n    task log: {logs}/mute.1.log (empty: the command "
        "printed nothing)\n" in result.out
    ), result.out
    assert f"    | no\n    task log: {logs}/said.1.log\n" in result.out


def test_a_failed_tasks_log_cannot_restyle_or_wipe_the_summary(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # Clear the screen, set the window title, colour, ring the bell, backspace.
    noise = r"\033[2J\033[H\033]0;owned\007\033[31mred\033[0m \007bell \010back"
    path = workflow(tmp_path, {"loud": {"run": f"printf '{noise}\\n'; exit 1"}})
    result = cli("run", str(path), "--no-monitor", "--plain")
    assert result.code == 1
    assert "| red \\x07bell \\x08back" in result.out
    assert "\x1b" not in result.out and "\x07" not in result.out
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    report = cli("report", run_id_of(result.out), "--state", state)
    assert "| red \\x07bell \\x08back" in report.out and "\x1b" not in report.out
    # The log itself is kept as the task wrote it.
    log = tmp_path / ".abreast" / "runs" / run_id_of(result.out) / "logs" / "loud.1.log"
    assert log.read_bytes().startswith(b"\x1b[2J")


def test_a_progress_bar_in_a_failed_tasks_log_is_shown_as_the_terminal_left_it(
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    # Redrawn after carriage returns, each drawing took a line of the tail ("last lines of
    # its log" of a download that failed: ten times the bar, and the error hardly seen).
    # 30 KB of drawings: more than the 8 KiB the tail is read from at first.
    bar = "".join(f"\\rfetching {i / 20:.2f}%%" for i in range(2001))
    run = f"echo before; printf '{bar}\\n'; printf 'crlf line\\r\\n'; echo 'error: boom'; exit 1"
    path = workflow(tmp_path, {"get": {"run": run}})
    result = cli("run", str(path), "--no-monitor", "--plain")
    assert result.code == 1
    tail = result.out.split("last lines of the task's log:\n", 1)[1].split("    task log:")[0]
    assert tail.splitlines() == [
        "    | before",
        "    | fetching 100.00%",
        "    | crlf line",
        "    | error: boom",
    ]


def test_when_skips_and_dependents_still_run(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "critique": {"run": 'echo \'{"decision": "REJECTED"}\' > "$ABREAST_OUTPUT"'},
            "build": {
                "run": "true",
                "needs": ["critique"],
                "when": 'outputs.critique.decision == "APPROVED"',
            },
            "deep": {"run": "true", "when": "deep"},
            "docs": {"run": "true", "needs": ["build", "deep"]},
        },
        flags={"deep": False},
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {
        "critique": "succeeded",
        "build": "skipped",
        "deep": "skipped",
        "docs": "succeeded",
    }
    assert cli("run", str(path), "--no-monitor", "--flag", "deep").code == 0
    rows = journal(tmp_path, "SELECT state FROM tasks WHERE task_id = 'deep' ORDER BY rowid DESC")[
        0
    ]
    assert rows == ("succeeded",)


def test_gate_sends_the_task_back_with_feedback(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "qa": {
                "run": 'c=0.5; test -n "$ABREAST_FEEDBACK" && c=0.9; '
                'echo "{\\"confidence\\": $c}" > "$ABREAST_OUTPUT"; echo "fb=$ABREAST_FEEDBACK"',
                "gate": "output.confidence >= 0.75",
                "max_iterations": 3,
            }
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    out = cli(
        "logs", run_id_of(result.out), "qa", "--state", f"sqlite://{tmp_path}/.abreast/state.db"
    ).out
    assert (
        'fb=gate not met: output.confidence >= 0.75 is false for output {"confidence": 0.5}' in out
    )
    rows = journal(tmp_path, "SELECT attempt, state, reason FROM attempts ORDER BY attempt")
    assert [r[:2] for r in rows] == [(1, "failed"), (2, "succeeded")]  # not 2 successes
    assert rows[0][2].startswith("gate not met: output.confidence >= 0.75 is false")


def test_gate_never_met_fails_after_max_iterations(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "qa": {
                "run": 'echo \'{"confidence": 0.1}\' > "$ABREAST_OUTPUT"',
                "gate": "output.confidence >= 0.75",
                "max_iterations": 2,
            }
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    assert "gate still not met after 2 iterations" in result.out


REVIEWED = {
    "implement": {
        "run": 'echo "$ABREAST_ATTEMPT" >> work.txt; printf %s "$ABREAST_FEEDBACK" > fb.txt'
    },
    "review": {
        "needs": ["implement"],
        # approves once work.txt has 3 lines; what it asks for names how many it has
        "run": 'printf %s "$ABREAST_FEEDBACK" > rfb.txt; '
        'n=$(wc -l < work.txt); ok=false; [ "$n" -ge 3 ] && ok=true; '
        'echo "{\\"ok\\": $ok, \\"asks\\": \\"more than $n\\"}" > "$ABREAST_OUTPUT"',
        "send_back": {"to": "implement", "when": "not output.ok", "feedback": "output.asks"},
    },
    # needs implement only: it waits for the review to let implement's work be
    "docs": {"needs": ["implement"], "run": "cp work.txt docs.txt"},
}


def test_a_review_sends_the_work_back_until_it_approves(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, REVIEWED)
    result = cli("run", str(path), "--no-monitor", "--plain")
    assert result.code == 0, result.out
    assert "review sent implement's work back (round 1 of 3)" in result.out
    assert "review sent implement's work back (round 2 of 3)" in result.out
    assert (tmp_path / "work.txt").read_text() == "1\n2\n3\n"
    assert (tmp_path / "fb.txt").read_text() == (
        "review reviewed this task's work and sent it back (round 2 of 3):\nmore than 2"
    )
    assert (tmp_path / "docs.txt").read_text() == "1\n2\n3\n"  # only the approved work
    assert (tmp_path / "rfb.txt").read_text() == (  # the review is told what it asked for
        "round 3 of the review: the previous attempt sent implement's work back, asking "
        "for:\nmore than 2\nimplement has done its work again since: review it anew"
    )
    rows = journal(tmp_path, "SELECT task_id, state, attempts FROM tasks ORDER BY task_id")
    assert rows == [
        ("docs", "succeeded", 1),
        ("implement", "succeeded", 3),
        ("review", "succeeded", 3),
    ]
    sent = journal(
        tmp_path,
        "SELECT json_extract(data, '$.round'), json_extract(data, '$.feedback') FROM events "
        "WHERE type = 'task.sent_back' ORDER BY seq",
    )
    assert sent == [(1, "more than 1"), (2, "more than 2")]
    from abreast.coord.journal import Journal
    from abreast.observe.metrics import Metrics

    metrics, j = Metrics(), Journal(tmp_path / ".abreast" / "state.db")
    metrics.consume(j.events(run_id_of(result.out)))
    j.close()
    assert 'abreast_task_retries_total{kind="review"} 2.0' in metrics.exposition().decode()
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    report = cli("report", run_id_of(result.out), "--state", state).out
    assert (
        "  work sent back by its review:\n"
        "    review sent implement's work back (round 1): more than 1\n"
        "    review sent implement's work back (round 2): more than 2\n"
    ) in report


def test_a_review_still_asking_after_its_max_rounds_fails(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    tasks = json.loads(json.dumps(REVIEWED))
    tasks["review"]["send_back"]["max_rounds"] = 1
    result = cli("run", str(workflow(tmp_path, tasks)), "--no-monitor", "--plain")
    assert result.code == 1
    assert (
        "review (failed after 2 attempts): still sent implement's work back after 1 round "
        "(send_back.max_rounds: 1): more than 2" in result.out
    )
    rows = journal(tmp_path, "SELECT task_id, state FROM tasks ORDER BY task_id")
    assert rows == [("docs", "blocked"), ("implement", "succeeded"), ("review", "failed")]
    assert not (tmp_path / "docs.txt").exists()


def test_a_gate_that_cannot_be_evaluated_says_why_in_the_outputs_terms(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    gate = {"gate": "output.confidence >= 0.75", "max_iterations": 1}
    path = workflow(
        tmp_path,
        {
            "silent": {"run": "echo hi", **gate},
            "wordy": {"run": 'echo \'{"confidence": "high"}\' > "$ABREAST_OUTPUT"', **gate},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    assert (
        "silent (failed): gate not met (max_iterations: 1): output.confidence >= 0.75 could "
        "not be evaluated: output has no field 'confidence' (it has: none: the task wrote "
        "nothing, or {}, to $ABREAST_OUTPUT)" in result.out
    )
    assert (
        "wordy (failed): gate not met (max_iterations: 1): output.confidence >= 0.75 could "
        "not be evaluated: '>=' not supported between a string and a number; its output: "
        '{"confidence": "high"}' in result.out
    )


def test_an_agent_sent_back_by_its_gate_is_told_why_in_its_prompt(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # The usual agent template reads only the prompt: that is where a retry learns why.
    seen = tmp_path / "prompts"
    agent = (
        f'printf "%s\\n===\\n" "$ABREAST_PROMPT" >> {seen}; '
        'c=0.5; [ "$ABREAST_ATTEMPT" = 2 ] && c=0.9; '
        'echo "{\\"confidence\\": $c}" > "$ABREAST_OUTPUT"'
    )
    path = workflow(
        tmp_path,
        {
            "qa": {
                "agent": "llm",
                "prompt": "Review the change",
                "gate": "output.confidence >= 0.75",
            }
        },
        agents={"llm": {"run": agent}},
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    first, second = seen.read_text().split("\n===\n")[:2]
    assert first == "Review the change"
    assert second.startswith(
        "Review the change\n\n---\nThis is attempt 2. abreast sent the previous attempt back:\n"
        "gate not met: output.confidence >= 0.75 is false"
    )


def test_the_longest_prompt_with_the_longest_feedback_still_fits_the_environment(
    tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    from abreast.engine.engine import bounded_feedback, prompt_for
    from abreast.spec.model import ARG_STRING_MAX, PROMPT_MAX

    prompt = "\N{GRINNING FACE}" * (PROMPT_MAX // 4)  # 4 bytes each in UTF-8
    feedback = bounded_feedback("x" * 10_000 + "\N{GRINNING FACE}" * 100_000 + "the end")
    assert feedback.startswith("x" * 900) and feedback.endswith("the end")
    assert "characters left out" in feedback
    env_string = "ABREAST_PROMPT=" + prompt_for(prompt, 2, feedback)
    assert len(env_string.encode()) + 1 <= ARG_STRING_MAX
    assert len(("ABREAST_FEEDBACK=" + feedback).encode()) + 1 <= ARG_STRING_MAX

    # And a real agent gets it, on its first attempt and after its gate sent it back.
    seen = tmp_path / "lengths"
    agent = (
        f'echo "${{#ABREAST_PROMPT}}" >> {seen}; '
        'c=0.5; [ "$ABREAST_ATTEMPT" = 2 ] && c=0.9; '
        'echo "{\\"confidence\\": $c}" > "$ABREAST_OUTPUT"'
    )
    path = workflow(
        tmp_path,
        {"qa": {"agent": "llm", "prompt": prompt, "gate": "output.confidence >= 0.75"}},
        agents={"llm": {"run": agent}},
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    first, second = (int(n) for n in seen.read_text().split())
    assert first > 0 and second > first  # the prompt, then the prompt and the feedback


def test_a_task_that_sets_its_own_path_still_finds_abreast(tmp_path: Path) -> None:
    # `env: {PATH: ...}` replaced the run's PATH, and with it the `abreast` that tasks
    # call: "abreast: not found" for every `abreast lock` and `abreast signal`.
    path = workflow(
        tmp_path,
        {
            "a": {
                "run": 'abreast lock t -- echo locked && echo "$PATH"',
                "env": {"PATH": "/usr/bin:/bin"},
            }
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    log = next(tmp_path.glob(".abreast/runs/*/logs/a.1.log")).read_text().splitlines()
    assert log[-2:] == ["locked", f"{tmp_path / '.abreast' / 'bin'}:/usr/bin:/bin"]


def test_task_environment_and_prompt_never_in_the_command_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    prompt = f"do it; $(touch {marker}) `touch {marker}` \"quoted\" 'single'"
    path = workflow(
        tmp_path,
        {"t": {"agent": "echoer", "prompt": prompt, "env": {"EXTRA": "x y"}}},
        agents={
            "echoer": {"run": f'{PY} -c "import os,json; print(json.dumps(dict(os.environ)))"'}
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    run_id = run_id_of(result.out)
    logged = cli("logs", run_id, "t", "--state", f"sqlite://{tmp_path}/.abreast/state.db").out
    env = json.loads(logged.strip().splitlines()[-1])
    assert env["ABREAST_PROMPT"] == prompt
    assert env["ABREAST_RUN_ID"] == run_id
    assert env["ABREAST_TASK_ID"] == "t"
    assert env["ABREAST_ATTEMPT"] == "1"
    assert env["ABREAST_OUTPUT"].endswith("/outputs/t.1.json")
    assert env["ABREAST_STATE"] == f"sqlite://{tmp_path}/.abreast/state.db"
    assert env["ABREAST_FEEDBACK"] == ""
    assert env["EXTRA"] == "x y"
    assert not marker.exists()


def test_tasks_start_with_default_signal_dispositions(tmp_path: Path) -> None:
    # Python ignores SIGPIPE (and SIGXFSZ); a shell cannot undo an ignore it inherits, so a
    # task would see `producer | head` end in EPIPE errors instead of a quiet SIGPIPE. A
    # run started as a script's background job ignores SIGINT and SIGQUIT: its tasks do not.
    path = workflow(
        tmp_path, {"t": {"run": "grep SigIgn /proc/$$/status > ign; yes | head -n 1 > first"}}
    )
    run = [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain"]
    done = subprocess.run(
        ["sh", "-c", "trap '' INT QUIT; exec \"$@\"", "sh", *run],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ignored = ignored_signals((tmp_path / "ign").read_text())
    assert ignored & {"SIGPIPE", "SIGXFSZ", "SIGINT", "SIGQUIT"} == set()
    assert (tmp_path / "first").read_text() == "y\n"
    log = run_abreast("logs", run_id_of(done.stdout), "t", cwd=tmp_path)
    assert "Broken pipe" not in log.out + log.err


def test_tasks_get_no_descriptor_abreast_was_started_with(tmp_path: Path) -> None:
    # What started abreast may hold more than stdin, stdout and stderr open in it (an
    # IDE's socket, a CI runner's pipe, `3< secrets`): a task, an agent among them, got
    # them all, as subprocess's close_fds would not have let it.
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    read_end, write_end = os.pipe()
    with open(secret, "rb") as held:
        fd = held.fileno()
        path = workflow(
            tmp_path,
            {
                "t": {
                    # What the programs a task starts hold (ls: its own listing's too).
                    "run": f"ls /proc/self/fd > open; cat /proc/self/fd/{fd} > read"
                    " 2>/dev/null || true"
                }
            },
        )
        try:
            done = subprocess.run(
                [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                pass_fds=(fd, write_end),
            )
        finally:
            os.close(write_end)
            os.close(read_end)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((tmp_path / "open").read_text().split(), key=int) == ["0", "1", "2", "3"]
    assert (tmp_path / "read").read_text() == ""


def test_invalid_output_fails_the_attempt(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "t": {"run": 'echo "not json" > "$ABREAST_OUTPUT"'},
            # What Python's json.dump writes for float("nan"): no JSON, and a dependent's
            # reader of $ABREAST_INPUTS (jq, JSON.parse) would choke on it.
            "n": {"run": 'echo \'{"score": NaN, "x": -Infinity}\' > "$ABREAST_OUTPUT"'},
            # An agent's usual slips: the line that broke it is said, with the slip.
            "fence": {"run": "printf '```json\\n{}\\n```\\n' > \"$ABREAST_OUTPUT\""},
            "lines": {"run": 'printf \'{}\\n{"b": 2}\\n\' > "$ABREAST_OUTPUT"'},
            "comma": {"run": 'printf \'{\\n"a": 1,\\n}\' > "$ABREAST_OUTPUT"'},
            # A byte order mark (PowerShell, Windows editors) is read past; UTF-16 with its
            # mark is read as such; other text than UTF-8 is said as such.
            "bom": {"run": 'printf \'\\357\\273\\277{"a": 1}\' > "$ABREAST_OUTPUT"'},
            "utf16": {"run": "printf '\\377\\376{\\000}\\000' > \"$ABREAST_OUTPUT\""},
            "latin": {"run": 'printf \'{"a": "caf\\351"}\' > "$ABREAST_OUTPUT"'},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    said = "t (failed): wrote invalid JSON to $ABREAST_OUTPUT: Expecting value: line 1 column 1"
    assert said + " (char 0); its line 1 reads: not json\n" in result.out
    said = "n (failed): wrote invalid JSON to $ABREAST_OUTPUT: NaN is not a JSON value"
    assert said in result.out
    reasons = dict(journal(tmp_path, "SELECT task_id, reason FROM tasks"))
    assert reasons["fence"].endswith(
        "; its line 1 reads: ```json (a Markdown code fence: write the JSON object alone)"
    )
    assert reasons["lines"].startswith("wrote invalid JSON to $ABREAST_OUTPUT: Extra data: line 2")
    assert reasons["lines"].endswith(
        '; its line 2 reads: {"b": 2} (more after one JSON value: write one object that '
        "holds it all)"
    )
    outputs = dict(journal(tmp_path, "SELECT task_id, output FROM tasks"))
    assert json.loads(outputs["bom"]) == {"a": 1} and json.loads(outputs["utf16"]) == {}
    assert reasons["latin"] == (
        "$ABREAST_OUTPUT is not UTF-8 text (byte 0xe9 at 10): write the JSON in UTF-8"
    )
    assert reasons["comma"].endswith(
        "; its line 3 reads: } (a comma before a closing } or ]: JSON has no trailing commas)"
    )


def test_an_output_nested_too_deep_fails_the_attempt_not_the_run(tmp_path: Path) -> None:
    # 100,000 nested lists (200 kB) made the orchestrator's JSON parser raise
    # RecursionError: a traceback, and the run left interrupted.
    (tmp_path / "nest.py").write_text(
        "import os, sys\n"
        "n, inner = int(sys.argv[1]), (sys.argv[2:] or [''])[0]\n"
        "out = '{\"a\": ' + '[' * n + inner + ']' * n + '}'\n"
        "open(os.environ['ABREAST_OUTPUT'], 'w').write(out)\n"
    )
    nest = f"{sys.executable} {tmp_path}/nest.py"
    path = workflow(
        tmp_path,
        {
            "deep": {"run": f"{nest} 100000"},
            "deep65": {"run": f"{nest} 64"},
            "deep64": {"run": f"{nest} 63"},
            # a number Python will not read (over 4300 digits): ValueError, a crash too
            "long": {"run": f"{nest} 0 1{'0' * 5000}"},
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    # The object, then the lists, 65 levels and more: failed alike, named together.
    assert (
        "deep, deep65 (failed): wrote JSON nested over 64 levels deep to $ABREAST_OUTPUT"
        in result.out
    ), result.out
    db = tmp_path / ".abreast" / "state.db"
    states = dict(query(db, "SELECT task_id, state FROM tasks"))
    assert "long (failed): wrote invalid JSON to $ABREAST_OUTPUT: Exceeds the limit" in result.out
    assert states == {
        "deep": "failed",
        "deep65": "failed",
        "deep64": "succeeded",
        "long": "failed",
    }


def test_a_task_whose_log_runs_away_is_killed_before_it_fills_the_disk(tmp_path: Path) -> None:
    # `yes` writes hundreds of MB a second: a disk filled in minutes, and then the journal
    # could not be written either (and the run stopped, leaving the runaway running).
    path = workflow(
        tmp_path,
        {"loud": {"run": "yes abreast"}, "quiet": {"run": "echo fine"}},
        logs={"max_size": "1MB"},
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert "loud (failed): its log passed 1.0 MB (" in result.out
    assert "(a task that rightly prints more: raise `logs.max_size`)" in result.out
    db = tmp_path / ".abreast" / "state.db"
    assert dict(query(db, "SELECT task_id, state FROM tasks")) == {
        "loud": "failed",
        "quiet": "succeeded",
    }
    for log in (tmp_path / ".abreast" / "runs").glob("*/logs/loud.1.log"):
        assert log.stat().st_size > 1_000_000
        log.unlink()  # a few hundred MB, not kept with the test's files
    bad = workflow(tmp_path, {"a": {"run": "true"}}, logs={"max_size": "lots"})
    refused = run_abreast("validate", str(bad), cwd=tmp_path)
    assert refused.code == 2 and "'lots' is not a size" in refused.err


def test_a_fifo_or_device_put_for_an_output_or_a_log_does_not_hang_the_orchestrator(
    tmp_path: Path,
) -> None:
    # The orchestrator opened them as files: a FIFO with no writer blocked it for good, a
    # symlink to /dev/zero was read without end. A task can put either there.
    log = ".abreast/runs/$ABREAST_RUN_ID/logs/$ABREAST_TASK_ID.$ABREAST_ATTEMPT.log"
    path = workflow(
        tmp_path,
        {
            "out_fifo": {"run": "rm -f $ABREAST_OUTPUT; mkfifo $ABREAST_OUTPUT"},
            "out_zero": {"run": "rm -f $ABREAST_OUTPUT; ln -s /dev/zero $ABREAST_OUTPUT"},
            "log_fifo": {"run": f"rm -f {log}; mkfifo {log}; exit 3"},
            "log_zero": {"run": f"rm -f {log}; ln -s /dev/zero {log}; exit 3"},
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path, timeout=30)
    assert result.code == 1, result.out + result.err
    assert "out_fifo (failed): $ABREAST_OUTPUT is a FIFO or a device, not a file" in result.out
    assert "out_zero (failed): $ABREAST_OUTPUT is a symlink, not a file" in result.out
    assert "log_fifo, log_zero (failed): exit 3" in result.out  # alike: named together
    for task in ("log_fifo", "log_zero"):  # nor does `abreast logs` wait on them
        shown = run_abreast("logs", task, cwd=tmp_path, timeout=30)
        assert shown.code == 2, shown.err
        assert f"the log of {task} attempt 1 is not a file abreast reads" in shown.err


def test_a_run_inside_a_task_keeps_its_own_state_and_lock_still_reaches_the_outer_run(
    tmp_path: Path,
) -> None:
    # A task that runs another project's workflow (or that project's tests, which run
    # abreast): the ABREAST_STATE the task was given made the nested run journal into the
    # enclosing run's journal (its runs listed there, none in its own project).
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "abreast.yaml").write_text(
        json.dumps({"version": 1, "isolation": "none", "tasks": {"i": {"run": "true"}}})
    )
    nested = (
        "cd inner && abreast run abreast.yaml --plain --no-monitor > nested.out && "
        "abreast status --json > nested-status.json && cd .. && "
        "abreast lock tests -- true"
    )
    path = workflow(tmp_path, {"outer": {"run": nested}}, locks={"tests": {"ttl": "1m"}})
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    inner_run = run_id_of((inner / "nested.out").read_text())
    assert query(inner / ".abreast" / "state.db", "SELECT id FROM runs") == [(inner_run,)]
    assert json.loads((inner / "nested-status.json").read_text())["run_id"] == inner_run
    outer = query(tmp_path / ".abreast" / "state.db", "SELECT id FROM runs")
    assert outer == [(run_id_of(result.out),)]  # the nested run is not in it
    db = tmp_path / ".abreast" / "state.db"
    granted = query(db, "SELECT data FROM events WHERE type = 'lock.granted'")
    assert [json.loads(d)["lock"] for (d,) in granted] == ["tests"]  # the outer run's lock


def test_an_output_over_one_mib_fails_the_attempt_unread(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # 1 MiB exactly is an output; one byte more is not (it would be read into the
    # orchestrator, journaled and passed on: a 50 MB one cost 400 MB of memory).
    writer = tmp_path / "write_output.py"
    writer.write_text(
        "import json, os, sys\n"
        "text = json.dumps({'x': 'y' * (2**20 - 9)})\n"  # 2**20 bytes
        "open(os.environ['ABREAST_OUTPUT'], 'w').write(text + ' ' * int(sys.argv[1]))\n"
    )
    path = workflow(
        tmp_path,
        {
            "fits": {"run": f"{sys.executable} {writer} 0"},
            "over": {"run": f"{sys.executable} {writer} 1"},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1, result.out
    assert "succeeded fits" in result.out
    assert (
        "over (failed): wrote 1,048,577 bytes to $ABREAST_OUTPUT; an output may be at most "
        "1,048,576 bytes (1 MiB)" in result.out
    )


def test_a_journal_that_cannot_be_written_stops_the_run_cleanly_for_resume(
    tmp_path: Path,
) -> None:
    # A full disk, here a limit on the size of the files the orchestrator writes: the
    # run stops with the error said (no traceback), the task still running is left to
    # run and said so, and resume, with room again, takes its result.
    import resource

    t = tmp_path
    tasks: dict[str, Any] = {
        "long": {"run": f"touch {t}/started; while [ ! -e {t}/go ]; do sleep 0.05; done"}
    }
    tasks.update(
        {f"t{i}": {"run": "true", "needs": ["long"] if i == 0 else []} for i in range(400)}
    )
    path = workflow(t, tasks, max_parallel=2)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain"],
        cwd=t,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "abreast: error: cannot write the journal at" in proc.stderr
    assert "left running: long; `abreast resume" in proc.stdout
    (t / "go").touch()
    resumed = run_abreast("resume", "--no-monitor", "--plain", cwd=t)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "long: attempt 1 ended while abreast was down (exit 0); taking its result" in (
        resumed.out
    )


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A memory cgroup of our own with `limit` bytes (cgroup v1's memory hierarchy, or v2),
    removed after; skips the test where none can be made (not root, no delegation)."""
    name = f"abreast-test-{os.getpid()}-{time.monotonic_ns()}"
    made = None
    for parent, limit_file, swap_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max", "memory.swap.max"),
    ):
        try:
            (parent / name).mkdir()
        except OSError:
            continue
        try:
            (parent / name / limit_file).write_text(str(limit))
            if (parent / name / swap_file).exists():  # no swapping instead of the kill
                (parent / name / swap_file).write_text(str(limit if "memsw" in swap_file else 0))
            made = parent / name
            break
        except OSError:
            (parent / name).rmdir()
    if made is None:
        pytest.skip("no memory cgroup can be made here")
    procs = made / "cgroup.procs"
    try:
        yield made
    finally:
        with contextlib.suppress(OSError):
            wait_for(lambda: not procs.read_text().strip(), 10, "the cgroup emptied")
            made.rmdir()


def test_an_attempt_the_out_of_memory_killer_ended_says_so(tmp_path: Path) -> None:
    # It read `exit 137 (SIGKILL)`, as a kill of anyone's would: side by side, tasks run
    # a machine (or a container's limit) out of memory, and nothing said that was why.
    # Its retry beside as many others would likely meet the same end: one fewer at once.
    with memory_cgroup(50_000_000) as group:
        hog = f'echo $$ > {group}/cgroup.procs\n{PY} -c "x = bytearray(300_000_000)"\n'
        tasks = {
            "hog": {"run": hog},
            "w": {"run": "sleep 2"},
            "x1": {"run": "sleep 0.3", "needs": ["w"]},
            "x2": {"run": "sleep 0.3", "needs": ["w"]},
        }
        path = workflow(tmp_path, tasks, max_parallel=2)
        result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    said = "hog ran out of memory with 2 tasks at once: at most 1 from now on (cap 1 of 2)"
    assert f"the cap is lowered: {said}" in result.out, result.out
    assert f"  the cap was lowered; at its lowest: {said}\n" in result.out
    caps = journal(tmp_path, "SELECT data FROM events WHERE type = 'run.cap'")
    assert json.loads(caps[-1][0]) == {"cap": 1, "of": 2, "reason": said}
    rows = journal(tmp_path, "SELECT task_id, started_at, ended_at FROM attempts")
    spans = {t: (a, b) for t, a, b in rows}
    assert spans["x1"][1] <= spans["x2"][0] or spans["x2"][1] <= spans["x1"][0], spans
    [(reason,)] = journal(tmp_path, "SELECT reason FROM tasks WHERE task_id = 'hog'")
    first, advice = reason.split("\n")[:2]
    assert re.fullmatch(
        r"exit 137 \(SIGKILL\): out of memory, most likely: the kernel's out-of-memory "
        r"killer ended \d+ process(es)? on this machine while it ran( \(its processes held "
        r"up to [\d.]+ [kMG]B\))?",
        first,
    ), reason
    assert advice.startswith("tasks side by side share the memory: lower max_parallel"), reason
    # A KILL of another kind (not the kernel's, nothing ended for memory meanwhile): as before.
    path = workflow(tmp_path, {"killed": {"run": "kill -9 $$"}})
    run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    [(reason,)] = journal(tmp_path, "SELECT reason FROM tasks WHERE task_id = 'killed'")
    assert reason == "killed by SIGKILL"


def test_a_full_disk_is_said_as_such_when_the_journal_cannot_be_opened(tmp_path: Path) -> None:
    # A run on a disk with no room left: SQLite says "disk I/O error" (its WAL files
    # cannot be made), which read "… is not a usable abreast journal", with the advice to
    # move it away: the journal is fine; the disk is full. A tmpfs of 2 MB, in a mount
    # namespace of our own (as `containment: protect` uses), filled by a task.
    disk, said = disk_in_a_namespace(tmp_path)
    spec = {"version": 1, "name": "full", "isolation": "none", "tasks": {}}
    spec["tasks"] = {"fill": {"run": "head -c 4000000 /dev/zero > fill"}}
    # Two projects on it: the first's task fills it, the second starts on it full.
    script = (
        'mount -t tmpfs -o size=2m tmpfs "$1" && cd "$1" && mkdir p1 p2 && '
        'printf %s "$4" > p1/w.json && cp p1/w.json p2/ || exit 9; '
        'for n in 1 2; do (cd p$n && "$2" -m abreast run w.json --no-monitor --plain '
        '> "$3/out$n" 2> "$3/err$n"; echo $? > "$3/rc$n"); done'
    )
    argv = [str(disk), sys.executable, str(said), json.dumps(spec)]
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, "sh", *argv], timeout=120, check=False
    )
    assert done.returncode == 0
    # The first run: its task fills the disk, and the run cannot journal that it failed.
    assert (said / "rc1").read_text() == "2\n", (said / "err1").read_text()
    assert "abreast: error: cannot write the journal at" in (said / "err1").read_text()
    # The second: the disk is full from the start.
    err = (said / "err2").read_text()
    assert (said / "rc2").read_text() == "2\n", err
    assert "Traceback" not in err + (said / "err1").read_text()
    assert re.search(r"cannot open the journal at \S+: .* \(its disk is full: \d+ KB free\)", err)
    assert "hint: make room on its disk, then run the command again" in err, err
    assert "not a usable abreast journal" not in err


def test_a_full_journal_is_a_clear_error_and_leaves_no_transaction_open(tmp_path: Path) -> None:
    # SQLite's "database or disk is full" (here: a page limit on the connection) is a
    # StateError with what to do, and the journal can be written again once there is room
    # (a failed write used to leave its transaction open, or came out as a traceback).
    from abreast.coord.journal import Journal
    from abreast.errors import StateError

    with Journal(tmp_path / "state.db") as j:
        pages = j._db.execute("PRAGMA page_count").fetchone()[0]
        j._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StateError) as failed:
            j.create_run(
                "r1",
                workflow="w",
                file="w.yaml",
                file_sha256="0",
                root=str(tmp_path),
                pid=1,
                pid_start=1,
                host="h",
                options={},
                task_ids=[f"t{i}" for i in range(2000)],
                started_at=0.0,
            )
        assert "database or disk is full" in str(failed.value)
        assert "make room on its disk" in (failed.value.hint or "")
        assert not j._db.in_transaction
        j._db.execute("PRAGMA max_page_count = 1000000")
        j.stage_event("r1", "x")
        j.commit()
        assert j.last_seq("r1") == 1


def test_dry_run_prints_the_start_order_and_runs_nothing(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "a": {"run": f"touch {tmp_path}/ran", "estimate": "10m"},
            "b": {"run": "true", "needs": ["a"], "estimate": "5m"},
            "c": {"run": "true", "estimate": "1m"},
        },
    )
    result = cli("run", str(path), "--dry-run")
    assert result.code == 0
    order = [
        line.split(".", 1)[1].split()[0]
        for line in result.out.splitlines()
        if line.strip()[:1].isdigit()
    ]
    assert order == ["a", "c", "b"]
    assert "estimate:" not in result.out  # every task has one: nothing assumed
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / ".abreast" / "state.db").exists()
    path.write_text(path.read_text().replace(', "estimate": "1m"', ""))  # c: none
    assumed = cli("run", str(path), "--dry-run").out
    assert "(without an `estimate:`, counted as 1m: c)" in assumed


def test_status_json_reports_every_task(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, {"a": {"run": "true"}, "b": {"run": "exit 2", "needs": []}})
    result = cli("run", str(path), "--no-monitor")
    run_id = run_id_of(result.out)
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    data = json.loads(cli("status", run_id, "--json", "--state", state).out)
    assert set(data) >= {"run_id", "state", "started_at", "finished_at", "tasks"}
    assert data["run_id"] == run_id
    assert data["state"] == "failed"
    tasks = {t["id"]: t for t in data["tasks"]}
    assert set(tasks["a"]) >= {
        "id",
        "state",
        "attempts",
        "started_at",
        "finished_at",
        "exit_code",
        "peak_rss_bytes",
    }
    assert tasks["a"]["state"] == "succeeded"
    assert tasks["b"]["exit_code"] == 2
    assert isinstance(tasks["a"]["peak_rss_bytes"], int)
    listing = cli("status", "--state", state).out
    assert run_id in listing and "failed" in listing
    # Every run, for tools: newest first, with its task states counted.
    later = run_id_of(cli("run", str(path), "--no-monitor").out)
    runs = json.loads(cli("status", "--all", "--json", "--state", state).out)
    assert [r["run_id"] for r in runs] == [later, run_id]
    assert runs[1]["state"] == "failed"
    assert runs[1]["task_states"] == {"succeeded": 1, "failed": 1}
    bad = cli("status", run_id, "--all", "--state", state)
    assert bad.code == 2 and "--all lists every run" in bad.err


def test_status_of_a_run_of_many_tasks_counts_them_and_lists_those_worth_a_look(
    tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    # A run of 100 tasks printed 100 rows, its one failure somewhere in the middle.
    chain = {
        f"t{i:03}": {"run": "true", "needs": [f"t{i - 1:03}"] if i % 10 else []} for i in range(100)
    }
    chain["t055"]["run"] = "echo boom; exit 4"
    path = workflow(tmp_path, chain)
    run_id = run_id_of(cli("run", str(path), "--no-monitor").out)
    state = ("--state", f"sqlite://{tmp_path}/.abreast/state.db")
    lines = cli("status", run_id, *state).out.splitlines()
    assert lines[1] == "  100 tasks: 95 succeeded, 1 failed, 4 blocked"
    rows = [line.split()[:2] for line in lines[3:8]]
    assert rows == [["t055", "failed"]] + [[f"t{i:03}", "blocked"] for i in range(56, 60)]
    assert lines[2].split()[:2] == ["TASK", "STATE"] and "exit 4: boom" in lines[3]
    assert lines[8] == (
        f"  (95 succeeded, skipped or not started; `abreast status {run_id} --json` has every task)"
    )
    assert len(json.loads(cli("status", run_id, "--json", *state).out)["tasks"]) == 100
    short = workflow(tmp_path, {f"t{i}": {"run": "true"} for i in range(40)})
    few = cli("status", run_id_of(cli("run", str(short), "--no-monitor").out), *state).out
    assert len(few.splitlines()) == 42  # 40 tasks and fewer: every one, as before


def test_status_watch_into_a_pipe_shows_each_change_and_ends_with_the_run(tmp_path: Path) -> None:
    go = tmp_path / "go"
    path = workflow(
        tmp_path,
        {
            "first": {"run": f"while [ ! -e {go} ]; do sleep 0.05; done"},
            "second": {"run": "true", "needs": ["first"]},
        },
    )
    proc, run_id = start_run(path, cwd=tmp_path)
    watch = subprocess.Popen(
        [PY, "-m", "abreast", "status", run_id, "--watch"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        # A frame reaches the pipe while the run goes, not only at its end.
        wait_for(
            lambda: any(line.startswith("  first") and "running" in line for line in lines),
            what="a frame showing `first` running",
        )
        go.touch()
        assert watch.wait(timeout=30) == 0, watch.stderr.read()  # type: ignore[union-attr]
        reader.join(timeout=30)
        frames = "".join(lines)
        assert f"run {run_id} (t): succeeded" in frames
        assert frames.count(f"run {run_id} (t):") >= 2  # a frame per change, not one per second
        assert "\x1b" not in frames  # plain text for a pipe
    finally:
        go.touch()
        watch.kill()
        watch.wait()
        reader.join(timeout=30)
        watch.stdout.close()  # type: ignore[union-attr]
        watch.stderr.close()  # type: ignore[union-attr]
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_peak_rss_is_the_tasks_own_not_the_orchestrators(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # Linux starts a child's maxrss at its parent's peak: `true` spawned from a 40 MB
    # orchestrator reports 40 MB through wait4. Only the task's own figure may show.
    big = f"{sys.executable} -c 'x = bytearray(300 * 2**20); x[::4096] = b\"1\" * len(x[::4096])'"
    path = workflow(tmp_path, {"small": {"run": "true"}, "big": {"run": big}})
    # Started from a process that had used 500 MB (an IDE, a notebook): the orchestrator's
    # getrusage peak is that 500 MB, not its own, and the 300 MB task was taken for
    # "no more than the orchestrator" and shown as 0.
    heavy = (
        "b = bytearray(500 << 20); b[::4096] = b'x' * len(b[::4096]); del b\n"
        "import os, sys\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'abreast', *sys.argv[1:]])\n"
    )
    started = subprocess.run(
        [sys.executable, "-c", heavy, "run", str(path), "--no-monitor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    run_id = run_id_of(started.stdout)
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    tasks = {
        t["id"]: t
        for t in json.loads(cli("status", run_id, "--json", "--state", state).out)["tasks"]
    }
    assert tasks["big"]["peak_rss_bytes"] >= 300 * 2**20
    assert tasks["small"]["peak_rss_bytes"] < 20 * 2**20  # a shell running `true`: a few MB at most


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "nope"], "no run 'nope'"),
        (["logs", "nope", "t"], "no run 'nope'"),
        (["cancel", "nope"], "no run 'nope'"),
        (["resume", "nope"], "no run 'nope'"),
        (["logs", "RUN", "nosuch"], "has no task 'nosuch'"),
        (["logs", "RUN", "a", "--attempt", "9"], "has no attempt 9"),
        (["run", "W", "--flag", "nope"], "--flag 'nope': w.json declares no flags"),
        (["run", "W", "--run-id", "../x"], "--run-id '../x' is not allowed"),
        (["run", "W", "--run-id", ""], "--run-id '' is not allowed"),
        (["run", "W", "--run-id", "x" * 101], f"'{'x' * 40}…' is not allowed (101 characters)"),
        (["cancel", "RUN"], "is not running (it succeeded)"),
        (["cancel"], "no run is running"),
        (["resume"], "no run was interrupted"),
        (["resume", "RUN"], "already finished (succeeded)"),
        (["resume", "RUN", "--retry-failed"], "has no failed task to run again"),
        (["run", "W", "--only", "nosuch"], "has no task 'nosuch'"),
        (["report", "nope"], "started with --state or ABREAST_STATE is found with the same"),
        (["signal", "ready"], "abreast signal runs inside a task"),
        (["signal", "not a name"], "'not a name' is not a signal name"),
        (["logs", "RUN", "a", "extra"], "abreast logs takes a run and a task, not 3 names"),
        (["logs", "nosuch"], "has no task 'nosuch'"),
        (["report", "RUN", "--html", "/nonexistent/r.html"], "cannot write /nonexistent/r.html"),
        (["dashboard", "--port", "99999"], "99999 is not a port (0 to 65535"),
        (["dashboard", "--port", "-1"], "-1 is not a port"),
        (["run", "W", "--metrics-port", "70000"], "70000 is not a port"),
        (["run", "W", "--dashboard", "65536"], "65536 is not a port"),
        (  # a misspelt option: the closest of the command's own, and its own --help
            ["run", "W", "--max-paralel", "2"],
            "unrecognized arguments: --max-paralel 2; did you mean '--max-parallel'?\n"
            "  hint: see `abreast run --help`",
        ),
        (["status", "--jsn"], "did you mean '--json'?\n  hint: see `abreast status --help`"),
    ],
)
def test_bad_input_to_commands_gets_a_clear_message(
    args: list[str], message: str, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, {"a": {"run": "true"}})
    state = f"sqlite://{tmp_path}/.abreast/state.db"
    run_id = run_id_of(cli("run", str(path), "--no-monitor").out)
    argv = [run_id if a == "RUN" else str(path) if a == "W" else a for a in args]
    if argv[0] != "run" and argv[0] != "signal":
        argv += ["--state", state]
    env_before = {k: os.environ.pop(k) for k in ("ABREAST_RUN_ID",) if k in os.environ}
    try:
        result = cli(*argv)
    finally:
        os.environ.update(env_before)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err


def test_a_run_is_named_by_the_start_of_its_id_when_that_names_one(
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    path = workflow(tmp_path, {"a": {"run": "echo said-$ABREAST_RUN_ID"}})
    state = ["--state", f"sqlite://{tmp_path}/.abreast/state.db"]
    first = run_id_of(cli("run", str(path), "--no-monitor", "--run-id", "nightly-1").out)
    run_id_of(cli("run", str(path), "--no-monitor", "--run-id", "nightly-20").out)
    shown = cli("logs", "nightly-2", "a", *state)  # as git takes the start of a commit's id
    assert shown.code == 0, shown.err
    assert shown.out == "said-nightly-20\n"
    assert cli("report", first, *state).code == 0  # a whole id that starts another: itself
    assert "run nightly-1 " in cli("status", first, *state).out
    both = cli("status", "nightly", *state)
    assert both.code == 2
    assert "'nightly' is the start of several runs' ids: nightly-20, nightly-1" in both.err


def test_a_second_run_of_a_workflow_still_running_says_so(tmp_path: Path) -> None:
    # Started again from another terminal (or thought dead): both did the same work, and
    # without worktrees over the same files, with no word of it.
    wf = write_workflow(
        tmp_path,
        "twice",
        {"a": {"run": "if [ -e first ]; then true; else touch first; sleep 30; fi"}},
    )
    first, first_id = start_run(wf, cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "first").exists(), what="the first run's task")
        second = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
        assert second.code == 0, second.err
        assert (
            f"note: run {first_id} of this workflow file is running too (pid {first.pid}, started "
        ) in second.err
        assert (
            "both work in the project directory itself (isolation: none), over each other's "
            f"files; `abreast cancel {first_id}` stops it"
        ) in second.err
    finally:
        first.terminate()
        first.communicate(timeout=30)
    third = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
    assert third.code == 0 and "is running too" not in third.err  # the first one ended


SERVE_ON_ITS_PORTS = (
    "import os, socket, time\n"
    "ports = [int(p) for p in os.environ['ABREAST_PORTS'].split()]\n"
    "assert int(os.environ['ABREAST_PORT']) == ports[0]\n"
    "socks = []\n"
    "for p in ports:\n"
    "    s = socket.socket()\n"
    "    s.bind(('', p))\n"  # EADDRINUSE (the attempt fails) if a neighbour has it
    "    s.listen()\n"
    "    socks.append(s)\n"
    "print(*ports)\n"
    "time.sleep(0.4)\n"  # side by side with the others, each holding its ports
)


def test_tasks_that_ask_for_ports_get_free_ones_no_two_alike(tmp_path: Path) -> None:
    # Servers started side by side by tasks (a dev server, a test suite's own) all
    # wanted port 3000: `ports: N` gives each attempt N free ports of its own.
    (tmp_path / "serve.py").write_text(SERVE_ON_ITS_PORTS)
    serve = f"{sys.executable} serve.py"
    tasks: dict[str, Any] = {f"s{i}": {"run": serve} for i in range(4)}
    tasks["plain"] = {"run": 'echo "[${ABREAST_PORT-none}]"', "ports": 0}
    wf = write_workflow(tmp_path, "ports", tasks, max_parallel=5, defaults={"ports": 2})
    result = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    logs = next((tmp_path / ".abreast" / "runs").glob("*/logs"))
    held = [int(p) for i in range(4) for p in (logs / f"s{i}.1.log").read_text().split()]
    assert len(held) == 8 and len(set(held)) == 8
    assert (logs / "plain.1.log").read_text() == "[none]\n"


def test_an_attempt_over_its_max_memory_is_killed_saying_so(tmp_path: Path) -> None:
    # A runaway agent or test suite took the machine's memory from its neighbours (and
    # the OOM killer picks its own victim): `max_memory` ends the attempt first.
    hog = (
        f"{sys.executable} -c 'import time\nb = []\n"
        # 400 MB at most, whatever happens: a test machine's memory is not to be spent.
        "for _ in range(25): b.append(bytearray(16 << 20)); time.sleep(0.05)\n"
        "time.sleep(60)'"
    )
    wf = write_workflow(
        tmp_path,
        "mem",
        {"hog": {"run": hog}, "calm": {"run": "sleep 0.2"}},
        defaults={"max_memory": "150MB", "timeout": 60},
    )
    result = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    said = re.search(
        r"hog \(failed\): its process tree used ([\d.]+) MB of memory, over its max_memory "
        r"of 150.0 MB; it was killed",
        result.out,
    )
    assert said and float(said[1]) > 150, result.out
    assert re.search(r"(?m)^  calm +succeeded", result.out)


def test_a_task_of_an_earlier_run_is_named_when_the_latest_run_has_none(tmp_path: Path) -> None:
    # `abreast logs build` after another workflow ran since: "run X has no task 'build'",
    # with X's tasks, and no word of the run that has one.
    first = workflow(tmp_path, {"build": {"run": "echo built"}})
    assert run_abreast("run", str(first), "--plain", "--no-monitor", cwd=tmp_path).code == 0
    (earlier,) = [r for (r,) in journal(tmp_path, "SELECT id FROM runs")]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"version": 1, "name": "o", "isolation": "none",
                                 "tasks": {"lint": {"run": "true"}}}))  # fmt: skip
    assert run_abreast("run", str(other), "--plain", "--no-monitor", cwd=tmp_path).code == 0
    for command in ("logs", "diff"):
        said = run_abreast(command, "build", cwd=tmp_path)
        assert said.code == 2
        assert "has no task 'build'" in said.err
        assert f"hint: run {earlier} has a task 'build': `abreast {command} {earlier} build`;" in (
            said.err
        )


def test_no_journal_yet_is_a_clear_message(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("status", "--state", f"sqlite://{tmp_path}/none/state.db")
    assert result.code == 2
    assert "no runs yet" in result.err
    # Where nothing ran, commands that find nothing to do leave nothing behind (`cleanup`
    # made .abreast/coord.db to look for leases).
    for args in (["cleanup"], ["cleanup", "--dry-run"], ["status"], ["report"], ["land"]):
        run_abreast(*args, cwd=tmp_path)
        assert os.listdir(tmp_path) == [], args


def test_cancel_from_another_terminal(tmp_path: Path) -> None:
    path = workflow(
        tmp_path,
        {
            "long": {"run": f"echo $$ > {tmp_path}/long.pid; sleep 60"},
            "next": {"run": "true", "needs": ["long"]},
        },
    )
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "long.pid").exists(), what="the task to start")
        run_id = json.loads(
            run_abreast("status", "--json", "--state", f"sqlite://{tmp_path}/.abreast/state.db").out
        )["run_id"]
        # `abreast resume` typed meanwhile: nothing to resume, and what the run is doing.
        resumed = run_abreast("resume", cwd=tmp_path)
        said = f"no run was interrupted; the latest, {run_id}, is running (orchestrator pid "
        assert resumed.code == 2 and said + f"{proc.pid} on " in resumed.err, resumed.err
        assert f"`abreast cancel {run_id}` stops it" in resumed.err
        for command, hint in (
            ("logs", "`abreast logs -f` waits for it to start"),
            ("diff", f"`abreast status {run_id}` says what it waits for"),
        ):
            early = run_abreast(command, "next", cwd=tmp_path)
            assert f"task 'next' of run {run_id} has not started yet" in early.err, early.err
            assert f"hint: {hint}" in early.err, early.err
        # No RUN: the one run that is running.
        cancel = run_abreast("cancel", "--state", f"sqlite://{tmp_path}/.abreast/state.db")
        assert cancel.code == 0, cancel.err
        assert run_id in cancel.out
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "cancelled" in out
    task_pid = int((tmp_path / "long.pid").read_text())
    assert not pid_alive(task_pid)
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {"long": "cancelled", "next": "cancelled"}
    run_state = journal(tmp_path, "SELECT state FROM runs")[0][0]
    assert run_state == "cancelled"


def test_signal_lets_a_dependent_start_before_the_task_ends(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rec = write_recorder(tmp_path)
    path = workflow(
        tmp_path,
        {
            "auth": {
                "run": f"sleep 0.3; {PY} -m abreast signal ready; sleep 1.5; {rec} 0",
                "signals": ["ready"],
            },
            "ui": {"run": f"{rec} 0", "needs": ["auth:ready"]},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    spans = intervals(tmp_path)
    assert spans["ui"][1] < spans["auth"][0]  # ui finished before auth's last step began


@contextlib.contextmanager
def orchestrator_said_elsewhere(t: Path, run_id: str) -> Iterator[subprocess.Popen[bytes]]:
    """Make the journal say the run's orchestrator is on another machine, with the pid of
    a stranger here (a `sleep`, yielded): what a task on a Ray node, or a command typed
    on another machine sharing the journal, reads."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        with contextlib.closing(sqlite3.connect(t / ".abreast" / "state.db")) as db:
            db.execute(
                "UPDATE runs SET host = 'elsewhere', pid = ? WHERE id = ?", (stranger.pid, run_id)
            )
            db.commit()
        yield stranger
    finally:
        stranger.kill()
        stranger.wait()


def test_a_signal_from_another_machine_is_read_on_the_next_tick_and_kills_no_stranger(
    tmp_path: Path,
) -> None:
    # A task on a Ray node signals: the journal names the orchestrator's host, not the
    # node, so the pid there is not the orchestrator's. It was sent SIGUSR1 all the same
    # (a process of that pid on the node died of it) and the orchestrator, never woken,
    # left the dependent waiting.
    t = tmp_path
    path = workflow(
        t,
        {
            "a": {
                "run": f"touch {t}/started; while [ ! -e {t}/go ]; do sleep 0.05; done; "
                f"abreast signal ready; while [ ! -e {t}/b-ran ]; do sleep 0.05; done",
                "signals": ["ready"],
                "timeout": "20s",
            },
            "b": {"run": f"touch {t}/b-ran", "needs": ["a:ready"]},
        },
    )
    proc, run_id = start_run(path, cwd=t)
    wait_for(lambda: (t / "started").exists(), what="a to start")
    with orchestrator_said_elsewhere(t, run_id) as stranger:
        (t / "go").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        assert "a signalled 'ready': b may start" in out
        assert stranger.poll() is None  # not killed by a SIGUSR1 meant for the orchestrator


def test_cancel_typed_on_another_machine_is_read_on_the_next_tick_and_kills_no_stranger(
    tmp_path: Path,
) -> None:
    t = tmp_path
    path = workflow(t, {"a": {"run": f"touch {t}/started; sleep 60"}})
    proc, run_id = start_run(path, cwd=t)
    try:
        wait_for(lambda: (t / "started").exists(), what="a to start")
        with orchestrator_said_elsewhere(t, run_id) as stranger:
            cancel = run_abreast("cancel", run_id, cwd=t)
            assert cancel.code == 0, cancel.err
            assert f"(pid {stranger.pid} on elsewhere) to cancel" in cancel.out
            out, err = proc.communicate(timeout=30)
            assert stranger.poll() is None  # not sent the SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert ": cancelled in" in out, out + err


def test_a_signal_the_task_does_not_declare_is_refused(tmp_path: Path) -> None:
    # It was journaled and said "signalled": a typo left the dependents waiting for the
    # task's end, and nothing said why.
    path = workflow(
        tmp_path,
        {
            "auth": {"run": "abreast signal raedy || echo status $?", "signals": ["ready"]},
            "other": {"run": "abreast signal ready || echo status $?"},
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    logs = tmp_path / ".abreast" / "runs"
    auth = next(logs.glob("*/logs/auth.1.log")).read_text()
    assert "task 'auth' does not declare the signal 'raedy' (it declares: ready)" in auth
    assert "did you mean 'ready'?" in auth and "status 2" in auth
    other = next(logs.glob("*/logs/other.1.log")).read_text()
    assert "task 'other' does not declare the signal 'ready'\n" in other
    assert journal(tmp_path, "SELECT count(*) FROM signals") == [(0,)]


def test_a_task_that_ends_without_giving_a_signal_waited_for_is_said(tmp_path: Path) -> None:
    # Its waiters then start at its end, not beside it: the overlap the workflow was
    # written for never happened, and nothing said so.
    path = workflow(
        tmp_path,
        {
            "auth": {"run": "abreast signal raedy || true", "signals": ["ready"]},
            "ui": {"run": "true", "needs": ["auth:ready"]},
            "cli": {"run": "true", "needs": ["auth:ready"]},
            # Given as its last step, just before it ends: seen, not said.
            "api": {"run": "abreast signal ready", "signals": ["ready"]},
            "web": {"run": "true", "needs": ["api:ready"]},
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    said = (
        "warning: auth ended without giving its signal 'ready': ui, cli, waiting for it, "
        "started only then, not beside auth (run `abreast signal ready` in auth's command "
        "once what ui, cli needs is there)"
    )
    assert result.out.count(said) == 2, result.out  # as it happens, and in the summary
    assert "api ended without" not in result.out
    rows = journal(tmp_path, "SELECT task_id, data FROM events WHERE type = 'task.signal_missed'")
    assert [(task, json.loads(data)["waiting"]) for task, data in rows] == [("auth", ["ui", "cli"])]
    [(run_id,)] = journal(tmp_path, "SELECT id FROM runs")
    assert said.removeprefix("warning: ") in run_abreast("status", run_id, cwd=tmp_path).out


def test_journal_survives_16_concurrent_writers(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "state.db"
    script = (
        "import sys\n"
        "from abreast.coord.journal import Journal\n"
        f"j = Journal({str(db)!r})\n"
        "for i in range(150):\n"
        "    j.stage_event('r', 'test.write', None, writer=sys.argv[1], i=i)\n"
        "    j.commit()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(16)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, errors
    assert not any("locked" in e for e in errors)
    count = query(db, "SELECT count(*) FROM events")[0][0]
    assert count == 16 * 150


def test_outside_git_the_run_says_tasks_share_the_directory(tmp_path: Path) -> None:
    spec = {"version": 1, "name": "nogit", "tasks": {"a": {"run": "true"}}}
    (tmp_path / "w.json").write_text(json.dumps(spec))
    run = run_abreast("run", str(tmp_path / "w.json"), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.err
    assert "is not in a git repository, so tasks run in it directly" in run.err
    meant = tmp_path / "meant"
    meant.mkdir()
    (meant / "w.json").write_text(json.dumps({**spec, "isolation": "none"}))
    quiet = run_abreast("run", str(meant / "w.json"), "--no-monitor", "--plain", cwd=meant)
    assert quiet.code == 0 and "not in a git repository" not in quiet.err


def test_an_error_while_handling_an_exit_stops_the_run_with_that_error(tmp_path: Path) -> None:
    # Exits are handled in the callback that notices them (no loop iteration between):
    # an error there must still come out of Engine.run, not vanish into the event loop.
    import asyncio

    from abreast.engine.engine import EngineOptions, TaskRun, View

    class Broken(View):
        def finished(self, tr: TaskRun) -> None:
            raise RuntimeError(f"view failed on {tr.id}")

    wf = workflow(tmp_path, {"a": {"run": "true"}, "b": {"run": "sleep 30"}})
    with engine_for(wf, tmp_path / "state.db", EngineOptions(cap=2, flags={}), Broken()) as engine:
        try:
            # Raised when a ends, not when b would (wait_for would raise TimeoutError).
            with pytest.raises(RuntimeError, match="view failed on a"):
                asyncio.run(asyncio.wait_for(engine.run(), 20))
        finally:
            b = engine.by_id["b"].running
            if b is not None:
                os.killpg(b.pgid, signal.SIGKILL)
                os.waitpid(b.pid, 0)


def test_an_error_while_preparing_a_task_stops_the_run_with_that_error(tmp_path: Path) -> None:
    # A task that waits for something first (a lock, a key, its worktree) is prepared and
    # started in an asyncio task of its own. An error there (a journal that cannot be
    # written: a disk full for a moment) was never read: the run went on waiting for a
    # task marked running that had no process, and asyncio printed a traceback ("Task
    # exception was never retrieved"). It is the run's end, as an error in the loop is.
    import asyncio

    from abreast.coord.backend import open_coordinator
    from abreast.engine.engine import EngineOptions, TaskRun, View
    from abreast.engine.supervise import Supervisor

    class Broken(View):
        def started(self, tr: TaskRun) -> None:
            if tr.id == "b":  # started after its lock was granted, in its own asyncio task
                raise RuntimeError("view failed on b")

    tasks = {"a": {"run": "sleep 30"}, "b": {"run": "true", "locks": ["x"]}}
    wf = workflow(tmp_path, tasks, locks={"x": {"ttl": "1m"}})
    coord = open_coordinator(f"sqlite://{tmp_path}/coord.db")
    options = EngineOptions(cap=2, flags={})
    with engine_for(wf, tmp_path / "state.db", options, Broken()) as engine:
        engine.sup = Supervisor(engine.wf, "r1", coord, engine.journal, lambda _t: None)
        try:
            # Raised once b starts, not when a would end (wait_for: TimeoutError).
            with pytest.raises(RuntimeError, match="view failed on b"):
                asyncio.run(asyncio.wait_for(engine.run(), 20))
        finally:
            engine.sup.close()
            for tr in engine.tasks:
                if tr.running is not None and tr.running.pid:
                    os.killpg(tr.running.pgid, signal.SIGKILL)
                    os.waitpid(tr.running.pid, 0)


def test_a_sigterm_before_the_engine_listens_cancels_the_run_when_it_does(
    tmp_path: Path,
) -> None:
    # Between the journal naming this process the orchestrator and the engine installing
    # its handlers (a resume stopping strays, a start setting up worktrees), a SIGTERM
    # (`kill PID`, or `abreast cancel`) killed it and left the run interrupted. Now the
    # first is kept and acted on as a cancel once the engine starts, before any task
    # starts; a second stops the process at once, as before.
    import asyncio

    from abreast.engine.engine import EngineOptions, defer_stop_signals

    wf = workflow(tmp_path, {"a": {"run": f"touch {tmp_path}/ran"}})
    with engine_for(wf, tmp_path / "state.db", EngineOptions(cap=2, flags={})) as engine:
        try:
            defer_stop_signals()
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line
            outcome = asyncio.run(asyncio.wait_for(engine.run(), 20))
            defer_stop_signals()
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert outcome.state == "cancelled"
    assert engine.by_id["a"].state.value == "cancelled"
    assert not (tmp_path / "ran").exists()


def test_ctrl_c_stops_a_run_of_many_short_tasks(tmp_path: Path) -> None:
    # Tasks end as fast as they start (chains of 10, 8 at a time): Ctrl-C must be
    # heard at once, and stderr stay clean of "cannot write to the signal wakeup fd".
    tasks = {
        f"t{i}": {"run": "true", "needs": [f"t{i - 1}"] if i % 10 else []} for i in range(3000)
    }
    wf = write_workflow(tmp_path, "flood", tasks, max_parallel=8)
    proc, _ = start_run(wf, cwd=tmp_path)
    assert proc.stdout is not None
    done = 0
    while done < 200:
        line = proc.stdout.readline()
        assert line, "the run ended before Ctrl-C"
        done += " succeeded " in line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "wakeup fd" not in err and "Traceback" not in err, err[-2000:]
    assert proc.returncode == -signal.SIGINT  # it dies of Ctrl-C, as a shell expects
    assert ": cancelled in" in out
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert list(states.values()).count("succeeded") < 3000
    assert "cancelled" in states.values()


def test_commands_that_supervise_processes_say_they_need_linux(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, {"a": {"run": "true"}})
    monkeypatch.setattr(sys, "platform", "darwin")
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 2
    assert "abreast run runs on Linux only" in result.err and "this is darwin" in result.err
    assert not (tmp_path / ".abreast" / "state.db").exists()  # nothing was started
    assert cli("analyze", str(path)).code == 0  # planning needs no Linux


def test_logs_of_a_task_of_the_latest_run_need_no_run_id(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(tmp_path, {"a": {"run": "echo first"}})
    cli("run", str(path), "--no-monitor")
    path = workflow(tmp_path, {"a": {"run": "echo second"}})
    cli("run", str(path), "--no-monitor")
    shown = cli("logs", "a", "--state", f"sqlite://{tmp_path}/.abreast/state.db")
    assert shown.code == 0, shown.err
    assert shown.out == "second\n"


def test_a_task_reads_the_outputs_of_the_tasks_it_needs(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "research": {"run": 'echo \'{"topic": "auth", "sources": 3}\' > "$ABREAST_OUTPUT"'},
            "silent": {"run": "true"},
            "critique": {
                "needs": ["research", "silent"],
                "run": 'cat "$ABREAST_INPUTS"',
            },
            "alone": {"run": 'echo "[${ABREAST_INPUTS:-unset}]"'},
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    state = ["--state", f"sqlite://{tmp_path}/.abreast/state.db"]
    logged = cli("logs", "critique", *state).out
    assert json.loads(logged) == {"research": {"topic": "auth", "sources": 3}}
    assert cli("logs", "alone", *state).out == "[unset]\n"  # nothing upstream: not set


def test_a_prompt_holds_the_values_of_upstream_outputs_and_flags(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # An agent run as `claude -p "$ABREAST_PROMPT"` reads nothing but its prompt: the
    # research's findings reach it there, on every attempt (the retry's feedback after them).
    research = {"summary": "use JWT", "risks": ["clock skew"], "score": 0.8}
    path = workflow(
        tmp_path,
        {
            "research": {"run": f"echo '{json.dumps(research)}' > \"$ABREAST_OUTPUT\""},
            "off": {"run": "true", "when": False},  # YAML's false: the task is turned off
            "backend": {
                "needs": ["research", "off"],
                "prompt": "Implement: ${{ outputs.research.summary }} (strict: ${{ strict }})\n"
                "Risks: ${{ outputs.research.risks }}\n"
                "Audit: ${{ outputs.off.x if 'off' in outputs else 'none' }}\n"
                "Keep $${{ secrets.TOKEN }} in the CI file.",
                "run": 'printf "%s" "$ABREAST_PROMPT" > "prompt.$ABREAST_ATTEMPT"; '
                '[ "$ABREAST_ATTEMPT" = 2 ] || exit 3',
                "retries": 1,
                "backoff": {"initial": 0.01, "max": 0.01},
            },
        },
        flags={"strict": True},
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    first = (
        'Implement: use JWT (strict: true)\nRisks: [\n  "clock skew"\n]\nAudit: none\n'
        "Keep ${{ secrets.TOKEN }} in the CI file."
    )
    assert (tmp_path / "prompt.1").read_text() == first
    second = (tmp_path / "prompt.2").read_text()
    assert second.startswith(first + "\n\n---\nThis is attempt 2.")
    assert dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))["off"] == "skipped"
    assert "skipped   off: turned off (when: false)" in result.out
    # What each attempt was told, afterwards.
    state = ["--state", f"sqlite://{tmp_path}/.abreast/state.db"]
    assert cli("logs", "backend", "--prompt", *state).out == second
    assert cli("logs", "backend", "--prompt", "--attempt", "1", *state).out == first
    none = cli("logs", "research", "--prompt", *state)
    assert none.code == 2
    assert "attempt 1 of 'research' was given no prompt (its task has none)" in none.err
    wrong = cli("logs", "backend", "--prompt", "-f", *state)
    assert wrong.code == 2
    assert "--prompt is for one task's attempt, without --all or -f" in wrong.err


def test_an_env_value_holds_upstream_outputs(tmp_path: Path, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # What a command reads of an upstream task's output, without jq: `env: {TAG: ${{ }}}`,
    # never put into the command line itself (an output would run as shell).
    path = workflow(
        tmp_path,
        {
            "build": {"run": 'echo \'{"tag": "v1.2; rm -rf /", "n": 2}\' > "$ABREAST_OUTPUT"'},
            "deploy": {
                "needs": ["build"],
                "env": {
                    "TAG": "${{ outputs.build.tag }}",
                    "N": "${{ outputs.build.n + 1 }}",
                    "AT": "$HOME/${{ outputs.build.n }}",
                    "KEEP": "$${{ github.ref }}",
                    "RAW": "$RAW_TEXT",  # a `${{` in abreast's environment is text
                    "HAS": "${{ 'build' in outputs }},${{ len(outputs) }}",
                },
                "run": 'printf "%s|%s|%s|%s|%s|%s" "$TAG" "$N" "$AT" "$KEEP" "$RAW" "$HAS" '
                "> deployed",
            },
            "missing": {
                "needs": ["build"],
                "env": {"X": "${{ outputs.build.nope }}"},
                "run": "true",
            },
        },
    )
    monkeypatch.setenv("RAW_TEXT", "${{ outputs.build.tag }}")
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1, result.out
    home = os.environ["HOME"]
    assert (tmp_path / "deployed").read_text() == (
        f"v1.2; rm -rf /|3|{home}/2|${{{{ github.ref }}}}|${{{{ outputs.build.tag }}}}|true,1"
    )
    assert (
        "missing (failed): env.X: ${{ outputs.build.nope }}: outputs.build has no field 'nope' "
        "(it has: n, tag)" in result.out
    )


def test_files_abreast_writes_beside_an_output_are_never_written_through_a_link(
    tmp_path: Path, cli
) -> None:
    # The prompt and inputs of an attempt are written beside its $ABREAST_OUTPUT, where the
    # attempt before could leave a symlink (or a directory): abreast wrote through it.
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    plant = (
        'd=$(dirname "$ABREAST_OUTPUT"); '
        f'ln -s {victim} "$d/b.2.prompt.txt"; ln -s {victim} "$d/b.2.inputs.json"; '
        'mkdir -p "$d/b.3.prompt.txt/x"'
    )
    path = workflow(
        tmp_path,
        {
            "a": {"run": 'echo \'{"x": 1}\' > "$ABREAST_OUTPUT"'},
            "b": {
                "needs": ["a"],
                "prompt": "do it",
                "run": f'if [ "$ABREAST_ATTEMPT" = 1 ]; then {plant}; exit 1; fi; '
                '[ "$ABREAST_ATTEMPT" = 3 ] || exit 1; cat "$ABREAST_INPUTS"',
                "retries": 2,
                "backoff": {"initial": 0.01, "max": 0.01},
            },
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 0, result.out
    assert victim.read_text() == "mine\n"
    state = ["--state", f"sqlite://{tmp_path}/.abreast/state.db"]
    told = cli("logs", "b", "--prompt", "--attempt", "2", *state).out
    assert told.startswith("do it\n\n---\nThis is attempt 2.")
    assert cli("logs", "b", "--prompt", *state).out.startswith("do it\n\n---\nThis is attempt 3.")
    assert json.loads(cli("logs", "b", *state).out) == {"a": {"x": 1}}


def test_many_tasks_blocked_by_one_failure_are_said_in_one_line(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    # A failure early in a run of thousands printed a line for each task it blocked, and
    # the summary a line naming all of them ("t1 (upstream t0 failed), t2 (upstream ...").
    tasks: dict[str, Any] = {"t0": {"run": "exit 1"}, "other": {"run": "exit 2"}}
    tasks |= {f"t{i}": {"run": "true", "needs": ["t0"]} for i in range(1, 13)}
    tasks["o2"] = {"run": "true", "needs": ["other"]}
    result = cli("run", str(workflow(tmp_path, tasks)), "--no-monitor", "--plain")
    assert result.code == 1
    lines = result.out.splitlines()
    said = [line[10:] for line in lines if line.startswith("[") and " blocked " in line]
    assert sorted(said) == [
        "blocked   12 tasks: upstream t0 failed (t1, t2, t3, t4, t5 and 7 more)",
        "blocked   o2: upstream other failed",
    ]
    assert (
        "  blocked: t1, t2, t3, t4, t5, t6, t7, t8, t9, t10 and 2 more (upstream t0 failed)"
        in lines
    )
    assert "  blocked: o2 (upstream other failed)" in lines


def test_a_prompt_value_that_is_not_there_fails_the_task_saying_why(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = workflow(
        tmp_path,
        {
            "research": {"run": 'echo \'{"sumary": "x"}\' > "$ABREAST_OUTPUT"'},
            "security": {"run": "true", "when": "false"},
            "backend": {
                "needs": ["research"],
                "prompt": "Do ${{ outputs.research.summary }}",
                "run": "touch ran.backend",
            },
            "audit": {
                "needs": ["security"],
                "prompt": "Fix ${{ outputs.security.findings }}",
                "run": "touch ran.audit",
            },
        },
    )
    result = cli("run", str(path), "--no-monitor")
    assert result.code == 1
    assert (
        "backend (failed): prompt: ${{ outputs.research.summary }}: outputs.research has no "
        "field 'summary' (it has: sumary)" in result.out
    )
    assert (
        "audit (failed): prompt: ${{ outputs.security.findings }}: outputs has no field "
        "'security' (it has: none); security was skipped (its `when:` was false), so there is "
        "no output to read: test `'security' in outputs` first" in result.out
    )
    assert not list(tmp_path.glob("ran.*"))  # neither started


def test_checks_and_land_without_a_merge_queue_are_said_to_do_nothing(tmp_path: Path) -> None:
    path = workflow(
        tmp_path,
        {"a": {"run": "true"}},
        checks=[{"run": "false"}],
        worktrees={"copy": [".env"]},
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", "--land", cwd=tmp_path)
    assert result.code == 0, result.err
    assert (
        "note: `checks:` and `worktrees:` do nothing here: tasks run in the project directory,"
        " and there is no merge queue (isolation: none)" in result.err
    )
    assert "note: --land does nothing here: tasks work in the project directory" in result.err


def test_a_task_that_removes_abreast_dir_loses_nothing_of_the_run(tmp_path: Path) -> None:
    # isolation: none, so tasks work in the project itself: `git clean -fdx` there removes
    # .abreast/ (ignored through .git/info/exclude) while `holder` holds the lock `tests`.
    # The run's state files are put back as they were: the journal has the whole run,
    # and the lock is still held (a fresh coordination file would grant it at once).
    repo, marks = tmp_path / "repo", tmp_path / "marks"
    repo.mkdir()
    marks.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    try_lock = (
        f"if abreast lock tests --timeout 1 -- true; then touch {marks}/got;"
        f" else touch {marks}/refused; fi; touch {marks}/release"
    )
    path = workflow(
        repo,
        {
            "holder": {
                # Waits for `waiter` (30 s at most: nothing is left running if this fails).
                "run": f"abreast signal started && for i in $(seq 600); do [ -e {marks}/release ]"
                " && break; sleep 0.05; done",
                "locks": ["tests"],
                "signals": ["started"],
            },
            "cleaner": {"run": "git clean -fdxq", "needs": ["holder:started"]},
            "waiter": {"run": try_lock, "needs": ["cleaner"]},
            "last": {"run": "echo done", "needs": ["holder", "waiter"]},
        },
        locks={"tests": {"ttl": "1m"}},
    )
    for args in (["add", "-A"], ["commit", "-qm", "w"]):
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, *args], cwd=repo, check=True)
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo)
    assert result.code == 0, result.out + result.err
    assert "was removed while the run was going" in result.out
    assert (marks / "refused").exists() and not (marks / "got").exists()
    run_id = run_id_of(result.out)
    status = json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)
    assert {t["id"]: t["state"] for t in status["tasks"]} == dict.fromkeys(
        ("holder", "cleaner", "waiter", "last"), "succeeded"
    )
    restored = journal(repo, "SELECT data FROM events WHERE type = 'state.restored'")
    assert len(restored) == 1 and "state.db" in restored[0][0]
    assert run_abreast("logs", run_id, "last", cwd=repo).out == "done\n"  # logs dir made again
    assert not (repo / ".git" / "abreast" / "anchors").exists()  # the links went with the run


def test_a_closed_or_failing_standard_output_is_not_a_crash(tmp_path: Path) -> None:
    # `abreast run ... >&-` used to die on its first line, leaving an interrupted run; a
    # full disk behind `> file` gave a traceback. Now the run runs, and a failed write is
    # said on stderr with exit 1 (as `cat` does).
    path = workflow(tmp_path, {"a": {"run": "echo a"}})
    closed = subprocess.run(
        ["sh", "-c", f'exec "$0" -m abreast run {path} --no-monitor >&-', sys.executable],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert closed.returncode == 0 and closed.stderr == "", closed.stderr
    assert journal(tmp_path, "SELECT state FROM runs") == [("succeeded",)]
    with open("/dev/full", "w") as full:
        failed = subprocess.run(
            [sys.executable, "-m", "abreast", "status"],
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert failed.returncode == 1
    assert failed.stderr == (
        "abreast: error: could not write to standard output: [Errno 28] No space left on device\n"
    )


def test_cleanup_older_than_forgets_runs_that_ended_before_it_and_nothing_else(
    tmp_path: Path,
) -> None:
    db = tmp_path / ".abreast" / "state.db"
    path = workflow(tmp_path, {f"t{i}": {"run": f"echo {i}"} for i in range(50)})
    old, recent = (run_id_of(run_abreast("run", str(path), "--no-monitor").out) for _ in "ab")
    two_days_ago = time.time() - 2 * 86400
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (two_days_ago, old))
    (tmp_path / "live").mkdir()  # another workflow, journaled in the same file
    live_path = write_workflow(tmp_path / "live", "live", {"w": {"run": "sleep 60"}})
    live, live_id = start_run(live_path, "--state", f"sqlite://{db}", cwd=tmp_path)
    try:
        wait_for(lambda: bool(journal(tmp_path, "SELECT 1 FROM attempts WHERE task_id = 'w'")))
        runs_dir = tmp_path / ".abreast" / "runs"
        listed = run_abreast("cleanup", "--dry-run", "--older-than", "1d", cwd=tmp_path)
        assert listed.code == 0, listed.err
        assert f"{old} (finished (succeeded)): would\n  forget it: its journal entries and " in (
            listed.out
        )
        assert "(51 files," in listed.out  # 50 logs and the exits file
        assert recent not in listed.out and live_id not in listed.out
        assert (runs_dir / old).is_dir()

        done = run_abreast("cleanup", "--older-than", "1d", cwd=tmp_path)
        assert done.code == 0, done.err
        assert "journal: not compacted while a run runs" in done.out
        assert not (runs_dir / old).exists()
        for table in ("runs", "tasks", "attempts", "events"):
            key = "id" if table == "runs" else "run_id"
            assert journal(tmp_path, f"SELECT count(*) FROM {table} WHERE {key} = '{old}'") == [
                (0,)
            ]
        assert "no run" in run_abreast("logs", old, "t1", cwd=tmp_path).err
        # The recent run and the live one are whole.
        assert run_abreast("logs", recent, "t1", cwd=tmp_path).out == "1\n"
        assert live.poll() is None and (runs_dir / live_id / "logs").is_dir()
    finally:
        live.send_signal(signal.SIGINT)
        live.communicate(timeout=60)
    size = db.stat().st_size
    done = run_abreast("cleanup", "--older-than", "0", cwd=tmp_path)
    assert done.code == 0, done.err
    assert f"{recent} (finished (succeeded)): did" in done.out
    assert f"{live_id} (finished (cancelled)): did" in done.out
    assert "journal: " in done.out and db.stat().st_size < size  # given back to the disk
    assert journal(tmp_path, "SELECT count(*) FROM events") == [(0,)]
    assert sorted(os.listdir(runs_dir)) == []
    bad = run_abreast("cleanup", "--older-than", "soon", cwd=tmp_path)
    assert bad.code == 2 and "--older-than: 'soon' is not a duration" in bad.err


def test_ctrl_c_in_a_shell_loop_stops_the_loop_not_just_the_run(tmp_path: Path) -> None:
    # `for f in *.yaml; do abreast run "$f"; done` and Ctrl-C: the shell stops the loop
    # only if its command died of SIGINT. abreast cancelled its run and exited 1, so the
    # shell took Ctrl-C as dealt with and started the next run. Typed on a real terminal
    # (a pty): Ctrl-C goes to the foreground process group, the shell and abreast both.
    import pty

    wf = write_workflow(tmp_path, "loop", {"a": {"run": "touch started; sleep 60"}})
    script = f"for i in 1 2; do {PY} -m abreast run --plain --no-monitor {wf}; done; touch after"
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell on the pty, as a terminal runs one
        os.chdir(tmp_path)
        os.execvp("bash", ["bash", "--norc", "-c", script])
    out: list[bytes] = []

    def read() -> None:  # the terminal's side: what is written to it must be read
        with contextlib.suppress(OSError):  # EIO once the shell is gone
            while chunk := os.read(fd, 65536):
                out.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ended, status = reaper(pid)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="the first run's task")
        os.write(fd, b"\x03")  # Ctrl-C, as typed
        wait_for(ended, what="the shell to end")
    finally:
        if not status:
            os.killpg(pid, signal.SIGKILL)  # the shell's group (the pty's session)
            os.waitpid(pid, 0)
        reader.join(timeout=10)
        os.close(fd)
    text = b"".join(out).decode(errors="replace")
    assert os.WIFSIGNALED(status[-1]) and os.WTERMSIG(status[-1]) == signal.SIGINT, text
    assert not (tmp_path / "after").exists(), text  # the loop stopped
    runs = query(tmp_path / ".abreast" / "state.db", "SELECT state FROM runs")
    assert runs == [("cancelled",)], text  # one run, cancelled and journaled so
    assert "cancelling (interrupted)" in text and "a  cancelled" in text


def test_a_program_not_on_path_is_noted_before_the_run(tmp_path: Path) -> None:
    # An agent's CLI not installed here failed every task that used it, each after its
    # retries, with `exit 127 (command not found)`; now the run says so before it starts.
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "abreast-test-agent").write_text("#!/bin/sh\necho ran\n")
    (tools / "abreast-test-agent").chmod(0o755)
    wf = write_workflow(
        tmp_path,
        "path",
        {
            "a": {"prompt": "x", "agent": "ghost"},
            "b": {"prompt": "y", "agent": "ghost"},
            "c": {
                "run": "FOO=1 abreast-test-agent --go",
                "env": {"PATH": f"{tools}:/usr/bin:/bin"},
            },
            "d": {"run": "cd . && echo fine"},  # the shell's own
            "e": {"run": "abreast-test-agent"},  # not on the run's PATH
        },
        agents={"ghost": {"run": 'abreast-ghost-cli -p "$ABREAST_PROMPT"'}},
    )
    result = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert (
        "note: `abreast-ghost-cli` is not on PATH here, and tasks a, b start with it: "
        "install it, or give its directory in PATH (a task's `env:`)" in result.err
    )
    assert "`abreast-test-agent` is not on PATH here, and task e starts with it" in result.err
    assert result.err.count("is not on PATH") == 2  # c's own PATH has it; d's cd is sh's
    assert "c  succeeded" in result.out and "d  succeeded" in result.out


def test_env_values_expand_the_variables_of_abreasts_environment(tmp_path: Path) -> None:
    # `env: {PATH: "$HOME/bin:$PATH"}` reached the task as those characters: its PATH held
    # "$PATH" and no /usr/bin, and every program it ran was "not found".
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "abreast-test-tool").write_text("#!/bin/sh\necho tool ran\n")
    (tools / "abreast-test-tool").chmod(0o755)
    show = 'abreast-test-tool; printf "%s|%s|%s|%s\\n" "$A" "$B" "$C" "$(command -v cat)"'
    wf = write_workflow(
        tmp_path,
        "envsubst",
        {
            "t": {
                "run": show,
                "env": {
                    "PATH": "${TOOLS}:$PATH",
                    "A": "${UNSET_HERE:-fallback}",
                    "B": "price: 5$$ ($1)",
                    "C": "$GREETING, world",
                },
            }
        },
    )
    env = {**os.environ, "TOOLS": str(tools), "GREETING": "hello"}
    env.pop("UNSET_HERE", None)
    result = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path, env=env)
    assert result.code == 0, result.out + result.err
    log = next((tmp_path / ".abreast" / "runs").glob("*/logs/t.1.log")).read_text()
    ran, shown = log.splitlines()
    assert ran == "tool ran"
    assert shown.startswith("fallback|price: 5$ ($1)|hello, world|/")  # cat: PATH kept
    assert shown.endswith("/cat")
    del env["GREETING"]  # unset: refused before anything runs, with every such reference
    refused = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path, env=env)
    assert refused.code == 2, refused.out + refused.err
    assert "tasks.t.env.C: $GREETING is not set in abreast's environment" in refused.err
    assert "write `$$` for a `$` that is meant as it is" in refused.err
    assert len(query(tmp_path / ".abreast" / "state.db", "SELECT id FROM runs")) == 1


def on_a_closed_terminal(argv: list[str], cwd: Path, started: Path) -> int:
    """Run `argv` as the session leader of a pty (a terminal window, an ssh session), close
    the terminal once `started` exists, and return how it ended (a waitpid status)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvp(argv[0], argv)
    ended, status = reaper(pid)
    try:
        wait_for(lambda: started.exists(), what="the run's task to start")
        os.close(fd)  # the window shut, the connection dropped: SIGHUP to the session
        fd = -1
        wait_for(ended, timeout=30, what="abreast to end")
    finally:
        if not status:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if fd >= 0:
            os.close(fd)
    return status[-1]


def test_the_terminal_closing_cancels_the_run_unless_it_runs_under_nohup(tmp_path: Path) -> None:
    # abreast died of the SIGHUP, its tasks (each in a session of its own) ran on without
    # anyone to stop them, an agent spending tokens, and the run said "interrupted".
    wf = write_workflow(tmp_path, "hup", {"a": {"run": "echo $$ > started; sleep 60"}})
    argv = [PY, "-m", "abreast", "run", "--plain", "--no-monitor", str(wf)]
    status = on_a_closed_terminal(argv, tmp_path, tmp_path / "started")
    task = int((tmp_path / "started").read_text())
    if pid_alive(task):
        os.kill(task, signal.SIGKILL)
        raise AssertionError("the task outlived its run")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP
    db = tmp_path / ".abreast" / "state.db"
    assert query(db, "SELECT state FROM runs") == [("cancelled",)]
    why = "SELECT json_extract(data, '$.reason') FROM events WHERE type = 'run.cancelling'"
    assert query(db, why) == [("hangup",)]
    # Under nohup (SIGHUP ignored, as asked) the run goes on without its terminal.
    (tmp_path / "started").unlink()
    wf = write_workflow(tmp_path, "nohup", {"a": {"run": "touch started; sleep 0.5; touch ok"}})
    status = on_a_closed_terminal(["nohup", *argv[:-1], str(wf)], tmp_path, tmp_path / "started")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (tmp_path / "ok").exists()
    assert query(db, "SELECT workflow, state FROM runs ORDER BY started_at") == [
        ("hup", "cancelled"),
        ("nohup", "succeeded"),
    ]


def test_a_script_saved_with_windows_line_endings_is_named_as_such(tmp_path: Path) -> None:
    # Its #! line names `/bin/sh\r`: the shell said `./agent.sh: not found` (exit 127)
    # of a file that is plainly there.
    (tmp_path / "agent.sh").write_bytes(b"#!/bin/sh\r\necho hi\r\n")
    (tmp_path / "agent.sh").chmod(0o755)
    (tmp_path / "fine.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "fine.sh").chmod(0o755)
    wf = write_workflow(tmp_path, "crlf", {"a": {"run": "./agent.sh"}, "b": {"run": "./fine.sh"}})
    result = run_abreast("run", str(wf), "--plain", "--no-monitor", cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    said = "./agent.sh has Windows line endings (CRLF): its #! line names an interpreter"
    assert f"note: {said}" in result.err and "it is named by task a" in result.err
    assert f"  a (failed): exit 127 (command not found)\n    {said}" in result.out
    assert "fine.sh has" not in result.out + result.err


def test_fail_fast_starts_nothing_after_a_failure_and_lets_what_runs_finish(
    tmp_path: Path,
) -> None:
    # As make without -k: once a task has failed, nothing new starts (an agent run of
    # many tasks need not spend on the rest); what runs finishes. Resume keeps to it.
    go, fixed = tmp_path / "go", tmp_path / "fixed"
    path = workflow(
        tmp_path,
        {
            "slow": {"run": f"while [ ! -e {go} ]; do sleep 0.05; done; echo s > slow.txt"},
            "bad": {"run": f"test -e {fixed}"},
            "after": {"needs": ["slow"], "run": "echo a > after.txt"},
        },
    )
    proc, run_id = start_run(path, "--fail-fast", cwd=tmp_path)
    with ended_after(proc):
        wait_for(
            lambda: (
                journal(tmp_path, "SELECT state FROM tasks WHERE task_id = 'bad'") == [("failed",)]
            ),
            what="bad to fail",
        )
        assert proc.poll() is None  # slow runs on
        seen = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
        assert (seen["state"], seen["stopping"]) == ("running", "draining")
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "stopping: bad failed and the run stops at its first failure (--fail-fast)" in out
    states = dict(journal(tmp_path, "SELECT task_id, state FROM tasks"))
    assert states == {"slow": "succeeded", "bad": "failed", "after": "cancelled"}
    reason = journal(tmp_path, "SELECT reason FROM tasks WHERE task_id = 'after'")[0][0]
    assert reason.startswith("not started: bad failed and the run stops at its first failure")
    assert journal(tmp_path, "SELECT state FROM runs") == [("failed",)]
    assert not (tmp_path / "after.txt").exists() and (tmp_path / "slow.txt").exists()
    # Resumed, it still stops at the first failure (after, ready at once, started beside
    # bad and may have run); fixed, the rest runs.
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", cwd=tmp_path)
    assert again.code == 1, again.out + again.err
    assert "stopping: bad failed and the run stops at its first failure" in again.out
    fixed.touch()
    done = run_abreast("resume", run_id, "--retry-failed", "--plain", cwd=tmp_path)
    assert done.code == 0, done.out + done.err
    assert set(dict(journal(tmp_path, "SELECT task_id, state FROM tasks")).values()) == {
        "succeeded"
    }
    assert (tmp_path / "after.txt").read_text() == "a\n"


def test_fail_fast_when_a_condition_cannot_be_evaluated_starts_none_of_its_siblings(
    tmp_path: Path,
) -> None:
    # The failure came while tasks were being made ready (a `when:` over an output field
    # that is not there): the siblings made ready beside it were started anyway, from
    # `cancelled` — a traceback.
    path = workflow(
        tmp_path,
        {
            "up": {"run": "echo '{}' > \"$ABREAST_OUTPUT\""},
            "other": {"run": "echo o > o.txt", "needs": ["up"]},
            "odd": {"run": "echo d > d.txt", "needs": ["up"], "when": "outputs.up.n > 1"},
            "zlast": {"run": "echo z > z.txt", "needs": ["up"]},
        },
    )
    done = run_abreast("run", str(path), "--plain", "--no-monitor", "--fail-fast", cwd=tmp_path)
    assert done.code == 1, done.out + done.err
    assert "Traceback" not in done.err
    assert dict(journal(tmp_path, "SELECT task_id, state FROM tasks")) == {
        "up": "succeeded",
        "other": "cancelled",
        "odd": "failed",
        "zlast": "cancelled",
    }
    assert not list(tmp_path.glob("*.txt"))


def test_a_task_without_an_estimate_counts_as_its_time_in_earlier_runs(
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    # Every task without `estimate:` counted as 1m however long it had taken before: the
    # run's priorities and `analyze` went by a guess the journal could correct. Here the
    # longer task, second in the file, starts first once it has been measured.
    path = workflow(
        tmp_path,
        {
            "short": {"run": "true"},
            "long": {"run": "sleep 0.4"},
            "given": {"run": "true", "estimate": "10m"},
        },
        max_parallel=1,
    )

    def order() -> list[str]:
        out = cli("run", str(path), "--dry-run").out
        listed = [line.strip() for line in out.splitlines()]
        return [line.split()[1] for line in listed if re.match(r"\d+\. ", line)]

    def plan() -> dict[str, dict[str, Any]]:
        out = cli("analyze", str(path), "--format", "json").out
        return {t["id"]: t for t in json.loads(out)["tasks"]}

    assert order() == ["given", "short", "long"]  # nothing measured: file order after given
    assert plan()["long"]["estimate_source"] == "assumed"
    assert cli("run", str(path), "--plain", "--no-monitor").code == 0
    db = tmp_path / ".abreast" / "state.db"
    walls = dict(query(db, "SELECT task_id, wall_s FROM attempts"))
    tasks = plan()
    assert tasks["long"]["estimate_s"] == pytest.approx(walls["long"])
    assert (tasks["long"]["estimate_source"], tasks["long"]["measured_runs"]) == ("measured", 1)
    assert tasks["short"]["estimate_s"] == pytest.approx(walls["short"])
    assert tasks["given"]["estimate_source"] == "given"  # the file's estimate wins
    assert tasks["given"]["estimate_s"] == 600
    assert order() == ["given", "long", "short"]
    said = cli("run", str(path), "--dry-run").out
    assert re.search(
        r"\(without an `estimate:`, as measured in earlier runs: short \S+, long \d+ms\)", said
    ), said
    table = cli("analyze", str(path)).out
    assert re.search(r"long +\d+ms~", table), table
    assert "~ no estimate given: the median of its time in the latest runs it succeeded" in table
    # A second run: the median of the two. Its report marks the measured estimates.
    assert cli("run", str(path), "--plain", "--no-monitor").code == 0
    report = cli("report", "--state", f"sqlite://{db}").out
    assert re.search(r"\n  long +succeeded .* \d+ms~\n", report), report
    assert re.search(r"\n  given +succeeded .* 10m\n", report), report
    assert "(~: an estimate measured in earlier runs: the task gives none)" in report
    walls2 = [w for (w,) in query(db, "SELECT wall_s FROM attempts WHERE task_id = 'long'")]
    assert plan()["long"]["estimate_s"] == pytest.approx(sum(walls2) / 2)
    assert plan()["long"]["measured_runs"] == 2
    # --no-history: as the file alone says.
    out = cli("analyze", str(path), "--format", "json", "--no-history").out
    assert {t["id"]: t["estimate_source"] for t in json.loads(out)["tasks"]}["long"] == "assumed"
    # Another workflow of the same project (its own name) has no history of these.
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace('"name": "', '"name": "other-'))
    out = cli("analyze", str(other), "--format", "json").out
    assert {t["id"]: t["estimate_source"] for t in json.loads(out)["tasks"]}["long"] == "assumed"


def test_a_measured_estimate_replaces_the_blanket_one_of_defaults(
    tmp_path: Path,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    # `defaults: {estimate: 10m}` (for analyze's figures before any run) stood for every
    # task ever after, however long each took: only a task's own estimate does now.
    path = workflow(
        tmp_path,
        {"a": {"run": "sleep 0.2"}, "b": {"run": "true", "estimate": "20m"}},
        defaults={"estimate": "10m"},
    )

    def plan() -> dict[str, tuple[str, float]]:
        out = cli("analyze", str(path), "--format", "json").out
        return {t["id"]: (t["estimate_source"], t["estimate_s"]) for t in json.loads(out)["tasks"]}

    assert plan() == {"a": ("given", 600), "b": ("given", 1200)}  # nothing measured yet
    assert cli("run", str(path), "--plain", "--no-monitor").code == 0
    db = tmp_path / ".abreast" / "state.db"
    walls = dict(query(db, "SELECT task_id, wall_s FROM attempts"))
    after = plan()
    assert after["a"][0] == "measured" and after["a"][1] == pytest.approx(walls["a"])
    assert after["b"] == ("given", 1200)  # its own: it wins


def test_the_live_view_says_about_how_long_the_run_has_left(tmp_path: Path) -> None:
    # By the estimates (given, or measured in earlier runs): the longer of the longest
    # chain of unfinished tasks and their work over the cap; nothing when one is a guess.
    import io
    import types

    from rich.console import Console

    from abreast.engine.engine import EngineOptions
    from abreast.engine.states import TaskState
    from abreast.observe.live import LiveView

    wf = workflow(
        tmp_path,
        {
            "a": {"run": "true", "estimate": "10m"},
            "b": {"run": "true", "needs": ["a"], "estimate": "5m"},
            "c": {"run": "true", "estimate": "1m"},
            "d": {"run": "true", "estimate": "1m"},
            # Skipped once a is done, by a flag: it will take no time (it counted 2h).
            "e": {"run": "true", "needs": ["a"], "when": "deep", "estimate": "2h"},
        },
        flags={"deep": False},
    )
    options = EngineOptions(cap=2, flags={"deep": False})
    with engine_for(wf, tmp_path / "state.db", options) as engine:
        assert engine.time_left() == 900  # a -> b: 15m, against 17m of work over 2 slots
        engine.by_id["a"].state = TaskState.SUCCEEDED
        assert engine.time_left() == 300  # b alone
        engine.by_id["b"].state = TaskState.RUNNING
        engine.by_id["b"].running = types.SimpleNamespace(started_mono=time.monotonic() - 240)
        assert engine.time_left() == pytest.approx(90, abs=1)  # b 1m left, c, d: 3m over 2
        engine.options.cap = 1
        assert engine.time_left() == pytest.approx(180, abs=1)  # one slot: 3m of work
        out = io.StringIO()
        view = LiveView(Console(file=out, width=120, force_terminal=False))
        view.engine = engine
        view.console.print(view._render())
        assert "1/5 done" in out.getvalue() and "about 3m left" in out.getvalue()
    wf.write_text(wf.read_text().replace(', "estimate": "1m"}', "}", 1))  # c: a guess
    with engine_for(wf, tmp_path / "state2.db", options) as engine:
        assert engine.time_left() is None
        out = io.StringIO()
        view = LiveView(Console(file=out, width=120, force_terminal=False))
        view.engine = engine
        view.console.print(view._render())
        assert "left" not in out.getvalue()


def test_the_live_view_says_a_task_waits_in_abreast_lock(tmp_path: Path) -> None:
    # It showed "attempt 1" and a time going up while the task sat in `abreast lock`.
    import io
    import types

    from rich.console import Console

    from abreast.engine.engine import EngineOptions
    from abreast.engine.states import TaskState
    from abreast.observe.live import LiveView
    from abreast.observe.plain import PlainView

    inside = "abreast lock tests -- pytest"
    wf = workflow(tmp_path, {"unit": {"run": inside}, "e2e": {"run": inside}})
    said = io.StringIO()
    options = EngineOptions(cap=2, flags={})
    with engine_for(wf, tmp_path / "state.db", options, view=PlainView(said)) as engine:
        for tid in ("unit", "e2e"):
            engine.by_id[tid].state = TaskState.RUNNING
            engine.by_id[tid].attempts = 1
            engine.by_id[tid].running = types.SimpleNamespace(started_mono=time.monotonic())
        # As `abreast lock` in e2e's attempt journals it, from its own process.
        held = "run r1, task unit, pid 1 on h, token 1"
        wait = {"lock": "tests", "source": "abreast lock", "attempt": 1, "since": 1.5}
        engine.journal.stage_event("r1", "lock.waiting", "e2e", held_by=held, **wait)
        engine.journal.commit()
        engine._read_lock_waits()
        engine._read_lock_waits()  # said once, however often it is read
        assert said.getvalue().splitlines() == [
            f"[00:00.0] e2e: waits for the lock tests, held by {held}"
        ]  # in plain lines too: a CI's log
        out = io.StringIO()
        view = LiveView(Console(file=out, width=120, force_terminal=False))
        view.engine = engine
        view.console.print(view._render())
        rows = {line.split()[0]: line for line in out.getvalue().splitlines()[1:]}
        assert "attempt 1, waits for lock tests" in rows["e2e"]
        assert "waits" not in rows["unit"]
        engine.journal.stage_event("r1", "lock.granted", "e2e", token=2, wait_s=3.0, **wait)
        engine.journal.commit()
        engine._read_lock_waits()
        assert engine.lock_waits_now == {}  # granted: it works now


def test_the_live_view_says_a_failure_as_task_then_why() -> None:
    # "failed: red check `pytest` failed ..." read as a "red check"; the task was `red`.
    import io
    import types

    from rich.console import Console

    from abreast.engine.states import TaskState
    from abreast.observe.live import LiveView

    out = io.StringIO()
    view = LiveView(Console(file=out, width=200, force_terminal=False))
    red = types.SimpleNamespace(
        id="red", state=TaskState.FAILED, reason="check `pytest` failed (exit 1)", last_words=""
    )
    view.finished(red)  # type: ignore[arg-type]
    bad = types.SimpleNamespace(
        id="bad", state=TaskState.FAILED, reason="exit 7", last_words="oops"
    )
    view.finished(bad)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "failed red: check `pytest` failed (exit 1)",
        "failed bad: exit 7: oops",
    ]


def test_the_live_view_keeps_every_note_on_the_screen() -> None:
    # Notes were kept in the live area, the last four of them: a fifth (a cap lowered, a
    # lock waited for) took the first (a timeout, a warning) off the screen for good.
    import io

    from rich.console import Console

    from abreast.observe.live import LiveView

    out = io.StringIO()
    view = LiveView(Console(file=out, width=200, force_terminal=False))
    said = [f"note {i}" for i in range(6)]
    for text in said:
        view.note(text)
    assert out.getvalue().splitlines() == said


def test_the_live_view_cuts_long_ids_in_the_middle_to_keep_them_apart(tmp_path: Path) -> None:
    # In 40 columns, six ids alike but for their end were all shown as `a-very-long…`.
    import io
    import types

    from rich.console import Console

    from abreast.engine.engine import EngineOptions
    from abreast.engine.states import TaskState
    from abreast.observe.live import LiveView

    ids = [f"a-very-long-task-name-for-the-terminal-view-number-{i}" for i in range(6)]
    wf = workflow(tmp_path, {tid: {"run": "true"} for tid in ids})
    with engine_for(wf, tmp_path / "state.db", EngineOptions(cap=4, flags={})) as engine:
        for tid in ids[:4]:
            engine.by_id[tid].state = TaskState.RUNNING
            engine.by_id[tid].attempts = 1
            engine.by_id[tid].running = types.SimpleNamespace(started_mono=time.monotonic())
        out = io.StringIO()
        view = LiveView(Console(file=out, width=40, force_terminal=False))
        view.engine = engine
        view.console.print(view._render())
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 40 for line in lines), lines
    for i in range(4):
        assert any(re.match(rf"a-very-long-\S*\u2026\S*r-{i}\s+attempt 1\s", x) for x in lines), (
            lines
        )


def test_the_live_view_says_how_many_more_run_and_wait_to_retry_than_it_lists(
    tmp_path: Path,
) -> None:
    # Twenty running tasks were listed and the other 480 not mentioned; every task waiting
    # to retry was listed, however many.
    import io
    import types

    from rich.console import Console

    from abreast.engine.engine import EngineOptions
    from abreast.engine.states import TaskState
    from abreast.observe.live import LiveView

    wf = workflow(tmp_path, {f"t{i:03}": {"run": "true"} for i in range(60)})
    with engine_for(wf, tmp_path / "state.db", EngineOptions(cap=50, flags={})) as engine:
        for i in range(50):
            tr = engine.by_id[f"t{i:03}"]
            tr.state, tr.attempts = TaskState.RUNNING, 1
            tr.running = types.SimpleNamespace(started_mono=time.monotonic())
        for i in range(50, 60):
            engine.by_id[f"t{i:03}"].retry_at = time.time() + 30
        out = io.StringIO()
        view = LiveView(Console(file=out, width=80, force_terminal=False))
        view.engine = engine
        view.console.print(view._render())
    text = out.getvalue()
    assert len(re.findall(r"attempt 1", text)) == 20 and "and 30 more running" in text, text
    assert len(re.findall(r"t\d{3}  retry ", text)) == 8 and "and 2 more to retry" in text, text


@contextlib.contextmanager
def _touched_at_exit(gate: Path) -> Iterator[None]:
    """The gate a task waits on is opened whatever happens, so that a failed test leaves
    no task shell waiting for it."""
    try:
        yield
    finally:
        gate.touch()


def test_status_of_a_task_waiting_to_retry_says_when_and_why(tmp_path: Path) -> None:
    # It said `pending` and nothing more, as for a task that has not run yet.
    path = workflow(
        tmp_path,
        {
            "flaky": {
                "run": "echo 'connection refused'; exit 1",
                "retries": 1,
                "backoff": {"initial": 300, "max": 600},
                "estimate": "1s",
            }
        },
    )
    proc, run_id = start_run(path, cwd=tmp_path)
    with ended_after(proc):
        wait_for(
            lambda: "retry in " in run_abreast("status", run_id, cwd=tmp_path).out,
            what="flaky to wait for its retry",
        )
        row = run_abreast("status", run_id, cwd=tmp_path).out.splitlines()[-1]
        assert re.fullmatch(
            r"  flaky +pending +1 +\S+ +\S+  retry in \d+m(\d+s)?: exit 1: "
            r"connection refused",
            row,
        ), row
        # Its time left counts the wait (it said "<1s left", a retry 5 minutes away).
        said = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
        assert 200 < said["time_left_s"] <= 601, said
        assert run_abreast("cancel", run_id, cwd=tmp_path).code == 0
        proc.communicate(timeout=30)


def test_status_of_a_running_run_says_about_how_long_it_has_left(tmp_path: Path) -> None:
    # What the live view says, for whoever looks from another terminal.
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    path = workflow(
        tmp_path,
        {
            "a": {"run": wait, "estimate": "10m"},
            "b": {"run": "true", "needs": ["a"], "estimate": "5m"},
            "c": {"run": "true", "needs": ["a"]},  # no estimate: counted once measured
            "extra": {"run": "true", "needs": ["a"], "when": "extra", "estimate": "2h"},
        },
        max_parallel=2,
        flags={"extra": False},  # so `extra` takes no time
    )
    for runs in range(2):
        proc, run_id = start_run(path, cwd=tmp_path)
        with ended_after(proc), _touched_at_exit(go):
            wait_for(
                lambda r=run_id: bool(
                    re.search(r"\n  a +running", run_abreast("status", r, cwd=tmp_path).out)
                ),
                what="a to run",
            )
            out = run_abreast("status", run_id, cwd=tmp_path).out
            if runs == 0:  # c's estimate is a guess: nothing said
                assert " left" not in out, out
            else:  # c measured in the first run: a's 10m (less what it ran) and b's 5m
                assert "  about 15m left, by the estimates\n" in out, out
                said = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
                assert 14 * 60 < said["time_left_s"] <= 15 * 60
            go.touch()
            proc.communicate(timeout=30)
            assert proc.returncode == 0
        go.unlink()
        assert " left" not in run_abreast("status", run_id, cwd=tmp_path).out  # ended


def test_a_cancel_sends_a_task_one_term_not_one_more_when_its_shell_dies_first(
    tmp_path: Path,
) -> None:
    # A cancel TERMed the task's group; its shell died at once, the engine saw the group
    # outlive it and TERMed it again within milliseconds. `abreast lock` takes a second
    # signal as a second Ctrl-C and KILLs its command: a Ctrl-C on a run KILLed the tests
    # a task ran under the test lock, with no time to end cleanly (and a test of that
    # failed about one run in twenty). And a second Ctrl-C while the run waited out the
    # grace ended abreast ("abreast: interrupted") and left that process running on.
    counts, ready = tmp_path / "terms", tmp_path / "ready"
    counter = tmp_path / "counter.py"
    counter.write_text(
        "import signal, sys, time\n"
        "n = 0\n"
        "def term(*_):\n"
        "    global n\n"
        "    n += 1\n"
        "    open(sys.argv[1], 'w').write(str(n))\n"
        "signal.signal(signal.SIGTERM, term)\n"
        # A real-time signal is delivered after any standard one pending: when it is
        # handled, every TERM sent before it has been counted.
        "signal.signal(signal.SIGRTMIN, lambda *_: open(sys.argv[1] + '.rt', 'w').write(str(n)))\n"
        "import os\n"
        "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    path = workflow(tmp_path, {"a": {"run": f"{PY} {counter} {counts} {ready}; echo after"}})
    proc, _ = start_run(path, cwd=tmp_path)
    counter_pid = 0
    try:
        with ended_after(proc):
            wait_for(lambda: ready.exists() and ready.read_text() != "", what="the counter")
            counter_pid = int(ready.read_text())
            proc.send_signal(signal.SIGINT)
            wait_for(
                lambda: journal(tmp_path, "SELECT state FROM tasks")[0][0] == "cancelled",
                what="the task's shell to end",
            )
            os.kill(counter_pid, signal.SIGRTMIN)
            rt = Path(f"{counts}.rt")
            wait_for(rt.exists, what="the counter to say how many TERMs it got")
            assert rt.read_text() == "1"
            proc.send_signal(signal.SIGINT)  # the second: no more grace
            proc.communicate(timeout=30)
        wait_for(lambda: not pid_alive(counter_pid), what="the counter to be gone")
    finally:
        if counter_pid and pid_alive(counter_pid):
            os.kill(counter_pid, signal.SIGKILL)
