"""The merge queue with slow checks: one merge at a time against batches (`merge: {batch: N}`).

    python bench/merge_bench.py [--tasks 8] [--check 1.0] [--batches 1,4,8] [--repeat 3]

Whole-process wall time of `abreast run` (worktrees) on a throwaway repository: TASKS
tasks that each write a file of their own and end at about the same time, and one check
that takes CHECK seconds. *green*: every merge passes; *one red*: one task's work fails
the check (no retries), so a batch holding it is red and is split in halves. Runs
alternate between batch sizes, medians of REPEAT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def one_run(root: Path, tasks: int, check_s: float, batch: int, red: bool) -> float:
    spec = {
        "version": 1,
        "name": "merge",
        "max_parallel": tasks,
        "merge": {"batch": batch},
        "checks": [{"run": f"sleep {check_s}; test ! -e BROKEN"}],
        "tasks": {
            f"t{i}": {
                "run": f"sleep 0.2; echo {i} > f{i}.txt"
                + ("; sleep 0.3; touch BROKEN" if red and i == 1 else ""),  # never first
                "retries": 0,
            }
            for i in range(tasks)
        },
    }
    path = root / "w.json"
    path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "abreast", "run", str(path), "--plain", "--no-monitor"],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != (1 if red else 0):
        raise SystemExit(f"abreast run exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--check", type=float, default=1.0)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        git(root, "init", "-q", "-b", "main")
        git(
            root,
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "0",
        )
        for red in (False, True):
            times: dict[int, list[float]] = {b: [] for b in batches}
            for _ in range(args.repeat):
                for b in batches:  # alternating, so that the machine's mood is shared
                    times[b].append(one_run(root, args.tasks, args.check, b, red))
            base = statistics.median(times[batches[0]])
            for b in batches:
                med = statistics.median(times[b])
                rows.append(("one red" if red else "green", b, med, base / med))
                kind = "one red" if red else "green"
                print(f"{kind:>7}  batch {b:>2}  {med:6.2f} s  x{base / med:.2f}", flush=True)
    print(
        f"\n{args.tasks} tasks, a check of {args.check:g} s, medians of {args.repeat}\n\n"
        f"| merges | batch | wall | speed-up against batch {batches[0]} |\n"
        "| --- | ---: | ---: | ---: |"
    )
    for kind, b, med, ratio in rows:
        print(f"| {kind} | {b} | {med:.2f} s | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
