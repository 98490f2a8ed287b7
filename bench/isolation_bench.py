"""Worktree readiness (pooled vs fresh) and merge-queue throughput on a generated repository.

    python bench/isolation_bench.py [--files 10000,50000] [--rounds 20] [--merges 100]
                                    [--dir DIR]

For each repository size, in one run:
  - fresh: plain `git worktree add --detach PATH COMMIT` (the reference), and abreast's
    own fresh worktree (add --no-checkout, split index, untracked cache, read-tree);
  - pooled: abreast's pool handing a used worktree (the last task changed 3 files and
    committed) to the next task, at an integration head that moved by 3 files;
  - merges per second through the merge queue (merge-tree, commit-tree, CAS update-ref,
    journal), no checks, each job a task branch changing one file of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from abreast.coord.journal import Journal  # noqa: E402
from abreast.integrate.checks import LocalLocks  # noqa: E402
from abreast.integrate.queue import MergeJob, MergeQueue  # noqa: E402
from abreast.workspace.pool import WorktreePool  # noqa: E402
from abreast.workspace.repo import Repo, commit_all  # noqa: E402


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, files: int) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "bench")
    git(path, "config", "user.email", "bench@example.com")
    for i in range(files):
        d = path / f"d{i % 200}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n" * 8)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "generated")


def advance(repo_path: Path, n: int) -> str:
    """Move main by one commit changing 3 files; returns the new commit."""
    for k in range(3):
        f = repo_path / f"d{(n * 3 + k) % 200}" / "moving.txt"
        f.write_text(f"{n}\n")
    git(repo_path, "add", "-A")
    git(repo_path, "commit", "-q", "-m", f"advance {n}")
    return git(repo_path, "rev-parse", "HEAD")


def bench_worktrees(repo_path: Path, rounds: int) -> dict[str, float]:
    repo = Repo(repo_path)
    head = git(repo_path, "rev-parse", "HEAD")
    pool = WorktreePool(repo, "bench", "tasks")
    plain, fresh = [], []
    for i in range(3):  # interleaved, so both see the same disk weather
        p = repo.abreast_dir / "bench-plain" / f"w{i}"
        t0 = time.perf_counter()
        git(repo_path, "worktree", "add", "-q", "--detach", str(p), head)
        plain.append(time.perf_counter() - t0)
        repo.worktree_remove(p)
        t0 = time.perf_counter()
        p = pool.acquire(f"abreast/bench/fresh{i}", head)
        fresh.append(time.perf_counter() - t0)
        pool.keep(p)
        repo.worktree_remove(p)
    path = pool.acquire("abreast/bench/t0", head)
    pooled = []
    for n in range(rounds):
        for k in range(3):  # the task's work
            (path / f"d{k}" / f"task{n}.txt").write_text("work\n")
        (path / "build").mkdir(exist_ok=True)
        (path / "build" / "artifact.o").write_text("x")
        commit_all(repo, path, f"task {n}")
        pool.release(path, clean=True)
        new_head = advance(repo_path, n)
        t0 = time.perf_counter()
        path = pool.acquire(f"abreast/bench/t{n + 1}", new_head)
        pooled.append(time.perf_counter() - t0)
        assert not (path / "build").exists()
    pool.keep(path)
    repo.worktree_remove(path)
    return {
        "plain_add_s": statistics.median(plain),
        "fresh_s": statistics.median(fresh),
        "pooled_s": statistics.median(pooled),
        "pooled_p90_s": sorted(pooled)[int(len(pooled) * 0.9) - 1],
    }


async def bench_merges(repo_path: Path, merges: int, tmp: Path) -> float:
    repo = Repo(repo_path)
    base = git(repo_path, "rev-parse", "HEAD")
    heads = []
    for i in range(merges):  # task branches made with plumbing: fast, and not measured
        blob = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo_path,
            input=f"task {i}\n",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = {"GIT_INDEX_FILE": str(tmp / f"idx{i}"), "PATH": "/usr/bin:/bin"}
        subprocess.run(["git", "read-tree", base], cwd=repo_path, env=env, check=True)
        subprocess.run(
            ["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},tasks/t{i}.txt"],
            cwd=repo_path,
            env=env,
            check=True,
        )
        tree = subprocess.run(
            ["git", "write-tree"],
            cwd=repo_path,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.strip()
        heads.append(repo.commit_tree(tree, [base], f"task {i}"))
    ref = "refs/heads/abreast/bench/_integration"
    repo.update_ref(ref, base, None)
    journal = Journal(tmp / "state.db")
    queue = MergeQueue(
        repo,
        ref,
        "bench",
        journal,
        [],
        WorktreePool(repo, "bench", "checks"),
        {},
        tmp / "checks",
        LocalLocks().hold,
    )
    t0 = time.perf_counter()
    for i, head in enumerate(heads):
        verdict = await queue.submit(MergeJob(f"t{i}", 1, base, head))
        journal.commit()
        assert verdict.outcome.value == "landed", verdict
    took = time.perf_counter() - t0
    await queue.close()
    landed = git(repo_path, "rev-list", "--count", "--first-parent", f"{base}..{ref}")
    assert int(landed) == merges
    return merges / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", default="10000")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--merges", type=int, default=100)
    ap.add_argument("--dir", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for files in map(int, args.files.split(",")):
            repo_path = Path(tmp) / f"repo{files}"
            make_repo(repo_path, files)
            wt = bench_worktrees(repo_path, args.rounds)
            rate = asyncio.run(bench_merges(repo_path, args.merges, Path(tmp)))
            row = {"files": files, **wt, "merges_per_s": rate}
            rows.append(row)
            print(
                f"{files:>6} files: git worktree add {wt['plain_add_s'] * 1000:7.1f} ms | "
                f"abreast fresh {wt['fresh_s'] * 1000:7.1f} ms | pooled "
                f"{wt['pooled_s'] * 1000:6.1f} ms (p90 {wt['pooled_p90_s'] * 1000:.1f}) | "
                f"{rate:6.1f} merges/s",
                flush=True,
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
