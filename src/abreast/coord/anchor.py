"""A run's state files, kept reachable if `.abreast/` is removed under the run.

With `isolation: none` tasks work in the project directory itself, `.abreast/`
included, and a task that tidies up with `git clean -fdx` (which removes ignored
files, and `.abreast/` is ignored through `.git/info/exclude`) or `rm -rf .abreast`
would take the run's journal with it: the orchestrator's open connection writes on to
a file nobody can open any more, `abreast status` and `abreast resume` find nothing,
and the next task fails because its log's directory is gone.

So while a run goes on, its orchestrator keeps a hard link to each state file it has
open (the journal and the SQLite coordinator, each with its `-wal` and `-shm`, the
run's exits file and the `abreast` shim) in the git directory, which no `git clean`
touches, and puts back whatever was removed or replaced: the same inodes, not copies,
so every process that still has them open (the orchestrator, the dashboard, a task's
`abreast lock`) agrees with every process that opens them afresh, and nothing
committed is lost. The run's directories are made again too. What a removal does
lose: the logs of the attempts running at that moment (their files are gone with
the directory), and, for the moments until the orchestrator notices (its next
decision, at most a tick later), anything another process wrote to state files it
created anew at those paths.

Restoring the same inodes is safe only while the files are open here: SQLite keeps a
`-wal` and its `-shm` for as long as any connection is open, so one that differs from
the anchored one was removed and made again by another process, never replaced by
SQLite itself. Hence `arm()` after the connections are open, `close()` before they
are closed. Best effort: where a link cannot be made (another filesystem, a read-only
git directory, a project whose `.git` is a file) the run goes on without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

SQLITE_SIDE_FILES = ("-wal", "-shm")

Identity = tuple[int, int]


def identity(path: Path | str) -> Identity | None:
    """(device, inode) of the file at `path`, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def with_side_files(db: Path) -> list[Path]:
    """A SQLite file in WAL mode and the two files beside it, side files first: put back
    in that order, a process opening the database finds its WAL already there."""
    return [*(db.with_name(db.name + s) for s in SQLITE_SIDE_FILES), db]


class StateAnchor:
    """Hard links to a run's open state files in `anchor_dir`, and `check()` to put
    back what was removed or replaced at their paths."""

    def __init__(
        self,
        anchor_dir: Path,
        files: Iterable[Path],
        dirs: Iterable[Path],
        shared: Iterable[Path] = (),
    ) -> None:
        self.dir = anchor_dir
        self._wanted = list(files)
        self._dirs = list(dirs)
        # Files another run may rightly replace (the shim, rewritten by a run of another
        # abreast): put back only when missing.
        self._shared = set(shared)
        self._entries: list[tuple[Path, Path, Identity]] = []  # (path, its link, identity)
        self.restored = 0  # times something was put back

    @classmethod
    def for_project(
        cls,
        root: Path,
        run_id: str,
        files: Iterable[Path],
        dirs: Iterable[Path],
        shared: Iterable[Path] = (),
    ) -> StateAnchor | None:
        """An anchor in `root`'s git directory for the files inside `root`, or None where
        `root` has no `.git` directory of its own (not a repository, a linked worktree,
        a submodule) or none of the files is inside it."""
        if not (root / ".git").is_dir():
            return None
        inside = [f for f in files if root in f.parents]
        if not inside:
            return None
        return cls(anchors_dir(root) / run_id, inside, dirs, shared)

    @property
    def armed(self) -> bool:
        return bool(self._entries)

    def arm(self) -> None:
        """Link each wanted file that exists now; on any failure, keep no links at all."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for n, path in enumerate(self._wanted):
                now = identity(path)
                if now is None:
                    continue
                link = self.dir / f"{n}-{path.name}"
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()  # left by a run of this key that was killed
                os.link(path, link)
                if identity(link) != now:  # replaced between the stat and the link
                    raise OSError(f"{path} changed while it was being anchored")
                self._entries.append((path, link, now))
        except OSError:
            self.close()

    def check(self, first_only: bool = False) -> list[Path]:
        """Put back every anchored file whose path no longer leads to it, after making
        the run's directories again; the paths put back. `first_only` looks at the
        first file alone (the journal, one stat: what the engine does before each
        decision it journals); any change found there puts back everything."""
        entries = self._entries[:1] if first_only else self._entries
        if all(self._in_place(path, ident) for path, _, ident in entries):
            return []
        put_back = []
        for d in self._dirs:
            with contextlib.suppress(OSError):
                d.mkdir(parents=True, exist_ok=True)
        for path, link, ident in self._entries:
            if self._in_place(path, ident):
                continue
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                temp = path.with_name(f".{path.name}.anchor-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
                os.link(link, temp)
                os.replace(temp, path)  # over whatever another process made there meanwhile
                put_back.append(path)
        if put_back:
            self.restored += 1
        return put_back

    def _in_place(self, path: Path, ident: Identity) -> bool:
        now = identity(path)
        return now == ident or (now is not None and path in self._shared)

    def close(self) -> None:
        """Drop the links (the files live on at their paths)."""
        self._entries = []
        remove_anchor(self.dir)


def anchors_dir(root: Path) -> Path:
    """Where runs of the project at `root` keep their links: one directory per run,
    named by its id, there while its orchestrator runs (or after it was killed, until
    `abreast resume` or `abreast cleanup`)."""
    return root / ".git" / "abreast" / "anchors"


def still_linked(run_dir: Path) -> bool:
    """Whether any file a run anchored in `run_dir` still has a path besides its link."""
    with contextlib.suppress(OSError):
        return any(link.stat().st_nlink > 1 for link in run_dir.iterdir())
    return False


def remove_anchor(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()  # the last run's links gone: leave no empty folders
        run_dir.parent.parent.rmdir()
