"""Pooled worktrees: a finished attempt's worktree is moved to the next task's start.

Moving costs what differs (a two-way merge of the index from the old commit to
the new one, on a split index), not the size of the repository; only growing
the pool pays for a full checkout. What does not depend on the next task (`git
clean` of what the last one left, with the untracked cache) is done in the
background as soon as a worktree is given back, off the next task's path.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from abreast.workspace import provision
from abreast.workspace.provision import Provision
from abreast.workspace.repo import FAST, Repo, detach_head, move_worktree, point_head
from abreast.workspace.room import check_room, worktree_bytes

# How long a worktree given back waits for processes still working in it (a task's
# process left running in a session of its own, being ended by the engine: TERM, then
# KILL after 5 s) before it is given up rather than handed to another task.
LEFT_RUNNING_WAIT_S = 15.0


def working_in(path: Path) -> list[int]:
    """Processes whose current directory is `path` or under it (read from /proc/*/cwd; a
    process this user may not look at is not seen)."""
    top = str(path)
    inside = top.rstrip("/") + "/"
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == top or cwd.startswith(inside):
            found.append(int(entry))
    return found


class WorktreePool:
    def __init__(
        self,
        repo: Repo,
        run_id: str,
        kind: str = "tasks",
        reserved: set[Path] | None = None,
        provided: Provision | None = None,
    ) -> None:
        self.repo = repo
        self.provided = provided
        self._spare = provision.clean_excludes(provided.keep) if provided else ()
        self.dir = repo.abreast_dir / "worktrees" / run_id / kind
        self._lock = threading.Condition()
        # path -> (no uncommitted change to tracked files, untracked files already removed)
        self._idle: dict[Path, tuple[bool, bool]] = {}
        self._cleaning: set[Path] = set()
        # Being cleaned, but waiting first for processes still working in it: not a
        # worktree ready in milliseconds, so a task needing one does not wait for it.
        self._waiting_out: set[Path] = set()
        self.given_up: list[Path] = []  # never handed out again: processes stayed in it
        self._waiters: list[threading.Thread] = []
        self._cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abreast-clean")
        self._all: set[Path] = set()
        # An earlier orchestrator's worktrees kept for work still to be taken in: removed
        # at close unless the run claimed them (an attempt killed by resume has none).
        self._reserved: set[Path] = set()
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
                if path in reserved:
                    self._reserved.add(path)
                else:
                    self._idle[path] = (False, False)

    def acquire(self, branch: str | None, commit: str) -> Path:
        """A worktree on `branch` (None: detached) at `commit`, reused when one is idle."""
        with self._lock:
            # A worktree being cleaned is ready in milliseconds; a new one takes a checkout.
            while not self._idle and self._cleaning - self._waiting_out:
                self._lock.wait(timeout=5)
            state: tuple[bool, bool] | None
            if self._idle:
                path, state = self._idle.popitem()
            else:
                # Never a checkout that would fill the disk (and then the journal).
                check_room(self.dir, worktree_bytes(self.repo, commit))
                path, state = self.dir / f"wt-{self._next}", None
                self._next += 1
                self._all.add(path)
        if state is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.repo.worktree_add(path, commit)
            if branch:
                self.repo.git("update-ref", "--no-deref", f"refs/heads/{branch}", commit, cwd=path)
                point_head(path, branch)
            self.created += 1
        else:
            committed, cleaned = state
            move_worktree(
                self.repo,
                path,
                branch,
                commit,
                clean=committed,
                remove_untracked=not cleaned,
                spare=self._spare,
            )
            self.reused += 1
        if self.provided is not None:
            try:
                provision.provide(self.repo, path, self.provided)
            except BaseException:
                self.release(path, clean=False)
                raise
        return path

    def release(self, path: Path, *, clean: bool, after_move: bool = False) -> None:
        """Give a worktree back; its untracked and ignored files are removed in the
        background, then it is handed out again. `after_move`: removed only once it is
        moved to the next task's commit (a repository the task made inside, which its HEAD
        records as a submodule, becomes an untracked directory only then)."""
        with self._lock:
            if path not in self._all or path in self._idle or path in self._cleaning:
                return
            if clean:  # its files are its HEAD commit's: kept so whatever moves the branch
                clean = detach_head(self.repo, path)
            if after_move:
                self._idle[path] = (clean, False)
                self._lock.notify_all()
                return
            self._cleaning.add(path)
        self._cleaner.submit(self._clean, path, clean)

    def _clean(self, path: Path, committed: bool) -> None:
        if working_in(path):  # waited out on a thread of its own: the others go on
            with self._lock:
                self._waiting_out.add(path)
                self._lock.notify_all()
            waiter = threading.Thread(
                target=self._wait_then_clean, args=(path, committed), daemon=True
            )
            self._waiters.append(waiter)
            waiter.start()
            return
        self._clean_now(path, committed)

    def _wait_then_clean(self, path: Path, committed: bool) -> None:
        """Wait until no process works in the worktree (what the last attempt left running
        would write into the next task's files, and land as its work), then clean it; give
        it up if one still does after LEFT_RUNNING_WAIT_S."""
        deadline = time.monotonic() + LEFT_RUNNING_WAIT_S
        while working_in(path):
            if time.monotonic() > deadline:
                with self._lock:  # out of the pool, and of its removal at close
                    self._cleaning.discard(path)
                    self._waiting_out.discard(path)
                    self._all.discard(path)
                    self.given_up.append(path)
                    self._lock.notify_all()
                return
            time.sleep(0.05)  # processes of other sessions: nothing to be woken by
        with self._lock:
            self._waiting_out.discard(path)
        self._clean_now(path, committed)

    def _clean_now(self, path: Path, committed: bool) -> None:
        cleaned = (
            self.repo.git(
                *FAST, "clean", "-q", "-f", "-f", "-d", "-x", *self._spare, cwd=path, check=False
            ).returncode
            == 0
        )
        with self._lock:
            self._cleaning.discard(path)
            if path in self._all:
                self._idle[path] = (committed, cleaned)
            self._lock.notify_all()

    def take_back(self, path: Path) -> bool:
        """Claim an idle worktree back (False if another task already has it, or if it
        waits for a process still working in it: not waited for here)."""
        with self._lock:
            while path in self._cleaning and path not in self._waiting_out:
                self._lock.wait(timeout=5)
            if path in self._waiting_out:
                return False
            self._reserved.discard(path)
            return self._idle.pop(path, None) is not None

    def claim(self, path: Path) -> None:
        """Count an existing worktree as in use by the pool (one an earlier orchestrator made)."""
        with self._lock:
            self._reserved.discard(path)
            self._all.add(path)

    def keep(self, path: Path) -> None:
        """Never hand this worktree out again (it holds a failed attempt's evidence)."""
        with self._lock:
            self._idle.pop(path, None)
            self._all.discard(path)

    def close(self) -> None:
        """Remove the idle worktrees, and reserved ones nobody claimed (kept ones stay
        until `abreast cleanup`)."""
        self._cleaner.shutdown(wait=True)
        for waiter in self._waiters:
            waiter.join()
        with self._lock:
            idle, self._idle = [*self._idle, *self._reserved], {}
            self._reserved = set()
            self._all.difference_update(idle)
        for path in idle:
            self.repo.worktree_remove(path)
        for d in (self.dir, self.dir.parent):  # the run's directories, once nothing is kept
            try:
                d.rmdir()
            except OSError:
                break  # kept worktrees in it (until `abreast cleanup`), or never made


def _number(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
