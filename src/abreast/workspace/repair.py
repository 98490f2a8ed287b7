"""Repairing a repository after an orchestrator died mid-git: stale locks, dead worktrees."""

from __future__ import annotations

import os
from pathlib import Path

from abreast.workspace.repo import Repo


def held_open(path: Path) -> bool:
    """Whether any process has `path` open (read from /proc/*/fd)."""
    target = str(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return True
            except OSError:
                continue
    return False


def unheld(locks: list[Path]) -> list[Path]:
    """Of these lock files, those that exist and no process holds open: stale."""
    return [p for p in locks if os.path.lexists(p) and not held_open(p)]


def stale_locks(repo: Repo, run_id: str) -> list[Path]:
    """`*.lock` files a dead run left: in its worktrees' git dirs and under its refs."""
    candidates: list[Path] = []
    run_wt = repo.abreast_dir / "worktrees" / run_id
    for gitdir in (repo.common_dir / "worktrees").glob("*"):
        link = gitdir / "gitdir"
        try:
            if run_wt in Path(link.read_text().strip()).parents:
                candidates += list(gitdir.glob("*.lock"))
        except OSError:
            continue
    refs = repo.common_dir / "refs" / "heads" / "abreast" / run_id
    if refs.is_dir():
        candidates += list(refs.rglob("*.lock"))
    return unheld(candidates)


def repair(root: Path, run_id: str) -> list[str]:
    """Remove stale locks (only those no process holds) and prune dead worktrees."""
    repo = Repo(root)
    done = []
    for lock in stale_locks(repo, run_id):
        try:
            lock.unlink()
            done.append(f"removed stale {lock}")
        except OSError:
            pass
    repo.worktree_prune()
    return done
