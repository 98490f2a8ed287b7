"""Pooled worktrees: a finished attempt's worktree is moved to the next task's start.

Moving costs what differs (a two-way merge of the index from the old commit to
the new one, on a split index; `git clean` with the untracked cache), not the
size of the repository; only growing the pool pays for a full checkout.
"""

from __future__ import annotations

import threading
from pathlib import Path

from abreast.workspace.repo import Repo, move_worktree


class WorktreePool:
    def __init__(
        self, repo: Repo, run_id: str, kind: str = "tasks", reserved: set[Path] | None = None
    ) -> None:
        self.repo = repo
        self.dir = repo.abreast_dir / "worktrees" / run_id / kind
        self._lock = threading.Lock()
        self._idle: dict[Path, bool] = {}  # path -> committed clean (a cheap move is safe)
        self._all: set[Path] = set()
        self._next = 0
        self.created = 0
        self.reused = 0
        self._adopt_existing(reserved or set())

    def _adopt_existing(self, reserved: set[Path]) -> None:
        """Worktrees an earlier orchestrator of this run left: reuse them (fully reset),
        except `reserved` ones, which hold work still to be taken in."""
        if not self.dir.exists():
            return
        known = {p.resolve() for p in self.repo.worktrees()}
        for path in sorted(self.dir.iterdir()):
            self._next = max(self._next, _number(path) + 1)
            if path.resolve() in known:
                self._all.add(path)
                if path not in reserved:
                    self._idle[path] = False

    def acquire(self, branch: str | None, commit: str) -> Path:
        """A worktree on `branch` (None: detached) at `commit`, reused when one is idle."""
        with self._lock:
            if self._idle:
                path, clean = self._idle.popitem()
            else:
                path, clean = self.dir / f"wt-{self._next}", None
                self._next += 1
                self._all.add(path)
        if clean is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.repo.worktree_add(path, commit)
            if branch:
                self.repo.git("update-ref", "--no-deref", f"refs/heads/{branch}", commit, cwd=path)
                self.repo.git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=path)
            self.created += 1
        else:
            move_worktree(self.repo, path, branch, commit, clean=clean)
            self.reused += 1
        return path

    def release(self, path: Path, *, clean: bool) -> None:
        with self._lock:
            if path in self._all:
                self._idle[path] = clean

    def take_back(self, path: Path) -> bool:
        """Claim an idle worktree back (False if another task already has it)."""
        with self._lock:
            return self._idle.pop(path, None) is not None

    def claim(self, path: Path) -> None:
        """Count an existing worktree as in use by the pool (one an earlier orchestrator made)."""
        with self._lock:
            self._all.add(path)

    def keep(self, path: Path) -> None:
        """Never hand this worktree out again (it holds a failed attempt's evidence)."""
        with self._lock:
            self._idle.pop(path, None)
            self._all.discard(path)

    def close(self) -> None:
        """Remove the idle worktrees (kept ones stay until `abreast cleanup`)."""
        with self._lock:
            idle, self._idle = list(self._idle), {}
            self._all.difference_update(idle)
        for path in idle:
            self.repo.worktree_remove(path)


def _number(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
