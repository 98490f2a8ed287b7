"""Room on the disk for worktrees.

Each task at once works in a worktree of its own: a checkout of the commit it starts
from. On a big repository and a small disk, worktrees made one after another used to
fill the disk: the next checkout failed half-written (`error: unable to write file`),
and then the journal could not be written, so the run died. Before a run, the room is
counted (`fit`: a lower cap, said, or a refusal); a worktree is made only where it leaves
RESERVE_BYTES free (`NoRoom` otherwise, said as such), for the journal, logs and git.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from abreast.spec.durations import format_size
from abreast.workspace.repo import Repo

RESERVE_BYTES = 64_000_000  # left free for the journal, the logs and git's own writes
_BLOCK = 4096  # a file takes whole blocks


class NoRoom(RuntimeError):
    """No room on the disk for another worktree."""


def worktree_bytes(repo: Repo, commit: str) -> int | None:
    """About what a checkout of `commit` takes on disk (its files, each in whole blocks);
    None where that cannot be told cheaply: a partial clone, whose blobs may not be here
    (asking their sizes would fetch each), or a commit git cannot list. Counted once a
    repository, for the first commit asked about (a run's base: what its tasks land
    changes it little), so that a new worktree costs no more git commands."""
    root = str(repo.root)
    if root not in _SIZES:
        _SIZES[root] = _checkout_bytes(root, commit)
    return _SIZES[root]


_SIZES: dict[str, int | None] = {}  # repository root -> worktree_bytes


def _checkout_bytes(root: str, commit: str) -> int | None:
    from abreast.workspace.git import git

    cwd = Path(root)
    if git("config", "--get", "extensions.partialClone", cwd=cwd, check=False).stdout.strip():
        return None
    listed = git("ls-tree", "-r", "-l", "-z", "--full-tree", commit, cwd=cwd, check=False)
    if listed.returncode != 0:
        return None
    total = 0
    for entry in listed.stdout.split("\0"):
        # "MODE TYPE OID SIZE\tPATH"; a submodule's SIZE is "-"
        size = entry.partition("\t")[0].rpartition(" ")[2]
        if size.isdigit():
            total += -(-max(int(size), 1) // _BLOCK) * _BLOCK
    return total


def _existing(path: Path) -> Path:
    """`path`, or the nearest directory above it that exists (the worktrees' directory
    is made with the first of them)."""
    return next((p for p in (path, *path.parents) if p.exists()), path)


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk of `path`, for this user; None where that cannot be read."""
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def disk_of(path: Path) -> Path:
    """The mount point of the filesystem `path` is on (where a message says the room is)."""
    where = _existing(path)
    while not where.is_mount() and where != where.parent:
        where = where.parent
    return where


def room_text(size: int, free: int) -> str:
    """Why there is no room, in figures."""
    return (
        f"one takes about {format_size(size)} (the files of the commit it starts from), the "
        f"disk has {format_size(max(free, 0))} free, and abreast leaves "
        f"{format_size(RESERVE_BYTES)} of it for its journal and logs"
    )


def check_room(where: Path, size: int | None) -> None:
    """Raise NoRoom unless a worktree of `size` bytes made at `where` leaves
    RESERVE_BYTES free."""
    free = free_bytes(where)
    if size is None or free is None or free - size >= RESERVE_BYTES:
        return
    raise NoRoom(
        f"no room on the disk ({disk_of(where)}) for another worktree: "
        f"{room_text(size, free)}; make room (`abreast cleanup` removes what finished runs "
        "left), or lower max_parallel"
    )


def fit(where: Path, size: int | None) -> tuple[int, int] | None:
    """How many worktrees of `size` bytes the disk of `where` has room for, leaving
    RESERVE_BYTES free, and its free bytes; None where that cannot be told."""
    free = free_bytes(where)
    if size is None or free is None:
        return None
    return max(0, (free - RESERVE_BYTES) // max(size, _BLOCK)), free
