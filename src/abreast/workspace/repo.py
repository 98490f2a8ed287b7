"""One git repository, as abreast uses it: refs, merges and worktrees, through git's CLI.

Every git call goes through `Repo.git` (argv lists, hooks off, no prompts).
Metadata operations (worktree add/remove/prune, ref updates that must not
race) take one cross-process lock per repository, a `flock` on
`<git-common-dir>/abreast/lock`; parallel `git worktree add` otherwise races
on `.git/config.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from abreast.errors import UsageError, did_you_mean
from abreast.executor.logs import visible_name
from abreast.spec.durations import listed
from abreast.workspace.git import GitError, git

ZERO = "0" * 40
IDENTITY = {
    "GIT_AUTHOR_NAME": "abreast",
    "GIT_AUTHOR_EMAIL": "abreast@localhost",
    "GIT_COMMITTER_NAME": "abreast",
    "GIT_COMMITTER_EMAIL": "abreast@localhost",
}


class NotARepository(Exception):
    pass


@dataclass(frozen=True)
class MergeResult:
    clean: bool
    tree: str
    conflicts: list[str]
    messages: str


class Repo:
    def __init__(self, root: Path) -> None:
        proc = git("rev-parse", "--show-toplevel", "--git-common-dir", cwd=root, check=False)
        if proc.returncode != 0:
            raise NotARepository(proc.stderr.strip() or f"{root} is not a git repository")
        top, common = proc.stdout.splitlines()[:2]
        self.root = Path(top)
        common_path = Path(common)
        self.common_dir = common_path if common_path.is_absolute() else (self.root / common_path)
        self.common_dir = self.common_dir.resolve()
        self.abreast_dir = self.common_dir / "abreast"
        self.abreast_dir.mkdir(parents=True, exist_ok=True)
        self._identity: dict[str, str] | None = None

    def git(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        input_: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return git(*args, cwd=cwd or self.root, check=check, env=env, input_=input_)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's metadata lock (across processes and threads)."""
        fd = os.open(self.abreast_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- identity ----------------------------------------------------------------------------

    def identity_env(self) -> dict[str, str]:
        """Author/committer for our commits: the user's if configured, else abreast's."""
        if self._identity is None:
            name = self.git("config", "user.name", check=False).stdout.strip()
            email = self.git("config", "user.email", check=False).stdout.strip()
            self._identity = {} if name and email else dict(IDENTITY)
        return self._identity

    # -- refs --------------------------------------------------------------------------------

    def rev_parse(self, rev: str) -> str | None:
        proc = self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False
        )
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def check_branch_name(self, name: str) -> bool:
        return self.git("check-ref-format", "--branch", name, check=False).returncode == 0

    def update_ref(self, ref: str, new: str, old: str | None) -> bool:
        """Compare-and-swap: move `ref` to `new` only if it is `old` (None: must not exist)."""
        proc = self.git("update-ref", "--no-deref", ref, new, old or ZERO, check=False)
        return proc.returncode == 0

    def delete_ref(self, ref: str) -> None:
        self.git("update-ref", "-d", ref, check=False)

    def delete_refs(self, refs: list[str]) -> None:
        """Delete these refs (missing ones are no matter) in one git process; one by one
        if that transaction fails."""
        if not refs:
            return
        lines = "".join(f"delete {ref}\n" for ref in refs)
        if self.git("update-ref", "--stdin", input_=lines, check=False).returncode != 0:
            for ref in refs:
                self.delete_ref(ref)

    def refs(self, *prefixes: str) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", *prefixes).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits; None when they have none."""
        out = self.git("merge-base", a, b, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.git("merge-base", "--is-ancestor", a, b, check=False).returncode == 0

    def current_branch(self) -> str | None:
        proc = self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    # -- merging -----------------------------------------------------------------------------

    def merge_tree(self, ours: str, theirs: str) -> MergeResult:
        """The merge of two commits, computed without touching any checkout."""
        proc = self.git(
            "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs, check=False
        )
        if proc.returncode not in (0, 1):
            raise GitError(["merge-tree", ours, theirs], proc.returncode, proc.stderr)
        lines = proc.stdout.splitlines()
        conflicts = [line for line in lines[1:] if line.strip()]
        return MergeResult(proc.returncode == 0, lines[0].strip(), sorted(set(conflicts)), "")

    def commit_and_tree(self, rev: str) -> tuple[str, str] | None:
        """(commit, its tree) of `rev` in one call, or None if it does not resolve."""
        # git 2.39's rev-parse honours --end-of-options only with --verify (one rev); `rev`
        # here is always one of our own refs, which never starts with '-'.
        proc = self.git("rev-parse", f"{rev}^{{commit}}", f"{rev}^{{tree}}", check=False)
        lines = proc.stdout.split()
        return (lines[0], lines[1]) if proc.returncode == 0 and len(lines) == 2 else None

    def commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        args = ["commit-tree", tree]
        for p in parents:
            args += ["-p", p]
        return self.git(*args, "-m", message, env=self.identity_env()).stdout.strip()

    def tree_without(self, commit: str, paths: list[str]) -> str:
        """The tree of `commit` with `paths` (files or directories, taken literally) taken
        out, made in an index of its own: no checkout is touched."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tree-", dir=self.abreast_dir) as d:
            env = {"GIT_INDEX_FILE": os.path.join(d, "index")}
            self.git("read-tree", commit, env=env)
            self.unindex(paths, env)
            return self.git("write-tree", env=env).stdout.strip()

    def unindex(self, paths: list[str], env: dict[str, str]) -> None:
        """Take `paths` (files or directories, taken literally) out of the index `env`
        names (GIT_INDEX_FILE), leaving every file alone."""
        if not paths:
            return
        self.git(
            "rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch",
            "--pathspec-from-file=-", "--pathspec-file-nul",
            env={**env, "GIT_LITERAL_PATHSPECS": "1"}, input_="\0".join(paths),
        )  # fmt: skip

    def existing(self, commit: str, paths: list[str]) -> set[str]:
        """Those of `paths` that `commit` has (files or directories)."""
        out = self.git("ls-tree", "-z", "--name-only", commit, "--", *paths).stdout
        return set(out.split("\0")) - {""}

    def replay(self, onto: str, base: str, head: str, message: str) -> tuple[str | None, list[str]]:
        """`head`'s changes since `base`, as one commit on `onto` (`base` descends from it):
        what a task did, without what it was started with beyond `onto`. Computed as the
        merge of `head` with a commit of `onto`'s tree whose parent is `base`, so that
        `base` is the merge base (git 2.39's merge-tree has no --merge-base).
        (the commit, []), or (None, the paths that conflict)."""
        scratch = self.commit_tree(f"{onto}^{{tree}}", [base], "abreast: scratch")
        merged = self.merge_tree(scratch, head)
        if not merged.clean:
            return None, merged.conflicts
        return self.commit_tree(merged.tree, [onto], message), []

    def added_secrets(
        self, base: str, head: str, secrets: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """(path, fingerprint) for each secret value on a line `head` adds since `base`
        (binary files read as text): what must not be merged. The values are only
        compared here, never passed in argv."""
        if not secrets:
            return []
        out = self.git(
            "diff",
            "--text",
            "--no-color",
            "--no-ext-diff",  # whatever diff tool the user's config names
            "--no-renames",
            "--src-prefix=a/",  # whatever diff.noprefix / mnemonicPrefix say
            "--dst-prefix=b/",
            "-U0",
            base,
            head,
            "--",
        )
        found: list[tuple[str, str]] = []
        path = ""
        for line in out.stdout.splitlines():
            if line.startswith("+++ "):
                path = line[6:]
            elif line.startswith("+"):
                found += [(path, fp) for fp, value in secrets if value and value in line]
        return sorted(set(found))

    def has_path(self, commit: str, path: str) -> bool:
        """Whether `path` (a file or directory) is in `commit`'s tree."""
        return self.git("cat-file", "-e", f"{commit}:{path}", check=False).returncode == 0

    def large_files(self, base: str, head: str, limit: int) -> list[tuple[str, int]]:
        """(path, size) of each file larger than `limit` bytes that the commits base..head
        add, at any of them (one added and removed again is still in the history that
        lands), largest first. One `git rev-list` when there is none."""
        listed = self.git(
            "rev-list",
            "--objects",
            f"--filter=blob:limit={limit + 1}",  # omits blobs of limit + 1 bytes or more
            "--filter-print-omitted",
            f"{base}..{head}",
        ).stdout
        large = [line[1:].strip() for line in listed.splitlines() if line.startswith("~")]
        if not large:
            return []
        sizes = self.git(
            "cat-file", "--batch-check=%(objectname) %(objectsize)", input_="\n".join(large)
        ).stdout
        size_of = dict(line.split(" ", 1) for line in sizes.splitlines() if " " in line)
        named: dict[str, str] = {}
        for line in self.git("rev-list", "--objects", f"{base}..{head}").stdout.splitlines():
            sha, _, path = line.partition(" ")
            if sha in size_of and path:
                named.setdefault(sha, path)
        found = [(named.get(sha, sha), int(size_of.get(sha, limit))) for sha in large]
        return sorted(found, key=lambda item: -item[1])

    def log_oneline(self, rev_range: str, limit: int = 20) -> list[str]:
        # Read as text, whatever the user's config says (color.ui = always, signatures).
        proc = self.git(
            *("log", "--oneline", "--no-decorate", "--no-color", "--no-show-signature"),
            *(f"-{limit}", rev_range, "--"),
            check=False,
        )
        return proc.stdout.splitlines()

    def diff_numstat(self, base: str, head: str) -> tuple[list[str], int, int]:
        """(the paths changed between two commits, both sides of renames; lines added;
        lines deleted, binary files counting none), in one call."""
        out = self.git("diff", "--numstat", "-z", "--no-renames", base, head, "--").stdout
        paths, added, deleted = [], 0, 0
        for entry in out.split("\0"):
            if not entry:
                continue
            plus, minus, path = entry.split("\t", 2)
            paths.append(path)
            added += int(plus) if plus.isdigit() else 0
            deleted += int(minus) if minus.isdigit() else 0
        return paths, added, deleted

    def changed_paths(self, base: str, head: str) -> list[str]:
        """Paths changed between two commits (both sides of renames)."""
        return self.diff_numstat(base, head)[0]

    def added_and_removed(self, base: str, head: str) -> tuple[list[str], set[str]]:
        """(paths `head` has that `base` has not, paths `base` has that `head` has not)."""
        out = self.git("diff", "--name-status", "-z", "--no-renames", base, head).stdout
        fields = out.split("\0")
        added: list[str] = []
        removed: set[str] = set()
        for status, path in zip(fields[0::2], fields[1::2], strict=False):
            if status == "A":
                added.append(path)
            elif status == "D":
                removed.add(path)
        return added, removed

    # -- worktrees ---------------------------------------------------------------------------

    def worktree_add(self, path: Path, commit: str) -> None:
        """A new worktree at `path`, detached at `commit` (metadata under the lock)."""
        with self.locked():
            self.git("worktree", "add", "--detach", "--no-checkout", str(path), commit)
        # Speed for later reuse: a split index writes only what changed, and the untracked
        # cache lets `git clean` skip directories nobody touched.
        self.git("update-index", "--split-index", cwd=path, check=False)
        self.git(
            "-c",
            "core.untrackedCache=true",
            "update-index",
            "--untracked-cache",
            cwd=path,
            check=False,
        )
        self.git("-c", "core.splitIndex=true", "read-tree", "--reset", "-u", commit, cwd=path)

    def worktree_remove(self, path: Path) -> None:
        with self.locked():
            proc = self.git("worktree", "remove", "--force", "--force", str(path), check=False)
            if proc.returncode != 0 and path.exists():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            self.git("worktree", "prune", check=False)

    def worktree_prune(self) -> None:
        with self.locked():
            self.git("worktree", "prune", check=False)

    def worktrees(self) -> list[Path]:
        out = self.git("worktree", "list", "--porcelain").stdout
        return [Path(line[9:]) for line in out.splitlines() if line.startswith("worktree ")]

    def checked_out_at(self, ref: str) -> Path | None:
        """The worktree, the main one or a linked one, that has branch `ref` checked out."""
        path = None
        for line in self.git("worktree", "list", "--porcelain").stdout.splitlines():
            if line.startswith("worktree "):
                path = Path(line[9:])
            elif line == f"branch {ref}" and path is not None:
                return path
        return None


FAST = ("-c", "core.splitIndex=true", "-c", "core.untrackedCache=true")


def move_worktree(
    repo: Repo,
    path: Path,
    branch: str | None,
    commit: str,
    *,
    clean: bool,
    remove_untracked: bool = True,
    spare: tuple[str, ...] = (),
) -> None:
    """Put the worktree at `path` on `branch` at `commit`, costing what differs.

    `clean`: the worktree holds no uncommitted change to tracked files (the last attempt
    was committed), so a two-way merge from HEAD touches only the paths that differ;
    otherwise every tracked file is reset. Untracked and ignored files are removed
    (unless `remove_untracked` is False: the pool did it already), except what `spare`
    (`git clean -e` arguments) keeps.
    """
    moved = False
    if clean:
        moved = (
            repo.git(
                *FAST, "read-tree", "-m", "-u", "HEAD", commit, cwd=path, check=False
            ).returncode
            == 0
        )
    if not moved:
        repo.git(*FAST, "read-tree", "--reset", "-u", commit, cwd=path)
    if remove_untracked:
        repo.git(*FAST, "clean", "-q", "-f", "-f", "-d", "-x", *spare, cwd=path)
    forget_operations(path)
    if branch is None:
        repo.git("update-ref", "--no-deref", "HEAD", commit, cwd=path)
        return
    repo.git("update-ref", "--no-deref", f"refs/heads/{branch}", commit, cwd=path)
    point_head(path, branch)


def head_commit(repo: Repo, path: Path) -> str | None:
    """The commit the worktree at `path` has checked out, read from its files without a
    process (its HEAD, and the loose ref HEAD names); None when that cannot be done so
    (refs packed, another ref storage): ask git then."""
    try:
        head = (worktree_git_dir(path) / "HEAD").read_text().strip()
        if head.startswith("ref: refs/"):
            head = (repo.common_dir / head[5:]).read_text().strip()
    except (OSError, IndexError):
        return None
    return head if len(head) in (40, 64) else None


def worktree_git_dir(path: Path) -> Path:
    """The git dir of the linked worktree at `path`: its `.git` file says `gitdir: DIR`
    (a path relative to the worktree with `worktree.useRelativePaths`)."""
    return path / (path / ".git").read_text().split(":", 1)[1].strip()


# What git keeps, in a worktree's own git dir, while an operation is under way there
# beyond the files that say which (`_UNFINISHED`): a worktree handed to the next attempt
# must not be in the middle of the last one's rebase, merge or bisect.
_OPERATION_EXTRAS = (
    "MERGE_MSG", "MERGE_MODE", "MERGE_RR", "AUTO_MERGE", "sequencer", "BISECT_START",
    "BISECT_LOG", "BISECT_TERMS", "BISECT_NAMES", "BISECT_EXPECTED_REV",
    "BISECT_ANCESTORS_OK", "BISECT_HEAD", "refs/bisect",
)  # fmt: skip


def forget_operations(path: Path) -> None:
    """End whatever rebase, merge, cherry-pick, revert or bisect the worktree at `path`
    was left in, as `git rebase --quit` and its kind do: its HEAD, index and files are
    set by the caller."""
    import shutil

    try:
        git_dir = worktree_git_dir(path)
    except (OSError, IndexError):  # not a linked worktree's `.git` file: git says so later
        return
    for name in (*(name for name, _, _ in _UNFINISHED), *_OPERATION_EXTRAS):
        where = git_dir / name
        if where.is_dir():
            shutil.rmtree(where, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                where.unlink()


def detach_head(repo: Repo, path: Path) -> bool:
    """Put the worktree at `path` on the commit its branch is at, detached, without
    touching files: the branch is the task's, and the task's next attempt moves it from
    another worktree, which would leave this one's HEAD naming a commit its files are not
    at (and the next move, a two-way merge from HEAD, would leave stale files). False when
    the commit cannot be read: then treat its files as unknown."""
    commit = head_commit(repo, path)
    if commit is None:
        proc = repo.git("rev-parse", "--verify", "-q", "HEAD", cwd=path, check=False)
        commit = proc.stdout.strip() if proc.returncode == 0 else None
    if not commit:
        return False
    _write_head(path, commit)
    return True


def point_head(path: Path, branch: str) -> None:
    """Check out `branch` in the worktree at `path` without touching files (they match).

    What `git symbolic-ref HEAD refs/heads/BRANCH` does, without a process: a worktree's
    HEAD is the one-line file `ref: refs/heads/BRANCH` in its git dir (gitrepository-layout).
    """
    _write_head(path, f"ref: refs/heads/{branch}")


def _write_head(path: Path, head: str) -> None:
    """The worktree's HEAD file (a commit, or `ref: ...`), replaced whole."""
    gitdir = worktree_git_dir(path)
    tmp = gitdir / "HEAD.abreast-tmp"
    tmp.write_text(f"{head}\n")
    os.replace(tmp, gitdir / "HEAD")


def commit_all(repo: Repo, path: Path, message: str) -> str:
    """Commit whatever the task left in its worktree (it may have committed itself)."""
    repo.git(*FAST, "add", "-A", cwd=path)
    # No automatic maintenance after it (a `git maintenance run --auto` process per task):
    # your own next commit does that. Nothing staged: git says so with exit status 1.
    argv = ["-c", "maintenance.auto=false", "-c", "gc.auto=0", "commit", "-q", "--no-verify"]
    argv += ["--allow-empty-message", "-m", message]
    made = repo.git(*argv, cwd=path, env=repo.identity_env(), check=False)
    if made.returncode != 0 and (
        made.returncode != 1
        or repo.git("diff", "--cached", "--quiet", cwd=path, check=False).returncode != 0
    ):
        raise GitError(argv, made.returncode, made.stderr)
    return head_commit(repo, path) or repo.git("rev-parse", "HEAD", cwd=path).stdout.strip()


# What an attempt may leave half done in its worktree: the file git keeps while it lasts,
# what it is, and how it is ended.
_UNFINISHED = (
    ("rebase-merge", "a rebase", "`git rebase --continue` or `--abort`"),
    ("rebase-apply", "a rebase or `git am`", "`git rebase --continue` or `--abort`"),
    ("MERGE_HEAD", "a merge", "commit it or `git merge --abort`"),
    ("CHERRY_PICK_HEAD", "a cherry-pick", "`git cherry-pick --continue` or `--abort`"),
    ("REVERT_HEAD", "a revert", "`git revert --continue` or `--abort`"),
)


def index_identity(path: Path) -> tuple[int, int, int] | None:
    """The worktree's index file as it is now (inode, mtime, size): git writes an index
    whole, to a new file renamed over the old, so any write by anyone changes it."""
    try:
        st = (worktree_git_dir(path) / "index").stat()
    except (OSError, IndexError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def unfinished(repo: Repo, path: Path, index_was: tuple[int, int, int] | None = None) -> str:
    """What the worktree at `path` was left in the middle of — a rebase, merge,
    cherry-pick or revert, or unresolved conflicts (a `git stash pop` that conflicted) —
    said for its task; "" when nothing. Committing it as it is would land git's conflict
    markers, or a merge the agent had not decided on. `index_was`: the index's identity
    when the attempt started; one not written since holds no conflict (git not asked)."""
    try:
        git_dir = worktree_git_dir(path)
    except (OSError, IndexError):  # no worktree's `.git` file (the agent removed it?)
        git_dir = path / ".git"
    doing = next(
        ((what, how) for name, what, how in _UNFINISHED if (git_dir / name).exists()), None
    )
    if doing is None and index_was is not None and index_identity(path) == index_was:
        return ""
    out = repo.git("ls-files", "--unmerged", "-z", cwd=path, check=False).stdout
    conflicts = sorted({e.partition("\t")[2] for e in out.split("\0") if "\t" in e})
    if doing is None and not conflicts:
        return ""
    shown = listed(conflicts, 20, visible_name)
    said = f"left {doing[0]} unfinished in its worktree" if doing else "left unresolved conflicts"
    if doing and conflicts:
        said += f", with conflicts in: {shown}"
    elif conflicts:
        said += f" in: {shown} (a `git stash pop` or `checkout -m` that conflicted?)"
    end = f"; end it ({doing[1]})" if doing else "; resolve them"
    return f"{said}; nothing of it was merged{end} before the task exits"


SNAPSHOT_INDEX = "index-"  # temporary index directories of snapshots, in Repo.abreast_dir


def signal_ref(run_id: str, task_id: str, name: str) -> str:
    """Where `abreast signal NAME` of a task in a worktree leaves a snapshot of its files."""
    # '.' is allowed in a signal's name, and '..' or a final '.lock' not in a ref's.
    return f"refs/abreast/{run_id}/signals/{task_id}/{name.replace('.', '%2E')}"


def carried_ref(run_id: str, task_id: str, attempt: int | None = None) -> str:
    """Where the work of a task's attempt that did not land waits for its next attempt
    (`carry_work`); without `attempt`, the prefix of the task's."""
    return f"refs/abreast/{run_id}/carried/{task_id}/" + ("" if attempt is None else str(attempt))


def keep_files(path: Path, run_id: str, task_id: str, attempt: int, how: str = "") -> None:
    """`carry_work`: the files of attempt `attempt`'s worktree at `path`, kept under its
    carried ref for the task's next attempt; nothing when they cannot be read (the next
    attempt then starts afresh). `how`: said in the commit (", cut short")."""
    if not path.is_dir():
        return
    message = f"abreast: {task_id} attempt {attempt}'s files{how}, for its next attempt"
    with contextlib.suppress(GitError, OSError):
        snapshot(path, carried_ref(run_id, task_id, attempt), message)


def snapshot(path: Path, ref: str, message: str) -> str:
    """Commit the files of the worktree at `path` as they are now (what `git add -A` would
    take: ignored files left out) and point `ref` at it, leaving its index, HEAD and files
    as they were: what a task's `abreast signal` hands to the tasks waiting for it."""
    import tempfile

    repo = Repo(path)
    # In the repository's own abreast directory, not /tmp: a snapshot cut short (its task
    # killed) leaves its index where `abreast cleanup` looks.
    with tempfile.TemporaryDirectory(prefix=SNAPSHOT_INDEX, dir=repo.abreast_dir) as d:
        env = {"GIT_INDEX_FILE": os.path.join(d, "index")}
        repo.git("read-tree", "HEAD", cwd=path, env=env)
        repo.git("add", "-A", cwd=path, env=env)
        _leave_out_generated(repo, path, env)
        tree = repo.git("write-tree", cwd=path, env=env).stdout.strip()
    head = repo.git("rev-parse", "HEAD", cwd=path).stdout.strip()
    commit = repo.commit_tree(tree, [head], message)
    from abreast.workspace import submodules

    subs = submodules.populated(repo)
    if subs:  # a submodule moved to a commit of the task's own: where the waiting can reach it
        submodules.keep_commits(repo, path, subs, repo.changed_paths(head, commit))
    repo.git("update-ref", ref, commit)
    return commit


def _leave_out_generated(repo: Repo, path: Path, env: dict[str, str]) -> None:
    """Take out of the index `env` names what tools generated that HEAD does not have
    (workspace/generated.py): a task's `npm install` is no part of the snapshot its
    waiting tasks start with, as it is no part of its work."""
    from abreast.workspace import generated

    added = repo.git(
        "diff", "--cached", "--name-only", "-z", "--no-renames", "--diff-filter=A",
        cwd=path, env=env,
    ).stdout.split("\0")  # fmt: skip
    roots = list(generated.roots(p for p in added if p))
    if roots:  # not those HEAD has (a project that vendors its dependencies)
        there = repo.existing("HEAD", roots)  # `repo` is the worktree's own
        repo.unindex([r for r in roots if r not in there], env)


def dirty_paths(repo: Repo, path: Path, *, untracked: bool = True) -> list[str]:
    """Changed and untracked (not ignored) paths in a worktree; with `untracked=False`,
    tracked paths with uncommitted changes only, staged or not (a file added to the index
    counts), both sides of a staged rename."""
    shown = "all" if untracked else "no"
    out = repo.git(
        *FAST, "status", "--porcelain=v1", "-z", f"--untracked-files={shown}", cwd=path
    ).stdout
    entries = out.split("\0")
    paths = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        paths.append(entry[3:])
        if entry[0] in ("R", "C") and i < len(entries):
            if not untracked:
                paths.append(entries[i])  # the rename's source
            i += 1
    return paths


def base_name(repo: Repo, base: str) -> str:
    """The name `base` goes by in the summary and for `--land`: the branch checked out for
    `HEAD` (or `HEAD` itself when detached), else `base` as written."""
    if base != "HEAD":
        return base.removeprefix("refs/heads/")
    current = repo.current_branch()
    return current.removeprefix("refs/heads/") if current else "HEAD"


def unknown_base(repo: Repo, base: str) -> UsageError:
    """The error a run refuses with when `base` names no commit of `repo`, saying what it
    may have meant (`main` in a repository whose branch is `master` is the usual one)."""
    if repo.rev_parse("HEAD") is None and not repo.refs("refs/heads/"):
        return UsageError(
            f"{repo.root} has no commits yet, so there is nothing for tasks to start from",
            hint="make a first commit (`git add -A && git commit -m start`, or "
            "`git commit --allow-empty -m start`)",
        )
    names = [
        ref.removeprefix("refs/heads/").removeprefix("refs/remotes/").removeprefix("refs/tags/")
        for ref in repo.refs("refs/heads/", "refs/remotes/", "refs/tags/")
        if not ref.startswith("refs/heads/abreast/") and not ref.endswith("/HEAD")
    ]
    usual = [n for n in names if n in ("main", "master", "trunk", "develop")]
    # `main` for `master` is too far apart for did_you_mean: the usual names then
    meant = did_you_mean(base, names) or (f"; did you mean {usual[0]!r}?" if usual else "")
    return UsageError(
        f"base {base!r} is not a commit in {repo.root}{meant}",
        hint="set `base:` to a branch, tag or commit that exists",
    )
