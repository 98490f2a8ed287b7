"""Kill the orchestrator with SIGKILL at random points, resume, and check nothing was lost.

    python bench/crash_bench.py [--runs 50] [--tasks 12] [--seed 0] [--isolation none]
                                [--signals] [--batch N]

Each round: a random DAG of tasks that sleep a little and then append their attempt
number to a per-task count file; `abreast run` is SIGKILLed after a random number of
tasks finished plus a random delay; `abreast resume` finishes it. A round passes when
every task counted exactly once, the run succeeded, and no process of the run is left.
With --signals (worktrees), some needs wait only for a signal the task gives halfway
(its files as a snapshot), and the result must also hold every task's file. With
--batch N (worktrees), every merge runs a short check, and up to N queued merges are
checked together (`merge: {batch: N}`). With --reviews, some tasks get a reviewer
(`send_back`) that sends their work back once: such a task and its reviewer must
each have run exactly twice, one round each, however the kill fell. With --carry
(worktrees), some tasks fail their first attempt having written a part of their work,
and finish only when their next attempt finds that part (`carry_work`): the result
must hold both. With --red (worktrees), a merge check turns every task's first
attempt red (it finds the attempt number 1 in the task's file), so each lands from a
retry, which takes whatever worktree is free.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from abreast.executor.process import marked_processes  # noqa: E402


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def one_round(
    base: Path,
    n: int,
    rng: random.Random,
    isolation: str,
    signals: bool = False,
    batch: int = 0,
    reviews: bool = False,
    carry: bool = False,
    red: bool = False,
) -> tuple[bool, str]:
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "counts").mkdir()
    tasks: dict[str, dict[str, object]] = {}
    for i in range(n):
        needs = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        if signals:  # some wait only for the signal their dependency gives halfway
            needs = [f"{d}:half" if rng.random() < 0.5 else d for d in needs]
        count = f'echo "$ABREAST_ATTEMPT" >> {root}/counts/$ABREAST_TASK_ID'
        if isolation == "worktree":  # the work is a file in the task's own worktree
            count = 'mkdir -p done && echo "$ABREAST_ATTEMPT" >> done/$ABREAST_TASK_ID'
        run = f"sleep {rng.uniform(0.02, 0.4):.2f} && {count}"
        if signals:
            half = f"sleep {rng.uniform(0.02, 0.2):.2f} && abreast signal half"
            run = f"{half} && {run}"
        tasks[f"t{i}"] = {"run": run, "needs": needs, **({"signals": ["half"]} if signals else {})}
        if red:
            tasks[f"t{i}"] |= {"retries": 2, "backoff": {"initial": 0}}
        if carry and rng.random() < 0.4:  # fails until an attempt starts with its part
            part = f"done/t{i}.part"
            first = f"if [ ! -e {part} ]; then mkdir -p done && echo part > {part}; exit 1; fi"
            retry = {"retries": 3, "backoff": {"initial": 0}, "carry_work": True}
            tasks[f"t{i}"] |= {"run": f"{first}\n{run}", **retry}
        if reviews and rng.random() < 0.3:  # approves once t{i} has done two rounds
            rounds = f"done/t{i}" if isolation == "worktree" else f"{root}/counts/t{i}"
            verdict = (
                f'n=$(grep -c . {rounds}); ok=false; [ "$n" -ge 2 ] && ok=true; '
                'echo "{\\"ok\\": $ok}" > "$ABREAST_OUTPUT"'
            )
            back = {"to": f"t{i}", "when": "not output.ok"}
            tasks[f"r{i}"] = {"run": f"{verdict} && {count}", "needs": [f"t{i}"], "send_back": back}
    wf = root / "w.json"
    wf.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "crash",
                "isolation": isolation,
                "max_parallel": 3,
                **({"checks": [{"run": "sleep 0.1"}], "merge": {"batch": batch}} if batch else {}),
                **({"checks": [{"run": "! grep -rqx 1 done/"}]} if red else {}),
                "tasks": tasks,
            }
        )
    )
    if isolation == "worktree":
        git(root, "init", "-q", "-b", "main")
        (root / ".gitignore").write_text("counts/\n")
        git(root, "add", "-A")
        git(root, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "init")
    state = f"sqlite://{root}/.abreast/state.db"
    cmd = [sys.executable, "-m", "abreast"]
    proc = subprocess.Popen(
        [*cmd, "run", str(wf), "--no-monitor", "--plain", "--state", state],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("run: "):
        proc.kill()
        return False, f"no run id: {line!r} {proc.communicate()[1]}"
    run_id = line[5:].strip()
    target = rng.randint(0, n - 1)
    deadline = time.monotonic() + 30
    events = root / ".abreast" / "runs" / run_id / "exits"
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(events.read_text().splitlines()) if events.exists() else 0
        if done >= target:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.15))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = subprocess.run(
        [*cmd, "resume", run_id, "--state", state, "--no-monitor", "--plain"],
        capture_output=True,
        text=True,
        check=False,
    )
    finished_before = "already finished" in resumed.stderr
    if resumed.returncode != 0 and not finished_before:
        return False, f"resume failed ({resumed.returncode}): {resumed.stderr}{resumed.stdout}"
    counts: dict[str, list[str]] = {}
    if isolation == "worktree":
        ref = f"abreast/{run_id}/_integration"
        subjects = git(root, "log", "--first-parent", "--format=%s", ref).splitlines()
        landed = [s.split()[2] for s in subjects if s.startswith("abreast: land ")]
        counts = {t: [x for x in landed if x == t] for t in tasks}
        files = set(git(root, "ls-tree", "-r", "--name-only", ref, "done/").split())
        missing = [t for t in tasks if f"done/{t}" not in files]
        missing += [f"{t}.part" for t, s in tasks.items() if s.get("carry_work")]
        missing = [m for m in missing if f"done/{m}" not in files]
        if missing:
            return False, f"run {run_id} in {root}: files missing from the result: {missing}"
    else:
        for t in tasks:
            f = root / "counts" / t
            counts[t] = f.read_text().split() if f.exists() else []
    # A reviewed task and its reviewer: two rounds each; any other task: once.
    reviewed = {t for t in tasks if t.startswith("r")}
    reviewed |= {"t" + t[1:] for t in reviewed}
    wrong = {k: v for k, v in counts.items() if len(v) != (2 if k in reviewed else 1)}
    if wrong:
        return (
            False,
            f"run {run_id} in {root}: counts not as many as rounds: {wrong}\n{resumed.stdout}",
        )
    left = marked_processes(run_id)
    if left:
        return False, f"run {run_id}: processes left: {[p.pid for p in left]}"
    return True, "finished before the kill" if finished_before else f"killed after {target}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isolation", default="none", choices=("none", "worktree"))
    ap.add_argument("--signals", action="store_true", help="signal waits (worktree only)")
    ap.add_argument("--batch", type=int, default=0, help="checks, merged in batches of N")
    ap.add_argument("--reviews", action="store_true", help="reviewers sending work back once")
    ap.add_argument("--carry", action="store_true", help="carry_work (worktree only)")
    ap.add_argument("--red", action="store_true", help="first attempts' checks red (worktree)")
    args = ap.parse_args()
    if (args.signals or args.batch or args.carry or args.red) and args.isolation != "worktree":
        ap.error("--signals, --batch, --carry and --red go with --isolation worktree")
    if args.red and (args.carry or args.reviews or args.batch):
        ap.error("--red goes alone (a carried or reviewed attempt holds its first's number)")
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for i in range(args.runs):
            ok, detail = one_round(
                base,
                args.tasks,
                rng,
                args.isolation,
                args.signals,
                args.batch,
                args.reviews,
                args.carry,
                args.red,
            )
            failures += not ok
            print(f"{i + 1:>3}/{args.runs} {'ok  ' if ok else 'FAIL'} {detail}", flush=True)
    once = "once a round of its review" if args.reviews else "exactly once"
    print(
        f"\n{args.runs - failures}/{args.runs} rounds: every task {once}, none lost, "
        f"no stray process"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
