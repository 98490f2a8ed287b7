"""Containment: noticing what an agent changed outside its own worktree.

What is watched (snapshots at the start of the run, compared after each attempt):
- the main checkout: `git status` of the user's working tree (abreast's own
  `.abreast/` is excluded, and so is the file abreast's own output goes to, as in
  `abreast run ... > run.log` inside the repository, the files other runs' output went
  to (journaled with each run), and a file that a process abreast did not start holds
  open for writing when its change is seen: `abreast run | tee run.log`, another run's
  `> out.log`, a dev server's log); a new change is
  attributed, by its file's mtime, to the attempts that were running when it was
  written;
- the repository's hooks and config (`.git/hooks/**`, `.git/config`, worktree
  config, and those of the submodules the checkout has populated,
  `.git/modules/NAME/{hooks/**,config}`): any change is attributed the same way
  and undone at once, so a planted hook never runs;
- the entries of the user's stash at the start (one list for the repository, shared by
  every worktree): one that disappears is reported and put back;
- the user's branches and tags at the start (refs are shared by every worktree too;
  abreast's own `abreast/...` branches aside): one deleted (`git branch -D`) is
  reported and put back; one moved (`git branch -f`, `git update-ref`) is warned
  about with how to put it back, not blamed, since a move is as likely the user's own
  commit or pull in their checkout; one fast-forwarded to another run's result (that
  run's `--land`) is not said at all. New branches and tags are not watched while
  the run runs (an agent told to work on a branch of its own); when it ends, those made
  on its work that the result holds are removed (`refs_of_the_work`);
- symlinks an attempt leaves that point outside its worktree.

What cannot be seen: a write into another *running* task's worktree looks like
that task's own work (it is caught only if it breaks that task's `owns`, a
merge or a check), and changes outside the repository entirely.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from abreast.executor.process import own_output_files, started_by, writers_of
from abreast.integrate.base import integration_branch
from abreast.workspace.repo import Repo, dirty_paths

SLACK_S = 1.0  # mtimes are compared with attempt windows this generously


@dataclass(frozen=True)
class Change:
    what: str  # "main checkout" | "hook" | "git config" | "stash" | "branch" | "tag"
    path: str  # a file; a stash entry's message; a branch's or tag's name
    mtime: float
    detail: str = ""  # what became of a branch or tag, and how to undo it
    blame: bool = True  # False: said as a warning only (a move that may be the user's own)


def landed_by(repo: Repo, commit: str, run_id: str = "") -> str | None:
    """The run (not `run_id`) whose result `commit` is, the head of its integration
    branch: a branch found there was landed by that run (`--land`)."""
    for ref, sha in repo.refs("refs/heads/abreast/").items():
        name = ref.removeprefix("refs/heads/")
        if sha == commit and name.endswith("/_integration"):
            other = name.removeprefix("abreast/").removesuffix("/_integration")
            if other != run_id and integration_branch(other) == name:
                return other
    return None


class Guard:
    def __init__(
        self,
        repo: Repo,
        state_dir: Path | None = None,
        submodule_dirs: list[Path] | None = None,
        run_id: str = "",
    ) -> None:
        self.repo = repo
        self.run_id = run_id
        self._submodule_dirs = submodule_dirs or []  # the checkout's copies of its submodules
        # abreast's own files (journal, logs, outputs) are not the user's checkout.
        self._ignore = ""
        if state_dir is not None and repo.root in state_dir.parents:
            self._ignore = str(state_dir.relative_to(repo.root)) + "/"
        self._own_output = own_output_files()
        self._protected = self._protected_files()
        self._main = self._main_state()
        # Your stash entries at the start (its reflog's lines; stash@{0} last): the stash is
        # one list for the repository, shared by every worktree.
        self._stash_log = repo.common_dir / "logs" / "refs" / "stash"
        self._stash = self._stash_entries()
        self._refs_seen: tuple[int, ...] = ()
        self._refs = self._user_refs()
        self._refs_at_start = frozenset(self._refs)

    # -- your branches and tags ---------------------------------------------------------------

    def _refs_stamp(self) -> tuple[int, ...]:
        """The modification times of where refs are kept (packed-refs; the directories
        of loose branch and tags, which git's lock-and-rename of a ref update touches;
        a reftable's directory): equal stamps, no ref was written in between."""
        common = self.repo.common_dir
        places = [common / "packed-refs", common / "reftable"]
        for top in (common / "refs" / "heads", common / "refs" / "tags"):
            for d, subdirs, _ in os.walk(top):
                if d == str(common / "refs" / "heads"):
                    subdirs[:] = [x for x in subdirs if x != "abreast"]  # the runs' own
                places.append(Path(d))
        return tuple(_mtime_ns(p) for p in places)

    def _user_refs(self) -> dict[str, str]:
        self._refs_seen = self._refs_stamp()
        found = self.repo.refs("refs/heads/", "refs/tags/")
        return {k: v for k, v in found.items() if not k.startswith("refs/heads/abreast/")}

    def check_refs(self, restore: bool = True) -> list[Change]:
        """Your branches and tags that were there at the start and were deleted or moved
        since the last look: each reported once; a deleted one (`restore`) put back where
        it was; a moved one not blamed (a warning). One look costs a few stats unless a
        ref was written."""
        if not self._refs or self._refs_stamp() == self._refs_seen:
            return []
        now = self._user_refs()
        changes = []
        for ref, was in list(self._refs.items()):
            kind, name = ("tag", ref[10:]) if ref.startswith("refs/tags/") else ("branch", ref[11:])
            put_back = f"git update-ref {ref} {was[:12]}"
            when = _ref_mtime(self.repo.common_dir, ref)
            if ref not in now:
                if restore and self.repo.update_ref(ref, was, None):
                    detail = f"deleted (put back at {was[:12]})"
                else:
                    detail = f"deleted (`{put_back}` puts it back)"
                    del self._refs[ref]  # said once
                changes.append(Change(kind, name, when, detail))
            elif now[ref] != was and self._landed_here(was, now[ref]):
                self._refs[ref] = now[ref]  # another run's --land: abreast's own doing
            elif now[ref] != was and self._moved_on_in_your_checkout(ref, was, now[ref]):
                self._refs[ref] = now[ref]  # your commit or pull, where it is checked out
            elif now[ref] != was:
                detail = f"moved from {was[:12]} to {now[ref][:12]} (`{put_back}` puts it back)"
                changes.append(Change(kind, name, when, detail, blame=False))
                self._refs[ref] = now[ref]  # said once
        return changes

    def refs_of_the_work(self, base: str, result: str) -> list[tuple[str, str]]:
        """(ref, object) of the branches and tags made since the run started that point at
        the run's own work in its result: new commits (not in `base`) that `result` holds.
        An agent's `git checkout -b feature` or `git tag`, left in your repository (refs
        are one set for every worktree); removing them loses nothing. A branch checked
        out somewhere is not among them, nor a tag on a commit of yours."""
        made = [
            (ref, sha)
            for ref, sha in self.repo.refs("refs/heads/", "refs/tags/").items()
            if ref not in self._refs_at_start and not ref.startswith("refs/heads/abreast/")
        ]
        return [
            (ref, sha)
            for ref, sha in made
            if not self.repo.is_ancestor(ref, base)
            and self.repo.is_ancestor(ref, result)
            and (not ref.startswith("refs/heads/") or self.repo.checked_out_at(ref) is None)
        ]

    def tags_on_yours(self, base: str) -> list[tuple[str, str]]:
        """(tag, object) of the tags made since the run started on a commit of yours (one
        `base` holds): an agent's `git tag v1.2` before its work was committed marks the
        commit it started from, without its work. Left alone (they may be yours): said."""
        return [
            (ref, sha)
            for ref, sha in self.repo.refs("refs/tags/").items()
            if ref not in self._refs_at_start and self.repo.is_ancestor(ref, base)
        ]

    def _landed_here(self, was: str, now: str) -> bool:
        """A branch moved from `was` to `now` by another abreast run's `--land`: `now` is
        that run's result, a fast-forward from `was`."""
        return landed_by(self.repo, now, self.run_id) is not None and self.repo.is_ancestor(
            was, now
        )

    def _moved_on_in_your_checkout(self, ref: str, was: str, now: str) -> bool:
        """Branch `ref` moved on from `was` to `now` (new commits on top) through a checkout
        of yours that has it checked out: your commit, merge or pull there, each step in
        that checkout's own HEAD reflog. Nothing to warn about, and `git update-ref` to put
        it back would lose your commits. A task's moves are made from its own worktree,
        whose HEAD (and reflog) is its own; `git branch -f` refuses a branch checked out
        elsewhere."""
        where = self.repo.checked_out_at(ref)
        if where is None or where.resolve().is_relative_to(self.repo.abreast_dir):
            return False
        if not self.repo.is_ancestor(was, now):
            return False  # a reset or a rewrite: said, whoever did it
        proc = self.repo.git("rev-parse", "--absolute-git-dir", cwd=where, check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return False
        try:
            lines = (Path(proc.stdout.strip()) / "logs" / "HEAD").read_bytes().splitlines()
        except OSError:
            return False
        at = now.encode()
        for line in reversed(lines):
            old, _, rest = line.partition(b" ")
            if rest.partition(b" ")[0] == at:
                at = old
                if at == was.encode():
                    return True
        return False

    # -- your stash ---------------------------------------------------------------------------

    def _stash_entries(self) -> list[bytes]:
        try:
            return self._stash_log.read_bytes().splitlines(keepends=True)
        except OSError:
            return []

    def check_stash(self, restore: bool = True) -> list[Change]:
        """Entries of your stash that were there at the start and are gone (an agent's
        `git stash pop`, `drop` or `clear`): each reported, and (`restore`) put back under
        the entries added since, so that `git stash list` shows them again. Entries added
        during the run are not watched."""
        if not self._stash:
            return []
        now = self._stash_entries()
        # An entry is its stash commit (a reflog line's second field): dropping one entry
        # rewrites the "old" field of the line after it.
        present = {_stash_commit(e) for e in now}
        lost = [e for e in self._stash if _stash_commit(e) not in present]
        if not lost:
            return []
        when = _mtime(self._stash_log) or _mtime(self._stash_log.parent)
        changes = [Change("stash", _stash_message(e), when) for e in lost]
        if restore:
            ours = {_stash_commit(e) for e in self._stash}
            self._write_stash(self._stash + [e for e in now if _stash_commit(e) not in ours])
        else:
            self._stash = [e for e in self._stash if _stash_commit(e) in present]  # said once
        return changes

    def run_stashes(self, run_id: str) -> list[tuple[str, str]]:
        """The entries the run's tasks pushed onto your stash (an agent's `git stash` in its
        worktree: the stash is the repository's one list, so your next `git stash pop`
        would pop the agent's work), known by the branch they were made on,
        `abreast/RUN/TASK` (one made on a detached HEAD is not told from yours): (stash
        commit, message) of each, newest last. `git stash store COMMIT` puts one back."""
        entries = self._stash_entries()
        return [
            (_stash_commit(e).decode(), _stash_message(e))
            for e in entries
            if _made_on_run_branch(e, run_id)
        ]

    def drop_run_stashes(self, run_id: str) -> bool:
        """Take the run's entries (`run_stashes`) off your stash; False if it could not."""
        entries = self._stash_entries()
        kept = [e for e in entries if not _made_on_run_branch(e, run_id)]
        return len(kept) == len(entries) or self._write_stash(kept)

    def _write_stash(self, entries: list[bytes]) -> bool:
        """Make your stash these reflog lines (stash@{0} last), as git keeps it: the reflog,
        and `refs/stash` at the newest; none at all when there are none. False if that
        could not be written."""
        ref = self.repo.common_dir / "refs" / "stash"
        try:
            if not entries:  # empty, as git leaves it after dropping the last one
                self.repo.delete_ref("refs/stash")
                self._stash_log.unlink(missing_ok=True)
                return True
            self._stash_log.parent.mkdir(parents=True, exist_ok=True)
            self._stash_log.write_bytes(b"".join(entries))
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(_stash_commit(entries[-1]).decode() + "\n")
        except OSError:
            return False
        return True

    # -- repository files (hooks, config) ---------------------------------------------------

    def _protected_paths(self) -> list[Path]:
        common = self.repo.common_dir
        paths = []
        for git_dir in (common, *self._submodule_dirs):
            paths.append(git_dir / "config")
            hooks = git_dir / "hooks"
            if hooks.is_dir():
                paths += [p for p in hooks.rglob("*") if p.is_file() or p.is_symlink()]
        wt_root = common / "worktrees"
        if wt_root.is_dir():
            paths += list(wt_root.glob("*/config.worktree"))
        return paths

    def _protected_files(self) -> dict[Path, bytes | None]:
        out: dict[Path, bytes | None] = {}
        for p in self._protected_paths():
            try:
                out[p] = p.read_bytes() if not p.is_symlink() else b"->" + os.readlink(p).encode()
            except OSError:
                out[p] = None
        return out

    def check_repo_files(self) -> list[Change]:
        """Changes to hooks and config since the start; each is undone before returning."""
        changes = []
        now = self._protected_files()
        for path, content in now.items():
            before = self._protected.get(path, None) if path in self._protected else _ABSENT
            if before is _ABSENT or before != content:
                changes.append(Change(_kind(path), str(path), _mtime(path)))
                self._restore(path, before)
        for path, before in self._protected.items():
            if path not in now:
                changes.append(Change(_kind(path), str(path), _mtime(path.parent)))
                self._restore(path, before)
        return changes

    def _restore(self, path: Path, before: object) -> None:
        try:
            if path.is_symlink() or path.exists():
                path.unlink()
            if isinstance(before, bytes):
                if before.startswith(b"->"):
                    os.symlink(before[2:].decode(), path)
                else:
                    path.write_bytes(before)
        except OSError:
            pass

    def note_new_worktree_config(self) -> None:
        """Take newly created worktrees' config into the baseline (our own doing)."""
        self._protected = {**self._protected_files(), **self._protected}

    # -- the main checkout ------------------------------------------------------------------

    def _main_state(self) -> dict[str, tuple[float, int, str]]:
        out = {}
        for rel in dirty_paths(self.repo, self.repo.root):
            if self._ignore and rel.startswith(self._ignore):
                continue
            p = self.repo.root / rel
            try:
                st = p.lstat()
                if (st.st_dev, st.st_ino) in self._own_output:
                    continue  # our own stdout/stderr, redirected into the checkout
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
                out[rel] = (st.st_mtime, st.st_size, digest)
            except OSError:
                out[rel] = (0.0, -1, "")
        return out

    def check_main_checkout(self, others: set[tuple[int, int]] | None = None) -> list[Change]:
        """Changes in the user's working tree since the last look (each reported once);
        `others`: (device, inode) of the files other runs' output went to."""
        now = self._main_state()
        changed = [rel for rel, state in now.items() if self._main.get(rel) != state]
        for rel in self._written_from_outside(changed, others or set()):
            del now[rel]  # and left out from now on
            self._main.pop(rel, None)
        changes = []
        for rel, state in now.items():
            if self._main.get(rel) != state:
                changes.append(Change("main checkout", rel, state[0] or self._gone_at(rel)))
        for rel in self._main:
            if rel not in now:
                when = _mtime(self.repo.root / rel) or self._gone_at(rel)
                changes.append(Change("main checkout", rel, when))
        self._main = now
        return changes

    def _written_from_outside(self, rels: list[str], others: set[tuple[int, int]]) -> list[str]:
        """Those of `rels` that a process this run did not start holds open for writing
        (`| tee run.log`, another run's output, a dev server's log), or that another run's
        output went to (`abreast run b.yaml > b.log`, ended meanwhile): not the tasks'
        doing. Their files are left out of the checkout's state from then on."""
        found = being_written(self.repo.root, rels, self.run_id, others)
        self._own_output.update(found)
        return list(found.values())

    def _gone_at(self, rel: str) -> float:
        """When a path that is no longer there went, as near as can be told: the mtime of
        the nearest directory above it that is (removing an entry touches its directory;
        the repository's root only for a path at the top)."""
        for parent in (self.repo.root / rel).parents:
            when = _mtime(parent)
            if when or parent == self.repo.root:
                return when
        return 0.0


_ABSENT = object()


def being_written(
    root: Path, rels: list[str], run_id: str = "", others: set[tuple[int, int]] | None = None
) -> dict[tuple[int, int], str]:
    """Those of `rels` (paths under `root`, by (device, inode)) that this process's output
    goes to, or `others` (other runs' output), or that a process it did not start (nor run
    `run_id`'s attempts) holds open for writing now: a log being written (`abreast run |
    tee run.log`, another run's output, a dev server's), not a change of the project's,
    nor the tasks' doing."""
    ids = _regular_files(root, rels)
    if not ids:
        return {}
    me = os.getpid()
    held = (
        own_output_files()
        | (others or set())
        | {
            key
            for key, pids in writers_of(ids.keys()).items()
            if any(not started_by(pid, me, run_id) for pid in pids)
        }
    )
    return {key: rel for key, rel in ids.items() if key in held}


def _regular_files(root: Path, rels: list[str]) -> dict[tuple[int, int], str]:
    """(device, inode) of each of `rels` that is a regular file."""
    ids: dict[tuple[int, int], str] = {}
    for rel in rels:
        try:
            st = (root / rel).lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            ids[(st.st_dev, st.st_ino)] = rel
    return ids


def _stash_commit(entry: bytes) -> bytes:
    """A stash reflog line's stash commit (`OLD NEW who when\tmessage`)."""
    parts = entry.split(b" ", 2)
    return parts[1] if len(parts) > 1 else entry


def _made_on_run_branch(entry: bytes, run_id: str) -> bool:
    """Whether a stash entry was made on one of the run's task branches (its message
    `WIP on abreast/RUN/TASK: ...`, or `On abreast/RUN/TASK: ...` with a message)."""
    message = _stash_message(entry)
    return message.startswith((f"WIP on abreast/{run_id}/", f"On abreast/{run_id}/"))


def _stash_message(entry: bytes) -> str:
    """A stash reflog line's message (`On main: wip`)."""
    return entry.split(b"\t", 1)[-1].decode("utf-8", "replace").strip()


def _kind(path: Path) -> str:
    return "hook" if "hooks" in path.parts else "git config"


def _mtime_ns(path: Path) -> int:
    try:
        return path.lstat().st_mtime_ns
    except OSError:
        return 0


def _ref_mtime(common: Path, ref: str) -> float:
    """When `ref` was last written, as near as can be told: its loose file, else the
    directory it was deleted from or packed-refs (whichever is newer)."""
    loose = common / ref
    return _mtime(loose) or max(_mtime(loose.parent), _mtime(common / "packed-refs"))


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def symlinks_out(worktree: Path, paths: list[str]) -> list[str]:
    """Changed paths that are symlinks resolving outside `worktree`."""
    root = worktree.resolve()
    bad = []
    for rel in paths:
        p = worktree / rel
        if p.is_symlink():
            target = Path(os.path.realpath(p))
            if target != root and root not in target.parents:
                bad.append(f"{rel} -> {os.readlink(p)}")
    return bad
