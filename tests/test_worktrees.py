"""Worktrees and the merge queue, on real git repositories in temporary directories."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_abreast
from tests.helpers import (
    PY,
    disk_in_a_namespace,
    ended_after,
    pid_alive,
    query,
    start_run,
    touched_after,
    wait_for,
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    (root / "src").mkdir()
    (root / "src" / "shared.txt").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    (root / "README.md").write_text("# project\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def workflow(repo: Path, tasks: dict[str, Any], **top: Any) -> Path:
    path = repo / "abreast.yaml"
    path.write_text(json.dumps({"version": 1, "name": "wt", **top, "tasks": tasks}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "workflow")
    return path


def run(repo: Path, path: Path, *args: str) -> tuple[int, str, str]:
    result = run_abreast("run", str(path), "--no-monitor", "--plain", *args, cwd=repo)
    run_id = result.out.splitlines()[0][5:] if result.out.startswith("run: ") else ""
    return result.code, result.out + result.err, run_id


def killed_once(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """SIGKILL the orchestrator `proc` once `ready` holds, and reap it (killed anyway if
    waiting failed)."""
    try:
        wait_for(ready, what=what)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def integration(run_id: str) -> str:
    return f"abreast/{run_id}/_integration"


def show(repo: Path, rev: str, path: str) -> str:
    return git(repo, "show", f"{rev}:{path}")


def user_state(repo: Path) -> tuple[str, str, str]:
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        (repo / ".git" / "index").read_bytes().hex()[:0] + git(repo, "ls-files", "-s"),
    )


def test_three_parallel_tasks_land_and_the_user_checkout_is_untouched(repo: Path) -> None:
    path = workflow(
        repo,
        {
            "a": {"run": "mkdir -p a && echo A > a/file.txt", "owns": ["a/**"]},
            "b": {"run": "mkdir -p b && echo B > b/file.txt", "owns": ["b/**"]},
            "c": {"run": "echo C > c.txt", "owns": ["c.txt"]},
        },
    )
    before = user_state(repo)
    code, out, run_id = run(repo, path)
    assert code == 0, out
    ref = integration(run_id)
    assert show(repo, ref, "a/file.txt") == "A\n"
    assert show(repo, ref, "b/file.txt") == "B\n"
    assert show(repo, ref, "c.txt") == "C\n"
    assert user_state(repo) == before
    assert not (repo / "a").exists()
    assert f"result: branch {ref}" in out
    assert "3 tasks landed" in out
    # The landed tasks' branches are gone; the pool's worktrees were removed.
    assert git(repo, "branch", "--list", f"abreast/{run_id}/*").split() == [ref]
    assert git(repo, "worktree", "list").count("\n") == 1
    assert not (repo / ".git" / "abreast" / "worktrees" / run_id).exists()
    # The wall time the run prints is the journal's (what report and status say): removing
    # the worktrees at the end is part of the run.
    db = repo / ".abreast" / "state.db"
    [(started, finished, summary)] = query(db, "SELECT started_at, finished_at, summary FROM runs")
    assert json.loads(summary)["wall_s"] == pytest.approx(finished - started, abs=0.0011)
    # What each task's work changed, in the summary and the report.
    assert re.search(r"\n  a  succeeded .* 1 attempt +1 file \+1 -0\n", out), out
    rep = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    assert {t["id"]: t["changes"] for t in rep["tasks"]}["c"] == {
        "files": 1,
        "added": 1,
        "deleted": 0,
    }
    assert "CHANGED" in run_abreast("report", run_id, cwd=repo).out
    # The page's closing lines are lines (they ran into one paragraph).
    page = repo.parent / "r.html"
    assert run_abreast("report", run_id, "--html", str(page), cwd=repo).code == 0
    assert re.search(r"<p>result: branch [^<]*</p><p>bring it in: git merge", page.read_text())
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    server = DashboardServer(locate(path, None))
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
            snap = json.loads(r.read())
    finally:
        server.stop()
    assert {t["id"]: t["changes"]["files"] for t in snap["tasks"]} == {"a": 1, "b": 1, "c": 1}


def test_the_dashboard_shows_the_merge_queue_as_it_stands(repo: Path, tmp_path: Path) -> None:
    # The panel was a log of steps: which merge was being checked now, and which waited
    # behind it, one had to work out from "queued" lines.
    go = tmp_path / "go"
    path = workflow(
        repo,
        {"a": {"run": "echo a > a.txt"}, "b": {"run": "echo b > b.txt"}},
        checks=[{"run": f"while [ ! -e {go} ]; do sleep 0.05; done"}],
    )
    proc, run_id = start_run(path, cwd=repo)
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    server = DashboardServer(locate(path, None))
    server.start()
    try:

        def queue() -> list[tuple[str, str]]:
            with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
                return [(q["task"], q["phase"]) for q in json.loads(r.read())["queue_now"]]

        # Both on the queue, the one being checked first (what moves first).
        wait_for(
            lambda: [phase for _, phase in queue()] == ["checking", "queued"],
            what="one merge checked, one queued behind it",
        )
        (checked, _), (queued, _) = queue()
        notes = {  # `status` says the same
            line.split()[0]: line.split(None, 5)[-1]
            for line in run_abreast("status", run_id, cwd=repo).out.splitlines()[2:]
            if "integrating" in line
        }
        assert notes[queued] == "queued" and notes[checked].startswith("checking ("), notes
        go.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        assert queue() == []  # all landed
        with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
            steps = [m["type"] for m in json.loads(r.read())["merges"]]
        assert steps.count("merge.checking") == 2, steps
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        server.stop()


def test_different_hunks_of_one_file_merge_cleanly(repo: Path) -> None:
    path = workflow(
        repo,
        {
            "top": {"run": "sed -i 's/^line 2$/line 2 (top)/' src/shared.txt"},
            "bottom": {"run": "sed -i 's/^line 19$/line 19 (bottom)/' src/shared.txt"},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    merged = show(repo, integration(run_id), "src/shared.txt")
    assert "line 2 (top)\n" in merged
    assert "line 19 (bottom)\n" in merged


def test_a_conflict_where_both_only_added_lines_says_git_can_keep_both(repo: Path) -> None:
    # Agents each append to one list (exports in __init__.py, routes, a changelog): every
    # merge after the first conflicted, and each agent was sent back in turn (4 tasks:
    # 4 + 3 + 2 + 1 attempts), nothing saying that git's `merge=union` keeps both sides.
    append = 'echo "export $ABREAST_TASK_ID" >> src/shared.txt'
    path = workflow(
        repo,
        {
            "first": {"run": append},
            "second": {"run": f"sleep 0.5; {append}", "retries": 1, "backoff": {"initial": 0.1}},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    said = (
        "both sides only added lines to src/shared.txt, where git cannot tell which go "
        "first; if both belong (a list: exports, routes, a changelog), a line "
        "`src/shared.txt merge=union` in .gitattributes, committed, has git keep both"
    )
    assert said in out, out
    assert out.count("merge=union") == 2, out  # once a run, and at its end
    # Whose work it conflicts with, by task (was: "2 commits landed there ...").
    assert "in: src/shared.txt (first landed there since this attempt started)" in out, out
    db = repo / ".abreast" / "state.db"
    ((feedback,),) = query(
        db, "SELECT feedback FROM attempts WHERE task_id = 'second' AND attempt = 2"
    )
    assert "merge=union" not in feedback, feedback  # the user's to decide, not the agent's
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    assert any(said in w for w in report["warnings"]), report["warnings"]
    # With it, both land at once.
    (repo / ".gitattributes").write_text("src/shared.txt merge=union\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "union")
    code, out, run_id = run(repo, path)
    assert code == 0 and "retry" not in out, out
    assert show(repo, integration(run_id), "src/shared.txt").endswith(
        ("export first\nexport second\n", "export second\nexport first\n")
    )


def test_conflict_is_sent_back_and_resolved_on_attempt_2(repo: Path) -> None:
    # "first" lands first (it is quick); "second" edits the same line, so its merge
    # conflicts; its second attempt starts from the integration head and reads why.
    git(repo, "config", "color.ui", "always")  # the user's: not in what the agent reads
    script = repo / "second.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "feedback: $ABREAST_FEEDBACK"\n'
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then sleep 1; '
        "sed -i 's/^line 10$/line 10 (second)/' src/shared.txt; else "
        "sed -i 's/^line 10 (first)$/line 10 (first, then second)/' src/shared.txt; fi\n"
    )
    script.chmod(0o755)
    path = workflow(
        repo,
        {
            "first": {"run": "sed -i 's/^line 10$/line 10 (first)/' src/shared.txt"},
            "second": {"run": "./second.sh", "retries": 1, "backoff": {"initial": 0.1}},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "retry   second" in out and "merge conflict" in out
    merged = show(repo, integration(run_id), "src/shared.txt")
    assert "line 10 (first, then second)\n" in merged
    log = run_abreast("logs", run_id, "second", cwd=repo).out
    assert "feedback: merge conflict with the integration branch in: src/shared.txt" in log
    assert "abreast: land first" in log  # the other side's commits are named
    assert "\x1b" not in log
    assert "merge=union" not in out  # a line both changed: no list to keep both of
    # The first attempt's process succeeded, but its work was not taken: the timeline says so.
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    second = [(x["attempt"], x["state"], x["reason"]) for x in report["timeline"]]
    second = [x for x, t in zip(second, report["timeline"], strict=True) if t["task"] == "second"]
    assert second[0][:2] == (1, "failed")
    assert second[0][2].startswith("merge conflict with the integration branch in: src/shared.txt")
    assert "landed there since this attempt started" in second[0][2]
    assert second[1][:2] == (2, "succeeded")


@pytest.mark.parametrize("carry", [True, False])
def test_carry_work_starts_each_attempt_with_the_last_ones_work(
    repo: Path, tmp_path: Path, carry: bool
) -> None:
    """`carry_work`: an attempt sent back by a red check, then one that failed, each hand
    their files to the next, uncommitted, which builds on them and lands all of it, and
    is told so. Without it, each attempt starts afresh from the integration head."""
    seen = tmp_path / "seen.txt"
    script = repo / "agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$ABREAST_ATTEMPT: $(git status --porcelain src | tr "\\n" " ")" >> {seen}\n'
        f'echo "$ABREAST_ATTEMPT: $ABREAST_FEEDBACK" | tail -n 1 >> {seen}\n'
        'case "$ABREAST_ATTEMPT" in\n'
        "1) printf 'feature\\nBUG\\n' > src/feature.txt ;;\n"  # red: the check finds BUG
        "2) echo more >> src/feature.txt; exit 1 ;;\n"
        "*) sed -i /BUG/d src/feature.txt ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    task = {"run": "./agent.sh", "retries": 2, "backoff": {"initial": 0.05}, "carry_work": carry}
    path = workflow(repo, {"t": task}, checks=[{"run": "! grep -q BUG src/feature.txt"}])
    code, out, run_id = run(repo, path)
    lines = seen.read_text().splitlines()
    if not carry:  # each attempt starts afresh: the last finds no feature.txt to fix
        assert lines[2::2] == ["2: ", "3: "], lines
        assert code == 1 and "sed: can't read src/feature.txt" in out, out
        return
    assert code == 0, out
    assert lines[2::2] == ["2: ?? src/feature.txt ", "3: ?? src/feature.txt "], lines
    told = "starts with the work of attempt {}, uncommitted in its worktree (1 file changed"
    assert told.format(1) in lines[3] and told.format(2) in lines[5]
    assert show(repo, integration(run_id), "src/feature.txt") == "feature\nmore\n"
    carried = query(
        repo / ".abreast" / "state.db",
        "SELECT json_extract(data, '$.from_attempt'), json_extract(data, '$.carried') "
        "FROM events WHERE type = 'work.carried' ORDER BY seq",
    )
    assert carried == [(1, 1), (2, 1)]
    assert git(repo, "for-each-ref", f"refs/abreast/{run_id}/") == ""  # gone once it landed


def test_resume_retry_failed_carries_on_from_the_failed_attempts_work(repo: Path) -> None:
    """The run failed (no retries left): its last attempt's files are kept under a ref of
    the run's, and `resume --retry-failed` starts from them."""
    run_ = "echo $ABREAST_ATTEMPT >> src/progress.txt; test $(wc -l < src/progress.txt) -ge 2"
    path = workflow(repo, {"t": {"run": run_, "carry_work": True}})
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert git(repo, "for-each-ref", "--format=%(refname)", f"refs/abreast/{run_id}/") == (
        f"refs/abreast/{run_id}/carried/t/1\n"
    )
    result = run_abreast("resume", run_id, "--retry-failed", "--plain", cwd=repo)
    assert result.code == 0, result.out + result.err
    assert show(repo, integration(run_id), "src/progress.txt") == "1\n2\n"


def test_a_review_loop_with_worktrees_builds_on_the_landed_work(repo: Path, tmp_path: Path) -> None:
    """The work a review sends back had landed: the next attempt starts from the
    integration head holding it and adds to it. The reviewer reads the work with
    `abreast diff` in its worktree, which has no journal: its own run's is read."""
    seen = tmp_path / "seen.txt"
    review = (
        f'abreast diff "$ABREAST_RUN_ID" implement >> {seen}; '
        'n=$(grep -c . src/feature.txt); ok=false; [ "$n" -ge 2 ] && ok=true; '
        'echo "{\\"ok\\": $ok}" > "$ABREAST_OUTPUT"'
    )
    tasks = {
        "implement": {"run": 'echo "round $ABREAST_ATTEMPT" >> src/feature.txt'},
        "review": {
            "needs": ["implement"],
            "run": review,
            "send_back": {"to": "implement", "when": "not output.ok"},
        },
    }
    code, out, run_id = run(repo, workflow(repo, tasks))
    assert code == 0, out
    assert show(repo, integration(run_id), "src/feature.txt") == "round 1\nround 2\n"
    first, second = seen.read_text().split("diff --git")[1:]  # what each round changed
    assert "+round 1" in first and "+round 2" not in first
    assert " round 1\n+round 2" in second


def test_carry_work_carries_the_files_of_an_attempt_the_orchestrators_death_cut_short(
    repo: Path, tmp_path: Path
) -> None:
    """The orchestrator dies while an attempt works: the resume kills it, and its next
    attempt starts with the files it had written (the resumed run reuses its worktree)."""
    started, seen = tmp_path / "started", tmp_path / "seen"
    run_ = (
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then echo part > src/part.txt; '
        f"touch {started}; sleep 60; fi\n"
        f"cat src/part.txt > {seen}; echo done > src/done.txt\n"
    )
    path = workflow(repo, {"t": {"run": run_, "carry_work": True}})
    proc, run_id = start_run(path, cwd=repo)
    killed_once(proc, started.exists, "attempt 1 to write its part")
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert seen.read_text() == "part\n"
    assert show(repo, integration(run_id), "src/part.txt") == "part\n"
    assert show(repo, integration(run_id), "src/done.txt") == "done\n"


def test_carried_work_that_conflicts_with_what_landed_since_is_left_out_and_said(
    repo: Path, tmp_path: Path
) -> None:
    """The last attempt's work conflicts with what landed since it started (the reason
    it was sent back): the next attempt starts afresh, told why and where that work is."""
    seen = tmp_path / "seen.txt"
    script = repo / "second.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$ABREAST_FEEDBACK" | tail -n 1 >> {seen}\n'
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then\n'
        '  until git log --format=%s "abreast/$ABREAST_RUN_ID/_integration" | grep -q "land '
        'first"; do sleep 0.05; done\n'  # lands after first: a conflict
        "  sed -i 's/^line 10$/line 10 (second)/' src/shared.txt\n"
        "else sed -i 's/^line 12$/line 12 (second)/' src/shared.txt; fi\n"
    )
    script.chmod(0o755)
    tasks = {
        "first": {"run": "sed -i 's/^line 10$/line 10 (first)/' src/shared.txt"},
        "second": {"run": "./second.sh", "retries": 1, "carry_work": True},
    }
    code, out, run_id = run(repo, workflow(repo, tasks))
    assert code == 0, out
    told = seen.read_text().splitlines()[-1]
    assert told.startswith(
        "The work of attempt 1 was not carried over: it conflicts with what landed since "
        "it started, in: src/shared.txt. This attempt starts from the current integration "
        "head; `git diff "
    ), told
    since, work = told.split("`git diff ")[1].split("`")[0].split()
    that_work = git(repo, "diff", since, work)  # what attempt 1 did, and nothing else
    assert "+line 10 (second)" in that_work and "(first)" not in that_work
    merged = show(repo, integration(run_id), "src/shared.txt")
    assert "line 10 (first)\n" in merged and "line 12 (second)\n" in merged


def test_tasks_whose_work_conflicted_in_the_same_file_run_one_after_the_other_after(
    repo: Path,
) -> None:
    # Four tasks change one line, side by side: the first lands and the three others
    # conflict with it. Their next attempts started together again, from the same head:
    # one landed, two conflicted again and, with one retry each, failed. Now they run
    # one after the other, each from the work of the one before, and all land.
    # (A retry takes a second: the others' first merges conflict while it runs.)
    wait = '[ "$ABREAST_ATTEMPT" = 1 ] && sleep 0.3 || sleep 1'
    tasks = {
        f"t{i}": {"run": f"{wait}; sed -i 's/^line 10.*/line 10 by t{i}/' src/shared.txt"}
        for i in range(4)
    }
    path = workflow(repo, tasks, max_parallel=4, defaults={"retries": 1, "backoff": {"initial": 0}})
    code, out, run_id = run(repo, path)
    assert code == 0, out
    attempts = dict(query(repo / ".abreast" / "state.db", "SELECT task_id, attempts FROM tasks"))
    assert sorted(attempts.values()) == [1, 2, 2, 2], out
    said = re.findall(
        r"\] (.+) run one after the other from now on: their work conflicted in "
        r"src/shared.txt",
        out,
    )
    assert said and " and " in said[-1], out
    merged = show(repo, integration(run_id), "src/shared.txt")
    last = [line for line in merged.splitlines() if line.startswith("line 10")]
    assert len(last) == 1 and last[0].startswith("line 10 by t"), merged


def test_a_worktree_whose_task_branch_moved_on_elsewhere_is_reused_with_the_right_files(
    repo: Path,
) -> None:
    """x's committed attempt gives its worktree back; x's next attempt takes another one
    and moves x's branch. The first worktree's HEAD named that branch, so its next task's
    checkout (a two-way merge from HEAD) thought its files were at the branch's new commit:
    x's old files stayed, and the next task's work took them in (or undid what landed)."""
    from abreast.workspace.pool import WorktreePool
    from abreast.workspace.repo import Repo, commit_all

    r = Repo(repo)
    base = git(repo, "rev-parse", "HEAD").strip()
    pool = WorktreePool(r, "run1")
    try:
        x = pool.acquire("abreast/run1/x", base)
        a = pool.acquire("abreast/run1/a", base)
        (x / "x.txt").write_text("x, attempt 1\n")
        commit_all(r, x, "x")
        (a / "src" / "shared.txt").write_text("a's\n")
        landed = commit_all(r, a, "a")
        pool.release(x, clean=True)
        pool.release(a, clean=True)
        wait_for(lambda: len(pool._idle) == 2, what="both worktrees to be idle")
        assert pool.acquire("abreast/run1/x", landed) == a  # x's next attempt, elsewhere
        assert pool.acquire("abreast/run1/y", landed) == x
        assert git(x, "status", "--porcelain") == ""
        assert not (x / "x.txt").exists()
        assert (x / "src" / "shared.txt").read_text() == "a's\n"
    finally:
        pool.close()


def test_an_output_of_work_on_the_merge_queue_when_abreast_died_is_handed_on(
    repo: Path, tmp_path: Path
) -> None:
    """a wrote its output, and its work was being checked when the orchestrator died: the
    resume lands the work, and b, which reads a's output, gets it (it was journaled only
    once the work landed: b's `when:` found none)."""
    go, checking = tmp_path / "go", tmp_path / "checking"
    check = f"touch {checking}; while [ ! -e {go} ]; do sleep 0.05; done"
    tasks = {
        "a": {"run": 'echo "{\\"x\\": 7}" > "$ABREAST_OUTPUT"; echo a > src/a.txt'},
        "b": {"needs": ["a"], "when": "outputs.a.x == 7", "run": "echo b > src/b.txt"},
    }
    proc, run_id = start_run(workflow(repo, tasks, checks=[{"run": check}]), cwd=repo)
    killed_once(proc, checking.exists, "a's work to be checked")
    go.touch()
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert show(repo, integration(run_id), "src/b.txt") == "b\n"


def test_tasks_kept_apart_by_their_conflicts_stay_apart_after_a_resume(
    repo: Path, tmp_path: Path
) -> None:
    # t1 and t2 conflicted with t0's landing and are kept apart; the orchestrator dies
    # while the retry of one of them runs. The resume ran the two side by side again: the
    # second to land conflicted again, and, its retry spent, failed.
    go = tmp_path / "go"
    tasks = {"t0": {"run": "sed -i 's/^line 10.*/line 10 by t0/' src/shared.txt"}}
    for t in ("t1", "t2"):
        later = f"touch {tmp_path}/started.{t}.$ABREAST_ATTEMPT; "
        later += f"while [ ! -e {go} ]; do sleep 0.05; done"
        tasks[t] = {
            "run": f'if [ "$ABREAST_ATTEMPT" -gt 1 ]; then {later}; else sleep 0.3; fi\n'
            f"sed -i 's/^line 10.*/line 10 by {t}/' src/shared.txt\n",
            "retries": 1,
            "backoff": {"initial": 0},
        }
    path = workflow(repo, tasks, max_parallel=3)
    proc, run_id = start_run(path, cwd=repo)
    db = repo / ".abreast" / "state.db"
    conflicts = "SELECT count(*) FROM events WHERE type = 'merge.conflict'"
    try:
        wait_for(lambda: query(db, conflicts) == [(2,)], what="t1 and t2 to conflict")
        wait_for(lambda: any(tmp_path.glob("started.*.2")), what="a retry to start")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    [first] = [p.name.split(".")[1] for p in tmp_path.glob("started.*.2")]
    other = "t2" if first == "t1" else "t1"
    # After the resume, one of them runs again (the one interrupted, or the other, whose
    # retry was due: by priority); the other waits for its work to land, as before.
    again = (tmp_path / f"started.{first}.3", tmp_path / f"started.{other}.2")
    resumed = subprocess.Popen(
        [PY, "-m", "abreast", "resume", run_id, "--no-monitor", "--plain"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with ended_after(resumed):
        wait_for(lambda: any(p.exists() for p in again), what="a retry again")
        go.touch()
        out, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, out
    states = dict(query(db, "SELECT task_id, state FROM tasks"))
    assert states == {"t0": "succeeded", "t1": "succeeded", "t2": "succeeded"}, out
    assert "run one after the other from now on: their work conflicted in src/shared.txt" in out


def test_a_flaky_check_is_run_again_not_the_agent_and_said(repo: Path, tmp_path: Path) -> None:
    # A red check sent the task back to its agent (minutes and tokens) even when the
    # suite was only flaky. A check's `retries` runs it again first; a later green lands
    # the work and is said, as the suite may be flaky.
    seen = tmp_path / "seen"
    flaky = f"if [ -e {seen} ]; then exit 0; fi; touch {seen}; echo 'test_x FAILED'; exit 1"
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt", "retries": 0}},
        checks=[{"name": "tests", "run": flaky, "retries": 2}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "A\n"
    said = "check `tests` was red (exit 1; log: "
    assert said in out and ") and green when run again (run 2 of 3): flaky? (checking a)" in out
    report = run_abreast("report", run_id, "--json", cwd=repo)
    assert any(said in w for w in json.loads(report.out)["warnings"]), report.out
    green = run_abreast("logs", run_id, "a", "--check", cwd=repo)
    assert green.code == 2 and "attempt 1 of 'a' has no red check to show" in green.err
    # CI's JUnit report says it too, where the task's test case is (a pass, to look at).
    junit = repo.parent / "junit.xml"
    assert run_abreast("report", run_id, "--junit", str(junit), cwd=repo).code == 0
    import xml.etree.ElementTree as ET

    case = ET.parse(junit).getroot().find(".//testcase[@name='a']")
    assert case is not None and case.find("failure") is None
    out_text = case.findtext("system-out") or ""
    assert said in out_text and "flaky?" in out_text, ET.tostring(case)
    # Red on every run: the merge is red, as before, and says how often it was tried.
    always = workflow(
        repo,
        {"b": {"run": "echo B > b.txt", "retries": 0}},
        checks=[{"name": "tests", "run": "echo 'test_y FAILED'\nfalse\necho ok", "retries": 1}],
    )
    code, out, _ = run(repo, always)
    assert code == 1, out
    assert "check `tests` failed (exit 1), on each of its 2 runs: test_y FAILED\n" in out, out
    assert "flaky?" not in out


def test_a_check_that_rewrites_the_work_is_said_as_what_it_wrote_does_not_land(
    repo: Path,
) -> None:
    # A formatter as a check (`ruff format`, `prettier --write`): it rewrote the merge
    # result, was green on what it wrote, and what landed was the work as its task left
    # it; nothing said so. A check's own untracked output (a build, a cache) is no news.
    upper = (
        "touch build.out; for f in a.txt b.txt; do [ -e $f ] || continue; "
        "tr a-z A-Z < $f > $f.tmp && mv $f.tmp $f; done"
    )
    path = workflow(
        repo,
        {"a": {"run": "echo hello > a.txt"}, "b": {"needs": ["a"], "run": "echo world > b.txt"}},
        checks=[{"name": "format", "run": upper}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    said = (
        "the merge checks changed files of the work they checked (a.txt; checking a), and "
        "what a check writes does not land: the work lands as its task left it."
    )
    assert said in out, out
    assert out.count("the merge checks changed files") == 2, out  # at once, and at the end
    assert show(repo, integration(run_id), "a.txt") == "hello\n"
    db = repo / ".abreast" / "state.db"
    wrote = [
        (task, json.loads(d)["files"])
        for task, d in query(db, "SELECT task_id, data FROM events WHERE type = 'check.wrote'")
    ]
    assert wrote == [("a", ["a.txt"]), ("b", ["a.txt", "b.txt"])], wrote
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    assert any(said in w for w in report["warnings"]), report["warnings"]
    # `status` from another terminal, later, says it too (it said only the tasks).
    status = run_abreast("status", run_id, cwd=repo).out
    assert f"\n  warning: {said}" in status, status
    listed = json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)["warnings"]
    assert [(w["task"], said in w["text"]) for w in listed] == [("a", True)], listed
    # And CI's JUnit report, on the task's test case (it said only flaky checks).
    import xml.etree.ElementTree as ET

    junit = repo.parent / "junit.xml"
    assert run_abreast("report", run_id, "--junit", str(junit), cwd=repo).code == 0
    case = ET.parse(junit).getroot().find(".//testcase[@name='a']")
    assert case is not None and f"warning: {said}" in (case.findtext("system-out") or "")
    # Only untracked output: nothing said.
    quiet = workflow(repo, {"c": {"run": "echo c > c.txt"}}, checks=[{"run": "touch build.out"}])
    code, out, _ = run(repo, quiet)
    assert code == 0 and "changed files" not in out, out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("nested", [False, True])
def test_a_red_check_run_by_make_says_its_suites_last_line_not_makes(
    repo: Path, nested: bool
) -> None:
    # `make test` ends with make's own `make: *** [Makefile:2: test] Error 1`, which says
    # nothing of why; the line before it does. Run under another make (abreast started by
    # `make ci`), it says where it went in and out too: `make[1]: Leaving directory ...`.
    (repo / "Makefile").write_text("test:\n\t@echo '3 failed, 9 passed in 1.2s'; exit 1\n")
    git(repo, "add", "Makefile")
    git(repo, "commit", "-q", "-m", "make")
    path = workflow(
        repo, {"a": {"run": "echo A > a.txt", "retries": 0}}, checks=[{"run": "make test"}]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    if nested:
        env["MAKELEVEL"] = "1"
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    out = result.out
    assert result.code == 1, out
    said = "check `make test` failed (exit 2): 3 failed, 9 passed in 1.2s\n"
    assert "failed    a in " in out and said in out, out  # the line said as it happened
    level = "[1]" if nested else ""
    assert f"\n    make{level}: *** [Makefile:2: test] Error 1\n" in out, out  # its end, as it was
    assert ("Leaving directory" in out) == nested


def test_a_check_that_hangs_is_ended_as_red_unless_it_may_be_quiet(repo: Path) -> None:
    # A check with no `timeout` that hung (a test that deadlocks) held the merge queue,
    # and every task after it, for good; tasks had hang detection, checks had none.
    path = workflow(
        repo,
        {
            "a": {"run": "echo A > a.txt"},
            "b": {"run": "echo B > b.txt && touch hang", "needs": ["a"]},
        },
        heartbeat={"interval": "0.2s", "orphan_after": "1s"},
        checks=[
            {"name": "quiet but fine", "run": "sleep 1.6", "orphan_after": "1m"},
            {"name": "hangs when told", "run": "if [ -f hang ]; then sleep 60; fi"},
        ],
    )
    started = time.monotonic()
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert time.monotonic() - started < 30, out
    assert show(repo, integration(run_id), "a.txt") == "A\n"  # quiet 1.6s, as allowed
    assert re.search(
        r"failed    b in \S+: check `hangs when told` failed \(no sign of life \(CPU, I/O or "
        r"output\) for \ds: hung\? it was ended \(if it may rightly be quiet that long, give "
        r"the check `orphan_after:` longer\)\)",
        out,
    ), out


def test_one_task_at_a_time_counts_the_merge_checks_a_sequential_run_runs_too(
    repo: Path,
) -> None:
    # "one task at a time it would take" was the attempts alone: with a test suite as the
    # check, every run of quick tasks "saved nothing", though a run one task at a time
    # checks each task's work too.
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt"}, "b": {"run": "echo B > b.txt"}},
        checks=[{"run": "sleep 0.4"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    db = repo / ".abreast" / "state.db"
    checked = [
        json.loads(d)["check_s"]
        for (d,) in query(db, "SELECT data FROM events WHERE type = 'merge.checked'")
    ]
    assert len(checked) == 2 and all(0.4 <= c < 5 for c in checked), checked
    (busy,) = query(db, "SELECT sum(wall_s) FROM attempts")[0]
    said = re.search(
        r"one task at a time it would take (\S+) \(its merge checks (\S+) of it\)", out
    )
    assert said is not None, out
    rep = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    assert rep["checks_s"] == pytest.approx(sum(checked))
    assert rep["sequential_s"] == pytest.approx(busy + sum(checked))
    (perf,) = query(db, "SELECT data FROM events WHERE type = 'workflow.performance'")[0]
    assert json.loads(perf)["sequentialTime"] == pytest.approx(busy + sum(checked), abs=0.002)


def test_analyze_says_what_the_merge_checks_take_as_measured_in_earlier_runs(
    repo: Path,
) -> None:
    # The estimates count the tasks alone; a test suite run on each merge, one at a time,
    # can take longer than all of them, and `analyze` said nothing of it.
    from abreast.spec.durations import format_duration

    check = f"{PY} -c 'import time; time.sleep(0.4)'"
    tasks = {name: {"run": f"echo {name} > {name}.txt", "estimate": "1s"} for name in "abc"}
    path = workflow(repo, tasks, checks=[{"run": check, "name": "suite"}])

    def analysis(*args: str) -> tuple[str, dict[str, Any]]:
        table = run_abreast("analyze", str(path), *args, cwd=repo)
        data = run_abreast("analyze", str(path), "--format", "json", *args, cwd=repo)
        assert table.code == 0 and data.code == 0, table.err + data.err
        return table.out, json.loads(data.out)["merge_checks"]

    table, data = analysis()
    assert data == {
        "checks": ["suite"],
        "merges": 3,
        "batch": 1,
        "each_s": None,
        "measured_runs": 0,
        "total_s": None,
    }
    said = "merge checks: `suite`, on each task's merge before it lands, one merge at a time\n"
    assert said + "  not in the estimates above: a run measures them" in table
    code, out, _ = run(repo, path)
    assert code == 0, out
    table, data = analysis()
    assert data["measured_runs"] == 1 and 0.4 <= data["each_s"] < 5
    assert data["total_s"] == pytest.approx(3 * data["each_s"])
    each, total = format_duration(data["each_s"]), format_duration(data["total_s"])
    assert (
        f"  {each} (the median in the latest run) a run: {total} for 3 merges if each task "
        "changes files and passes at once, which the estimates above leave out\n"
    ) in table
    # Three merges of a 0.4 s check outlast three tasks of a second side by side.
    assert "  the checks, not the tasks, set the pace: longer than abreast's schedule" in table
    dry = run_abreast("run", str(path), "--dry-run", cwd=repo)
    assert "passes `suite` (a run of them took " in dry.out
    assert "(the median in the latest run); their time is not in the estimates)" in dry.out
    # A run's time left counts them too: three tasks of a second, once they have run,
    # still have three checks to pass, one after another.
    go = repo.parent / "go"
    waiting = {
        name: {"run": f"until [ -e {go} ]; do sleep 0.05; done; echo {name} > {name}.txt"}
        for name in "abc"
    }
    for task in waiting.values():
        task["estimate"] = "1s"
    path = workflow(repo, waiting, checks=[{"run": check, "name": "suite"}])
    proc, run_id = start_run(path, cwd=repo)
    try:

        def running() -> dict[str, Any]:
            return json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)

        wait_for(lambda: [t["state"] for t in running()["tasks"]] == ["running"] * 3)
        assert running()["time_left_s"] >= 3 * data["each_s"] - 0.01
    finally:
        go.touch()
        finished = proc.communicate(timeout=60)
    assert proc.returncode == 0, finished
    _, data = analysis()
    assert data["measured_runs"] == 2  # that run's checks too
    # Batched, as few check runs as can be; other checks are not these: not measured.
    _, batched = analysis("--max-parallel", "3")
    assert batched["each_s"] == data["each_s"]
    text = path.read_text()
    path.write_text(text.replace('"checks"', '"merge": {"batch": 2}, "checks"'))
    table, batched = analysis()
    assert batched["total_s"] == pytest.approx(2 * data["each_s"])
    assert "up to 2 merges at a time\n" in table and "for 3 merges (2 batches) if" in table
    path.write_text(text.replace("0.4", "0.5"))
    assert analysis()[1]["each_s"] is None
    assert analysis("--no-history")[1]["each_s"] is None


def test_checks_are_given_to_the_shell_of_defaults_unless_they_name_their_own(
    repo: Path,
) -> None:
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt", "shell": "sh"}},
        defaults={"shell": "bash"},
        checks=[
            {"name": "sh", "run": "false | cat", "shell": "sh"},  # green: cat's status
            {"name": "bash", "run": "[[ -f a.txt ]] && false | cat"},  # red: pipefail
        ],
    )
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "check `bash` failed (exit 1)" in out
    assert "check `sh` failed" not in out


def test_a_check_of_several_lines_given_to_bash_says_the_line_it_failed_at(repo: Path) -> None:
    # Its log's last line was an earlier line's, said as though it were the failure.
    lines = "echo checking the tree\ntest -f MISSING\necho fine\n"
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt", "retries": 0}},
        checks=[{"name": "tree", "run": lines, "shell": "bash"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert "check `tree` failed (exit 1 at line 2 (`test -f MISSING`)): checking the tree" in out
    checks = repo / ".abreast" / "runs" / run_id / "checks"
    assert [p.name for p in checks.iterdir()] == ["a.1.1.log"]  # its line's file removed
    path.write_text(path.read_text().replace('"bash"', '"sh"'))  # dash: not known
    code, out, _ = run(repo, path)
    assert code == 1 and "check `tree` failed (exit 1): checking the tree" in out, out


def test_a_check_that_fails_on_a_word_of_bash_says_so(repo: Path) -> None:
    probe = subprocess.run(["/bin/sh", "-c", "source /dev/null"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("/bin/sh here is bash, which has `source`")
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt", "retries": 0}},
        checks=[{"name": "env", "run": "source ./env.sh && make test"}],
    )
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "check `env` failed (exit 127 (command not found)): " in out
    assert (
        "    /bin/sh here has no `source` (a word of bash): write `. FILE` instead, or give the "
        "command to bash"
    ) in out


def test_a_check_that_cannot_start_stops_the_run_and_resume_checks_the_work_again(
    repo: Path, tmp_path: Path
) -> None:
    # A check whose program is not installed here (a typo; pytest not in this environment)
    # was red for every task's work: each task was sent back to its agent (a whole agent
    # run, for nothing) up to its retries, and the tasks after them ran to the same end.
    # Once the check was fixed, `resume --retry-failed` ran each agent again.
    ran = tmp_path / "ran"
    ran.mkdir()

    def task(name: str, *before: str, **more: Any) -> dict[str, Any]:
        steps = [*before, f"echo x >> {ran}/{name}", f"echo {name} > {name}.txt"]
        return {"run": " && ".join(steps), "retries": 2, "estimate": "1m", **more}

    path = workflow(
        repo,
        {
            "a": task("a"),
            "slow": task("slow", f"{PY} -c 'import time; time.sleep(1)'", pools=["one"]),
            "later": task("later", pools=["one"], estimate="1s"),  # after slow: not started
            "after": task("after", needs=["a"]),
        },
        pools={"one": 1},
        checks=[{"run": "no-such-test-tool -q"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    stop = (
        "check `no-such-test-tool -q` cannot start (`no-such-test-tool` is not on the PATH it "
        "runs with), so no work can land"
    )
    assert f"stopping: {stop}; no new tasks; waiting for slow to finish" in out
    assert "  blocked: after (upstream a failed)" in out
    later = query(
        repo / ".abreast" / "state.db", "SELECT state, reason FROM tasks WHERE task_id = 'later'"
    )
    assert later == [("cancelled", f"not started: {stop}")]
    assert (
        "not sent back: check `no-such-test-tool -q` cannot start (`no-such-test-tool` is not "
        "on the PATH it runs with), whatever the work; fix it (the check in the workflow file, "
        f"or what it needs on this machine), then `abreast resume {run_id} --retry-failed`"
    ) in out
    # Neither agent was sent back, though each had retries left; nothing landed.
    assert sorted(p.name for p in ran.iterdir()) == ["a", "slow"]
    assert all(len((ran / t).read_text().split()) == 1 for t in ("a", "slow"))
    assert git(repo, "rev-parse", integration(run_id)) == git(repo, "rev-parse", "main")
    # Fixed in the file, as one would: resuming checks the work the agents did, kept on
    # their branches, and runs only what had not run.
    path.write_text(path.read_text().replace("no-such-test-tool -q", "test -f README.md"))
    resumed = run_abreast("resume", run_id, "--retry-failed", "--plain", "--no-monitor", cwd=repo)
    said = resumed.out + resumed.err
    assert resumed.code == 0, said
    for name in ("a", "slow"):
        assert f"{name}: its attempt 1 succeeded, and its checks could not start then; " in said
    assert "failed; run again" not in said
    assert {p.name: len(p.read_text().split()) for p in ran.iterdir()} == {
        "a": 1,
        "slow": 1,
        "later": 1,
        "after": 1,
    }
    for name in ("a", "slow", "later", "after"):
        assert show(repo, integration(run_id), f"{name}.txt") == f"{name}\n"
    attempts = query(
        repo / ".abreast" / "state.db",
        f"SELECT task_id, attempt, state FROM attempts WHERE run_id = '{run_id}' ORDER BY 1",
    )
    assert attempts == [
        ("a", 1, "succeeded"),
        ("after", 1, "succeeded"),
        ("later", 1, "succeeded"),
        ("slow", 1, "succeeded"),
    ]


def test_why_a_check_cannot_start_whatever_the_work(repo: Path, tmp_path: Path) -> None:
    from abreast.spec.commands import cannot_start

    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "bin").mkdir()
    (repo / "bin" / "tool").write_text("#!/bin/sh\n")
    (repo / "bin" / "tool").chmod(0o755)
    path = os.environ["PATH"]
    assert cannot_start("nosuch-tool -q", repo, path, True) == (
        "`nosuch-tool` is not on the PATH it runs with"
    )
    assert cannot_start("CI=1 nosuch-tool", repo, path, True).startswith("`nosuch-tool` is")
    assert cannot_start(".venv/bin/pytest -q", repo, path, True) == (
        ".venv/bin/pytest is a path git ignores, not in the merged work"
    )
    assert cannot_start("/nonexistent/pytest", repo, path, True) == (
        "/nonexistent/pytest does not exist"
    )
    # What may yet start: a script the work was to add; a program on a PATH entry relative
    # to where the check runs; a command that started (a later one was not found).
    assert cannot_start("./run_tests.sh", repo, path, True) == ""
    assert cannot_start("tool --all", repo, f"bin{os.pathsep}{path}", True) == ""
    assert cannot_start("echo go; nosuch-tool", repo, path, True) == ""
    assert cannot_start("cd src && nosuch-tool", repo, path, True) == ""
    assert cannot_start(f"{PY} -m nosuchmodule", repo, path, True) == ""
    no_source = subprocess.run(
        ["/bin/sh", "-c", "source /dev/null"], capture_output=True, check=False
    )
    if no_source.returncode != 0:  # dash
        assert cannot_start("source env.sh && make", repo, path, True) == (
            "/bin/sh here has no `source`"
        )
    assert cannot_start("source env.sh && make", repo, path, False) == ""  # given to bash


def test_a_batch_whose_check_cannot_start_is_not_split(repo: Path, tmp_path: Path) -> None:
    # Splitting a red batch in halves finds the work that breaks the checks; a check that
    # cannot start breaks on any half, so each half was checked again for nothing.
    wait, _, record = batch_scripts(tmp_path, repo)
    journal = repo / ".abreast" / "state.db"
    check = tmp_path / "check-once"  # green for a's merge, then gone (uninstalled)
    check.write_text(
        f"#!{sys.executable}\n"
        + WAIT_QUEUED
        + "import os\n"
        + "open(sys.argv[3], 'a').write(os.environ['ABREAST_TASK_ID'] + '\\n')\n"
        + "os.unlink(sys.argv[0])\n"
    )
    check.chmod(0o755)
    path = workflow(
        repo,
        {
            "a": {"run": "echo a > a.txt"},
            "b": {"run": f"{wait} 1 && echo b > b.txt"},
            "c": {"run": f"{wait} 1 && echo c > c.txt"},
            "d": {"run": f"{wait} 1 && echo d > d.txt"},
        },
        max_parallel=4,
        merge={"batch": 4},
        checks=[{"run": f"{check} {journal} 4 {record}"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert record.read_text().split() == ["a"]
    assert show(repo, integration(run_id), "a.txt") == "a\n"
    merges = [
        (t, task, json.loads(data).get("tasks"))
        for t, task, data in query(
            journal, "SELECT type, task_id, data FROM events WHERE type LIKE 'merge.%' ORDER BY seq"
        )
        if t in ("merge.batch_failed", "merge.checks_failed", "merge.held_back")
    ]
    assert merges[0][0] == "merge.batch_failed" and sorted(merges[0][2]) == ["b", "c", "d"]
    assert sorted(task for t, task, _ in merges[1:] if t == "merge.held_back") == ["b", "c", "d"]
    assert len(merges) == 4, merges  # no half checked again
    assert f"{check} does not exist" in out


def test_red_check_sends_back_and_exhausted_retries_keep_the_branch(repo: Path) -> None:
    path = workflow(
        repo,
        {
            "breaker": {
                "run": "echo BROKEN > README.md; echo 'breaker did its work'",
                "retries": 1,
                "backoff": {"initial": 0.05},
            },
        },
        checks=[
            {
                "name": "readme ok",
                "run": "! grep -q BROKEN README.md || { echo 'README is broken' >&2; exit 1; }",
            }
        ],
    )
    code, out, run_id = run(repo, path)
    assert code == 1
    assert "retry   breaker" in out
    assert "check `readme ok` failed (exit 1)" in out
    assert "README is broken" in out
    assert git(repo, "rev-parse", integration(run_id)) == git(repo, "rev-parse", "main")
    # The failed attempt's branch and worktree are kept as evidence.
    assert f"abreast/{run_id}/breaker" in git(repo, "branch", "--list", "abreast/*")
    kept = list(git(repo, "worktree", "list").splitlines()[1:])
    assert len(kept) == 1
    assert "kept for inspection" in out
    # The run's summary and `abreast report` tell the check's output from the task's.
    report = run_abreast("report", run_id, cwd=repo).out
    for text in (out, report):
        failure = text[text.index("breaker (failed after 2 attempts): check `readme ok`") :]
        lines = failure.splitlines()
        # Its output's one line is said in the reason's first line, once.
        assert lines[0].endswith("check `readme ok` failed (exit 1): README is broken")
        assert re.fullmatch(r"    check log: \S+/checks/breaker\.2\.1\.log", lines[1])
        assert lines[2:4] == ["    last lines of the task's log:", "    | breaker did its work"]
        assert lines[4] == f"    its work: abreast diff {run_id} breaker"
        assert re.fullmatch(r"    task log: \S+/logs/breaker\.2\.log", lines[5])
    # The check's output is one command away, as the task's log is, for each attempt.
    for attempt in ("1", "2"):
        shown = run_abreast("logs", run_id, "breaker", "--check", "--attempt", attempt, cwd=repo)
        assert shown.code == 0 and shown.out == "README is broken\n", shown
    assert run_abreast("logs", run_id, "breaker", cwd=repo).out == "breaker did its work\n"


def test_an_agent_is_told_in_its_prompt_which_files_its_work_may_change(
    repo: Path, tmp_path: Path
) -> None:
    # Told only by the send-back, an agent that touched a file outside its `owns` spent an
    # attempt (minutes, and tokens) to learn it. Its prompt now says so up front.
    told = tmp_path / "told"
    told.mkdir()
    agent = f'printf %s "$ABREAST_PROMPT" > {told}/$ABREAST_TASK_ID.$ABREAST_ATTEMPT'
    path = workflow(
        repo,
        {
            "api": {"agent": "a", "prompt": "Build it", "owns": ["src/**", "docs/api.md"]},
            # a first attempt that strays, then keeps to its own
            "web": {
                "prompt": "Style it",
                "owns": ["web/**"],
                "run": f"{agent}; mkdir -p web; echo x > web/x.css; "
                'if [ "$ABREAST_ATTEMPT" = 1 ]; then echo x > README.md; fi',
                "retries": 1,
                "backoff": {"initial": 0.05},
            },
            "tidy": {"agent": "a", "prompt": "Tidy up"},  # owns nothing: told what others do
            "after": {"agent": "a", "prompt": "Then", "needs": ["api", "web"]},  # not beside
        },
        agents={"a": {"run": agent}},
    )
    code, out, _ = run(repo, path)
    assert code == 0, out
    sent_back = "other tasks run beside this one, and an attempt that changes any other file"
    assert (told / "api.1").read_text() == (
        f"Build it\n\n---\nChange only files matching `src/**` or `docs/api.md`: {sent_back} "
        "is sent back."
    )
    assert (told / "tidy.1").read_text() == (
        "Tidy up\n\n---\nDo not change files matching `src/**` or `docs/api.md` (task api's); "
        "`web/**` (task web's): tasks that run beside this one own them, and an attempt that "
        "changes them is sent back."
    )
    assert (told / "after.1").read_text() == "Then"  # nothing runs beside it
    second = (told / "web.2").read_text()  # what it may change, then why it was sent back
    assert second.startswith(
        f"Style it\n\n---\nChange only files matching `web/**`: {sent_back} is sent back.\n\n"
        "---\nThis is attempt 2. abreast sent the previous attempt back:\nchanged files it "
        "does not own: README.md (not in owns: web/**)"
    ), second
    # Without worktrees nothing checks what a task changes, and nothing is said.
    (told / "api.1").unlink()
    loose = workflow(
        repo,
        {"api": {"agent": "a", "prompt": "Build it", "owns": ["src/**"]}},
        agents={"a": {"run": agent}},
        isolation="none",
    )
    code, out, _ = run(repo, loose)
    assert code == 0, out
    assert (told / "api.1").read_text() == "Build it"


@pytest.mark.parametrize(
    ("case", "command", "message"),
    [
        ("ownership", "echo x > README.md", "README.md (not in owns: src/**)"),
        (  # a name that would break the summary's lines (or clear the terminal) as it is
            "ownership",
            "printf x > \"$(printf 'a\\nb\\033[2J\\tc.txt')\"",
            "a\\nb\\x1b[2J\\tc.txt (not in owns: src/**)",
        ),
        (
            "main checkout",
            "echo oops > {root}/README.md",
            "wrote outside its worktree while it ran",
        ),
        ("symlink", "ln -s /etc/passwd src/passwd", "left symlinks pointing outside its worktree"),
        (
            "hook",
            "printf '#!/bin/sh\\ntouch {root}/PWNED\\n' > {root}/.git/hooks/pre-commit; "
            "chmod +x {root}/.git/hooks/pre-commit",
            "hook:",
        ),
        ("config", "git config --file {root}/.git/config core.hooksPath /tmp/evil", "git config:"),
    ],
)
def test_misbehaving_agents_fail_and_land_nothing(
    repo: Path, case: str, command: str, message: str
) -> None:
    path = workflow(repo, {"bad": {"run": command.format(root=repo), "owns": ["src/**"]}})
    before_readme = (repo / "README.md").read_text()
    config_before = (repo / ".git" / "config").read_text()
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert message in out, out
    failed = next(line for line in out.splitlines() if line.startswith("[") and " failed " in line)
    assert message in failed or case not in ("ownership", "symlink"), failed  # said whole
    assert git(repo, "rev-parse", integration(run_id)) == git(repo, "rev-parse", "main")
    # Planted hooks and config changes were undone; a commit now runs no planted hook.
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert (repo / ".git" / "config").read_text() == config_before
    (repo / "new.txt").write_text("x")
    git(repo, "add", "new.txt")
    git(repo, "commit", "-q", "-m", "after")
    assert not (repo / "PWNED").exists()
    if case != "main checkout":
        assert (repo / "README.md").read_text() == before_readme


def test_a_file_an_agent_deletes_in_a_directory_of_your_checkout_is_noticed(repo: Path) -> None:
    # A deletion was dated by the mtime of the repository's root, which removing a file
    # deeper down does not touch: blamed on no attempt, the run green, your file gone.
    (repo / "src" / "deep").mkdir()
    (repo / "src" / "deep" / "keep.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "deep")
    path = workflow(repo, {"a": {"run": f"sleep 0.2; rm {repo}/src/deep/keep.py", "retries": 0}})
    (repo / ".abreast").mkdir()
    past = time.time() - 100  # nothing written at the top or in src/ during the run
    for d in (repo, repo / "src"):
        os.utime(d, (past, past))
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "wrote outside its worktree while it ran, so nothing of it was merged:\n" in out
    assert "      main checkout: src/deep/keep.py\n" in out
    # The line the run said as it happened names it too (it ended in "merged:").
    assert "so nothing of it was merged: main checkout: src/deep/keep.py\n" in out, out


def test_the_runs_own_output_redirected_into_the_checkout_is_not_blamed_on_tasks(
    repo: Path,
) -> None:
    # `abreast run abreast.yaml > run.log` in the repository: run.log grows while tasks run.
    path = workflow(
        repo,
        {
            "a": {"run": "sleep 0.3; echo a > a.txt", "owns": ["a.txt"]},
            "b": {"run": "sleep 0.3; echo b > b.txt", "needs": ["a"], "owns": ["b.txt"]},
        },
    )
    log = repo / "run.log"
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain"],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    text = log.read_text()
    assert code == 0, text
    assert "wrote outside its worktree" not in text
    run_id = text.split("run: ", 1)[1].split()[0]
    assert show(repo, integration(run_id), "b.txt") == "b\n"


def test_files_written_by_processes_the_run_did_not_start_are_not_blamed_on_tasks(
    repo: Path,
) -> None:
    # `abreast run | tee run.log` in the repository, with a dev server of the user's
    # writing its log into the checkout all along: neither is the tasks' doing (both
    # failed every task that ran beside them).
    (repo / ".abreast").mkdir()
    server = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys, time\n"
            "with open(sys.argv[1], 'w') as f:\n"
            "    while True:\n"
            "        f.write('GET /\\n'); f.flush(); time.sleep(0.02)\n",
            str(repo / "dev.log"),
        ],
        start_new_session=True,
    )
    try:
        wait_for(lambda: (repo / "dev.log").exists() and (repo / "dev.log").stat().st_size > 0)
        path = workflow(
            repo,
            {
                "a": {"run": "sleep 0.3; echo a > a.txt"},
                "b": {"run": "sleep 0.3; echo b > b.txt", "needs": ["a"]},
                "c": {"run": "sleep 0.3; echo c > c.txt", "needs": ["b"]},
            },
        )
        result = subprocess.run(
            f"{PY} -m abreast run {path} --no-monitor --plain 2>&1 | tee run.log",
            shell=True,
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        grew = (repo / "dev.log").stat().st_size
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    out = result.stdout
    assert "wrote outside its worktree" not in out, out
    # Nor are the two logs, being written, noted at the start as uncommitted changes.
    assert "uncommitted change" not in out, out
    run_id = out.split("run: ", 1)[1].split()[0]
    assert show(repo, integration(run_id), "c.txt") == "c\n", out
    assert (repo / "run.log").read_text() == out and grew > 0


def test_a_file_written_again_and_again_is_named_once_in_the_blame(repo: Path) -> None:
    # The checks made as a, b and c end each see leak.txt changed again and blame the
    # leaking task again: it was listed three times.
    path = workflow(
        repo,
        {
            "a": {"run": "sleep 0.3"},
            "b": {"run": "sleep 0.3", "needs": ["a"]},
            "c": {"run": "sleep 0.3", "needs": ["b"]},
            "leak": {
                "run": f"for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo $i >> {repo}/leak.txt;"
                " sleep 0.1; done",
                "retries": 0,
            },
        },
        defaults={"retries": 0},
    )
    code, out, _ = run(repo, path)
    assert code == 1, out
    block = out.split("leak (failed): wrote outside its worktree", 1)[1].split("task log")[0]
    assert block.count("main checkout: leak.txt") == 1, block
    # The reason goes on under its first line, whether leak failed alone or alike with
    # another task blamed with it (`a, leak (failed): …`, said after the reason).
    assert "so nothing of it was merged:\n      main checkout: leak.txt\n" in block, block


@pytest.mark.parametrize("how", ["merge", "rebase"])
def test_an_agent_that_brings_in_landed_work_is_judged_on_its_own_changes(
    repo: Path, how: str
) -> None:
    # An agent told to work on the latest merges (or rebases onto) the integration branch
    # once another task's work has landed there: that task's files were counted as its
    # own, and it was failed for changing files it does not own.
    latest = "abreast/$ABREAST_RUN_ID/_integration"
    wait = (  # until `a` has landed (30 s at most)
        f'for i in $(seq 600); do git cat-file -e "{latest}:a/x.txt" 2>/dev/null && break; '
        "sleep 0.05; done\n"
    )
    commit = "git add -A && git commit -qm b-work\n"
    steps = {
        "merge": f'git merge -q --no-ff --no-edit "{latest}"\necho b > b/y.txt\n{commit}',
        "rebase": f'echo b > b/y.txt\n{commit}git rebase -q "{latest}"\n',
    }
    path = workflow(
        repo,
        {
            "a": {"run": "mkdir -p a && echo a > a/x.txt", "owns": ["a/**"]},
            "b": {"run": "mkdir -p b\n" + wait + steps[how], "owns": ["b/**"]},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "b/y.txt") == "b\n"
    assert show(repo, integration(run_id), "a/x.txt") == "a\n"
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    b = next(t for t in report["tasks"] if t["id"] == "b")
    assert b["changes"] == {"files": 1, "added": 1, "deleted": 0}, b
    diff = run_abreast("diff", run_id, "b", "--name-only", cwd=repo)
    assert diff.out.split() == ["b/y.txt"], diff.out + diff.err


def test_a_dependent_sees_its_dependencies_work(repo: Path) -> None:
    path = workflow(
        repo,
        {
            "api": {"run": "mkdir -p api && echo v1 > api/version"},
            "client": {
                "needs": ["api"],
                "run": 'test "$(cat api/version)" = v1 && echo "uses $(cat api/version)" '
                "> client.txt",
            },
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "client.txt") == "uses v1\n"


def test_a_base_that_is_not_a_commit_is_refused_saying_what_was_meant(
    repo: Path, tmp_path: Path
) -> None:
    # `base: master` in a repository whose branch is `main` said only that it "is not a
    # commit", and in a repository with no commits yet that HEAD was not one.
    path = workflow(repo, {"a": {"run": "true"}}, base="master")
    code, out, _ = run(repo, path)
    assert code == 2 and f"base 'master' is not a commit in {repo}; did you mean 'main'?" in out
    git(repo, "tag", "v1.0")
    path = workflow(repo, {"a": {"run": "true"}}, base="v1.1")
    assert "did you mean 'v1.0'?" in run(repo, path)[1]
    fresh = tmp_path / "fresh"
    git(tmp_path, "init", "-q", str(fresh))
    (fresh / "abreast.yaml").write_text('{"version": 1, "tasks": {"a": {"run": "true"}}}')
    code, out, _ = run(fresh, fresh / "abreast.yaml")
    assert code == 2 and f"{fresh} has no commits yet" in out
    assert "git commit --allow-empty -m start" in out
    assert "no runs yet" in run_abreast("status", cwd=fresh).err  # nothing journaled


def test_a_secret_a_merge_check_prints_is_not_kept_nor_passed_on(repo: Path) -> None:
    # A red check that printed a token of abreast's environment (a deploy step's `curl
    # -v`) had it copied into the task's feedback, the journal and the summary, and kept
    # in its log.
    token = "ghs_0123456789abcdefABCDEF"
    path = workflow(
        repo,
        {"a": {"run": "echo a > a.txt", "retries": 0}},
        checks=[{"run": 'echo "POST /deploy Authorization: Bearer $DEPLOY_TOKEN"; exit 1'}],
    )
    env = {**os.environ, "DEPLOY_TOKEN": token}
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    assert ran.code == 1, ran.out + ran.err
    assert "Authorization: Bearer [key " in ran.out, ran.out
    state = repo / ".abreast"
    assert list(state.rglob("checks/*.log"))
    kept = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    assert token not in ran.out + ran.err and token.encode() not in kept


def test_work_that_adds_a_file_too_large_for_git_hosts_is_sent_back(repo: Path) -> None:
    # An agent that downloaded a model or a dataset into its worktree had it land in the
    # integration branch's history, which GitHub then refused to take (over 100 MiB),
    # even after a later commit removed it. Here with a limit of 1 MiB.
    path = workflow(
        repo,
        {
            "download": {"run": "head -c 1500000 /dev/zero > model.bin", "retries": 0},
            "agent": {
                "run": "head -c 2200000 /dev/zero > data.bin && git add data.bin && "
                "git commit -qm data && git rm -q data.bin && git commit -qm gone",
                "retries": 0,
            },
            "small": {"run": "head -c 900000 /dev/zero > small.bin"},
            "exact": {"run": "head -c 1048576 /dev/zero > exact.bin"},  # as GitHub: not above
        },
        merge={"max_file_size": "1MiB"},
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert (
        "download (failed): its commits add a file larger than merge.max_file_size (1 MiB): "
        "model.bin (1.4 MiB); nothing of it was merged" in out
    ), out
    assert (
        "agent (failed): its commits add a file larger than merge.max_file_size (1 MiB): "
        "data.bin (2.1 MiB)" in out
    ), out
    assert "or raise merge.max_file_size" in out
    history = git(repo, "rev-list", "--objects", f"main..{integration(run_id)}")
    assert "small.bin" in history and "exact.bin" in history
    assert "model.bin" not in history and "data.bin" not in history
    # 0: no limit.
    again = {"download": {"run": "head -c 1500000 /dev/zero > model.bin"}}
    path = workflow(repo, again, merge={"max_file_size": 0})
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "model.bin" in tree(repo, integration(run_id))


def second_run_waiting(repo: Path, go: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """A second workflow's run started in the background, its one task `b` running until
    `go` exists (then writing b.txt): (the process, the run id)."""
    second = repo / "second.yaml"
    wait = f"while [ ! -e {go} ]; do sleep 0.02; done; echo b > b.txt"
    second.write_text(json.dumps({"version": 1, "name": "second", "tasks": {"b": {"run": wait}}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second workflow")
    proc, run_id = start_run(second, *args, cwd=repo)
    try:
        wait_for(lambda: "second-" in git(repo, "worktree", "list"), what="b to start")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, run_id


def test_a_run_landing_while_another_runs_is_not_taken_for_a_task_moving_the_branch(
    repo: Path, tmp_path: Path
) -> None:
    # Two runs at once in one repository, both with --land. The first one's landing moved
    # main while the second's task ran: that was warned about as a branch a task may have
    # moved, with the command that "puts it back" (undoing the other run's landing), and
    # the second could not land without saying why main had moved. It lands now, merged
    # with the first one's result, saying so.
    go = tmp_path / "go"
    proc, second_id = second_run_waiting(repo, go, "--land")
    with ended_after(proc):
        code, out, first_id = run(repo, workflow(repo, {"a": {"run": "echo a > a.txt"}}), "--land")
        assert code == 0, out
        assert "landed: main fast-forwarded to" in out
        go.touch()
        said, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, said + err
    assert "moved from" not in said + err and "puts it back" not in said + err
    assert (
        "(the result merged with main's 3 new commits; run "
        f"{first_id} had landed its result there)" in said
    ), said
    assert (repo / "a.txt").read_text() == "a\n" and (repo / "b.txt").read_text() == "b\n"
    assert git(repo, "rev-parse", "main").strip() == (
        git(repo, "rev-parse", integration(second_id)).strip()
    )


def test_another_runs_output_file_in_the_checkout_is_not_blamed_on_this_runs_task(
    repo: Path, tmp_path: Path
) -> None:
    # `abreast run a.yaml > a.log` beside a running `abreast run b.yaml`, in the project:
    # a.log changed while b's task ran, and once the first run had ended nobody held it
    # open, so b was failed for "writing outside its worktree: main checkout: a.log".
    go = tmp_path / "go"
    proc, _ = second_run_waiting(repo, go)
    with ended_after(proc):
        first = workflow(repo, {"a": {"run": "echo a > a.txt"}})
        with (repo / "a.log").open("w") as log:  # as the shell's `> a.log` gives it
            ran = subprocess.run(
                [PY, "-m", "abreast", "run", str(first), "--no-monitor", "--plain"],
                cwd=repo,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        assert ran.returncode == 0, (repo / "a.log").read_text()
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "a.log" not in out + err


def test_commits_say_what_the_task_is_for(repo: Path) -> None:
    # What lands is read in `git log --oneline` (and in a pull request): "abreast: backend
    # (run wt-20261207-..., attempt 1)" said nothing of what the work was.
    long = "Implement the token endpoint and its refresh flow, with tests for expiry"
    path = workflow(
        repo,
        {
            "backend": {"description": long, "run": "echo b > b.txt"},
            "frontend": {"prompt": "\n  Build the login page.\nSee docs.", "run": "echo f > f.txt"},
            "later": {
                "needs": ["frontend"],
                "prompt": "Fix ${{ outputs.frontend }}",
                "run": "echo l > l.txt",
            },
        },
    )
    code, out, run_id = run(repo, path, "--max-parallel", "1")
    assert code == 0, out
    subjects = git(repo, "log", "--format=%s", f"main..{integration(run_id)}").splitlines()
    assert sorted(subjects) == sorted(
        [
            "abreast: backend — Implement the token endpoint and its refresh flow, w…",
            "abreast: land backend — Implement the token endpoint and its refresh fl…",
            "abreast: frontend — Build the login page.",
            "abreast: land frontend — Build the login page.",
            "abreast: later — Fix …",  # its prompt's places are filled in as it runs
            "abreast: land later — Fix …",
        ]
    )
    assert all(len(s) <= 72 for s in subjects)
    bodies = git(repo, "log", "--format=%b", f"main..{integration(run_id)}").split()
    assert " ".join(bodies).count(f"run {run_id}, attempt 1") == 6


def test_branches_and_tags_tasks_made_on_their_landed_work_are_removed(repo: Path) -> None:
    # Refs are one set for every worktree: an agent's `git checkout -b feature` or `git tag`
    # stayed in your repository after the run, its work landed in the result anyway.
    path = workflow(
        repo,
        {
            "a": {
                "run": "git checkout -q -b feat/login && echo a > a.txt && git add a.txt && "
                "git commit -qm 'login page' && git tag -a v-login -m login && git tag light"
            },
            "b": {"run": "git tag at-base && echo b > b.txt"},  # on your commit: kept
            "c": {  # its work is not in the result: kept
                "run": "git checkout -q -b feat/broken && echo c > c.txt && git add c.txt && "
                "git commit -qm broken && exit 1",
                "retries": 0,
            },
        },
    )
    git(repo, "branch", "mine")  # yours, from before the run
    code, out, run_id = run(repo, path)
    assert code == 1, out
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/", "refs/tags/").split()
    assert "refs/heads/feat/login" not in refs and "refs/tags/v-login" not in refs
    assert "refs/tags/light" not in refs
    assert {"refs/heads/feat/broken", "refs/tags/at-base", "refs/heads/mine"} <= set(refs)
    said = next(line for line in out.splitlines() if "removed what the run's tasks" in line)
    assert "branch feat/login, tag light, tag v-login (" in said, said
    taken = query(
        repo / ".abreast" / "state.db", "SELECT data FROM events WHERE type = 'ref.taken'"
    )
    kept = {json.loads(d)["ref"]: json.loads(d)["commit"] for (d,) in taken}
    assert set(kept) == {"refs/heads/feat/login", "refs/tags/v-login", "refs/tags/light"}
    # What it says puts them back does.
    for ref, sha in kept.items():
        assert f"`git update-ref {ref} {sha[:12]}`" in said
        git(repo, "update-ref", ref, sha[:12])
    assert git(repo, "log", "-1", "--format=%s", "feat/login").strip() == "login page"
    assert git(repo, "cat-file", "-t", "v-login").strip() == "tag"  # annotated, as it was
    # The tag b made on your commit, without its work (made before its work was committed:
    # the release's tag on the commit before the release), is left as it is, but said.
    told = next(line for line in out.splitlines() if "made while the run ran" in line)
    at_base = git(repo, "rev-parse", "at-base").strip()
    assert told.strip() == (
        f"made while the run ran, on a commit of yours without the run's work: tag at-base at "
        f"{at_base[:12]}; left as it is (if a task made it before its work was committed, "
        f"`git tag -f NAME {integration(run_id)}` moves it onto the result, `git tag -d NAME` "
        "removes it)"
    ), told


def test_a_workflow_piped_in_runs_and_resumes_from_its_kept_copy(repo: Path) -> None:
    # A workflow made by a script (`./gen.py | abreast run -`): `-` was "no such file",
    # and `<(./gen.py)` put the journal under /proc/PID/fd.
    fixed = repo.parent / "fixed"
    generated = json.dumps(
        {
            "version": 1,
            "name": "gen",
            "tasks": {
                f"port-{m}": {"run": f"[ -e {fixed} ] && echo {m} > {m}.txt"}
                for m in ("auth", "billing")
            },
        }
    )
    ran = run_abreast("run", "-", "--no-monitor", "--plain", cwd=repo / "src", stdin=generated)
    assert ran.code == 1, ran.out + ran.err
    kept = next((repo / ".abreast" / "workflows").iterdir())
    assert kept.read_text() == generated and kept.suffix == ".json"
    assert (
        f"note: the workflow read from standard input is kept as "
        f"{os.path.relpath(kept, repo / 'src')} (`abreast resume` reads it there)" in ran.err
    )
    assert git(repo, "status", "--porcelain") == ""  # .abreast/ is not yours to see
    run_id = ran.out.splitlines()[0][5:]
    fixed.touch()
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", cwd=repo)
    assert again.code == 0, again.out + again.err
    assert "auth.txt" in tree(repo, integration(run_id))
    # The copy goes with the last run that reads it.
    gone = run_abreast("cleanup", "--older-than", "0", cwd=repo)
    assert (
        f"remove .abreast/workflows/{kept.name}, the workflow it read from standard input "
        "(no other run reads it)" in gone.out
    ), gone.out
    assert not kept.exists()
    # Its mistakes are named as `-`; analyze and validate read it too, keeping nothing.
    wrong = run_abreast("validate", "-", cwd=repo, stdin="version: 1\ntasks:\n  a: {rn: x}\n")
    assert wrong.code == 2
    assert wrong.err.startswith("abreast: error: -:3: unknown key 'rn' in tasks.a")
    shown = run_abreast("analyze", "-", cwd=repo, stdin=generated)
    assert shown.code == 0 and "port-auth" in shown.out
    assert not list((repo / ".abreast" / "workflows").iterdir())
    empty = run_abreast("run", "-", cwd=repo, stdin="")
    assert empty.code == 2 and "abreast: error: -: the file is empty" in empty.err
    # A pipe given as a path, as the shell's `<(./gen.py)` gives it: read as `-` is.
    fifo = repo.parent / "gen.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(generated,))
    writer.start()
    checked = run_abreast("validate", str(fifo), cwd=repo)
    writer.join(timeout=10)
    assert (checked.code, checked.out) == (0, "-: ok (2 tasks)\n"), checked.err
    # A terminal is refused, not waited on (`abreast run -` typed at a prompt).
    import pty

    master, slave = pty.openpty()
    try:
        for given in ("-", os.ttyname(slave)):
            typed = subprocess.run(
                [PY, "-m", "abreast", "validate", given],
                cwd=repo,
                stdin=slave,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert typed.returncode == 2 and "terminal" in typed.stderr, typed.stderr
    finally:
        os.close(master)
        os.close(slave)


def test_land_fast_forwards_the_base_branch(repo: Path) -> None:
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    code, out, _run_id = run(repo, path, "--land")
    assert code == 0, out
    assert "landed: main fast-forwarded" in out
    assert (repo / "a.txt").read_text() == "A\n"  # main is checked out: its tree moved too
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("index", ["racy", "fresh"])
def test_a_repository_git_cannot_read_is_said_with_what_to_do(repo: Path, index: str) -> None:
    # Its files go through Git LFS, which is not installed: every git command that reads
    # them fails. abreast said git's words and the `-c` settings of its own call, nothing
    # more; and where the user's `git status` did not read them (its index fresh, the
    # files older: on a slower machine), the run started and each task failed "could not
    # prepare: git read-tree ...": said now before anything runs, whatever the index.
    (repo / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (repo / "model.bin").write_text("version https://git-lfs.github.com/spec/v1\n")
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    if index == "fresh":  # files older than the index: `git status` need not read them
        old = time.time() - 60
        for f in repo.rglob("*"):
            if ".git" not in f.parts:
                os.utime(f, (old, old))
        git(repo, "update-index", "--really-refresh", "-q")
    git(repo, "config", "filter.lfs.process", "/nonexistent/git-lfs filter-process")
    git(repo, "config", "filter.lfs.required", "true")
    code, out, _ = run(repo, path)
    assert code == 2, out
    assert (
        "abreast: error: the repository's files go through Git LFS (`filter=lfs` in "
        ".gitattributes), which git is set to require (filter.lfs.required), and "
        "/nonexistent/git-lfs is not found here: a task's worktree could not be checked out\n"
        "  hint: install git-lfs, then `git lfs install`"
    ) in out, out
    assert "Traceback" not in out
    assert "no runs yet" in run_abreast("status", cwd=repo).err  # nothing journaled


def test_a_branch_named_abreast_is_refused_before_the_run_is_journaled(repo: Path) -> None:
    # Git cannot create abreast/<run>/... beside it: the run failed after it was announced,
    # "could not create refs/heads/abreast/<run>/_integration", and stayed interrupted.
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    git(repo, "branch", "abreast")
    code, out, run_id = run(repo, path)
    assert code == 2, out
    assert run_id == ""
    assert "has a branch named 'abreast'" in out
    assert "git branch -m abreast abreast-main" in out
    assert "no runs yet" in run_abreast("status", cwd=repo).err  # nothing journaled


def test_land_refuses_over_uncommitted_changes_to_the_results_files_only(repo: Path) -> None:
    path = workflow(
        repo, {"a": {"run": "echo A > a.txt && sed -i 's/^line 3$/line 3 (a)/' src/shared.txt"}}
    )
    (repo / "README.md").write_text("local edit\n")
    (repo / "src" / "shared.txt").write_text("mine\n")
    code, out, run_id = run(repo, path, "--land")
    # Every task succeeded, but what --land was asked for was not done: a script's
    # `abreast run --land && git push` must not push a main that lacks the work.
    assert code == 3, out
    assert (
        "not landed: main is checked out with uncommitted changes to src/shared.txt, which "
        f"the result changes too; commit or stash it, then `abreast land {run_id}`"
    ) in out
    assert "2 uncommitted changes in" in out
    assert query(repo / ".abreast" / "state.db", "SELECT state FROM runs") == [("succeeded",)]
    assert show(repo, integration(run_id), "a.txt") == "A\n"  # the result is kept
    assert (repo / "src" / "shared.txt").read_text() == "mine\n"
    assert not (repo / "a.txt").exists()
    # Changes only to files the result leaves alone go along, as with git's own
    # fast-forward: they refused a landing that could not hurt them.
    git(repo, "checkout", "-q", "src/shared.txt")
    git(repo, "add", "README.md")  # staged, too
    code, out, _ = run(repo, path, "--land", "--run-id", "second")
    assert code == 0, out
    assert re.search(
        r"landed: main fast-forwarded to \w{12} \(kept as they were: your uncommitted "
        r"changes to 1 file it leaves alone\)",
        out,
    ), out
    assert (repo / "a.txt").read_text() == "A\n"
    assert (repo / "README.md").read_text() == "local edit\n"
    assert git(repo, "status", "--porcelain") == "M  README.md\n"


def test_land_refuses_to_write_over_files_git_does_not_track(repo: Path) -> None:
    # An untracked a.txt made git's merge fail with its own message over five lines
    # ("error: The following untracked working tree files would be overwritten ...
    # Aborting"), and an ignored one would have been overwritten without a word.
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore logs")
    path = workflow(
        repo,
        {
            "a": {"run": "echo A > a.txt && echo B > b.log && git add -f b.log"},
            # A file that becomes a directory: the file is tracked, so not in the way.
            "c": {"run": "git rm -q README.md && mkdir README.md && echo C > README.md/c"},
        },
    )
    (repo / "a.txt").write_text("my notes\n")
    (repo / "b.log").write_text("my log\n")
    code, out, run_id = run(repo, path, "--land")
    assert code == 3, out
    assert (
        "not landed: the result would write over a.txt, b.log in your checkout, which git "
        f"does not track; move or remove them, then `abreast land {run_id}`"
    ) in out
    assert "Aborting" not in out
    assert (repo / "a.txt").read_text() == "my notes\n"
    assert (repo / "b.log").read_text() == "my log\n"
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "workflow"
    # Once they are moved, the command it gives brings the result in.
    (repo / "a.txt").unlink()
    (repo / "b.log").unlink()
    assert run_abreast("land", run_id, cwd=repo).code == 0
    assert (repo / "README.md" / "c").read_text() == "C\n"
    assert (repo / "b.log").read_text() == "B\n"


def test_land_moves_the_files_of_the_worktree_where_base_is_checked_out(
    repo: Path, tmp_path: Path
) -> None:
    # main is checked out in another worktree of the user's, not in the checkout: moving
    # the branch alone left that worktree's files behind (`git status` there showed the
    # work as staged deletions).
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, base="main")
    git(repo, "checkout", "-q", "-b", "dev")
    other = tmp_path / "main-wt"
    git(repo, "worktree", "add", "-q", str(other), "main")
    code, out, _ = run(repo, path, "--land")
    assert code == 0, out
    assert "landed: main fast-forwarded to " in out and f" in {other}" in out
    assert (other / "a.txt").read_text() == "A\n"
    assert git(other, "status", "--porcelain") == ""
    assert not (repo / "a.txt").exists()  # the checkout, on dev, is left as it was
    # With uncommitted changes there to a file the result changes, it is not landed, and
    # says where.
    b = {"run": "echo B > b.txt && echo B >> README.md"}
    path.write_text(json.dumps({"version": 1, "base": "main", "tasks": {"b": b}}))
    (other / "README.md").write_text("edited in the other worktree\n")
    code, out, _ = run(repo, path, "--land", "--run-id", "second")
    assert code == 3, out
    assert (
        f"not landed: main is checked out in {other} with uncommitted changes to README.md"
    ) in out
    assert not (other / "b.txt").exists()


def run_while_main_moves(
    repo: Path,
    tmp_path: Path,
    task: str,
    files: dict[str, str],
    *args: str,
    then: Callable[[subprocess.Popen[str]], None] | None = None,
    **top: Any,
) -> tuple[int, str, str]:
    """A run of one task `a` (`task`, run once the test has committed `files` to main in
    the checkout, as your own commit or a teammate's pull would while agents work):
    (exit status, its output, the run id). `then`: what the test does meanwhile."""
    go = tmp_path / "go"
    go.unlink(missing_ok=True)  # from a run before, in the same test
    wait = f"while [ ! -e {go} ]; do sleep 0.02; done; "
    path = workflow(repo, {"a": {"run": wait + task}}, **top)
    proc, run_id = start_run(path, *args, cwd=repo)
    with ended_after(proc), touched_after(go):
        wait_for(lambda: run_id in git(repo, "worktree", "list"), what="a to start")
        for name, text in files.items():
            (repo / name).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "meanwhile")
        go.touch()
        if then is not None:
            then(proc)
        out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err, run_id


def test_land_when_base_moved_on_merges_it_into_the_result_and_checks_that(
    repo: Path, tmp_path: Path
) -> None:
    # A commit on main while the agents worked (yours, a teammate's pulled in): --land
    # refused at the end (exit 3) and left the merge to you, the checks never having seen
    # the work and that commit together.
    check = {"run": "ls"}
    code, out, run_id = run_while_main_moves(
        repo, tmp_path, "echo A > a.txt", {"m.txt": "M\n"}, "--land", checks=[check]
    )
    assert code == 0, out
    assert (
        "main moved on since the run started (1 commit): running the merge checks on the "
        "result merged with main's 1 new commit" in out
    ), out
    assert "landed: main fast-forwarded to " in out
    assert "(the result merged with main's 1 new commit, checked)" in out
    # Your commit in your checkout is yours: no warning that would put main back (and,
    # after the landing, lose the work as well).
    assert "was moved from" not in out and "puts it back" not in out
    meanwhile = git(repo, "rev-parse", "main^1").strip()
    assert git(repo, "log", "-1", "--format=%s", meanwhile).strip() == "meanwhile"
    assert (
        git(repo, "rev-parse", "main").strip()
        == git(repo, "rev-parse", integration(run_id)).strip()
    )
    assert (repo / "a.txt").read_text() == "A\n" and (repo / "m.txt").read_text() == "M\n"
    assert git(repo, "status", "--porcelain") == ""
    # The checks ran on the two together (and on the task's merge without m.txt first).
    checks = repo / ".abreast" / "runs" / run_id / "checks"
    assert "m.txt" in (checks / "_result.1.log").read_text()
    assert "m.txt" not in (checks / "a.1.1.log").read_text()
    (event,) = query(
        repo / ".abreast" / "state.db",
        "SELECT data FROM events WHERE run_id = ? AND type = 'result.caught_up'",
        run_id,
    )
    assert json.loads(event[0])["commits"] == 1
    # What the run brought: its work, not the commit it was merged with.
    assert run_abreast("diff", run_id, "--all", "--name-only", cwd=repo).out == "a.txt\n"


def test_land_when_base_moved_on_is_refused_when_the_two_fail_the_checks_or_conflict(
    repo: Path, tmp_path: Path
) -> None:
    # Red: the work passed its checks alone, not with main's new commit.
    check = {"run": "! { test -e m.txt && test -e a.txt; }"}
    code, out, run_id = run_while_main_moves(
        repo, tmp_path, "echo A > a.txt", {"m.txt": "M\n"}, "--land", checks=[check]
    )
    assert code == 3, out
    assert (
        "not landed: main moved on since the run started (1 commit), and the result merged "
        "with main's 1 new commit fails the merge checks: check `! { test -e m.txt && test "
        "-e a.txt; }` failed (exit 1)" in out
    ), out
    assert (
        f"fix it (on main, or on the result branch {integration(run_id)}), then `abreast land "
        f"{run_id}`" in out
    ), out
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "meanwhile"
    assert not (repo / "a.txt").exists()
    assert git(repo, "rev-parse", f"{integration(run_id)}^2").strip() != ""  # the task's
    assert "m.txt" not in git(repo, "ls-tree", "--name-only", integration(run_id))
    # Conflict: both changed README.md's line.
    code, out, run_id = run_while_main_moves(
        repo, tmp_path, "echo task > README.md", {"README.md": "yours\n"}, "--land",
        "--run-id", "second",
    )  # fmt: skip
    assert code == 3, out
    assert (
        "not landed: main moved on since the run started (1 commit), and it conflicts with "
        f"the result in README.md; bring both in: git merge {integration(run_id)}, and "
        "resolve (or merge main into the result branch, resolve there, and `abreast land "
        f"{run_id}`, which checks it)" in out
    ), out
    assert (repo / "README.md").read_text() == "yours\n"
    # Which it does: resolved on the result branch, then landed.
    other = tmp_path / "result"
    git(repo, "worktree", "add", "-q", str(other), integration(run_id))
    merged = subprocess.run(
        ["git", "merge", "-q", "main"], cwd=other, capture_output=True, check=False
    )
    assert merged.returncode == 1  # the conflict, to resolve
    (other / "README.md").write_text("both\n")
    git(other, "commit", "-q", "-am", "resolved")
    landed = run_abreast("land", run_id, cwd=repo)
    assert landed.code == 0, landed.out + landed.err
    assert (repo / "README.md").read_text() == "both\n"
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "resolved"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_cancel_while_the_checks_run_on_the_result_merged_with_base_ends_them(
    repo: Path, tmp_path: Path, sig: int
) -> None:
    # After the run's loop its signal handlers were gone: a Ctrl-C or `abreast cancel`
    # (TERM) while the checks ran on the merged result would have killed abreast outright
    # and left the checks running. `abreast cancel` leaves it not landed (exit 3); a
    # Ctrl-C ends abreast by SIGINT, as it does a run, so that a shell's loop stops.
    pid_file = tmp_path / "check.pid"
    slow = f'if [ -z "$ABREAST_TASK_ID" ]; then echo $$ > {pid_file}; exec sleep 60; fi'

    def cancel(proc: subprocess.Popen[str]) -> None:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="check")
        proc.send_signal(sig)

    code, out, _ = run_while_main_moves(
        repo, tmp_path, "echo A > a.txt", {"m.txt": "M\n"}, "--land",
        then=cancel, checks=[{"run": slow}],
    )  # fmt: skip
    assert code == (3 if sig == signal.SIGTERM else -signal.SIGINT), out
    assert "cancelling: the merge checks are ended, nothing more lands" in out
    assert (
        "not landed: cancelled while the merge checks ran on the result merged with main's 1 "
        "new commit" in out
    ), out
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "meanwhile"
    assert not pid_alive(int(pid_file.read_text()))


def test_without_land_a_base_that_moved_on_is_said_with_a_merge_that_works(
    repo: Path, tmp_path: Path
) -> None:
    # It said `git merge --ff-only`, which git refuses once main has moved on. The commits
    # are named: one a task made in your checkout (`git -C ~/proj commit`) read as yours.
    code, out, run_id = run_while_main_moves(repo, tmp_path, "echo A > a.txt", {"m.txt": "M\n"})
    assert code == 0, out
    meanwhile = git(repo, "log", "-1", "--format=%h %s", "main").strip()
    assert (
        f"bring it in: git merge {integration(run_id)}   (main moved on since the run started, "
        f"1 commit ({meanwhile}): not a fast-forward; or `abreast land {run_id}`, which merges "
        "and checks them)" in out
    ), out
    assert "--ff-only" not in out


def test_abreast_land_brings_a_reviewed_result_in_once_base_moved_on(repo: Path) -> None:
    # Agents' work is read before it goes in: a run without --land, its result looked at,
    # and meanwhile main moved on. Bringing it in was `git merge` by hand, the checks
    # never run on the two together; `--land` meant running the whole workflow again.
    check = {"run": "ls"}
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, checks=[check])
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert f"(or `abreast land {run_id}`)" in out
    # The runs list says which results are still to be brought in.
    listed = run_abreast("status", cwd=repo).out
    assert re.search(rf"(?m)^{run_id} .* 1/1 done; result not landed$", listed), listed
    assert f"`abreast land {run_id}` brings it in" in listed
    (repo / "m.txt").write_text("M\n")
    git(repo, "add", "m.txt")
    git(repo, "commit", "-q", "-m", "meanwhile")
    # Since gone on to other work: the run's base is main still, not what HEAD is on now.
    git(repo, "checkout", "-q", "-b", "feature")
    landed = run_abreast("land", cwd=repo)  # the latest run
    assert landed.code == 0, landed.out + landed.err
    assert landed.out == (
        f"run {run_id}: landed: main fast-forwarded to {git(repo, 'rev-parse', 'main')[:12]} "
        "(the result merged with main's 1 new commit, checked)\n"
    )
    assert "running the merge checks on the result merged with main's 1 new commit" in landed.err
    assert "m.txt" in (repo / ".abreast" / "runs" / run_id / "checks" / "_result.1.log").read_text()
    assert show(repo, "main", "a.txt") == "A\n" and show(repo, "main", "m.txt") == "M\n"
    assert not (repo / "a.txt").exists() and git(repo, "status", "--porcelain") == ""
    assert git(repo, "log", "-1", "--format=%s", "main^1").strip() == "meanwhile"
    # `status` says it landed; landing again does nothing, and says so.
    assert "\n  landed: main fast-forwarded to " in run_abreast("status", run_id, cwd=repo).out
    assert "not landed" not in run_abreast("status", cwd=repo).out
    again = run_abreast("land", run_id, cwd=repo)
    assert (again.code, again.out) == (0, f"run {run_id}: main already has the result\n")
    assert "\n  landed: main fast-forwarded to " in run_abreast("status", run_id, cwd=repo).out
    # Merged by hand, and main moved on since: nothing to do, and no empty merge made.
    git(repo, "checkout", "-q", "main")
    code, out, run_id = run(repo, workflow(repo, {"b": {"run": "echo B > b.txt"}}))
    assert code == 0, out
    git(repo, "merge", "-q", "--no-ff", "-m", "by hand", integration(run_id))
    head = git(repo, "rev-parse", "main")
    again = run_abreast("land", run_id, cwd=repo)
    assert (again.code, again.out) == (0, f"run {run_id}: main already has the result\n")
    assert git(repo, "rev-parse", "main") == head
    said = run_abreast("status", run_id, cwd=repo).out  # no longer "bring it in"
    assert "\n  main already has the result\n" in said and "bring it in" not in said


def test_abreast_land_refuses_what_it_should_not_land_saying_what_to_do(
    repo: Path, tmp_path: Path
) -> None:
    tasks = {"a": {"run": "echo A > a.txt"}, "b": {"run": "exit 1"}}
    path = workflow(repo, tasks, defaults={"retries": 0})
    code, out, run_id = run(repo, path, "--land")
    assert code == 1, out
    assert (
        f"not landed: the run did not succeed (`abreast land {run_id} --partial` brings in "
        "the work of the 1 task that landed)" in out
    ), out
    refused = run_abreast("land", run_id, cwd=repo)
    assert refused.code == 2
    assert (
        f"abreast: error: run {run_id} failed: its result holds the work of only the tasks "
        "that landed (1 of 2)\n"
        f"  hint: `abreast land {run_id} --partial` lands that; `abreast resume {run_id} "
        "--retry-failed` runs what failed first"
    ) in refused.err
    assert not (repo / "a.txt").exists()
    partial = run_abreast("land", run_id, "--partial", cwd=repo)
    assert partial.code == 0, partial.err
    assert (repo / "a.txt").read_text() == "A\n"
    # Red on the two together: not landed (exit 3), said, and `status` says it.
    check = {"run": "! { test -e m.txt && test -e c.txt; }"}
    path = workflow(repo, {"c": {"run": "echo C > c.txt"}}, checks=[check])
    code, out, run_id = run(repo, path)
    assert code == 0, out
    (repo / "m.txt").write_text("M\n")
    git(repo, "add", "m.txt")
    git(repo, "commit", "-q", "-m", "meanwhile")
    red = run_abreast("land", run_id, cwd=repo)
    assert red.code == 3, red.out + red.err
    said = (
        f"run {run_id}: not landed: main moved on since the run started (1 commit), and the "
        "result merged with main's 1 new commit fails the merge checks"
    )
    assert red.out.startswith(said), red.out
    assert "\n  not landed: main moved on" in run_abreast("status", run_id, cwd=repo).out
    assert not (repo / "c.txt").exists()
    # A run in the project directory has nothing apart from it to land.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "w.yaml").write_text(json.dumps({"version": 1, "tasks": {"x": {"run": "true"}}}))
    assert run_abreast("run", "w.yaml", "--no-monitor", "--plain", cwd=plain).code == 0
    none = run_abreast("land", cwd=plain)
    assert none.code == 2 and "(isolation: none): its work is already there" in none.err


def test_abreast_land_checks_a_result_changed_since_the_run(repo: Path) -> None:
    # After review, one task's landing reverted on the result branch (or a fix made there
    # by hand): `abreast land` fast-forwarded main to it unchecked.
    check = {"run": "test ! -e broken.txt"}
    tasks = {"good": {"run": "echo G > g.txt"}, "bad": {"run": "echo B > b.txt"}}
    code, out, run_id = run(repo, workflow(repo, tasks, checks=[check]))
    assert code == 0, out
    branch = integration(run_id)
    landing = git(repo, "log", "--format=%H", "--grep", "abreast: land bad", branch).strip()
    other = repo.parent / "result"
    git(repo, "worktree", "add", "-q", str(other), branch)
    git(other, "revert", "--no-edit", "-m", "1", landing)
    (other / "broken.txt").write_text("oops\n")
    git(other, "add", "broken.txt")
    git(other, "commit", "-q", "-m", "a fix by hand")
    red = run_abreast("land", run_id, cwd=repo)
    assert red.code == 3, red.out + red.err
    assert (
        "the result branch, with 2 commits made on it since the run: running the merge "
        "checks on it" in red.err
    )
    assert red.out.startswith(
        f"run {run_id}: not landed: the result branch, with 2 commits made on it since the "
        "run, fails the merge checks: check `test ! -e broken.txt` failed (exit 1)"
    ), red.out
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "workflow"
    git(other, "rm", "-q", "broken.txt")
    git(other, "commit", "-q", "-m", "the fix fixed")
    green = run_abreast("land", run_id, cwd=repo)
    assert green.code == 0, green.out + green.err
    assert "(the result with 3 commits made on it since the run, checked)" in green.out
    assert show(repo, "main", "g.txt") == "G\n" and "b.txt" not in tree(repo, "main")


def test_a_ctrl_c_while_abreast_land_checks_ends_the_checks_and_lands_nothing(
    repo: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "check.pid"
    slow = f'if [ -z "$ABREAST_TASK_ID" ]; then echo $$ > {pid_file}; exec sleep 60; fi'
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, checks=[{"run": slow}])
    code, out, run_id = run(repo, path)
    assert code == 0, out
    git(repo, "commit", "-q", "--allow-empty", "-m", "meanwhile")
    proc = subprocess.Popen(
        [PY, "-m", "abreast", "land", run_id],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with ended_after(proc):
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="check")
        proc.send_signal(signal.SIGINT)
        said, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT, said + err
    assert "cancelling: the merge checks are ended, nothing is landed" in err
    assert said == (
        f"run {run_id}: not landed: cancelled while the merge checks ran on the result merged "
        "with main's 1 new commit\n"
    )
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "meanwhile"
    assert not pid_alive(int(pid_file.read_text()))


def test_two_abreast_lands_of_a_run_at_once_land_it_once_and_a_resume_is_refused_meanwhile(
    repo: Path, tmp_path: Path
) -> None:
    # Two `abreast land` of one run at once (two terminals, a script run twice) both
    # merged and checked, and the second failed on git's "already exists" of the first
    # one's checks worktree (exit 1, git's error); a `resume --redo` meanwhile would move
    # the result branch under the landing.
    go, checking, err2 = tmp_path / "go", tmp_path / "checking", tmp_path / "err2"
    slow = (
        f'if [ -z "$ABREAST_TASK_ID" ]; then touch {checking}; '
        f"while [ ! -e {go} ]; do sleep 0.05; done; fi"
    )
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, checks=[{"run": slow}])
    code, out, run_id = run(repo, path)
    assert code == 0, out
    git(repo, "commit", "-q", "--allow-empty", "-m", "meanwhile")
    land = [PY, "-m", "abreast", "land", run_id]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen(land, cwd=repo, **pipes)  # type: ignore[call-overload]
    with ended_after(first), touched_after(go):
        wait_for(checking.exists, what="the first landing's checks")
        with err2.open("w") as said:
            second = subprocess.Popen(
                land, cwd=repo, stdout=subprocess.PIPE, stderr=said, text=True
            )
        with ended_after(second):
            wait_for(lambda: "waiting for another" in err2.read_text(), what="the second")
            assert err2.read_text() == (
                f"waiting for another `abreast land` of run {run_id} (pid {first.pid}) to end\n"
            )
            redo = run_abreast("resume", run_id, "--redo", "a", cwd=repo)
            assert redo.code == 2, redo.out + redo.err
            assert f"run {run_id} is being landed by `abreast land` (pid {first.pid})" in redo.err
            # Nor does `cleanup` take its checks' worktree and processes for leftovers.
            cleaned = run_abreast("cleanup", cwd=repo)
            assert cleaned.code == 0 and run_id not in cleaned.out, cleaned.out + cleaned.err
            go.touch()
            out1, err1 = first.communicate(timeout=60)
            out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0, out1 + err1
    assert out1.startswith(f"run {run_id}: landed: main fast-forwarded to ")
    assert (second.returncode, out2) == (0, f"run {run_id}: main already has the result\n")
    assert git(repo, "log", "-1", "--format=%s", "main^1").strip() == "meanwhile"


def test_resume_redo_runs_a_task_that_succeeded_again_told_the_review(repo: Path) -> None:
    # After review of a run's result, one agent's work wanted changing: a resume never ran
    # again what succeeded, so the only way was a new run of the whole workflow.
    agent = (
        'printf "attempt %s: %s\\n" "$ABREAST_ATTEMPT" "$(printf %s "$ABREAST_FEEDBACK" '
        '| tail -n 1)" >> api.txt'
    )
    tasks = {
        "api": {"agent": "fake", "prompt": "write the api"},
        "docs": {"needs": ["api"], "run": "cp api.txt docs.txt"},
        "bad": {"run": "exit 1"},
    }
    path = workflow(repo, tasks, agents={"fake": {"run": agent}}, defaults={"retries": 0})
    code, out, run_id = run(repo, path)
    assert code == 1, out
    refused = run_abreast("resume", run_id, "--redo", "bad", cwd=repo)
    assert refused.code == 2
    assert "--redo bad: bad failed; --redo runs again a task that succeeded" in refused.err
    assert f"hint: `abreast resume {run_id} --retry bad` runs it again" in refused.err
    alone = run_abreast("resume", run_id, "--feedback", "x", cwd=repo)
    assert alone.code == 2 and "no --redo was given" in alone.err
    redo = run_abreast(
        "resume", run_id, "--redo", "api", "--feedback", "use async handlers", "--plain",
        cwd=repo,
    )  # fmt: skip
    assert redo.code == 1, redo.out + redo.err  # bad still failed: not retried
    assert "api: succeeded; run again (--redo)" in redo.out
    assert "docs, which needs it, is left as it ended (--redo it too" in redo.out
    # It started from its own earlier work, and was told the review.
    assert show(repo, integration(run_id), "api.txt") == (
        "attempt 1: \nattempt 2: use async handlers\n"
    )
    assert show(repo, integration(run_id), "docs.txt") == "attempt 1: \n"
    prompt = run_abreast("logs", run_id, "api", "--prompt", cwd=repo).out
    assert "the user asks for the task to be done again (abreast resume --redo):" in prompt
    assert prompt.rstrip().endswith("use async handlers")
    states = dict(query(repo / ".abreast" / "state.db", "SELECT task_id, attempts FROM tasks"))
    assert (states["api"], states["docs"], states["bad"]) == (2, 1, 1)


def test_land_when_base_was_rewritten_leaves_the_merge_to_you(repo: Path) -> None:
    # The commit the run started from is no longer on main (amended, as a teammate's force
    # push would): merging would bring it back, so nothing is merged.
    moved = f"git -C {repo} commit -q --amend --allow-empty -m rewritten && echo A > a.txt"
    path = workflow(repo, {"a": {"run": moved}})
    base = git(repo, "rev-parse", "main").strip()
    code, out, run_id = run(repo, path, "--land")
    assert code == 3, out
    assert (
        "not landed: main was rewritten since the run started (the commit it started from, "
        f"{base[:12]}, is no longer on it: an amend, a rebase, a forced push?), and merging "
        f"would bring that commit back; bring both in, if you mean to: git merge "
        f"{integration(run_id)}" in out
    ), out
    assert "running the merge checks" not in out
    assert git(repo, "log", "-1", "--format=%s", "main").strip() == "rewritten"
    assert show(repo, integration(run_id), "a.txt") == "A\n"


@pytest.mark.parametrize("where", ["detached", "tag"])
def test_land_without_a_branch_to_move_is_refused_before_the_run(repo: Path, where: str) -> None:
    # It was found at the end, after the work: "not landed: base 'HEAD' is not a branch".
    top: dict[str, Any] = {}
    if where == "tag":
        git(repo, "tag", "v1")
        top["base"] = "v1"
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, **top)
    if where == "detached":
        git(repo, "checkout", "-q", "--detach")
    code, out, run_id = run(repo, path, "--land")
    assert code == 2, out
    assert run_id == ""
    what = "HEAD is detached" if where == "detached" else "base 'v1' is not a branch"
    assert f"--land fast-forwards a local branch to the result, and {what}" in out
    assert "hint: check out a branch or set `base:` to one" in out
    assert "no runs yet" in run_abreast("status", cwd=repo).err  # nothing journaled
    code, out, run_id = run(repo, path)  # without --land the run is fine
    assert code == 0, out
    # ... and says how to bring its result in without offering `abreast land`, which has
    # no branch to move either: refused before anything is checked, with the git way.
    result = integration(run_id)
    what = "HEAD was detached" if where == "detached" else "v1 is not a branch"
    assert f"bring it in: git merge {result}   (where you want it: {what}, so abreast" in out
    assert f"`abreast land {run_id}`" not in out
    start = git(repo, "rev-parse", "HEAD").strip()[:12]
    on = f"{start} (a detached HEAD)" if where == "detached" else "v1"
    assert f"1 task landed, 2 commits on top of {on}\n" in out
    land = run_abreast("land", run_id, cwd=repo)
    assert land.code == 2, land.err
    why = (
        f"started on a detached HEAD (at {start})"
        if where == "detached"
        else "started from v1, which is not a local branch (a tag, a remote-tracking "
        "branch or a commit)"
    )
    assert f"run {run_id} {why}: there is no branch for abreast land to move" in land.err
    assert f"hint: `git merge {result}` in the checkout you want it in" in land.err
    db = repo / ".abreast" / "state.db"
    assert query(db, "SELECT type FROM events WHERE type = 'result.landed'") == []


def test_the_start_note_names_uncommitted_files_but_not_the_workflow_file(repo: Path) -> None:
    path = repo / "abreast.yaml"  # written, not committed: the usual first run
    path.write_text(json.dumps({"version": 1, "tasks": {"a": {"run": "true"}}}))
    code, out, _ = run(repo, path)
    assert code == 0, out
    assert "uncommitted" not in out
    for i in range(5):
        (repo / f"new{i}.txt").write_text("x")
    code, out, _ = run(repo, path)
    assert "note: 5 uncommitted changes in" in out
    assert "(new0.txt, new1.txt, new2.txt and 2 more)" in out


def test_worktrees_are_pooled_across_tasks(repo: Path) -> None:
    tasks = {f"t{i}": {"run": f"echo {i} > f{i}.txt"} for i in range(6)}
    path = workflow(repo, tasks, max_parallel=2)
    code, out, run_id = run(repo, path)
    assert code == 0, out
    dirs = {r[0] for r in query(repo / ".abreast" / "state.db", "SELECT workdir FROM attempts")}
    assert len(dirs) <= 3  # six tasks, two at once: worktrees reused (one may be on its way
    # back from the merge queue when the next task starts)
    for i in range(6):
        assert show(repo, integration(run_id), f"f{i}.txt") == f"{i}\n"


def test_cleanup_lists_then_removes_what_failed_runs_kept(repo: Path) -> None:
    path = workflow(repo, {"bad": {"run": "echo x > y.txt; exit 1"}})
    code, _, run_id = run(repo, path)
    assert code == 1
    snapshot = f"refs/abreast/{run_id}/signals/bad/ready"  # as a run that died leaves it
    git(repo, "update-ref", snapshot, "HEAD")
    listed = run_abreast("cleanup", "--dry-run", cwd=repo)
    assert listed.code == 0
    assert f"{run_id} (finished (failed)): would" in listed.out
    assert f"delete branch abreast/{run_id}/bad" in listed.out
    assert f"delete {snapshot}" in listed.out
    assert git(repo, "worktree", "list").count("\n") == 2  # nothing removed yet
    stale, fresh = repo / ".git/abreast/index-stale", repo / ".git/abreast/index-fresh"
    for d in (stale, fresh):  # what snapshots cut short by a kill leave
        d.mkdir(parents=True)
        (d / "index").write_bytes(b"x")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    done = run_abreast("cleanup", cwd=repo)
    assert done.code == 0, done.err
    assert not stale.exists() and fresh.exists()  # one may be in use
    assert git(repo, "worktree", "list").count("\n") == 1
    assert git(repo, "branch", "--list", f"abreast/{run_id}/bad") == ""
    assert git(repo, "for-each-ref", "refs/abreast/") == ""
    assert git(repo, "branch", "--list", integration(run_id)).strip()  # results stay
    kept = (
        f"kept 1 result branch: {integration(run_id)} (merge what you "
        "want from them; `abreast cleanup --results` deletes them)"
    )
    assert done.out.splitlines()[-1] == kept, done.out  # said, as they pile up run by run
    again = run_abreast("cleanup", cwd=repo).out
    assert again.splitlines() == ["nothing to clean up", kept]
    assert run_abreast("cleanup", "--results", cwd=repo).code == 0
    assert git(repo, "branch", "--list", integration(run_id)) == ""
    assert run_abreast("cleanup", cwd=repo).out.strip() == "nothing to clean up"


def test_cleanup_says_which_results_no_branch_has_before_they_are_deleted(repo: Path) -> None:
    # `cleanup --results` deleted a result nobody had brought in as it did one that was
    # landed, without a word: its work went when git next collected.
    code, out, run_id = run(repo, workflow(repo, {"a": {"run": "echo A > a.txt"}}))
    assert code == 0, out
    branch = integration(run_id)
    kept = run_abreast("cleanup", cwd=repo).out.splitlines()[-1]
    assert kept == (
        f"kept 1 result branch: {branch} (the work of run {run_id} is in no branch of yours: "
        f"`abreast land {run_id}` brings it in; `abreast cleanup --results` deletes them)"
    )
    sha = git(repo, "rev-parse", branch).strip()
    listed = run_abreast("cleanup", "--results", "--dry-run", cwd=repo).out
    assert (
        f"delete result branch {branch}, whose work no branch of yours has (not landed: "
        f"`abreast land {run_id}` brings it in; `git branch {branch} {sha[:12]}` puts it back "
        "while git keeps the commit)"
    ) in listed
    assert run_abreast("land", run_id, cwd=repo).code == 0
    kept = run_abreast("cleanup", cwd=repo).out.splitlines()[-1]
    assert "merge what you want from them" in kept and "no branch" not in kept
    listed = run_abreast("cleanup", "--results", "--dry-run", cwd=repo).out
    assert f"delete result branch {branch}\n" in listed


def test_cleanup_works_when_the_disk_has_no_room_for_the_lock_files_note(repo: Path) -> None:
    # `abreast cleanup` is how room is made on a full disk, and `resume` is what the
    # full-disk error says to run after: both write their pid into the journal's lock
    # file for a waiter to be told, and a failed write was a traceback. /dev/full as
    # that file fails the write as a full disk does.
    path = workflow(repo, {"bad": {"run": "echo x > y.txt; exit 1"}})
    code, _, run_id = run(repo, path)
    assert code == 1
    (repo / ".abreast" / "state.db.lock").symlink_to("/dev/full")
    done = run_abreast("cleanup", cwd=repo)
    assert done.code == 0, done.err
    assert f"delete branch abreast/{run_id}/bad" in done.out
    assert git(repo, "branch", "--list", f"abreast/{run_id}/bad") == ""


def test_cleanup_leaves_the_worktrees_of_a_run_of_another_journal_that_still_runs(
    repo: Path,
) -> None:
    # A run journaled elsewhere (--state) works in this repository's worktrees: cleanup
    # here, whose journal does not know it, must not take them for leftovers.
    release, started = repo.parent / "release", repo.parent / "started"
    path = workflow(
        repo,
        {
            "a": {
                "run": f"touch {started}; until [ -e {release} ]; do sleep 0.05; done;"
                " echo a > a.txt"
            }
        },
    )
    proc, run_id = start_run(
        path, "--state", f"sqlite://{repo.parent}/elsewhere/state.db", cwd=repo
    )
    try:
        wait_for(started.exists, what="a")
        listed = run_abreast("cleanup", "--dry-run", cwd=repo)
        assert run_id not in listed.out, listed.out
        assert run_abreast("cleanup", cwd=repo).code == 0
        release.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert git(repo, "show", f"{integration(run_id)}:a.txt") == "a\n"  # its work landed


def test_without_git_a_repository_is_refused_not_run_in_place(repo: Path, tmp_path: Path) -> None:
    # With no git on PATH the repository was taken for a plain directory: "not in a git
    # repository", and the tasks ran in the checkout itself.
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    no_git = {**os.environ, "PATH": str(tmp_path / "empty")}
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=no_git)
    assert result.code == 2, result.out + result.err
    assert (
        "isolation: worktree, the default in a git repository, needs git 2.38 or later; "
        "there is no `git` on PATH" in result.err
    )
    assert "or set `isolation: none` to run tasks in the project directory itself" in result.err
    assert not (repo / "a.txt").exists()
    assert not (repo / ".abreast" / "state.db").exists()  # nothing journaled
    cleanup = run_abreast("cleanup", cwd=repo, env=no_git)
    assert cleanup.code == 2, cleanup.err
    assert "git is not installed here (no `git` on PATH), and this project" in cleanup.err
    demo = run_abreast("demo", cwd=tmp_path, env=no_git)
    assert demo.code == 2, demo.err  # it was a traceback from `git init`
    assert "abreast demo needs git 2.38 or later; there is no `git` on PATH" in demo.err
    # Said to run in place, it does, git or not.
    path.write_text(
        json.dumps({"version": 1, "isolation": "none", "tasks": {"a": {"run": "echo A > a.txt"}}})
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=no_git)
    assert result.code == 0, result.out + result.err
    assert (repo / "a.txt").read_text() == "A\n"


def test_a_git_too_old_for_the_merge_queue_is_refused_before_the_run(
    repo: Path, tmp_path: Path
) -> None:
    # No git older than 2.38 is at hand here: this one is the real git, saying it is
    # 2.34.1 (as Ubuntu 22.04's does). It had failed at the first merge, after the work.
    shim = tmp_path / "old" / "git"
    shim.parent.mkdir()
    real = shutil.which("git")
    assert real is not None
    shim.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = --version ] && { echo "git version 2.34.1"; exit 0; }; done\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    old = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=old)
    assert result.code == 2, result.out + result.err
    assert (
        "isolation: worktree, the default in a git repository, needs git 2.38 or later; the "
        "git on PATH is 2.34.1 (the merge queue merges with `git merge-tree --write-tree`"
        in result.err
    )
    assert not (repo / ".abreast" / "state.db").exists()


def test_what_a_merge_check_leaves_running_is_ended_with_the_run(
    repo: Path, tmp_path: Path
) -> None:
    # A check that starts a server in a session of its own (and does not stop it): the
    # queue ends the check's own tree only; the server outlived the run.
    pids = tmp_path / "pids"
    server = f"setsid sh -c 'echo $$ >> {pids}; exec sleep 300' </dev/null >/dev/null 2>&1 &"
    wait = f"until [ -s {pids} ]; do sleep 0.01; done"
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}}, checks=[{"run": f"{server} {wait}"}])
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert git(repo, "show", f"{integration(run_id)}:a.txt") == "A\n"  # the check passed
    assert (
        "a: ending 1 process the merge check of a left running in a session or process"
        " group of its own" in out
    ), out
    assert [p for p in pids.read_text().split() if pid_alive(int(p))] == []


def test_a_repository_git_will_not_use_is_an_error_not_a_run_in_place(
    repo: Path, tmp_path: Path
) -> None:
    # Taken for no repository at all: the run went ahead with isolation none, its tasks
    # working side by side in the checkout itself, with a note that it is not git.
    path = workflow(repo, {"a": {"run": "echo a > a.txt"}})
    with (repo / ".git" / "config").open("a") as f:
        f.write("[core\n")
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo)
    assert result.code == 2, result.out + result.err
    assert f"git cannot use the repository holding {repo}: bad config line" in result.err
    assert not (repo / "a.txt").exists() and not (repo / ".abreast" / "state.db").exists()
    if os.geteuid() != 0:
        return  # the rest needs to give the repository to another user
    fixed = (repo / ".git" / "config").read_text().replace("[core\n", "")
    (repo / ".git" / "config").write_text(fixed)
    shutil.copytree(repo, tmp_path / "theirs")
    theirs = tmp_path / "theirs"
    for where, _, files in os.walk(theirs):
        for name in [".", *files]:
            os.chown(os.path.join(where, name), 4321, 4321)
    result = run_abreast("run", str(theirs / "abreast.yaml"), "--no-monitor", cwd=theirs)
    assert result.code == 2, result.out + result.err
    assert f"detected dubious ownership in repository at '{theirs}'" in result.err
    assert f"git config --global --add safe.directory {theirs} (if you trust it)" in result.err


def test_worktree_isolation_outside_git_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps({"version": 1, "isolation": "worktree", "tasks": {"a": {"run": "true"}}})
    )
    result = run_abreast("run", str(path), cwd=tmp_path)
    assert result.code == 2
    assert "isolation: worktree needs a git repository" in result.err


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("moment", ["merge", "checks"])
def test_sigkill_during_merge_or_checks_lands_each_task_once_and_only_checked(
    repo: Path, moment: str, batch: int
) -> None:
    marker = repo.parent / "check-started"
    checked = repo.parent / "checked"
    check = (
        f'echo "$ABREAST_CHECK_COMMIT" >> {checked}.all; touch {marker}; '
        f"sleep {'1.5' if moment == 'checks' else '0.2'}; "
        f'echo "$ABREAST_CHECK_COMMIT" >> {checked}'
    )
    tasks = {f"t{i}": {"run": f"echo {i} > f{i}.txt; sleep 0.{i}"} for i in range(4)}
    path = workflow(repo, tasks, max_parallel=4, checks=[{"run": check}], merge={"batch": batch})
    proc, run_id = start_run(path, cwd=repo)
    wait_for(marker.exists, timeout=30, what="a check to start")
    if moment == "merge":
        wait_for(lambda: checked.exists(), timeout=30, what="a check to pass")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    ref = f"refs/heads/{integration(run_id)}"
    base = git(repo, "rev-parse", "main").strip()
    held = [line.split()[0] for line in git(repo, "reflog", "--format=%H", ref).splitlines()]
    green = set(checked.read_text().split())
    # Every value the integration ref ever held is the base or a merge whose checks passed.
    assert set(held) - {base} <= green
    firsts = git(repo, "log", "--first-parent", "--format=%s", ref).splitlines()
    landed = [s.split()[2] for s in firsts if s.startswith("abreast: land ")]
    assert sorted(landed) == sorted(tasks)  # every task exactly once
    for i in range(4):
        assert show(repo, ref, f"f{i}.txt") == f"{i}\n"


def test_a_resumed_run_keeps_a_task_waiting_for_the_overlapping_work_it_merges_again(
    repo: Path,
) -> None:
    # The orchestrator died while a's work was being checked, b (owning the same file)
    # waiting for it to land: resumed, a's merge starts again, and b must wait for it
    # still, not start from work without a's and conflict with it.
    marker = repo.parent / "check-started"
    own = {"owns": ["/src/shared.txt"], "retries": 0}
    path = workflow(
        repo,
        {
            "a": {"run": "echo a >> src/shared.txt", **own},
            "b": {"run": "sleep 0.3; echo b >> src/shared.txt", **own},
        },
        checks=[{"run": f"touch {marker}; sleep 1.5"}],
    )
    proc, run_id = start_run(path, cwd=repo)
    wait_for(marker.exists, timeout=30, what="a's check to start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "conflict" not in resumed.out, resumed.out
    lines = show(repo, integration(run_id), "src/shared.txt").splitlines()
    assert lines[-2:] == ["a", "b"], lines


def test_resume_removes_the_worktrees_and_heartbeats_of_attempts_it_killed(repo: Path) -> None:
    started = repo.parent / "started"
    tasks = {
        f"t{i}": {
            "run": f'echo x >> {started}; [ "$ABREAST_ATTEMPT" = 1 ] && sleep 30; '
            f"echo {i} > f{i}.txt"
        }
        for i in range(2)
    }
    path = workflow(repo, tasks, max_parallel=2)
    proc, run_id = start_run(path, cwd=repo)
    wait_for(
        lambda: started.exists() and len(started.read_text().split()) == 2,
        timeout=30,
        what="both tasks to start",
    )
    coord = repo / ".abreast" / "coord.db"
    beats = f"SELECT COUNT(*) FROM heartbeats WHERE key LIKE 'attempt:{run_id}/%'"
    wait_for(lambda: query(coord, beats)[0][0] == 2, what="both tasks' heartbeats")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert run_id in git(repo, "worktree", "list")  # the killed attempts' worktrees
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert show(repo, integration(run_id), "f1.txt") == "1\n"
    assert run_id not in git(repo, "worktree", "list")  # none left behind
    assert query(coord, beats)[0][0] == 0  # nor heartbeats of the killed attempts


def crashed_while_a_runs_then_a_ended(repo: Path, tmp_path: Path) -> str:
    """A run of a (no retries) and b, which copies a's file, whose orchestrator was
    SIGKILLed while a ran, and a ended well after (its work left in its worktree, for a
    resume to land): the run's id."""
    go = tmp_path / "go"
    wait = f"touch {tmp_path}/started; while [ ! -e {go} ]; do sleep 0.05; done; echo A > a.txt"
    tasks = {"a": {"run": wait, "retries": 0}, "b": {"run": "cp a.txt b.txt", "needs": ["a"]}}
    proc, run_id = start_run(workflow(repo, tasks), cwd=repo)
    with touched_after(go):
        wait_for((tmp_path / "started").exists, what="a to start")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    exits = repo / ".abreast" / "runs" / run_id / "exits"
    wait_for(lambda: exits.exists() and "a.1 0" in exits.read_text(), what="a to end")
    return run_id


def test_cleanup_after_a_crash_keeps_the_work_of_a_task_that_ended_meanwhile(
    repo: Path, tmp_path: Path
) -> None:
    # After a crash, `abreast cleanup` ("remove what dead runs left") removed the worktree
    # holding the uncommitted work of an agent that had ended well meanwhile; the resume
    # then failed the task, "its work was lost in a crash", and blocked what needed it.
    run_id = crashed_while_a_runs_then_a_ended(repo, tmp_path)
    cleaned = run_abreast("cleanup", cwd=repo)
    assert cleaned.code == 0, cleaned.err
    assert re.search(
        rf"keep worktree (\S+): the work of a, which ended after the orchestrator died "
        rf"\(`abreast resume {run_id}` takes it\)",
        cleaned.out,
    ), cleaned.out
    # What cleanup journaled of the run is not the run at work (its time would run on).
    from abreast.coord.journal import Journal

    with Journal(repo / ".abreast" / "state.db") as journal:
        row = journal.run(run_id)
        assert row is not None
        [cleaned_at] = [e.ts for e in journal.events(run_id, types=("run.cleaned",))]
        assert journal.last_alive(row) < cleaned_at
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert show(repo, integration(run_id), "b.txt") == "A\n"
    assert run_abreast("cleanup", cwd=repo).out.startswith("nothing to clean up\n")


def test_a_task_whose_work_a_crash_lost_runs_again_without_spending_a_retry(
    repo: Path, tmp_path: Path
) -> None:
    # Its worktree gone by the resume (removed by hand, a cleanup of old): the task failed,
    # "its work was lost in a crash", with no retries left, and what needed it was blocked.
    run_id = crashed_while_a_runs_then_a_ended(repo, tmp_path)
    [(workdir,)] = query(repo / ".abreast" / "state.db", "SELECT workdir FROM attempts")
    shutil.rmtree(workdir)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "start   a (attempt 2)" in resumed.out
    assert show(repo, integration(run_id), "b.txt") == "A\n"


def test_a_resumed_runs_summary_counts_what_landed_before_the_crash(repo: Path) -> None:
    go = repo.parent / "go"
    tasks = {
        "quick": {"run": "echo q > quick.txt; sleep 0.2"},
        "slow": {"run": f"while [ ! -e {go} ]; do sleep 0.05; done; echo s > slow.txt"},
    }
    path = workflow(repo, tasks, max_parallel=2)
    proc, run_id = start_run(path, cwd=repo)
    state = f"sqlite://{repo}/.abreast/state.db"
    landed = f"SELECT COUNT(*) FROM events WHERE run_id = '{run_id}' AND type = 'merge.landed'"
    wait_for(lambda: query(repo / ".abreast" / "state.db", landed)[0][0] == 1, what="quick to land")
    proc.send_signal(signal.SIGKILL)  # before it could tidy up quick's branch
    proc.communicate(timeout=30)
    assert git(repo, "branch", "--list", f"abreast/{run_id}/quick") != ""
    go.touch()
    resumed = run_abreast("resume", run_id, "--state", state, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "2 tasks landed" in resumed.out  # quick landed before the crash
    quick = next(line for line in resumed.out.splitlines() if line.startswith("  quick "))
    assert " - " not in quick.split("succeeded")[1][:12]  # its time, from the first session
    assert git(repo, "branch", "--list", f"abreast/{run_id}/quick") == ""  # its branch is gone
    assert show(repo, integration(run_id), "quick.txt") == "q\n"


def test_ctrl_c_during_a_check_ends_it_and_lands_nothing(repo: Path) -> None:
    pid_file = repo.parent / "check.pid"
    path = workflow(
        repo,
        {"one": {"run": "echo hi > one.txt"}},
        checks=[{"run": f"echo $$ > {pid_file}; sleep 60"}],
    )
    proc, run_id = start_run(path, cwd=repo)
    check = 0
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="check")
        check = int(pid_file.read_text())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # not the check's 60 s
        assert proc.returncode == -signal.SIGINT, out + err
        assert "one  cancelled" in out
        assert "0 tasks landed" in out
        wait_for(lambda: not pid_alive(check), what="the check to be ended")
        assert git(repo, "log", "--format=%s", integration(run_id)).splitlines()[0] == "workflow"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if check and pid_alive(check):
            os.killpg(check, signal.SIGKILL)  # the check leads its own session


def test_16_processes_add_and_remove_worktrees_concurrently(repo: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from abreast.workspace.repo import Repo\n"
        f"repo = Repo(Path({str(repo)!r}))\n"
        "n = sys.argv[1]\n"
        "for i in range(3):\n"
        "    path = repo.abreast_dir / 'stress' / f'w{n}-{i}'\n"
        "    repo.worktree_add(path, 'HEAD')\n"
        "    assert (path / 'README.md').exists()\n"
        "    repo.worktree_remove(path)\n"
    )
    procs = [
        subprocess.Popen([PY, "-c", script, str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(16)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, errors
    assert git(repo, "worktree", "list").count("\n") == 1
    fsck = subprocess.run(
        ["git", "fsck", "--strict"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stderr
    assert "error" not in fsck.stderr.lower()


def test_tasks_and_checks_reach_this_abreast_when_it_is_not_on_path(repo: Path) -> None:
    # abreast run from a virtual environment that is not activated (here: `python -m
    # abreast` with a PATH that has no abreast): `abreast signal` and `abreast lock` in a
    # task or a check are still this abreast; and the check does not get the real keys.
    done = repo.parent / "client-done"
    path = workflow(
        repo,
        {
            "api": {
                "signals": ["ready"],
                "run": f"abreast signal ready && while [ ! -e {done} ]; do sleep 0.05; done",
            },
            "client": {
                "needs": ["api:ready"],
                "run": f"abreast lock tests -- touch {done} && echo client > client.txt",
            },
        },
        locks={"tests": {"ttl": "1m"}},
        keys={"llm": {"from": ["LLM_KEY_1"], "limit": "10/min", "env": "LLM_KEY"}},
        checks=[{"run": "abreast lock tests -- sh -c 'echo \"key: ${LLM_KEY_1:-none}\"'"}],
    )
    env = {**os.environ, "PATH": "/usr/bin:/bin", "LLM_KEY_1": "sk-real-value"}
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    assert result.code == 0, result.out + result.err
    assert show(repo, integration(result.out.splitlines()[0][5:]), "client.txt") == "client\n"
    checks = list((repo / ".abreast" / "runs").glob("*/checks/*.log"))
    assert checks, "the check ran"
    assert all(p.read_text().strip() == "key: none" for p in checks)


def test_a_task_started_on_a_signal_sees_the_files_of_the_task_that_signalled(
    repo: Path,
) -> None:
    # api writes its interface, signals, and goes on; client starts on the signal with
    # api's files as they were then, ends first, and lands after api (the check needs
    # api's file beside client's): only its own work lands with it. meddler, which edits
    # api's file, is sent back.
    path = workflow(
        repo,
        {
            "api": {
                "signals": ["ready.v1"],
                "timeout": 20,
                "run": f"echo v1 > src/api.txt && {PY} -m abreast signal ready.v1"
                " && echo extra > api-notes.txt && sleep 1 && echo v2 >> src/api.txt",
            },
            "client": {"needs": ["api:ready.v1"], "run": "cp src/api.txt client.txt"},
            "meddler": {"needs": ["api:ready.v1"], "run": "echo mine >> src/api.txt"},
        },
        checks=[{"run": "test ! -e client.txt || test -e src/api.txt"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out  # meddler failed
    assert "changed files it was started with from a signal of a task it waits for" in out
    assert "src/api.txt" in out
    assert "client: its work lands after api's, whose files it started with" in out
    result = integration(run_id)
    assert show(repo, result, "client.txt") == "v1\n"  # what api had when it signalled
    assert show(repo, result, "src/api.txt") == "v1\nv2\n"  # api's own, whole
    assert show(repo, result, "api-notes.txt") == "extra\n"
    landings = [
        s.split(" ")[2]
        for s in git(repo, "log", "--first-parent", "--format=%s", result).splitlines()
        if s.startswith("abreast: land ")
    ]
    assert landings == ["client", "api"]  # newest first: api landed, then client
    # client's own commit holds client.txt alone: api's files came with api.
    client_commit = git(repo, "rev-parse", f"{result}^2").strip()
    assert git(repo, "show", "--name-only", "--format=", client_commit).split() == ["client.txt"]
    assert not git(repo, "for-each-ref", f"refs/abreast/{run_id}/")  # snapshots removed


def test_edits_to_the_checkout_during_a_run_can_be_warned_about_instead_of_failing(
    repo: Path,
) -> None:
    # The person keeps working in their checkout while the run goes on (here a task
    # stands in for them): with main_checkout: warn, the tasks land and the run says so.
    path = workflow(
        repo,
        {"t": {"run": f"echo mine >> {repo}/README.md && echo work > work.txt"}},
        containment={"main_checkout": "warn"},
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "warning: README.md changed in your checkout while t ran" in out
    assert show(repo, integration(run_id), "work.txt") == "work\n"
    db = repo / ".abreast" / "state.db"
    rows = query(db, "SELECT data FROM events WHERE type = 'containment.violation'")
    assert [json.loads(r[0])["blamed"] for r in rows] == [False]
    # The default still fails it, and says how to let such edits be.
    git(repo, "checkout", "-q", "--", "README.md")
    strict = workflow(repo, {"t": {"run": f"echo mine >> {repo}/README.md"}})
    code, out, _ = run(repo, strict)
    assert code == 1
    assert "set `containment: {main_checkout: protect}` in the workflow file" in out
    assert "or `warn`, to be told only)" in out
    bad = workflow(repo, {"t": {"run": "true"}}, containment={"main_checkout": "maybe"})
    result = run_abreast("run", str(bad), cwd=repo)
    assert result.code == 2 and "main_checkout" in result.err and "Traceback" not in result.err


def _can_protect(repo: Path) -> bool:
    from abreast.executor import protect

    argv = protect.prefix(repo, [repo / ".git"])
    return argv is not None and protect.probe(argv) is None


def test_a_protected_checkout_is_read_only_to_tasks_and_your_edits_are_yours(
    repo: Path, tmp_path: Path
) -> None:
    # With `warn`, the person's own edits during a run were only said; with `fail` (the
    # default) they sent back every agent that ran meanwhile. `protect`: tasks cannot
    # write in the checkout at all, so a change there is the person's, never blamed.
    if not _can_protect(repo):
        pytest.skip("unprivileged user namespaces are off here")
    edited, go = tmp_path / "edited", tmp_path / "go"
    path = workflow(
        repo,
        {
            # Waits while the person edits their checkout; its git and output work.
            "work": {
                "run": f"until [ -e {go} ]; do sleep 0.05; done; echo work > work.txt && "
                "git add work.txt && git commit -qm work && "
                'echo \'{"done": true}\' > "$ABREAST_OUTPUT"'
            },
            "rogue": {"run": f"echo agent >> {repo}/README.md; echo x > x.txt", "retries": 0},
            "after": {"needs": ["work"], "when": "outputs.work.done", "run": "echo a > a.txt"},
        },
        containment={"main_checkout": "protect"},
    )
    proc, run_id = start_run(path, cwd=repo)
    try:
        wait_for(lambda: (repo / ".abreast" / "runs" / run_id / "logs" / "work.1.log").exists())
        (repo / "README.md").write_text("# mine\n")
        (repo / "notes.txt").write_text("mine\n")
        edited.touch()
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        go.touch()
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "rogue in" in out and "Read-only file system" in out
    assert (
        f"{repo.resolve()} (the project's checkout) is read-only to tasks (containment: "
        "main_checkout: protect): write in the task's working directory, its own worktree"
    ) in out  # and so is its next attempt told, in ABREAST_FEEDBACK
    assert (repo / "README.md").read_text() == "# mine\n"  # the person's, not the agent's
    assert "work   succeeded" in out and "after  succeeded" in out
    assert show(repo, integration(run_id), "work.txt") == "work\n"
    assert "changed in your checkout" not in out + err  # nothing to warn about
    db = repo / ".abreast" / "state.db"
    rows = query(db, "SELECT data FROM events WHERE type = 'containment.violation'")
    assert rows and not any(json.loads(r[0])["blamed"] for r in rows)


def test_protect_where_it_cannot_works_as_fail_and_says_so(repo: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with git and no `unshare`
    bin_dir.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (bin_dir / "git").symlink_to(git_path)
    path = workflow(
        repo,
        {"t": {"run": f"echo mine >> {repo}/README.md; echo w > w.txt"}},
        containment={"main_checkout": "protect"},
    )
    env = {**os.environ, "PATH": str(bin_dir)}
    result = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=repo, env=env)
    said = result.out + result.err
    assert result.code == 1, said
    assert (
        "containment: main_checkout: protect cannot keep tasks from writing in your checkout "
        "here (there is no `unshare` (util-linux) here: "
    ) in said
    assert "wrote outside its worktree while it ran, so nothing of it was merged" in said
    # Said as the run begins, not only in its summary at the end.
    first = said.index("warning: containment: main_checkout: protect cannot keep")
    assert first < said.index("start   t (attempt 1)"), said


def test_work_started_on_a_signal_does_not_land_when_the_signalling_task_fails(
    repo: Path,
) -> None:
    path = workflow(
        repo,
        {
            "api": {
                "signals": ["ready"],
                "run": f"echo v1 > src/api.txt && {PY} -m abreast signal ready && sleep 0.5;"
                " exit 1",
            },
            "client": {"needs": ["api:ready"], "run": "cp src/api.txt client.txt"},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert "client (failed): upstream api ended without landing" in out
    tree = git(repo, "ls-tree", "-r", "--name-only", integration(run_id)).split()
    assert "client.txt" not in tree and "src/api.txt" not in tree


def test_a_repository_that_signs_its_commits_still_runs(repo: Path) -> None:
    # commit.gpgSign on, with a key gpg does not have: abreast's own commits are unsigned.
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "user.signingKey", "0000000000000000")
    (repo / "abreast.yaml").write_text(
        json.dumps({"version": 1, "name": "wt", "tasks": {"a": {"run": "echo A > a.txt"}}})
    )
    code, out, run_id = run(repo, repo / "abreast.yaml")
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "A\n"


def test_status_says_what_a_merge_started_on_a_signal_waits_for(repo: Path) -> None:
    go = repo.parent / "go"
    path = workflow(
        repo,
        {
            "api": {
                "signals": ["ready"],
                "timeout": 30,
                "run": f"echo v1 > api.txt && {PY} -m abreast signal ready"
                f" && while [ ! -e {go} ]; do sleep 0.05; done",
            },
            "client": {"needs": ["api:ready"], "run": "cp api.txt client.txt"},
        },
    )
    proc, run_id = start_run(path, cwd=repo)
    try:
        db = repo / ".abreast" / "state.db"
        wait_for(
            lambda: (
                db.exists()
                and query(db, "SELECT count(*) FROM events WHERE type = 'merge.waiting'")[0][0] == 1
            ),
            what="client's merge to wait for api",
        )
        shown = run_abreast("status", run_id, cwd=repo).out
        line = next(x for x in shown.splitlines() if x.strip().startswith("client"))
        assert "integrating" in line and "lands after api" in line
    finally:
        go.touch()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err


# -- submodules ---------------------------------------------------------------------------


def lib_repo(where: Path) -> Path:
    """A repository with lib.txt at "lib v1" (and *.o ignored)."""
    where.mkdir()
    git(where, "init", "-q", "-b", "main")
    (where / ".gitignore").write_text("*.o\n")
    commit_lib(where, "v1")
    return where


def commit_lib(lib: Path, version: str) -> None:
    (lib / "lib.txt").write_text(f"lib {version}\n")
    git(lib, "add", "-A")
    git(lib, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", version)


def add_submodule(repo: Path, lib: Path, where: str) -> None:
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), where)
    git(repo, "commit", "-q", "-m", f"add {where}")


@pytest.fixture
def with_submodule(repo: Path, tmp_path: Path) -> Path:
    """`repo` with the repository `lib` as the populated submodule vendor/lib."""
    lib = lib_repo(tmp_path / "lib")
    add_submodule(repo, lib, "vendor/lib")
    # From here on the original is out of reach: what tasks see comes from the checkout's copy.
    lib.rename(tmp_path / "lib-moved")
    return repo


def test_tasks_and_checks_see_the_submodules_the_checkout_has(with_submodule: Path) -> None:
    repo = with_submodule
    b = (
        "test ! -e vendor/lib/junk.o && grep -qx 'lib v1' vendor/lib/lib.txt && "
        "cp vendor/lib/lib.txt b.txt && "
        "if [ $ABREAST_ATTEMPT = 1 ]; then echo edit >> vendor/lib/lib.txt; fi"
    )
    path = workflow(
        repo,
        {
            # One task at a time, so in one pooled worktree: each finds the submodule as
            # recorded, whatever the one before it left inside (ignored files included).
            "a": {
                "run": "cp vendor/lib/lib.txt a.txt; touch vendor/lib/junk.o; "
                "git -C vendor/lib remote get-url origin > origin.txt"
            },
            "b": {"needs": ["a"], "run": b, "retries": 1, "backoff": {"initial": 0.05}},
        },
        checks=[{"run": "grep -qx 'lib v1' vendor/lib/lib.txt"}],
    )
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "lib v1\n"
    assert show(repo, integration(run_id), "b.txt") == "lib v1\n"
    # Cloned from the checkout's copy, it fetches from where the checkout's copy does.
    url = git(repo / "vendor" / "lib", "remote", "get-url", "origin")
    assert show(repo, integration(run_id), "origin.txt") == url
    # b's first attempt changed a file inside the submodule without a commit there: that
    # cannot land with the superproject's commit, so it was sent back, the file named.
    assert "changed files inside the submodule vendor/lib without committing them there" in out
    assert "vendor/lib/lib.txt" in out
    # The worktrees (each with a submodule inside) are gone.
    assert git(repo, "worktree", "list").count("\n") == 1


def test_a_task_that_moves_a_submodule_lands_a_commit_the_checkout_can_reach(
    with_submodule: Path,
) -> None:
    repo = with_submodule
    bump = (
        "cd vendor/lib && echo 'lib v2' > lib.txt && "
        "git -c user.name=A -c user.email=a@e commit -q -am v2"
    )
    path = workflow(
        repo,
        {
            "bump": {"run": bump},
            "use": {"needs": ["bump"], "run": "cp vendor/lib/lib.txt used.txt"},
        },
        checks=[{"run": "grep -qx 'lib v2' vendor/lib/lib.txt"}],  # the merge's own submodule
    )
    code, out, _ = run(repo, path, "--land")
    assert code == 0, out
    assert (repo / "used.txt").read_text() == "lib v2\n"  # `use` started from bump's result
    # The user's copy of the submodule holds the new commit: the landed result checks out.
    git(repo, "-c", "protocol.file.allow=always", "submodule", "update")
    assert (repo / "vendor" / "lib" / "lib.txt").read_text() == "lib v2\n"
    recorded = git(repo, "rev-parse", "HEAD:vendor/lib").strip()
    assert f"refs/abreast/kept/{recorded}" in git(
        repo / ".git" / "modules" / "vendor" / "lib", "for-each-ref", "--format=%(refname)"
    )


def test_a_submodule_the_checkout_left_empty_stays_empty(with_submodule: Path) -> None:
    repo = with_submodule
    git(repo, "submodule", "deinit", "-q", "--all")
    path = workflow(repo, {"a": {"run": "ls -A vendor/lib > listing.txt"}})
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "listing.txt") == ""


def test_a_hook_planted_in_the_checkouts_copy_of_a_submodule_is_undone(
    with_submodule: Path,
) -> None:
    repo = with_submodule
    hook = repo / ".git" / "modules" / "vendor" / "lib" / "hooks" / "post-checkout"
    plant = f"printf '#!/bin/sh\\ntouch {repo}/PWNED\\n' > {hook}; chmod +x {hook}"
    path = workflow(repo, {"a": {"run": plant, "retries": 0}})
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "wrote outside its worktree while it ran" in out
    assert f"hook: {hook}" in out
    assert not hook.exists()


def test_a_task_started_on_a_signal_gets_the_submodule_commit_of_the_task_that_signalled(
    with_submodule: Path,
) -> None:
    repo = with_submodule
    bump = (
        "cd vendor/lib && echo 'lib v2' > lib.txt && "
        "git -c user.name=A -c user.email=a@e commit -q -am v2 && cd ../.. && "
        f"{PY} -m abreast signal bumped && sleep 0.5"
    )
    path = workflow(
        repo,
        {
            "bump": {"signals": ["bumped"], "run": bump},
            "use": {"needs": ["bump:bumped"], "run": "cp vendor/lib/lib.txt used.txt"},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "used.txt") == "lib v2\n"


def test_a_submodule_commit_missing_from_the_checkouts_copy_is_fetched_from_its_url(
    repo: Path, tmp_path: Path
) -> None:
    lib = lib_repo(tmp_path / "lib")
    add_submodule(repo, lib, "v/lib")
    commit_lib(lib, "v2")
    # The project moves to v2 (a colleague's commit, say) before this checkout fetched it.
    path = workflow(repo, {"a": {"run": "cp v/lib/lib.txt a.txt"}})
    v2 = git(lib, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--cacheinfo", f"160000,{v2},v/lib")
    git(repo, "commit", "-q", "-m", "lib v2")
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "lib v2\n"


def test_a_repository_a_task_makes_inside_its_worktree_is_sent_back_not_lost(
    repo: Path,
) -> None:
    # `git init` in a subdirectory (a scaffolding tool's habit): git would record sub/ as a
    # link to a commit only sub/.git holds, which goes with the worktree: the files lost.
    made = (
        "test ! -e sub && mkdir sub && cd sub && echo hi > a.txt && "
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then git init -q && git add a.txt && '
        "git -c user.name=A -c user.email=a@e commit -q -m sub; fi"
    )
    path = workflow(
        repo,
        {
            "made": {"run": made, "retries": 1, "backoff": {"initial": 0.05}},
            # Without a commit inside, `git add` refuses the directory outright.
            "bare": {
                "needs": ["made"],
                "run": "test ! -e sub/.git && mkdir -p w/x && cd w/x && git init -q && echo 1 > f",
                "retries": 0,
            },
        },
    )
    # One worktree, so the retry starts where the first attempt's repository was.
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 1, out
    # Sent back with why and what to do; the second attempt started clean of it, and its
    # files landed as files.
    assert "made a git repository of its own inside its worktree: sub/" in out
    assert "rm -rf sub/.git" in out
    assert show(repo, integration(run_id), "sub/a.txt") == "hi\n"
    # The one without a commit failed saying the same, not with git's own error.
    assert "made a git repository of its own inside its worktree: w/x/" in out
    assert "does not have a commit checked out" not in out
    tree = git(repo, "ls-tree", "-r", integration(run_id))
    assert "160000" not in tree and "w/x" not in tree


def test_a_signal_from_a_worktree_holding_a_repository_of_its_own_says_why_it_failed(
    repo: Path,
) -> None:
    run_a = "mkdir n && cd n && git init -q && echo 1 > f && cd .. && abreast signal ready"
    path = workflow(
        repo,
        {
            "a": {"signals": ["ready"], "run": run_a, "retries": 0},
            "b": {"needs": ["a:ready"], "run": "true"},
        },
    )
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "Traceback" not in out
    assert (
        "| abreast: error: could not take a snapshot of the worktree's files for the signal "
        "'ready': made a git repository of its own inside its worktree: n/"
    ) in out


# -- Python packages installed in editable mode from the checkout ---------------------------


SHOW_V = "python -c 'import pkg; print(pkg.V)'"


def editable_env(repo: Path, tmp_path: Path) -> dict[str, str]:
    """The project's package `pkg` (V = 1), installed in editable mode into a real virtual
    environment the way hatchling and setuptools (src layout) do it: a .pth naming the
    checkout's src/. Its src/ also holds a package named `abreast` that must never be the
    one the tasks' `abreast` runs (the case of abreast developed with abreast). Returns an
    environment with that virtual environment active."""
    (repo / "src" / "pkg").mkdir()
    (repo / "src" / "pkg" / "__init__.py").write_text("V = 1\n")
    (repo / "src" / "abreast").mkdir()
    (repo / "src" / "abreast" / "__init__.py").write_text("raise SystemExit('wrong abreast')\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = list(venv.glob("lib/python3*/site-packages"))
    (site / "_editable_impl_pkg.pth").write_text(f"{repo / 'src'}\n")
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    return env


def test_tasks_and_checks_import_the_worktrees_copy_of_an_editable_install(
    repo: Path, tmp_path: Path
) -> None:
    env = editable_env(repo, tmp_path)
    path = workflow(
        repo,
        {
            "a": {
                "run": f"echo 'V = 2' > src/pkg/__init__.py && {SHOW_V} > seen.txt && "
                f"abreast lock t -- {SHOW_V} > locked.txt",
            }
        },
        locks={"t": {"ttl": "1m"}},
        checks=[{"run": "python -c 'import pkg, sys; sys.exit(pkg.V != 2)'"}],
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    out = result.out + result.err
    assert result.code == 0, out
    assert "note: Python packages installed in editable mode from this checkout (src)" in out
    run_id = result.out.splitlines()[0][5:]
    assert show(repo, integration(run_id), "seen.txt") == "2\n"  # not the checkout's 1
    assert show(repo, integration(run_id), "locked.txt") == "2\n"  # CMD of `abreast lock` too
    # Without abreast, the same environment imports the checkout's copy.
    mine = subprocess.run(
        ["python", "-c", "import pkg; print(pkg.V)"],
        cwd=tmp_path, capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert mine.stdout == "1\n"


def test_worktrees_pythonpath_false_leaves_the_environment_as_it_is(
    repo: Path, tmp_path: Path
) -> None:
    env = editable_env(repo, tmp_path)
    path = workflow(
        repo,
        {"a": {"run": f"echo 'V = 2' > src/pkg/__init__.py && {SHOW_V} > seen.txt"}},
        worktrees={"pythonpath": False},
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    assert result.code == 0, result.out + result.err
    assert "editable mode" not in result.out + result.err
    run_id = result.out.splitlines()[0][5:]
    assert show(repo, integration(run_id), "seen.txt") == "1\n"  # the checkout's, as asked


def test_git_in_a_task_opens_no_editor_unless_the_task_names_one(repo: Path) -> None:
    # The user's editor is for a terminal a task does not have: here one that fails (as
    # vim does with no terminal), set both in the config and in abreast's environment.
    git(repo, "config", "core.editor", "false")
    env = {**os.environ, "GIT_EDITOR": "false"}
    path = workflow(
        repo,
        {
            # What an agent does after fixing its last commit: git's message is kept.
            "amend": {
                "run": "echo a > a.txt && git add a.txt && git commit -qm 'add a' && "
                "echo more >> a.txt && git commit -qa --amend && git log -1 --format=%s > msg"
            },
            "bare": {"run": "git commit --allow-empty", "retries": 0},
            # An editor the task names itself is the one git runs.
            "own": {
                "env": {"GIT_EDITOR": "printf 'from env\\n' >"},
                "run": "git commit -q --allow-empty && git log -1 --format=%s > own",
            },
        },
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=repo, env=env)
    assert result.code == 1, result.out + result.err
    run_id = result.out.splitlines()[0][5:]
    assert show(repo, integration(run_id), "msg") == "add a\n"
    assert show(repo, integration(run_id), "own") == "from env\n"
    assert "failed    bare" in result.out
    assert "exit 1: Aborting commit due to empty commit message." in result.out


def test_editable_installs_are_found_in_every_form_setuptools_and_hatchling_write(
    tmp_path: Path,
) -> None:
    from abreast.workspace.pyenv import editable_sources

    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    # hatchling / setuptools with a src layout: the directory itself.
    (site / "_editable_impl_a.pth").write_text(f"{root / 'src'}\n")
    # setuptools, flat layout: a finder module mapping packages to their directories.
    (site / "__editable__.b-0.1.pth").write_text(
        "import __editable___b_0_1_finder; __editable___b_0_1_finder.install()"
    )
    (site / "__editable___b_0_1_finder.py").write_text(
        "import sys\nMAPPING: dict[str, str] = {'b': '%s'}\nNAMESPACES = {}\n" % (root / "b")
    )
    # Outside the checkout, and abreast's own state: not the checkout's packages.
    (site / "other.pth").write_text(f"{tmp_path / 'elsewhere'}\n{root / '.abreast'}\n")
    assert sorted(editable_sources(root, {"VIRTUAL_ENV": str(venv), "PATH": ""})) == [".", "src"]


# -- worktrees: copy and keep ---------------------------------------------------------------


def test_worktrees_get_copied_files_and_keep_dependencies_between_tasks(repo: Path) -> None:
    (repo / ".gitignore").write_text(".env\n*.local\nnode_modules/\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    (repo / ".env").write_text("TOKEN=local\n")
    (repo / "çonfig.local").write_text("name=ç\n")  # a name git quotes unless told not to
    install = (
        "test -d node_modules || { mkdir node_modules && echo $ABREAST_TASK_ID > node_modules/by; }"
    )
    path = workflow(
        repo,
        {
            # One at a time, so in one pooled worktree: b finds what a installed (kept),
            # not what a built (removed), and its own copy of .env.
            "a": {"run": f"{install}; mkdir build && touch build/out; echo changed > .env"},
            "b": {
                "needs": ["a"],
                "run": f"{install}; cat node_modules/by .env çonfig.local > b.txt; "
                "ls -A build > built.txt || true",
            },
        },
        worktrees={"copy": [".env", "çonfig.local"], "keep": ["node_modules"]},
        checks=[{"run": "grep -qx TOKEN=local .env"}],  # checks get the copy too
    )
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 0, out
    assert show(repo, integration(run_id), "b.txt") == "a\nTOKEN=local\nname=ç\n"
    assert show(repo, integration(run_id), "built.txt") == ""
    landed = git(repo, "ls-tree", "-r", "--name-only", integration(run_id)).split()
    assert ".env" not in landed and not any(p.startswith("node_modules") for p in landed)
    assert (repo / ".env").read_text() == "TOKEN=local\n"  # a copy, not the checkout's file


def test_worktrees_paths_git_does_not_ignore_stop_the_run_before_it_starts(repo: Path) -> None:
    (repo / "local.cfg").write_text("x\n")
    path = workflow(
        repo,
        {"a": {"run": "true"}},
        worktrees={"copy": ["README.md", "missing.env"], "keep": ["node_modules"]},
    )
    code, out, _ = run(repo, path)
    assert code == 2, out
    assert "worktrees.copy: README.md is not ignored by git, so a task would commit it" in out
    assert "worktrees.copy: missing.env does not exist in your checkout" in out
    assert "worktrees.keep: node_modules is not ignored by git" in out
    assert "Traceback" not in out
    assert not (repo / ".abreast" / "state.db").exists() or not query(
        repo / ".abreast" / "state.db", "SELECT run_id FROM runs"
    )


# -- the live view --------------------------------------------------------------------------


def on_a_terminal(argv: list[str], cwd: Path, cols: int, timeout: float = 60) -> tuple[int, str]:
    """Run argv with a pseudo-terminal of `cols` columns as its stdin, stdout and stderr;
    its exit status and everything it wrote."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    proc = subprocess.Popen(
        argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm"}
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_the_live_view_shows_progress_tasks_and_merges_as_they_go(repo: Path) -> None:

    path = workflow(
        repo,
        {
            "a": {"run": "sleep 0.6; echo A > a.txt"},
            "b": {"run": "sleep 1.2; echo B > b.txt"},
        },
        checks=[{"run": "sleep 1"}],
    )
    argv = [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor"]
    code, screen = on_a_terminal(argv, repo, cols=80)
    assert code == 0, screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # the screen's text, styles gone
    live = text.split(f"run {run_id_in(text)}: succeeded in")[0]  # before the summary
    lines = [line for chunk in live.split("\n") for line in chunk.split("\r")]
    assert "━" in text and "0/2 done" in text and "2/2 done" in text
    assert any(re.fullmatch(r"a\s+attempt 1\s+\d+\.\ds\s*", line) for line in lines)
    # A merge's line says where it is, and counts the time since its attempt ended (its
    # check takes 1 s).
    merging = [float(m) for m in re.findall(r"merging: checking\s+(\d+\.\d)s", text)]
    assert merging and max(merging) >= 0.5, merging
    # In 80 columns the bar gives way, so that the state counts are read whole; no line
    # of the view is wider than the terminal (it would wrap, and redrawing in place fail).
    assert "integrating 1" in text
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "wall " in text.split(live, 1)[1]  # the summary follows


def run_id_in(text: str) -> str:
    return text.split("run: ", 1)[1].split(maxsplit=1)[0]


def test_a_submodules_url_is_written_to_its_config_as_git_reads_it(tmp_path: Path) -> None:
    from abreast.workspace.submodules import _set_origin

    clone = tmp_path / "clone"
    git(tmp_path, "init", "-q", str(clone))
    git(clone, "remote", "add", "origin", "/some/where")
    url = 'https://user:tok"en\\x@example.com/lib.git'
    _set_origin(clone / ".git" / "config", url)
    assert git(clone, "remote", "get-url", "origin") == url + "\n"


# -- the merge queue in batches ---------------------------------------------------------------

# `python wait.py JOURNAL N`: wait (poll with a deadline) until N merges have been queued
# in the run's journal.
WAIT_QUEUED = """
import sqlite3, sys, time
journal, n = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    db = sqlite3.connect(journal)
    queued = db.execute("SELECT count(*) FROM events WHERE type = 'merge.queued'").fetchone()[0]
    db.close()
    if queued >= n:
        break
    time.sleep(0.05)
"""
# A check that waits so, records which tasks it checks, and is red when the merge holds a
# file BROKEN.
BATCH_CHECK = (
    WAIT_QUEUED
    + """
import os
with open(sys.argv[3], "a") as f:
    f.write(os.environ["ABREAST_TASK_ID"] + "\\n")
sys.exit(1 if os.path.exists("BROKEN") else 0)
"""
)


def batch_scripts(root: Path, repo: Path) -> tuple[str, str, Path]:
    """(a command that waits until N merges are queued, followed by N; the check's command,
    followed by N; the file the check records in)."""
    wait, check, record = root / "wait.py", root / "check.py", root / "checked.txt"
    wait.write_text(WAIT_QUEUED)
    check.write_text(BATCH_CHECK)
    journal = repo / ".abreast" / "state.db"
    return f"{PY} {wait} {journal}", f"{PY} {check} {journal} {{}} {record}", record


def test_queued_merges_are_checked_together_and_a_red_batch_is_split(
    repo: Path, tmp_path: Path
) -> None:
    wait, check, record = batch_scripts(tmp_path, repo)
    path = workflow(
        repo,
        {
            # a's merge is queued alone; b, c and d end after it (and while its check waits
            # for all four merges to be queued).
            "a": {"run": "echo a > a.txt"},
            "b": {"run": f"{wait} 1 && echo b > b.txt"},
            "c": {"run": f"{wait} 1 && touch BROKEN", "retries": 0},
            "d": {"run": f"{wait} 1 && echo d > d.txt"},
        },
        max_parallel=4,
        merge={"batch": 4},
        checks=[{"run": check.format(4)}],
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out  # c broke the checks
    checked = record.read_text().splitlines()
    # a alone; the three queued meanwhile together, red; then split in halves, the first
    # half first, each checked together again, down to c alone: only c was sent back.
    assert checked[0] == "a"
    together = checked[1].split()
    assert sorted(together) == ["b", "c", "d"]

    def bisect(jobs: list[str]) -> list[str]:
        if len(jobs) == 1 or "c" not in jobs:
            return [" ".join(jobs)]
        half = len(jobs) // 2
        return [" ".join(jobs), *bisect(jobs[:half]), *bisect(jobs[half:])]

    assert checked[1:] == bisect(together)
    result = integration(run_id)
    for task in ("a", "b", "d"):
        assert show(repo, result, f"{task}.txt") == f"{task}\n"
    assert "BROKEN" not in git(repo, "ls-tree", "--name-only", result)
    assert "c  failed" in out
    merges = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)["merges"]
    assert merges["landed"] == 3 and merges["red_checks"] == 1
    assert merges["red_batches"] == sum(1 for line in checked if "c" in line.split()) - 1


def test_a_green_batch_lands_every_task_with_its_own_merge_commit(
    repo: Path, tmp_path: Path
) -> None:
    wait, check, record = batch_scripts(tmp_path, repo)
    path = workflow(
        repo,
        {
            "a": {"run": "echo a > a.txt"},
            "b": {"run": f"{wait} 1 && echo b > b.txt"},
            "c": {"run": f"{wait} 1 && echo c > c.txt"},
        },
        max_parallel=3,
        merge={"batch": 2},
        checks=[{"run": check.format(3)}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    checked = record.read_text().splitlines()
    assert checked[0] == "a" and sorted(checked[1].split()) == ["b", "c"], checked
    assert len(checked) == 2
    landings = [
        s.split(" ")[2]
        for s in git(repo, "log", "--first-parent", "--format=%s", integration(run_id)).split("\n")
        if s.startswith("abreast: land ")
    ]
    assert sorted(landings) == ["a", "b", "c"]  # one merge commit each, on the first-parent line
    journal = repo / ".abreast" / "state.db"
    events = query(journal, "SELECT data FROM events WHERE type = 'merge.landed'")
    assert sorted(json.loads(d).get("batch", 1) for (d,) in events) == [1, 2, 2]
    report = run_abreast("report", run_id, cwd=repo).out
    assert "merge queue: 3 landed, 2 of them in 1 batch; 0 conflicts, 0 red checks" in report


def test_a_submodule_whose_path_has_a_space_is_populated(repo: Path, tmp_path: Path) -> None:
    add_submodule(repo, lib_repo(tmp_path / "lib"), "vendor/my lib")
    path = workflow(repo, {"a": {"run": "cp 'vendor/my lib/lib.txt' a.txt"}})
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "lib v1\n"


def test_an_agent_that_pops_your_stash_is_sent_back_and_the_entry_put_back(repo: Path) -> None:
    (repo / "README.md").write_text("# my unfinished work\n")
    git(repo, "stash", "push", "-q", "-m", "my wip")
    path = workflow(
        repo,
        {
            # Stashing and popping its own changes touches nothing of yours.
            "tidy": {"run": "echo x > t.txt && git add t.txt && git stash -q && git stash pop -q"},
            # Nothing to stash, so the pop takes the newest entry: yours.
            "careless": {"needs": ["tidy"], "run": "git stash -q; git stash pop -q; true"},
        },
    )
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 1, out
    assert "your stash: entry 'On main: my wip' dropped (put back)" in out
    assert "my wip" in git(repo, "stash", "list")
    assert git(repo, "show", "stash@{0}:README.md") == "# my unfinished work\n"
    result = integration(run_id)
    assert show(repo, result, "t.txt") == "x\n"  # tidy landed
    assert show(repo, result, "README.md") == "# project\n"  # your work did not


def test_stash_entries_an_agent_leaves_are_taken_off_your_stash(repo: Path) -> None:
    # The stash is one list for the repository: an agent's `git stash` in its worktree
    # stayed on top of yours after the run, and your next `git stash pop` popped the
    # agent's half-work into your checkout.
    (repo / "README.md").write_text("# my unfinished work\n")
    git(repo, "stash", "push", "-q", "-m", "my wip")
    path = workflow(
        repo,
        {
            "hoard": {"run": "echo a > README.md && git stash -q && echo b > b.txt"},
            "named": {"run": "echo c > README.md && git stash push -q -m keep-this; true"},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    listed = git(repo, "stash", "list").splitlines()
    assert len(listed) == 1 and listed[0].endswith("On main: my wip"), listed
    said = re.search(r"taken off your stash: 2 entries the run's tasks left there \((.*)\)", out)
    assert said, out
    assert f"WIP on abreast/{run_id}/hoard: " in said[1] and "keep-this" in said[1], said[1]
    events = query(
        repo / ".abreast" / "state.db",
        "SELECT data FROM events WHERE run_id = ? AND type = 'stash.taken'",
        run_id,
    )
    taken = [json.loads(data) for (data,) in events]
    named = next(e for e in taken if e["message"].endswith(": keep-this"))
    git(repo, "stash", "store", "-m", "back", named["commit"])  # as the line says
    assert git(repo, "show", "stash@{0}:README.md") == "c\n"
    assert git(repo, "show", "stash@{1}:README.md") == "# my unfinished work\n"


def run_warned(repo: Path, task_id: str, command: str) -> tuple[str, str]:
    """Run one task under `containment: {main_checkout: warn}`; (its output, the run id)
    of a run that succeeded."""
    path = workflow(repo, {task_id: {"run": command}}, containment={"main_checkout": "warn"})
    code, out, run_id = run(repo, path)
    assert code == 0, out
    return out, run_id


def test_with_containment_warn_a_dropped_stash_entry_is_only_warned_about(repo: Path) -> None:
    (repo / "README.md").write_text("# my unfinished work\n")
    git(repo, "stash", "push", "-q", "-m", "my wip")
    out, _ = run_warned(repo, "careless", "git stash -q; git stash pop -q; true")
    assert "warning: your stash entry 'On main: my wip' was dropped while careless ran" in out
    assert "my wip" not in git(repo, "stash", "list")  # your own pop is left as you did it


def test_an_agent_that_deletes_your_branches_is_sent_back_and_a_move_is_said(
    repo: Path,
) -> None:
    # Branches and tags are one set for the repository, shared by every worktree: a task's
    # `git branch -D` deleted yours for good, its `git branch -f` moved yours, unnoticed.
    git(repo, "branch", "keep")
    git(repo, "tag", "v1")
    git(repo, "branch", "develop")
    commit = "git -c user.name=A -c user.email=a@e commit -q --allow-empty -m agent"
    path = workflow(
        repo,
        {
            # Its own branch and tag (an agent told to work on a branch): left alone.
            "own": {"run": f"git checkout -q -b feature-x && {commit} && git tag mine"},
            "prune": {"needs": ["own"], "run": "git branch -D keep && git tag -d v1"},
            "force": {"needs": ["own"], "run": f"{commit} && git branch -f develop HEAD"},
        },
        defaults={"retries": 0},
    )
    before = git(repo, "rev-parse", "keep").strip()
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 1, out
    said = f"your branch keep: deleted (put back at {before[:12]})"
    assert said in out and f"your tag v1: deleted (put back at {before[:12]})" in out
    assert git(repo, "rev-parse", "keep", "v1").split() == [before, before]
    # A move is said, not blamed nor undone: as likely your own commit or pull.
    moved = git(repo, "rev-parse", "develop").strip()
    assert moved != before
    assert (
        f"warning: your branch develop was moved from {before[:12]} to {moved[:12]} "
        f"(`git update-ref refs/heads/develop {before[:12]}` puts it back) while force ran"
    ) in out
    states = dict(re.findall(r"(?m)^  ([a-z]+) +(succeeded|failed)\b", out))
    assert [states[t] for t in ("own", "prune", "force")] == ["succeeded", "failed", "succeeded"]
    assert show(repo, integration(run_id), "README.md") == "# project\n"


def test_with_containment_warn_a_deleted_branch_is_only_warned_about(repo: Path) -> None:
    git(repo, "branch", "old-work")
    was = git(repo, "rev-parse", "old-work").strip()[:12]
    out, run_id = run_warned(repo, "tidy", "git branch -D old-work")
    said = (
        f"warning: your branch old-work was deleted (`git update-ref refs/heads/old-work {was}`"
        " puts it back) while tidy ran"
    )
    assert f"] {said}" in out  # as it happened
    assert f"\n  {said}" in out.split("\nrun wt-", 1)[1]  # and again in the summary
    report = run_abreast("report", run_id, cwd=repo)  # and in the report, from the journal
    assert f"\n  {said}; if a task did it, check its work" in report.out
    assert git(repo, "branch", "--list", "old-work") == ""  # your own deletion stays done


def test_a_run_started_from_a_git_hook_works_in_its_worktrees_not_the_hooks_repo(
    repo: Path,
) -> None:
    # A hook's environment names the repository (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE):
    # abreast's own git and the tasks' went by it instead of by each worktree, so a task's
    # `git add` staged into your index and its work was lost ("0 files"), the run green.
    task = "echo b > b.txt && git add b.txt && env | grep '^GIT_[DIW]' > seen.txt || true"
    path = workflow(repo, {"a": {"run": task}})
    before = user_state(repo)
    hook_env = {"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(repo)}
    hook_env["GIT_INDEX_FILE"] = str(repo / ".git" / "index")
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=repo, env={**os.environ, **hook_env}
    )
    assert result.code == 0, result.out + result.err
    assert "note: GIT_DIR, GIT_INDEX_FILE, GIT_WORK_TREE are set here (as in a git hook)" in (
        result.err
    )
    run_id = result.out.splitlines()[0][5:]
    assert show(repo, integration(run_id), "b.txt") == "b\n"
    assert show(repo, integration(run_id), "seen.txt") == ""  # none reached the task
    assert user_state(repo) == before  # your index and files as they were


def test_an_older_stash_entry_dropped_is_put_back_once_and_alone_named(repo: Path) -> None:
    for wip in ("first wip", "second wip"):
        (repo / "README.md").write_text(f"# {wip}\n")
        git(repo, "stash", "push", "-q", "-m", wip)
    path = workflow(repo, {"careless": {"run": "git stash drop -q 'stash@{1}'", "retries": 0}})
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "entry 'On main: first wip' dropped (put back)" in out
    assert "second wip' dropped" not in out  # still there, its reflog line rewritten
    listed = git(repo, "stash", "list").splitlines()
    assert [line.split(": ", 1)[1] for line in listed] == [
        "On main: second wip",
        "On main: first wip",
    ]


def test_a_submodules_own_submodules_are_populated_and_cleaned_between_tasks(
    repo: Path, tmp_path: Path
) -> None:
    inner = lib_repo(tmp_path / "inner")
    lib = lib_repo(tmp_path / "lib")
    git(lib, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner), "inner")
    git(lib, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", "inner")
    add_submodule(repo, lib, "vendor/lib")
    git(
        repo,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "update",
        "-q",
        "--init",
        "--recursive",
    )
    path = workflow(
        repo,
        {
            "a": {"run": "cp vendor/lib/inner/lib.txt a.txt; touch vendor/lib/inner/junk.o"},
            "b": {"needs": ["a"], "run": "test ! -e vendor/lib/inner/junk.o && echo b > b.txt"},
        },
        max_parallel=1,
    )
    code, out, run_id = run(repo, path, "--sequential")
    assert code == 0, out
    assert show(repo, integration(run_id), "a.txt") == "lib v1\n"
    assert show(repo, integration(run_id), "b.txt") == "b\n"


def test_a_go_work_worktrees_would_find_in_the_checkout_is_said(repo: Path) -> None:
    # Go keeps go.work out of version control, as its docs advise; `go` run in a worktree
    # (inside the checkout) walks up to the checkout's, whose `use ./api` names the
    # checkout's module: a task's change would be built and tested as the checkout's code.
    path = workflow(repo, {"a": {"run": "test ! -e go.work"}})
    (repo / "go.work").write_text("go 1.22\n\nuse ./api\n")  # not committed
    said = (
        "note: go.work in your checkout is not committed, and `go` in a task's worktree finds "
        "it (worktrees lie inside your checkout; go looks in parent directories), so its "
        "`use` lines would name your checkout's modules, not the worktree's: "
    )
    result = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=repo)
    assert result.code == 0, result.err
    assert (
        said + "ignore go.work (.gitignore) and list go.work under `worktrees: copy` (its "
        "paths are relative: each worktree's copy names that worktree's modules)\n"
    ) in result.err, result.err
    (repo / ".gitignore").write_text("go.work*\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore it")
    (repo / "go.work.sum").write_text("")
    result = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=repo)
    assert said + "list go.work and go.work.sum under `worktrees: copy`" in result.err
    # Copied in as it says, each worktree has its own: nothing to say.
    copied = workflow(
        repo, {"a": {"run": "grep -q 'use ./api' go.work"}}, worktrees={"copy": ["go.work"]}
    )
    assert "go.work" not in git(repo, "ls-files")
    result = run_abreast("run", str(copied), "--plain", "--no-monitor", cwd=repo)
    assert result.code == 0, result.out + result.err
    assert "go.work" not in result.err


def test_workspace_packages_node_modules_links_are_each_worktrees_own(repo: Path) -> None:
    # npm/yarn/pnpm workspaces link node_modules/@org/pkg to packages/pkg. A worktree lies
    # inside the checkout, and Node looks in every parent's node_modules: a task without
    # its own imported the checkout's packages/pkg, not the one it changed, and a check
    # tested the checkout's, not the merge's.
    (repo / "packages" / "pkg").mkdir(parents=True)
    (repo / "packages" / "pkg" / "index.js").write_text("old\n")
    (repo / ".gitignore").write_text("node_modules/\n")
    modules = repo / "node_modules"
    (modules / "@org").mkdir(parents=True)
    (modules / "@org" / "pkg").symlink_to("../../packages/pkg")
    (modules / "left-pad").mkdir()  # an installed package: found in the checkout, as before
    (modules / "outside").symlink_to("/tmp")  # not the repository's: not linked
    sees = 'test "$(cat node_modules/@org/pkg/index.js)" = {} && test ! -e node_modules/outside'
    path = workflow(
        repo,
        {
            "change": {"run": "echo new > packages/pkg/index.js\n" + sees.format("new")},
            "after": {"needs": ["change"], "run": sees.format("new")},
        },
        checks=[{"name": "merge", "run": sees.format("new")}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert (
        "note: the workspace packages your node_modules links (packages/pkg) are linked in "
        "each task's worktree to its own copy"
    ) in out
    assert "node_modules/@org/pkg" not in out  # not noted as missing from worktrees
    assert "node_modules" not in git(repo, "ls-tree", "-r", "--name-only", integration(run_id))
    assert (modules / "@org" / "pkg" / "index.js").read_text() == "old\n"  # yours untouched
    # Turned off: none made (Node finds the checkout's copy, in a parent directory).
    off = workflow(repo, {"t": {"run": "test ! -e node_modules"}}, worktrees={"node_links": False})
    code, out, _ = run(repo, off)
    assert code == 0, out
    assert "workspace packages" not in out


def test_a_script_never_committed_is_named_before_the_run_and_in_the_failure(
    repo: Path,
) -> None:
    # Tasks see what is committed at base. A script written for the workflow and not yet
    # committed failed its task with `exit 127 (command not found)` and the shell's
    # "./agents/a.sh: not found", though the file was plainly there in the user's checkout.
    path = workflow(
        repo,
        {
            "a": {"run": "./agents/a.sh"},
            "b": {"run": "sh tools/b.sh"},
            "c": {"run": "./c.sh > out.log"},  # out.log is written, not needed
            "d": {"run": ".venv/bin/pytest -q"},  # a virtual environment's: not to be copied
            "e": {"run": "web/node_modules/.bin/jest"},  # installed packages: installed again
        },
        checks=[{"run": "./ci.sh", "name": "ci"}],
    )
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (repo / ".venv" / "bin" / "pytest").write_text("#!/bin/sh\n")
    (repo / ".venv" / "bin" / "pytest").chmod(0o755)
    (repo / "web" / "node_modules" / ".bin").mkdir(parents=True)
    (repo / "web" / "node_modules" / ".bin" / "jest").write_text("#!/bin/sh\n")
    (repo / "agents").mkdir()
    (repo / "agents" / "a.sh").write_text("#!/bin/sh\necho A > a.txt\n")
    (repo / "agents" / "a.sh").chmod(0o755)
    (repo / "tools").mkdir()
    (repo / "tools" / "b.sh").write_text("echo B > b.txt\n")
    (repo / "c.sh").write_text("#!/bin/sh\necho C > c.txt\n")
    git(repo, "add", "tools/b.sh", "c.sh")  # committed, c.sh without its x bit
    git(repo, "commit", "-q", "-m", "scripts")
    (repo / "c.sh").chmod(0o755)
    (repo / ".gitignore").write_text("ci.sh\nout.log\n.venv/\nnode_modules/\n")
    (repo / "ci.sh").write_text("#!/bin/sh\ntrue\n")
    (repo / "ci.sh").chmod(0o755)
    (repo / "out.log").write_text("")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    dry = run_abreast("run", str(path), "--dry-run", cwd=repo)  # a dry run says as much
    assert dry.code == 0 and "would start" in dry.out
    assert "each task's work lands once its merge passes `ci` (their time is not in" in dry.out
    assert "note: agents/a.sh is in your checkout but not committed" in dry.err
    assert "note: c.sh is executable in your checkout" in dry.err
    venv = (
        "note: .venv/bin/pytest is in .venv, a virtual environment of your checkout that git "
        "ignores, so a worktree has none: activate it before `abreast run` and call `pytest` "
        f"by name, or write its absolute path ({repo}/.venv/bin/pytest)"
    )
    assert venv in dry.err and ".venv/bin/pytest is in your checkout" not in dry.err
    assert (
        "note: web/node_modules/.bin/jest is in web/node_modules, your checkout's installed "
        "packages, which git ignores, so a worktree has none: install them in the command "
        "(`npm ci && ...`), with `worktrees: keep: [web/node_modules]`"
    ) in dry.err
    code, out, _run_id = run(repo, path)
    assert code == 1, out
    # The notes come before the run (on stderr), the failures after it.
    assert "note: agents/a.sh is in your checkout but not committed" in out
    assert "`git add agents/a.sh` and commit); it is named by task a" in out
    assert "note: c.sh is executable in your checkout but not as committed" in out
    assert "note: ci.sh is in your checkout but git ignores it" in out
    assert "`worktrees: copy`" in out and "named by check `ci`" in out
    assert "tools/b.sh" not in out and "out.log" not in out  # committed; written
    failed_a = "  a (failed): exit 127 (command not found)\n    agents/a.sh is in your checkout"
    assert failed_a in out
    assert "  c (failed): exit 126 (found but not executable)\n    c.sh is executable" in out
    assert "  d (failed): exit 127 (command not found)\n    " + venv[6:] in out
    assert "check `ci` failed (exit 127 (command not found))" in out  # b ran: committed
    # A red check says it too, where it fails, as a task does (the note may be far above).
    said = out[out.index("  b (failed): check `ci` failed (exit 127") :].splitlines()
    assert said[1].startswith("    ci.sh is in your checkout but git ignores it"), said[:3]
    journaled = query(
        repo / ".abreast" / "state.db", "SELECT reason FROM attempts WHERE task_id = 'a'"
    )
    assert "agents/a.sh is in your checkout but not committed" in journaled[0][0]


def test_bash_words_are_those_a_command_starts_with() -> None:
    from abreast.spec.commands import bash_words

    assert bash_words('if [[ -n "$X" ]]; then source a.sh; fi') == {"[[", "source"}
    assert bash_words("echo a # c\n  X=1 pushd d || popd") == {"pushd", "popd"}
    assert bash_words("f() { declare x=1; }\nfunction g { let y=2; }") == {
        "declare",
        "function",
        "let",
    }
    # Words that are not commands: arguments, quoted, commented, a here-document's lines.
    assert bash_words("echo source '[[' \"a; source b\" # source c") == set()
    assert bash_words("cat <<-'EOF' > f\n\tsource this\n\tEOF\nls") == set()
    assert bash_words("cat <<EOF\nsource x\nEOF\nsource y") == {"source"}
    assert bash_words("echo 'unclosed; source x") == set()


def test_command_paths_are_the_words_a_command_may_need_from_its_directory() -> None:
    from abreast.spec.commands import command_paths

    assert command_paths("./agents/a.sh --fast") == ["agents/a.sh"]
    assert command_paths('python3 x.py "$ABREAST_PROMPT" 2>err.txt <in.txt | tee -a o') == [
        "python3", "x.py", "2", "in.txt", "tee", "o",
    ]  # fmt: skip
    assert command_paths("FOO=1 ./run.sh ../up /abs ~/home *.py && ./b # ./c") == [
        "run.sh", "b",
    ]  # fmt: skip
    assert command_paths('echo "unclosed') == []
    assert command_paths("./a.sh && cd ci && ./build.sh") == ["a.sh"]  # then elsewhere
    assert command_paths("rm .git; cat ./.git/config x") == ["rm", "cat", "x"]  # git's own


@pytest.mark.parametrize("isolation", ["worktree", "none"])
def test_a_script_named_from_the_workflow_files_directory_is_pointed_to(
    repo: Path, isolation: str
) -> None:
    # Commands run at the repository's root. `run: ./build.sh` in ci/abreast.yaml, for
    # ci/build.sh, failed with only `exit 127 (command not found)`.
    (repo / "ci").mkdir()
    (repo / "ci" / "build.sh").write_text("#!/bin/sh\necho built > built.txt\n")
    (repo / "ci" / "build.sh").chmod(0o755)
    spec = {"version": 1, "name": "sub", "isolation": isolation, "tasks": {}}
    spec["tasks"] = {
        "build": {"run": "./build.sh"},
        "fine": {"run": "ci/build.sh"},
        "moved": {"run": "cd ci && ./build.sh"},  # from ci/: not pointed to
    }
    path = repo / "ci" / "abreast.yaml"
    path.write_text(json.dumps(spec))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "ci")
    code, out, _run_id = run(repo, path)
    assert code == 1, out
    said = "build.sh is not at the repository's root, where commands run, but ci/build.sh is"
    assert f"note: {said} (beside the workflow file): write `ci/build.sh`" in out
    assert "it is named by task build\n" in out  # not by `moved`
    assert f"  build (failed): exit 127 (command not found)\n    {said}" in out
    assert re.search(r"\n  fine +succeeded", out), out  # ci/build.sh from the root is found
    assert "ci/build.sh is not" not in out


def test_a_check_whose_log_runs_away_is_ended_by_logs_max_size(repo: Path) -> None:
    # logs.max_size covered tasks' logs only: a check printing without end filled
    # the disk under .abreast/runs/RUN/checks, with no timeout to stop it.
    path = workflow(
        repo,
        {"a": {"run": "echo A > a.txt", "retries": 0}},
        checks=[{"run": "while :; do echo abreast; done", "name": "loud"}],
        logs={"max_size": "1MB"},
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert "check `loud` failed (its log passed 1.0 MB (" in out
    assert "(a check that rightly prints more: raise `logs.max_size`)" in out
    assert git(repo, "rev-parse", integration(run_id)) == git(repo, "rev-parse", "main")
    logs = list((repo / ".abreast" / "runs" / run_id / "checks").glob("*.log"))
    sizes = [log.stat().st_size for log in logs]
    assert sizes and all(1_000_000 < size < 100_000_000 for size in sizes), sizes
    for log in logs:
        log.unlink()  # not kept with the test's files


def test_resume_retry_failed_runs_the_failed_task_and_those_it_blocked_and_lands(
    repo: Path, tmp_path: Path
) -> None:
    # Five tasks' worth of agent work succeeded, one failed for a cause outside the
    # repository (fixed now): running them all again was the only way on. With
    # --retry-failed the failed task runs again as attempt 2, told why attempt 1 failed,
    # the task it blocked runs after it, what succeeded is not run again, and the run's
    # --land brings the whole result into main.
    fixed, ran_a = tmp_path / "fixed", tmp_path / "ran_a"
    path = workflow(
        repo,
        {
            "a": {"run": f"echo x >> {ran_a}; echo A > a.txt"},
            "b": {
                "run": f'printf %s "$ABREAST_FEEDBACK" > {tmp_path}/feedback.$ABREAST_ATTEMPT; '
                f'test -e {fixed} || {{ echo "the service is down"; exit 3; }}; echo B > b.txt'
            },
            "c": {"needs": ["a", "b"], "run": "cat a.txt b.txt > c.txt"},
        },
    )
    code, out, run_id = run(repo, path, "--land")
    assert code == 1 and "blocked: c" in out, out
    assert f"run again once fixed: abreast resume {run_id} --retry-failed" in out
    later = run_abreast("status", run_id, cwd=repo).out  # said again when you come back
    assert f"run again once fixed: abreast resume {run_id} --retry-failed" in later
    refused = run_abreast("resume", run_id, cwd=repo)
    assert refused.code == 2 and "already finished (failed)" in refused.err
    bare = run_abreast("resume", cwd=repo)  # typed after the failure, without RUN
    assert bare.code == 2 and f"no run was interrupted; the latest, {run_id}, failed" in bare.err
    assert f"`abreast resume {run_id} --retry-failed` runs what failed again" in bare.err
    assert f"`abreast resume {run_id} --retry-failed` runs its failed task (b)" in refused.err
    fixed.touch()
    again = run_abreast("resume", "--retry-failed", "--plain", "--no-monitor", cwd=repo)
    assert again.code == 0, again.out + again.err
    assert "b: failed; run again\n" in again.out
    assert ran_a.read_text() == "x\n"  # a is not run again
    feedback = (tmp_path / "feedback.2").read_text()
    assert feedback.startswith("exit 3") and "the service is down" in feedback
    assert show(repo, "main", "c.txt") == "A\nB\n"  # landed: the run's --land holds
    status = json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)
    assert status["state"] == "succeeded"
    tries = {t["id"]: (t["state"], t["attempts"]) for t in status["tasks"]}
    assert tries == {"a": ("succeeded", 1), "b": ("succeeded", 2), "c": ("succeeded", 1)}
    nothing = run_abreast("resume", run_id, "--retry-failed", cwd=repo)
    assert nothing.code == 2 and "has no failed task to run again" in nothing.err


def test_a_file_committed_after_the_run_started_is_named_as_such_when_a_task_misses_it(
    repo: Path,
) -> None:
    # A retried task's run starts from the run's base, not the checkout's newer commits:
    # the failure said "fix.sh is in your checkout but not committed" of a committed file.
    path = workflow(repo, {"b": {"run": "sh fix.sh"}})
    code, out, run_id = run(repo, path)
    assert code == 1, out
    (repo / "fix.sh").write_text("echo fixed\n")
    git(repo, "add", "fix.sh")
    git(repo, "commit", "-q", "-m", "fix")
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", "--no-monitor", cwd=repo)
    assert again.code == 1
    assert "fix.sh was committed in your checkout after the run started from" in again.out
    assert "not committed" not in again.out


def test_a_resumed_run_whose_result_branch_was_deleted_keeps_the_work_that_landed(
    repo: Path, tmp_path: Path
) -> None:
    # `abreast cleanup --results` (or `git branch -D`) took the result branch of a run
    # that was to be carried on: resume made it again at the run's base, and the work
    # that had landed on it was gone from the result of a run that then "succeeded".
    fixed = tmp_path / "fixed"
    path = workflow(
        repo,
        {
            "a": {"run": "echo A > a.txt"},
            "b": {"run": f"test -e {fixed} && echo B > b.txt"},
        },
    )
    code, _, run_id = run(repo, path)
    assert code == 1
    assert run_abreast("cleanup", "--results", cwd=repo).code == 0
    assert integration(run_id) not in git(repo, "branch", "--list", "abreast/*")
    fixed.touch()
    again = run_abreast("resume", run_id, "--retry-failed", "--plain", "--no-monitor", cwd=repo)
    assert again.code == 0, again.out + again.err
    assert f"the result branch {integration(run_id)} was gone" in again.err
    assert show(repo, integration(run_id), "a.txt") == "A\n"
    assert show(repo, integration(run_id), "b.txt") == "B\n"
    # When the commits went too (garbage-collected), the resume is refused before it takes
    # the run up: the run stays as it was.
    fixed.unlink()
    code, _, second = run(repo, path)
    assert code == 1
    assert run_abreast("cleanup", "--results", cwd=repo).code == 0
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    refused = run_abreast("resume", second, "--retry-failed", cwd=repo)
    assert refused.code == 2 and "is gone, and so is the commit" in refused.err, refused.err
    status = json.loads(run_abreast("status", second, "--json", cwd=repo).out)
    assert status["state"] == "failed"


def test_a_bare_repository_or_a_git_directory_is_refused_not_run_in_place(
    repo: Path, tmp_path: Path
) -> None:
    # Taken for "no repository", a bare repository got its tasks run in place, writing
    # files and .abreast/ among git's own (with advice to `git init` it); inside .git the
    # same, in the user's repository's git directory.
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    (bare / "abreast.yaml").write_text("version: 1\ntasks:\n  a:\n    run: echo a > a.txt\n")
    result = run_abreast("run", "--plain", cwd=bare)
    assert result.code == 2 and f"{bare} is a bare git repository" in result.err
    assert f"git clone {bare} DIR" in result.err
    assert not (bare / "a.txt").exists() and not (bare / ".abreast").exists()
    inside = run_abreast("status", cwd=repo / ".git" / "refs")
    assert inside.code == 2 and "inside a repository's .git directory" in inside.err


def test_a_git_command_that_fails_unexpectedly_is_an_error_line_not_a_traceback(
    repo: Path,
) -> None:
    # A repository whose own git commands fail (here its index is corrupt: `git status`
    # fails in it too): the command line's last net says what git said, exit 1, instead
    # of a traceback.
    path = workflow(repo, {"a": {"run": "echo A > a.txt"}})
    (repo / ".git" / "index").write_bytes(b"DIRC\0\0\0\2garbage")
    code, out, _ = run(repo, path)
    assert code == 1, out
    assert "abreast: error: git status " in out and "index file" in out, out
    assert "hint: that is git's own error: `git status` in the repository shows" in out
    assert "Traceback" not in out
    # A required filter with no command, which every checkout of a task's worktree would
    # fail on (and `git status` only when it reads such a file): said before the run.
    git(repo, "read-tree", "HEAD")  # the index mended
    (repo / ".gitattributes").write_text("*.bin filter=weird\n")
    (repo / "x.bin").write_text("data\n")
    path = workflow(repo, {"a": {"run": "cat x.bin > y.txt"}})
    git(repo, "config", "filter.weird.required", "true")
    code, out, _ = run(repo, path)
    assert code == 2, out
    assert (
        "abreast: error: files of the repository go through the filter weird (`filter=weird` "
        "in .gitattributes), which git is set to require (filter.weird.required), and no "
        "program is set: a task's worktree could not be checked out\n"
        "  hint: install it, or see `git config --show-origin --get-regexp filter.weird`"
    ) in out, out
    assert "Traceback" not in out


def test_a_drained_run_lets_what_runs_land_starts_nothing_and_is_carried_on(
    repo: Path, tmp_path: Path
) -> None:
    # `abreast cancel --drain`: stop starting work (end of the day), without killing the
    # agents that are half-way through theirs; `abreast resume` does the rest later.
    started, go = tmp_path / "long-started", tmp_path / "go"
    path = workflow(
        repo,
        {
            "long": {
                "run": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; "
                "echo L > long.txt"
            },
            "after": {"needs": ["long"], "run": "echo A > after.txt"},
            # Fails once, then waits a minute to try again: that retry is not started.
            "flaky": {
                "run": f'echo "$ABREAST_FEEDBACK" > {tmp_path}/feedback.$ABREAST_ATTEMPT; '
                '[ "$ABREAST_ATTEMPT" -ge 2 ] && echo F > flaky.txt',
                "retries": 2,
                "backoff": {"initial": "60s"},
            },
        },
    )
    proc, run_id = start_run(path, cwd=repo)
    db = repo / ".abreast" / "state.db"
    with ended_after(proc):
        wait_for(lambda: started.exists(), what="long to start")
        wait_for(
            lambda: query(db, "SELECT 1 FROM events WHERE type = 'task.retrying'") != [],
            what="flaky to wait for its retry",
        )
        drain = run_abreast("cancel", "--drain", cwd=repo)
        assert drain.code == 0, drain.err
        assert drain.out.startswith(f"asked the orchestrator of {run_id} (pid {proc.pid}) to drain")
        assert run_abreast("cancel", run_id, "--drain", cwd=repo).out == (
            f"run {run_id} is already draining\n"
        )
        wait_for(
            lambda: query(db, "SELECT 1 FROM events WHERE type = 'run.draining'") != [],
            what="the orchestrator to drain",
        )
        assert proc.poll() is None  # long is still at work: it is not killed
        said = run_abreast("status", run_id, cwd=repo).out.splitlines()
        assert (
            said[1] == "  draining (abreast cancel --drain): nothing new starts; what runs finishes"
        )
        seen = json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)
        assert (seen["state"], seen["stopping"]) == ("running", "draining")
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert json.loads(run_abreast("status", run_id, "--json", cwd=repo).out)["stopping"] is None
    assert "draining (abreast cancel --drain): no new tasks; waiting for long to finish" in out
    assert f"carry on: abreast resume {run_id}" in out
    states = dict(query(db, "SELECT task_id, state FROM tasks"))
    assert states == {"long": "succeeded", "after": "cancelled", "flaky": "cancelled"}
    attempts = dict(query(db, "SELECT task_id, attempts FROM tasks"))
    assert attempts == {"long": 1, "after": 0, "flaky": 1}  # nothing new was started
    assert git(repo, "show", f"{integration(run_id)}:long.txt") == "L\n"  # it landed
    status = run_abreast("status", run_id, cwd=repo).out
    assert status.endswith(
        f"carry on: abreast resume {run_id} (what succeeded stays; the rest runs)\n"
    )
    # A bare resume carries the drained (cancelled) run on: the rest runs, told why the
    # retry waited; what landed stays.
    resumed = run_abreast("resume", "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert dict(query(db, "SELECT task_id, state FROM tasks")) == {
        "long": "succeeded",
        "after": "succeeded",
        "flaky": "succeeded",
    }
    assert dict(query(db, "SELECT task_id, attempts FROM tasks"))["long"] == 1
    assert "exit 1" in (tmp_path / "feedback.2").read_text()
    for name, text in (("long.txt", "L\n"), ("after.txt", "A\n"), ("flaky.txt", "F\n")):
        assert git(repo, "show", f"{integration(run_id)}:{name}") == text
    # Only a run that is running can be drained.
    late = run_abreast("cancel", run_id, "--drain", cwd=repo)
    assert late.code == 2 and f"run {run_id} is not running (it succeeded)" in late.err


def test_a_task_waiting_for_a_lock_when_the_run_drains_is_not_started(
    repo: Path, tmp_path: Path
) -> None:
    # A task whose attempt waits for a lock held elsewhere (another run's tests, an
    # `abreast lock` in a terminal) has started nothing yet: a drain does not wait for the
    # lock to start it, it leaves it to `abreast resume` (its retries untouched), while what
    # runs still finishes and lands.
    held, release = tmp_path / "held", tmp_path / "release"
    started, go = tmp_path / "long-started", tmp_path / "go"
    holder = subprocess.Popen(
        [
            PY,
            "-m",
            "abreast",
            "lock",
            "tests",
            "--",
            "sh",
            "-c",
            f"touch {held}; while [ ! -e {release} ]; do sleep 0.05; done",
        ],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with ended_after(holder), touched_after(release, go):
        wait_for(held.exists, what="the lock to be held")
        path = workflow(
            repo,
            {
                "long": {
                    "run": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; "
                    "echo L > long.txt"
                },
                "locked": {"locks": ["tests"], "run": f"touch {tmp_path}/ran; echo W > w.txt"},
            },
            locks={"tests": {"ttl": "15m"}},
        )
        proc, run_id = start_run(path, cwd=repo)
        db, coord = repo / ".abreast" / "state.db", repo / ".abreast" / "coord.db"
        waiters = "SELECT holder FROM waiters WHERE name = 'tests'"
        with ended_after(proc):
            wait_for(started.exists, what="long to start")
            wait_for(lambda: query(coord, waiters) != [], what="locked to wait for the lock")
            assert run_abreast("cancel", "--drain", cwd=repo).code == 0
            wait_for(lambda: query(coord, waiters) == [], what="locked to stop waiting")
            assert proc.poll() is None  # long is still at work
            go.touch()
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        assert holder.poll() is None  # the drain did not wait for the lock
        states = dict(query(db, "SELECT task_id, state FROM tasks"))
        assert states == {"long": "succeeded", "locked": "cancelled"}, out
        assert not (tmp_path / "ran").exists()
        task = "SELECT reason, failures FROM tasks WHERE task_id = 'locked'"
        [(reason, failures)] = query(db, task)
        assert reason.startswith("not started: the run was drained"), reason
        assert failures == 0  # not a failure: its retries are all there for resume
        [(state, why)] = query(db, "SELECT state, reason FROM attempts WHERE task_id = 'locked'")
        assert (state, why.split(" (")[0]) == ("interrupted", "not started: the run was drained")
        assert git(repo, "worktree", "list").count("\n") == 1  # no worktree left behind
        release.touch()
        holder.communicate(timeout=30)
    resumed = run_abreast("resume", run_id, "--no-monitor", "--plain", cwd=repo)
    assert resumed.code == 0, resumed.out + resumed.err
    assert git(repo, "show", f"{integration(run_id)}:w.txt") == "W\n"


def test_an_agent_that_rewrites_history_below_its_start_lands_what_its_files_say(
    repo: Path, tmp_path: Path
) -> None:
    # Agents run `git reset --hard HEAD~1`, `commit --amend`, `checkout --orphan`. The
    # checks (ownership, the change count) went by the files the attempt left, but the
    # merge went by its history: a reset's undo was dropped, an amend below the start
    # could conflict with itself, and an orphan failed with "merge queue error: git
    # merge-tree ... refusing to merge unrelated histories". Now what lands is the tree
    # it left, on the commit it started from, as for work it left uncommitted.
    gate = tmp_path / "started"
    gate.mkdir()
    # All four start from the same commit (not one after another's work landed): each
    # waits (up to 30 s) until all have started.
    wait = (
        f"touch {gate}/$ABREAST_TASK_ID; n=0; while set -- {gate}/*; [ $# -lt 4 ] && "
        "[ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; "
    )
    path = workflow(
        repo,
        {
            "undo": {
                "run": wait + "git reset -q --hard HEAD~1 && echo r > r.txt",
                "owns": ["/r.txt", "/notes.txt"],
            },
            "amend": {
                "run": wait + "echo a > a.txt && echo amended > README.md && git add -A && "
                "git commit -q --amend -m amended"
            },
            "orphan": {"run": wait + "git checkout -q --orphan mine && echo o > o.txt"},
            "guarded": {
                "run": wait + "git reset -q --hard HEAD~1 && echo g > g.txt",
                "owns": ["/g.txt"],
            },
        },
    )
    (repo / "notes.txt").write_text("to be undone\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "notes")  # the commit every task starts from
    code, out, run_id = run(repo, path, "--max-parallel", "4")
    assert code == 1, out  # guarded only
    assert "merge queue error" not in out
    assert "guarded (failed): changed files it does not own: notes.txt (not in owns" in out
    assert "(its HEAD left the commit it started from — a `git reset`" in out
    result = integration(run_id)
    files = set(git(repo, "ls-tree", "--name-only", result).split())
    assert files == {"README.md", "a.txt", "abreast.yaml", "o.txt", "r.txt", "src"}, files
    assert show(repo, result, "README.md") == "amended\n"
    assert show(repo, result, "abreast.yaml") == path.read_text()
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    changes = {t["id"]: t["changes"] for t in report["tasks"]}
    assert changes["undo"] == {"files": 2, "added": 1, "deleted": 1}, changes
    assert changes["orphan"] == {"files": 1, "added": 1, "deleted": 0}, changes


def test_tasks_whose_owns_overlap_start_one_after_the_others_work_landed(repo: Path) -> None:
    # Two tasks owning one file were kept from running side by side, but the second
    # started as soon as the first's process ended, from a head without its work (still
    # being checked): its merge conflicted with it, and its agent was sent back.
    own = {"owns": ["/src/shared.txt"], "retries": 2}
    path = workflow(
        repo,
        {
            "a": {"run": "echo a >> src/shared.txt", **own},
            "b": {"run": "echo b >> src/shared.txt", **own},
        },
        checks=[{"run": "sleep 1"}],
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "retry" not in out and "conflict" not in out, out
    db = repo / ".abreast" / "state.db"
    landed = dict(query(db, "SELECT task_id, ts FROM events WHERE type = 'merge.landed'"))
    started = dict(query(db, "SELECT task_id, started_at FROM attempts"))
    first, second = sorted(started, key=started.__getitem__)
    assert started[second] >= landed[first], (started, landed)
    lines = show(repo, integration(run_id), "src/shared.txt").splitlines()
    assert lines[-2:] == [first, second], lines
    status = run_abreast("status", run_id, cwd=repo)
    assert status.code == 0


def test_an_agent_that_resets_below_its_start_is_sent_back_for_undoing_landed_work(
    repo: Path, tmp_path: Path
) -> None:
    # `git reset --hard HEAD~1` to "undo my last commit" by an agent that had made none
    # undid the work it started from: the task before it, landed. With no `owns:`
    # nothing flagged it, and its tree landed, deleting that task's files.
    told = tmp_path / "feedback.txt"
    undo = (
        'if [ -z "$ABREAST_FEEDBACK" ]; then git reset -q --hard HEAD~1; fi; '
        f'printf %s "$ABREAST_FEEDBACK" > {told}; echo s > s.txt'
    )
    path = workflow(
        repo,
        {
            "first": {"run": "echo f > first.txt"},
            "second": {"needs": ["first"], "run": undo, "retries": 1},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    said = (
        "its HEAD went back below the commit it started from (a `git reset` of commits "
        "it did not make?), and so undid work it started with: first.txt"
    )
    assert re.search(r"retry   second in [\d.]+s: " + re.escape(said), out), out
    assert told.read_text().startswith(said), told.read_text()  # the agent is told
    assert "`git revert`" in told.read_text()
    result = integration(run_id)
    assert show(repo, result, "first.txt") == "f\n"
    assert show(repo, result, "s.txt") == "s\n"
    report = json.loads(run_abreast("report", run_id, "--json", cwd=repo).out)
    (second,) = [t for t in report["tasks"] if t["id"] == "second"]
    assert second["attempts"] == 2, second


def test_an_attempt_that_leaves_a_rebase_or_conflicts_half_done_is_sent_back(
    repo: Path,
) -> None:
    # An agent whose `git rebase` (or `git stash pop`) stopped on a conflict and that then
    # exited: abreast's `git add -A` took git's conflict markers as the task's work and
    # landed them. And the worktree went to the next attempt still mid-rebase.
    conflicting = (
        "git checkout -q -b side-$ABREAST_ATTEMPT && echo side > src/shared.txt && "
        "git commit -qam side && git checkout -q - && echo other > src/shared.txt && "
        "git commit -qam other && "
    )
    path = workflow(
        repo,
        {
            "rebase": {
                "run": 'if [ "$ABREAST_ATTEMPT" = 1 ]; then '
                + conflicting
                + "git rebase side-1 || :; fi; git status > status.txt",
                "retries": 1,
                "backoff": {"initial": "0s"},
            },
            "pop": {
                "run": "echo mine > README.md && git stash -q && echo theirs > README.md && "
                "git commit -qam theirs && git stash pop || true"
            },
        },
        max_parallel=1,
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out  # pop only
    assert (
        "retry   rebase now: left a rebase unfinished in its worktree, with conflicts in: "
        "src/shared.txt; nothing of it was merged; end it (`git rebase --continue` or "
        "`--abort`) before the task exits" in out
    ), out
    assert (
        "pop (failed): left unresolved conflicts in: README.md (a `git stash pop` or "
        "`checkout -m` that conflicted?); nothing of it was merged" in out
    ), out
    result = integration(run_id)
    status = show(repo, result, "status.txt")  # attempt 2's worktree: no rebase under way
    assert status.startswith(f"On branch abreast/{run_id}/rebase\n"), status
    assert "rebase" not in status.split("\n", 1)[1] and "conflict" not in status, status
    assert show(repo, result, "src/shared.txt").startswith("line 1\n")
    assert show(repo, result, "README.md") == "# project\n"


def test_an_agent_that_removes_or_replaces_its_worktrees_git_file(repo: Path) -> None:
    # `rm .git` failed the task with a raw "git ... add -A exited with 128: fatal: this
    # operation must be run in a work tree" (and a note to commit `.git`); a `git init`
    # in its place had abreast commit into the agent's own repository.
    path = workflow(
        repo,
        {
            "removed": {"run": "rm .git && echo n > n.txt"},
            "replaced": {
                "run": 'if [ "$ABREAST_ATTEMPT" = 1 ]; then rm .git && git init -q && '
                "git add -A && git commit -qm mine; fi; echo o > o.txt",
                "retries": 1,
                "backoff": {"initial": "0s"},
            },
            "after": {"needs": ["removed", "replaced"], "run": "cat n.txt o.txt > both.txt"},
        },
        max_parallel=1,
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "retry   replaced now: replaced its worktree's `.git` file (with a repository" in out
    assert "`.git` is in your checkout" not in out and "git add .git" not in out
    assert show(repo, integration(run_id), "both.txt") == "n\no\n"
    kept = re.search(r"kept for inspection \(until `abreast cleanup`\): (\S+)", out)
    assert kept and (Path(kept[1]) / ".git").is_dir(), out  # the agent's, never reused


def test_git_locks_an_attempt_left_behind_do_not_fail_its_work(repo: Path) -> None:
    # A git process of the agent killed mid-write (its tree is ended when the attempt
    # ends) leaves `index.lock`: taking the work in failed with "could not take in its
    # work: git ... add -A exited with 128: fatal: Unable to create '.../index.lock'".
    path = workflow(
        repo,
        {
            "killed_mid_git": {
                "run": 'echo l > l.txt && touch "$(git rev-parse --git-dir)/index.lock" && '
                'touch "$(git rev-parse --git-common-dir)/refs/heads/'
                '$(git symbolic-ref --short HEAD).lock"'
            }
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert show(repo, integration(run_id), "l.txt") == "l\n"


def test_an_integration_branch_deleted_during_the_run_is_put_back(
    repo: Path, tmp_path: Path
) -> None:
    # `git branch -D abreast/RUN/_integration` (or a cleanup by mistake) while a run went
    # on: every later task failed with "the integration branch ... is gone", the work that
    # had landed was lost, and the summary said "result: branch ... at None".
    started, go = tmp_path / "started", tmp_path / "go"
    path = workflow(
        repo,
        {
            "a": {"run": "echo a > a.txt"},
            "b": {
                "needs": ["a"],
                "run": f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo b > b.txt",
            },
            "c": {"needs": ["b"], "run": "cat a.txt b.txt > c.txt"},
        },
    )
    proc, run_id = start_run(path, cwd=repo)
    with ended_after(proc):
        wait_for(started.exists, what="b to start")
        landed_a = git(repo, "rev-parse", integration(run_id)).strip()
        git(repo, "branch", "-D", integration(run_id))
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert (
        f"warning: the run's integration branch {integration(run_id)} was deleted while it "
        f"ran; put back at {landed_a[:12]}, where it was last seen" in out
    ), out
    assert show(repo, integration(run_id), "c.txt") == "a\nb\n"
    restored = query(
        repo / ".abreast" / "state.db",
        "SELECT data FROM events WHERE run_id = ? AND type = 'result.restored'",
        run_id,
    )
    assert [json.loads(d)["commit"] for (d,) in restored] == [landed_a]


def test_file_names_that_are_not_utf8_do_not_stop_the_run(repo: Path) -> None:
    # A task wrote `bad\xffname.txt`: taking its work in failed with "could not take in
    # its work: 'utf-8' codec can't decode byte 0xff".
    write = "printf x > \"$(printf 'bad\\377name.txt')\"; printf y > \"$(printf 'new\\nline.txt')\""
    path = workflow(
        repo,
        {
            "weird": {"run": write, "owns": ["*.txt"]},
            "strict": {"run": "printf z > \"$(printf 'odd\\377.md')\"", "owns": ["/x.md"]},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out  # strict only
    assert "codec can't decode" not in out
    assert "strict (failed): changed files it does not own: odd\ufffd.md" in out, out
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "-z", "--name-only", integration(run_id)],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    assert b"bad\xffname.txt" in listed and b"new\nline.txt" in listed, listed


def test_a_process_an_attempt_left_running_never_writes_into_the_next_tasks_worktree(
    repo: Path, tmp_path: Path
) -> None:
    # A process a task left running in a session of its own (ignoring TERM, so it lives
    # until KILL 5 s later) went on writing into the task's worktree, which the pool had
    # meanwhile handed to the next task: its files landed as that task's work.
    ready, written = tmp_path / "ready", tmp_path / "written"
    straggler = (
        f'setsid sh -c \'trap "" TERM; touch {ready}; sleep 0.3; echo leak > leak.txt; '
        f"touch {written}; sleep 30' > /dev/null 2>&1 < /dev/null & "
        f"while [ ! -e {ready} ]; do sleep 0.01; done; echo own > own.txt"
    )
    wait = f"n=0; while [ ! -e {written} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done"
    path = workflow(
        repo,
        {
            "leaker": {"run": straggler},
            "next": {"needs": ["leaker"], "run": f"{wait}; ls > seen.txt"},
        },
        max_parallel=1,
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    assert "leaker: ending 1 process its attempt 1 left running" in out
    seen = show(repo, integration(run_id), "seen.txt").split()
    assert "leak.txt" not in seen and "own.txt" in seen, seen
    assert "leak.txt" not in git(repo, "ls-tree", "--name-only", integration(run_id)).split()


# -- files tools generate -------------------------------------------------------------------

GENERATE = (
    "mkdir -p node_modules/left-pad src/__pycache__ env/lib && "
    "echo 'module.exports = 1' > node_modules/left-pad/index.js && "
    "echo '{}' > node_modules/left-pad/package.json && "
    "echo pyc > src/__pycache__/shared.cpython-311.pyc && "
    "echo 'home = /usr/bin' > env/pyvenv.cfg && echo x > env/lib/site.py && "
    "echo finder > .DS_Store && "
)


def tree(repo: Path, rev: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", rev).split()


def test_files_tools_generate_are_left_out_of_a_tasks_work_and_said(repo: Path) -> None:
    # `npm install`, a test run or a virtual environment in a project whose .gitignore
    # lacks them: 20 000 files of node_modules landed as the task's work (and broke its
    # owns: here app.js only).
    path = workflow(
        repo,
        {
            "build": {"run": GENERATE + "echo app > app.js", "owns": ["app.js"]},
            # An agent that commits everything itself: taken out by a commit on top.
            "agent": {
                "run": GENERATE.replace("src/", "lib/") + "echo doc > doc.md && "
                "git add -A && git commit -q -m 'all of it'",
            },
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    landed = tree(repo, integration(run_id))
    assert sorted(set(landed) - set(tree(repo, "main"))) == ["app.js", "doc.md"]
    assert (
        "warning: left out of build's work: .DS_Store, env/ (2 files), node_modules/ "
        "(2 files), src/__pycache__/ (1 file), which tools generate and the "
        "project's .gitignore does not exclude; add them to .gitignore (or name them in "
        "the task's owns to land them)"
    ) in out
    assert "left out of agent's work: .DS_Store, env/ (2 files), lib/__pycache__/ (1" in out
    assert re.search(r"build +succeeded .* 1 file \+1 -0", out), out  # what landed
    db = repo / ".abreast" / "state.db"
    rows = query(db, "SELECT task_id, data FROM events WHERE type = 'work.left_out'")
    left = {task: json.loads(data)["paths"] for task, data in rows}
    assert left["build"] == {".DS_Store": 1, "env": 2, "node_modules": 2, "src/__pycache__": 1}
    # The agent's own commit stays in the history; what lands takes them out on top.
    log = git(repo, "log", "--format=%s", f"main..{integration(run_id)}").splitlines()
    assert "all of it" in log
    report = run_abreast("report", run_id, cwd=repo).out
    assert "warning: left out of build's work: .DS_Store, env/ (2 files)" in report


def test_generated_files_a_task_owns_or_the_project_tracks_are_its_work(repo: Path) -> None:
    (repo / "vendor" / "node_modules" / "dep").mkdir(parents=True)
    (repo / "vendor" / "node_modules" / "dep" / "index.js").write_text("1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "vendored")
    path = workflow(
        repo,
        {
            # The project vendors vendor/node_modules: a new package there is work.
            "vendored": {
                "run": "mkdir vendor/node_modules/new && echo 2 > vendor/node_modules/new/i.js"
            },
            # Named by owns: meant to land.
            "owned": {
                "run": "mkdir -p web/node_modules/x && echo 3 > web/node_modules/x/i.js",
                "owns": ["web/node_modules/**"],
            },
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    landed = tree(repo, integration(run_id))
    assert "vendor/node_modules/new/i.js" in landed and "web/node_modules/x/i.js" in landed
    assert "left out" not in out


def test_abreast_diff_of_an_attempt_still_running_says_so(repo: Path, tmp_path: Path) -> None:
    # It said "it ended running before its work was committed".
    go = tmp_path / "go"
    path = workflow(repo, {"a": {"run": f"while [ ! -e {go} ]; do sleep 0.05; done"}})
    proc, run_id = start_run(path, cwd=repo)
    try:
        with ended_after(proc):
            wait_for(
                lambda: (
                    query(repo / ".abreast" / "state.db", "SELECT count(*) FROM attempts") == [(1,)]
                ),
                what="a to start",
            )
            said = run_abreast("diff", "a", cwd=repo)
            assert said.code == 2
            assert "attempt 1 of 'a' has not ended, so its work is not taken in yet" in said.err
            assert f"`abreast status {run_id}` says whether it runs" in said.err
            go.touch()
            proc.communicate(timeout=30)
    finally:
        go.touch()


def test_a_signal_snapshot_leaves_out_what_tools_generated(repo: Path) -> None:
    # api ran `npm install` before signalling: its waiting task started with node_modules
    # checked out (thousands of files), though none of it would ever land.
    path = workflow(
        repo,
        {
            "api": {
                "signals": ["ready"],
                "run": "mkdir -p node_modules/dep && echo 1 > node_modules/dep/i.js && "
                f"echo v1 > api.txt && {PY} -m abreast signal ready",
            },
            "client": {
                "needs": ["api:ready"],
                "run": "cat api.txt > client.txt && "
                "if [ -e node_modules ]; then echo yes; else echo no; fi > seen.txt",
            },
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 0, out
    result = integration(run_id)
    assert show(repo, result, "client.txt") == "v1\n"  # the snapshot had api's work
    assert show(repo, result, "seen.txt") == "no\n"  # and not what npm made
    assert "node_modules/dep/i.js" not in tree(repo, result)


@pytest.mark.parametrize(
    ("made", "said"),
    [
        # Aider keeps its chat history and repo-map cache at the root of the repository
        # it works in: two Aider tasks side by side each committed their own history,
        # and the second one's merge conflicted on it (add/add), every attempt.
        (
            "echo '# aider chat started for {t}' > .aider.chat.history.md; "
            "echo {t} > .aider.input.history; "
            "mkdir -p .aider.tags.cache.v4 && echo {t} > .aider.tags.cache.v4/cache.db",
            ".aider.chat.history.md, .aider.input.history, .aider.tags.cache.v4/ (1 file)",
        ),
        # Two agents that each ran `pip install -e .` and `pytest --cov` in a project
        # whose .gitignore lacks them: each committed its own `*.egg-info/` (its
        # SOURCES.txt listing the files it had added) and its binary `.coverage`, and
        # the second merge conflicted on both (add/add), every attempt.
        (
            "mkdir -p src/app.egg-info .hypothesis/examples && "
            "echo {t}.py > src/app.egg-info/SOURCES.txt && "
            "printf '{t}\\000' > .coverage && echo {t} > .coverage.host.42.x && "
            "echo {t} > .hypothesis/examples/db && echo {t} > tsconfig.tsbuildinfo",
            ".coverage, .coverage.host.42.x, .hypothesis/ (1 file), src/app.egg-info/ "
            "(1 file), tsconfig.tsbuildinfo",
        ),
    ],
    ids=["aider", "install-and-test"],
)
def test_parallel_tasks_land_without_what_their_tools_made(
    repo: Path, made: str, said: str
) -> None:
    both = {
        t: {"run": made.format(t=t) + f"; echo {t} > {t}.py", "owns": [f"{t}.py"], "retries": 0}
        for t in ("one", "two")
    }
    path = workflow(repo, both)
    code, out, run_id = run(repo, path)
    assert code == 0, out
    landed = git(repo, "ls-tree", "-r", "--name-only", integration(run_id)).split()
    assert sorted(set(landed) - set(tree(repo, "main"))) == ["one.py", "two.py"]
    assert f"left out of one's work: {said}, which tools generate" in out, out


def test_an_agent_that_deletes_its_worktree_is_told_so_and_git_forgets_it(repo: Path) -> None:
    # `rm -rf "$PWD"`: the failure said it had replaced its `.git` file (`git init`?),
    # the summary listed the vanished directory as kept for inspection, and git's list
    # of worktrees kept it as prunable.
    path = workflow(
        repo,
        {"gone": {"run": 'rm -rf "$PWD"', "retries": 0}, "fine": {"run": "echo ok > ok.txt"}},
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    assert "gone (failed): deleted its worktree: the directory it ran in (" in out, out
    assert "kept for inspection" not in out, out
    assert "prunable" not in git(repo, "worktree", "list"), git(repo, "worktree", "list")
    assert show(repo, integration(run_id), "ok.txt") == "ok\n"


def test_generated_roots_are_the_outermost_directory_tools_make() -> None:
    from abreast.workspace.generated import owned, roots

    assert roots(
        [
            "web/node_modules/a/node_modules/b/i.js",  # nested: counted in the outer one
            "web/node_modules/c.js",
            "pyvenv.cfg",  # at the top it marks the project itself: not generated
            "src/app.py",
            "target/CACHEDIR.TAG",
            "target/debug/app",
            "docs/.DS_Store",
            "notes/node_modules",  # a file of that name is not a directory tools make
            ".aider.chat.history.md",
            ".aider.tags.cache.v4/cache.db",
            ".aider.conf.yml",  # Aider's configuration: the project's
            "src/app.egg-info/PKG-INFO",
            "src/app.egg-info/SOURCES.txt",
            "pkg/.coverage",
            ".coverage.host.1.x",
            "coverage.py",  # a source file
            "web/tsconfig.tsbuildinfo",
            "htmlcov/index.html",
        ]
    ) == {
        "web/node_modules": 2,
        "target": 2,
        "docs/.DS_Store": 1,
        ".aider.chat.history.md": 1,
        ".aider.tags.cache.v4": 1,
        "src/app.egg-info": 2,
        "pkg/.coverage": 1,
        ".coverage.host.1.x": 1,
        "web/tsconfig.tsbuildinfo": 1,
        "htmlcov": 1,
    }
    assert owned("web/node_modules", ["web/node_modules/**"])
    assert not owned("web/node_modules", ["web/**"])


def test_abreast_diff_shows_what_a_tasks_attempt_changed(repo: Path) -> None:
    # Landed tasks' branches are deleted at the run's end: what each one did was found
    # by hand among the integration branch's merge commits.
    path = workflow(
        repo,
        {
            "api": {"run": "echo building api && echo A > a.txt && echo more >> src/shared.txt"},
            "wild": {"run": "echo W > w.txt && echo X > x.txt", "owns": ["w.txt"]},
            "broken": {"run": "exit 4"},
        },
    )
    code, out, run_id = run(repo, path)
    assert code == 1, out
    # The failures say how to see the work of those that committed some.
    assert f"    its work: abreast diff {run_id} wild\n" in out
    assert f"abreast diff {run_id} broken" not in out
    assert f"its work: abreast diff {run_id} wild" in run_abreast("report", cwd=repo).out
    shown = run_abreast("diff", "api", cwd=repo)
    assert shown.code == 0, shown.err
    assert "+++ b/a.txt" in shown.out and "+A" in shown.out and "+more" in shown.out
    assert shown.err.startswith("api, attempt 1 (succeeded): git diff ")
    # Exactly what landed for it: the diff of its merge commit against the one before.
    landed = git(repo, "log", "--format=%H", "--grep=land api", integration(run_id)).split()[0]
    assert git(repo, "diff", "--stat", f"{landed}^1", landed) == (
        run_abreast("diff", run_id, "api", "--stat", cwd=repo).out
    )
    # Sent back for its owns (and failed): its work is still there to see.
    wild = run_abreast("diff", run_id, "wild", "--name-only", cwd=repo)
    assert wild.out.split() == ["w.txt", "x.txt"], wild.err
    assert "changed files it does not own" in wild.err
    # No work taken in, or no such task: said, with what to do.
    broken = run_abreast("diff", "broken", cwd=repo)
    assert broken.code == 2
    assert "attempt 1 of 'broken' has no work taken in: it ended failed (exit 4)" in broken.err
    assert f"abreast logs {run_id} broken --attempt 1" in broken.err
    nope = run_abreast("diff", "apu", cwd=repo)
    assert "has no task 'apu'; did you mean 'api'?" in nope.err
    # --all: the run's whole result against where it started, what bringing it in changes
    # (wild and broken did not land); with its branch deleted, from where work last landed.
    whole = run_abreast("diff", "--all", "--name-only", cwd=repo)
    assert whole.out.split() == ["a.txt", "src/shared.txt"], whole.err
    assert f"run {run_id}, its result (1 task landed): git diff " in whole.err
    git(repo, "branch", "-D", "-q", integration(run_id))
    assert run_abreast("diff", run_id, "--all", "--name-only", cwd=repo).out == whole.out
    both = run_abreast("diff", "--all", "api", "x", cwd=repo)
    assert both.code == 2 and "takes a run at most" in both.err
    # isolation: none: nothing kept apart.
    none = workflow(repo, {"a": {"run": "echo A > a.txt"}}, isolation="none")
    assert run(repo, none)[0] == 0
    inplace = run_abreast("diff", "a", cwd=repo)
    assert inplace.code == 2
    assert "ran in the project directory (isolation: none)" in inplace.err
    # The project moved since (its journal with it): found where it is now, as the logs
    # are ("the log of api attempt 1 is gone" named the old path).
    moved = repo.parent / "moved"
    repo.rename(moved)
    there = run_abreast("diff", run_id, "api", cwd=moved)
    assert there.code == 0 and "+A" in there.out, there.err
    assert run_abreast("logs", run_id, "api", cwd=moved).out == "building api\n"
    assert "api    | building api\n" in run_abreast("logs", run_id, "--all", cwd=moved).out
    # Removed, the journal kept elsewhere: said, not a traceback.
    kept = repo.parent / "kept"
    kept.mkdir()
    shutil.copy(moved / ".abreast" / "state.db", kept / "state.db")
    shutil.rmtree(moved)
    gone = run_abreast("diff", "--state", f"sqlite://{kept}/state.db", run_id, "api", cwd=kept)
    assert gone.code == 2, gone.err
    assert f"ran in {repo}, where there is no git repository now" in gone.err
    assert "where the repository is now, `git diff " in gone.err


def test_worktrees_never_fill_the_disk(tmp_path: Path) -> None:
    # A big repository on a small disk: worktrees made one after another filled it, the
    # next checkout failed half-written, and then the journal could not be written (the
    # run died). A tmpfs in a mount namespace of our own, a 20 MB file in the repository;
    # before each run, a filler leaves FREE MB free (as df counts it).
    disk, said = disk_in_a_namespace(tmp_path)
    tasks = {t: {"run": f"sleep 0.3; echo {t} > {t}.txt"} for t in "abcd"}
    wide = {"version": 1, "name": "room", "max_parallel": 4, "tasks": tasks}
    kept = {
        "version": 1,
        "name": "kept",
        "max_parallel": 1,
        "tasks": {
            # Its worktree is kept for inspection: the next task needs a new one.
            "a": {"run": "false", "retries": 0, "estimate": "10m"},
            "b": {"run": "echo b > b.txt", "estimate": "1s"},
        },
    }
    script = (
        'disk=$1 py=$2 said=$3; mount -t tmpfs -o size=160m tmpfs "$disk" && '
        'mkdir "$disk/repo" && cd "$disk/repo" && git init -q -b main && '
        'head -c 20000000 /dev/urandom > big.bin && printf %s "$4" > wide.json && '
        'printf %s "$5" > kept.json && git add . && '
        "git -c user.email=t@t -c user.name=t commit -qm init || exit 9; "
        "fill() { rm -f ../filler; avail=$(df --output=avail -B1 . | tail -1); "
        "head -c $((avail - $1 * 1000000)) /dev/zero > ../filler; }; "
        'run() { "$py" -m abreast run "$1.json" --no-monitor --plain > "$said/out.$2" 2>&1; '
        'echo $? > "$said/rc.$2"; }; '
        'fill 120; "$py" -m abreast run wide.json --dry-run > "$said/dry" 2>&1; '
        'run wide 1; cp .abreast/state.db* "$said/"; fill 94; run kept 2; '
        "fill 70; run wide 3; "
        'ls .abreast/runs > "$said/runs"'
    )
    argv = [str(disk), sys.executable, str(said), json.dumps(wide), json.dumps(kept)]
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, "sh", *argv],
        timeout=120,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = {n: (said / f"out.{n}").read_text() for n in (1, 2, 3)}
    rc = {n: (said / f"rc.{n}").read_text().strip() for n in (1, 2, 3)}
    # Room for 2 worktrees of 20 MB (120 MB free, 64 MB left free): at most 2 at once.
    assert rc[1] == "0", out[1]
    note = re.search(
        r"note: the disk \(\S+\) has room for (\d) worktrees of about 20.0 MB \([\d.]+ MB free; "
        r"abreast leaves 64.0 MB of it free\): at most (\d) tasks run at once \(max_parallel "
        r"is 4\)",
        out[1],
    )
    assert note is not None and note[1] == note[2] == "2", out[1]
    dry = (said / "dry").read_text()  # a dry run says the same
    assert "dry run of room: 4 tasks, up to 2 at once\n" in dry, dry
    assert "has room for 2 worktrees of about 20.0 MB" in dry, dry
    made = {row[0] for row in query(said / "state.db", "SELECT workdir FROM attempts")}
    assert len(made) == 2, made  # two worktrees, each task in one of them
    # Room for one: the failed task keeps its worktree, so the next cannot have one; it
    # fails saying why, and the run ends as any run does, its journal written.
    assert rc[2] == "1", out[2]
    assert re.search(
        r"b \(failed\): could not prepare: no room on the disk \(\S+\) for another worktree: "
        r"one takes about 20.0 MB \(the files of the commit it starts from\), the disk has "
        r"[\d.]+ MB free, and abreast leaves 64.0 MB of it for its journal and logs",
        out[2],
    ), out[2]
    assert "Traceback" not in out[2] and "cannot write the journal" not in out[2]
    # No room for one: refused before anything of a run is made.
    assert rc[3] == "2", out[3]
    assert re.search(
        r"abreast: error: no room on the disk \(\S+\) for a worktree: one takes about 20.0 MB",
        out[3],
    ), out[3]
    assert "hint: make room (`abreast cleanup` removes what finished runs left)" in out[3]
    assert len((said / "runs").read_text().split()) == 2
