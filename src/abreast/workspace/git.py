"""Running git: argv lists, hooks off, no prompts, one place."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from abreast.errors import UsageError

# Our own git calls never run the user's hooks nor ask for anything.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
# Nor sign: abreast's own commits (a task's work, merges, snapshots) are made unattended,
# and a `commit.gpgSign = true` in the user's config would make each one ask gpg (and
# fail every task where no key is at hand). Sign the result when you bring it in. Nor
# start an automatic `git gc` in the middle of a run (repacking under running tasks, and
# expiring old reflog entries, your stash's among them, while they are watched).
OWN_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false", "-c", "gc.auto=0")


# What tells git which repository, index and working tree to use, over the directory it
# runs in (`git rev-parse --local-env-vars`): set in a git hook's environment (GIT_DIR,
# GIT_INDEX_FILE), or exported by hand. Each of abreast's worktrees is found by its own
# directory: abreast's git leaves these out, and so do tasks in worktrees.
REPO_VARS = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_GRAFT_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_INTERNAL_SUPER_PREFIX",
    }
)


def without_repo_vars(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in REPO_VARS}


# The oldest git worktree isolation works with: the merge queue merges with
# `git merge-tree --write-tree` (2.38), which older versions do not have.
MIN_VERSION = (2, 38)
MIN_TEXT = ".".join(map(str, MIN_VERSION))


class GitMissing(UsageError):
    """No `git` to run, where the repository's work needs one."""

    def __init__(self) -> None:
        super().__init__(
            "git is not installed here (no `git` on PATH), and this project is a git "
            "repository: abreast works with its worktrees and branches through git",
            hint=f"install git ({MIN_TEXT} or later)",
        )


class GitError(Exception):
    """A git command failed; carries its argv, status and stderr."""

    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        self.argv = argv
        self.code = code
        self.stderr = stderr
        super().__init__(f"git {' '.join(_shown(argv))} exited with {code}: {stderr.strip()}")

    @property
    def hint(self) -> str:
        """What to do about it, where git's words suggest it (for the command line)."""
        if "git-lfs" in self.stderr and "not found" in self.stderr:
            return (
                "the repository's files go through Git LFS, which is not installed here "
                "(`git status` fails the same way): install git-lfs, then `git lfs install`"
            )
        return (
            "that is git's own error: `git status` in the repository shows whether git "
            "works there at all (permissions, a full disk, a corrupt object)"
        )


def _shown(argv: list[str]) -> list[str]:
    """`argv` less the `-c NAME=VALUE` settings abreast gives its own git calls."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-c":
            skip = True
        else:
            out.append(arg)
    return out


def git(
    *args: str,
    cwd: str | Path,
    check: bool = True,
    input_: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = ["git", *OWN_CONFIG, *args]
    full_env = {**without_repo_vars(os.environ), **GIT_ENV, **(env or {})}
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            # A file name that is not UTF-8 (`bad\xffname`) is read with U+FFFD in it: it
            # must not stop the run, nor make the journal or the terminal refuse it.
            encoding="utf-8",
            errors="replace",
            input=input_,
            env=full_env,
            check=False,
        )
    except FileNotFoundError as e:
        if e.filename == "git":
            raise GitMissing() from None
        raise
    if check and proc.returncode != 0:
        raise GitError(list(args), proc.returncode, proc.stderr)
    return proc


def toplevel(path: str | Path) -> Path | None:
    """The working tree root of the git repository holding `path`, or None."""
    start = Path(path)
    if not start.is_dir():
        start = start.parent
    try:
        proc = git("rev-parse", "--show-toplevel", cwd=start, check=False)
    except GitMissing:  # a repository all the same: found by its .git
        return next((p for p in (start, *start.parents) if (p / ".git").exists()), None)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if proc.returncode != 0:
        if "must be run in a work tree" in proc.stderr:  # a bare repository, or in .git
            bare = git("rev-parse", "--is-bare-repository", cwd=start, check=False)
            if bare.stdout.strip() == "true":
                raise UsageError(
                    f"{start} is a bare git repository: it has no working tree for tasks "
                    "to work in and for their work to land in",
                    hint=f"clone it (`git clone {start} DIR`) and run abreast in the clone",
                )
            raise UsageError(
                f"{start} is inside a repository's .git directory, not its working tree",
                hint="run abreast from the checkout (the directory that holds .git)",
            )
        said = [line for line in proc.stderr.splitlines() if line.strip()]
        nowhere = "not a git repository (or any" in proc.stderr
        if nowhere or not any((p / ".git").exists() for p in (start, *start.parents)):
            return None
        # A repository git will not use (its config broken, owned by another user, ...):
        # taken for no repository, its tasks would run in place, without worktrees.
        dubious = "dubious ownership" in proc.stderr
        raise UsageError(
            f"git cannot use the repository holding {start}: "
            + (said[0].removeprefix("fatal: ") if said else f"exit {proc.returncode}"),
            hint=f"git config --global --add safe.directory {_owner_dir(proc.stderr, start)}"
            " (if you trust it)"
            if dubious
            else "`git status` there says the same: put the repository right",
        )
    return Path(proc.stdout.strip())


def _owner_dir(stderr: str, start: Path) -> str:
    """The directory git's "dubious ownership" message names (its safe.directory)."""
    m = re.search(r"dubious ownership in repository at '([^']+)'", stderr)
    return m[1] if m else str(start)


def exclude_locally(repo: Path, pattern: str) -> None:
    """Add `pattern` to the repository's .git/info/exclude (the user's git status stays clean)."""
    try:
        proc = git("rev-parse", "--git-common-dir", cwd=repo, check=False)
    except GitMissing:
        return
    if proc.returncode != 0:
        return
    common = Path(proc.stdout.strip())
    if not common.is_absolute():
        common = repo / common
    exclude = common / "info" / "exclude"
    try:
        existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if pattern not in existing.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with exclude.open("a", encoding="utf-8") as f:
                if existing and not existing.endswith("\n"):
                    f.write("\n")
                f.write(pattern + "\n")
    except OSError:
        pass  # a read-only repository: the user's status shows .abreast/, nothing worse


def version() -> tuple[int, ...] | None:
    """The version of the `git` on PATH (2, 39, 5), None where it has none, () where it
    does not say in the usual form. Asked once per PATH (`abreast demo` checks it, then
    the run it starts)."""
    return _version(os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=4)
def _version(_path: str) -> tuple[int, ...] | None:
    try:
        out = git("--version", cwd="/").stdout
    except (GitMissing, OSError):
        return None
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x) for x in found.groups(default="0")) if found else ()


_FILTER = re.compile(r"(?:^|\s)filter=([^\s]+)")


def missing_filter(root: Path) -> UsageError | None:
    """A filter that git is set to require (`filter.NAME.required`, as `git lfs install`
    sets it for `lfs`), whose program is not here, and that the repository's
    `.gitattributes` names for some files: checking out a task's worktree would fail on
    it (the user's own `git status` may not, while the index is fresh). None when every
    such filter can run, or none is required (one git call: the usual case)."""
    found = git("config", "--get-regexp", r"^filter\.", cwd=root, check=False)
    settings: dict[str, dict[str, str]] = {}  # filter -> its required, process, smudge
    for line in found.stdout.splitlines():
        key, spaced, value = line.partition(" ")
        name, _, part = key[len("filter.") :].rpartition(".")
        # The last setting counts, as for git (a repository's over the user's); a key
        # without a value is a true one.
        settings.setdefault(name, {})[part] = value.strip() if spaced else "true"
    broken: dict[str, str] = {}  # filter -> why it cannot run
    for name, said in settings.items():
        if said.get("required", "").lower() not in ("true", "yes", "on", "1"):
            continue  # git goes on without it (the files as they are stored)
        command = said.get("process") or said.get("smudge") or ""
        program = command.split()[0] if command else ""
        if not (program and _runnable(program, root)):
            broken[name] = f"{program} is not found here" if program else "no program is set"
    if not broken:
        return None
    listed = git("ls-files", "-z", "--", ":(glob)**/.gitattributes", cwd=root, check=False)
    for path in filter(None, listed.stdout.split("\0")):
        try:
            text = (root / path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for name in _FILTER.findall(line):
                if name in broken:
                    return _filter_error(name, path, broken[name])
    return None


def _filter_error(name: str, where: str, missing: str) -> UsageError:
    lfs = name == "lfs"
    what = (
        "the repository's files go through Git LFS"
        if lfs
        else f"files of the repository go through the filter {name}"
    )
    return UsageError(
        f"{what} (`filter={name}` in {where}), which git is set to require "
        f"(filter.{name}.required), and {missing}: a task's worktree could not be "
        "checked out",
        hint="install git-lfs, then `git lfs install`"
        if lfs
        else f"install it, or see `git config --show-origin --get-regexp filter.{name}`",
    )


def _runnable(program: str, root: Path) -> bool:
    """`program` (a name looked up on PATH, or a path, relative to the repository's root)
    can be run here."""
    import shutil

    relative = "/" in program and not os.path.isabs(program)
    return shutil.which(str(root / program) if relative else program) is not None


def worktree_git_problem() -> str | None:
    """Why the git on PATH cannot serve worktree isolation (there is none, or it is older
    than MIN_VERSION), or None: checked before a run, since the merge queue would
    otherwise fail at the first task's end, after the work."""
    have = version()
    if have is None:
        return "there is no `git` on PATH"
    if have and have[:2] < MIN_VERSION:
        return (
            f"the git on PATH is {'.'.join(map(str, have))} (the merge queue merges with "
            "`git merge-tree --write-tree`, new in 2.38)"
        )
    return None
