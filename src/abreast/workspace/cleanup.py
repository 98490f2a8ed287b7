"""What `abreast cleanup` removes from a repository: worktrees and branches of old runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from abreast.workspace.git import git
from abreast.workspace.repo import Repo


@dataclass(frozen=True)
class Leftovers:
    run_id: str
    worktrees: list[Path]
    task_branches: list[str]
    integration_branch: str | None
    snapshots: list[str]  # refs/abreast/<run>/...: what tasks' signals left


def leftovers(repo: Repo, run_id: str) -> Leftovers:
    base = repo.abreast_dir / "worktrees" / run_id
    worktrees = sorted(
        p for kind in ("tasks", "checks") if (base / kind).is_dir() for p in (base / kind).iterdir()
    )
    refs = repo.refs(f"refs/heads/abreast/{run_id}/")
    integration = f"refs/heads/abreast/{run_id}/_integration"
    tasks = sorted(r for r in refs if r != integration)
    snapshots = sorted(repo.refs(f"refs/abreast/{run_id}/"))
    return Leftovers(
        run_id, worktrees, tasks, integration if integration in refs else None, snapshots
    )


def held_nowhere(root: Path, ref: str) -> str | None:
    """The commit `ref` (a run's result branch, in the repository at `root`) is at, when
    no branch, tag or remote-tracking branch but abreast's own holds it: work nobody
    brought in, which git collects some time after `ref` is deleted. None when one holds
    it (landed, merged, pushed), or `ref` is not there. Reads only."""
    proc = git(
        "for-each-ref", "--contains", ref, "--format=%(objectname) %(refname)",
        "refs/heads/", "refs/tags/", "refs/remotes/", cwd=root, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    found = [line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line]
    if any(not name.startswith("refs/heads/abreast/") for _, name in found):
        return None
    return next((sha for sha, name in found if name == ref), None)


def runs_with_leftovers(repo: Repo) -> list[str]:
    found: set[str] = set()
    wt_root = repo.abreast_dir / "worktrees"
    if wt_root.is_dir():
        found.update(p.name for p in wt_root.iterdir() if p.is_dir())
    for ref in repo.refs("refs/heads/abreast/"):
        parts = ref.split("/")
        if len(parts) >= 5:
            found.add(parts[3])
    for ref in repo.refs("refs/abreast/"):
        parts = ref.split("/")
        if len(parts) >= 4:
            found.add(parts[2])
    return sorted(found)


def remove(repo: Repo, left: Leftovers, *, results: bool) -> list[str]:
    done = []
    for path in left.worktrees:
        repo.worktree_remove(path)
        done.append(f"removed worktree {path}")
    for ref in left.task_branches:
        repo.delete_ref(ref)
        done.append(f"deleted branch {ref.removeprefix('refs/heads/')}")
    for ref in left.snapshots:
        repo.delete_ref(ref)
        done.append(f"deleted {ref}")
    if results and left.integration_branch:
        repo.delete_ref(left.integration_branch)
        done.append(f"deleted result branch {left.integration_branch.removeprefix('refs/heads/')}")
    run_dir = repo.abreast_dir / "worktrees" / left.run_id
    for sub in (run_dir / "tasks", run_dir / "checks", run_dir):
        try:
            sub.rmdir()
        except OSError:
            pass
    repo.worktree_prune()
    return done


def remove_stale_indexes(repo: Repo, older_than_s: float = 600.0) -> int:
    """Temporary indexes of signal snapshots cut short (their task was killed midway): a
    snapshot takes well under a second, so one older than `older_than_s` is nobody's."""
    import shutil
    import time

    from abreast.workspace.repo import SNAPSHOT_INDEX

    now, removed = time.time(), 0
    for d in repo.abreast_dir.glob(f"{SNAPSHOT_INDEX}*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d)
                removed += 1
        except OSError:
            pass
    return removed
