"""What a worktree gets beyond the committed files: the workflow's `worktrees:` key.

`copy`: files or directories of the user's checkout (git-ignored ones: a `.env`,
a local config) copied into each worktree, tasks' and checks', each time one is
handed out. `keep`: ignored paths a pooled worktree keeps from one task to the
next (`node_modules`, `.venv`, build caches), so that installing dependencies is
paid once per worktree rather than once per task. Both must be ignored by git
(else they would be committed with a task's work); `problems` says which are
not, before a run starts. `provide` also populates the worktree's submodules
(submodules.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from abreast.spec.commands import command_paths
from abreast.workspace import submodules
from abreast.workspace.repo import Repo


@dataclass(frozen=True)
class Provision:
    """What each worktree a pool hands out gets beyond the committed files."""

    source: Path  # the user's checkout
    subs: list[submodules.Submodule] = field(default_factory=list)
    copy: list[str] = field(default_factory=list)  # paths copied from the checkout
    keep: list[str] = field(default_factory=list)  # ignored paths kept between tasks
    links: list[tuple[str, str]] = field(default_factory=list)  # (path, link text) to make


def provide(repo: Repo, worktree: Path, p: Provision) -> None:
    """Give a worktree just handed out what `p` says: its submodules, the copies."""
    if p.subs:
        submodules.sync(repo, worktree, p.subs)
    if p.copy:
        copy_into(p.source, worktree, p.copy)
    for rel, text in p.links:  # those the worktree has none of (a task's own install wins)
        link = worktree / rel
        if not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(text, link)


def workspace_links(repo: Repo) -> list[tuple[str, str]]:
    """The links of the checkout's `node_modules` to its own packages (npm and yarn
    workspaces: `node_modules/@org/pkg -> ../../packages/pkg`), each as (its path, the
    link text that points at the same package of a worktree).

    A worktree lies inside the checkout (`.git/abreast/worktrees/...`), and Node looks for
    a package in every parent directory's node_modules: a task or check without its own
    would import the checkout's copy of the workspace's packages, not the worktree's (an
    agent's change would seem to do nothing; a check would test other code than the
    merge). Made in each worktree's node_modules, they point at its own. None when
    node_modules is not ignored by git (they would be committed with a task's work)."""
    root = repo.root
    top = root / "node_modules"
    if not top.is_dir() or top.is_symlink():
        return []
    entries = []
    with os.scandir(top) as it:
        for e in it:
            if e.name.startswith("@") and e.is_dir(follow_symlinks=False):
                with os.scandir(e.path) as scoped:
                    entries += [s for s in scoped if s.is_symlink()]
            elif e.is_symlink():
                entries.append(e)
    links = []
    real_root = root.resolve()
    for e in entries:
        try:
            target = Path(e.path).resolve(strict=True).relative_to(real_root)
        except (OSError, ValueError):  # dangling, or outside the repository
            continue
        if target.parts[:1] == (".git",) or "node_modules" in target.parts:
            continue  # an installed package, not one of the workspace's
        rel = Path(e.path).relative_to(root)
        links.append((rel.as_posix(), os.path.relpath(target, rel.parent)))
    if not links:
        return []
    ignored = repo.git("check-ignore", "-q", "--no-index", "node_modules/", check=False)
    tracked = repo.git("ls-files", "-z", "--", "node_modules", check=False).stdout
    return sorted(links) if ignored.returncode == 0 and not tracked else []


def go_work_unseen(repo: Repo, copy: list[str]) -> str:
    """What to say of a `go.work` at the checkout's root that worktrees do not have (not
    committed, not copied), or "". `go` looks for one in every parent directory of where
    it runs, and a worktree lies inside the checkout (`.git/abreast/worktrees/...`): a task
    would find the checkout's, whose `use ./mod` lines name the checkout's modules, and
    build and test them instead of the worktree's (Node's node_modules is the same kind
    of problem: `workspace_links`)."""
    if "go.work" in copy or not (repo.root / "go.work").is_file():
        return ""
    if repo.git("ls-files", "--", "go.work", check=False).stdout.strip():
        return ""  # committed: each worktree has its own
    sums = " and go.work.sum" if (repo.root / "go.work.sum").is_file() else ""
    fix = f"list go.work{sums} under `worktrees: copy`"
    if not ignored(repo, ["go.work"]):  # copied, it would be committed with a task's work
        fix = f"ignore go.work{sums} (.gitignore) and {fix}"
    fix += " (its paths are relative: each worktree's copy names that worktree's modules)"
    return (
        "go.work in your checkout is not committed, and `go` in a task's worktree finds it "
        "(worktrees lie inside your checkout; go looks in parent directories), so its `use` "
        f"lines would name your checkout's modules, not the worktree's: {fix}"
    )


def problems(repo: Repo, copy: list[str], keep: list[str]) -> list[str]:
    """What is wrong with the workflow's `worktrees:` in this repository, one line each."""
    out = []
    for p in copy:
        if not os.path.lexists(repo.root / p):
            out.append(f"worktrees.copy: {p} does not exist in your checkout ({repo.root})")
    wanted = [p.rstrip("/") for p in [*copy, *keep]]
    if wanted:
        # Asked as a file and as a directory: `node_modules/` in .gitignore matches only
        # the latter, and a path to keep may not exist yet.
        asked = [q for p in wanted for q in (p, p + "/")]
        proc = repo.git(
            "check-ignore", "-z", "--stdin", "--no-index",
            input_="".join(f"{p}\0" for p in asked), check=False,
        )  # fmt: skip
        ignored = {p.rstrip("/") for p in proc.stdout.split("\0") if p}
        listed = repo.git("ls-files", "-z", "--", *wanted, check=False).stdout
        tracked = {p for p in listed.split("\0") if p}
        for key, paths in (("copy", copy), ("keep", keep)):
            for p in paths:
                q = p.rstrip("/")
                if q not in ignored or any(t == q or t.startswith(q + "/") for t in tracked):
                    out.append(
                        f"worktrees.{key}: {p} is not ignored by git, so a task would commit "
                        "it with its work; add it to .gitignore (and commit that)"
                    )
    return out


def clean_excludes(keep: list[str]) -> tuple[str, ...]:
    """`git clean` arguments that spare the kept paths (-x still removes everything else
    ignored)."""
    out: list[str] = []
    for p in keep:
        out += ["-e", "/" + p.strip("/")]  # anchored at the worktree's root
    return tuple(out)


def copy_into(source: Path, worktree: Path, paths: list[str]) -> None:
    """Copy each path of the user's checkout into the worktree (replacing what is there;
    symlinks copied as symlinks)."""
    for p in paths:
        src, dst = source / p, worktree / p
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        else:
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                dst.unlink()
            shutil.copy2(src, dst, follow_symlinks=False)


def missing_in_worktree(command: str, checkout: Path, worktree: Path) -> list[tuple[str, str]]:
    """Paths a command names that the user's checkout has and the worktree it ran in does
    not: (path, "absent") when the worktree lacks it, (path, "mode") when the checkout's
    copy is executable and the worktree's is not (a `chmod +x` never committed)."""
    if checkout.resolve() == worktree.resolve() or not worktree.is_dir():
        return []
    out = []
    for path in command_paths(command):
        mine, theirs = checkout / path, worktree / path
        if not os.path.lexists(mine):
            continue
        if not os.path.lexists(theirs):
            out.append((path, "absent"))
        elif (
            mine.is_file()
            and theirs.is_file()
            and os.access(mine, os.X_OK)
            and not os.access(theirs, os.X_OK)
        ):
            out.append((path, "mode"))
    return out


def ignored(repo: Repo, paths: list[str]) -> set[str]:
    """Which of `paths` git ignores in the user's checkout."""
    if not paths:
        return set()
    proc = repo.git(
        "check-ignore", "-z", "--stdin", input_="".join(f"{p}\0" for p in paths), check=False
    )
    return {p for p in proc.stdout.split("\0") if p}


def not_committed(repo: Repo, commit: str, paths: list[str]) -> list[tuple[str, str]]:
    """Of `paths` (relative to the checkout's root), those the checkout has and `commit`
    lacks: (path, "absent"), or (path, "ignored") when git ignores it; and those executable
    in the checkout but not in `commit`: (path, "mode")."""
    here = [p for p in paths if "\n" not in p and os.path.lexists(repo.root / p)]
    if not here:
        return []
    asked = "".join(f"{commit}:{p}\n" for p in here)
    found = repo.git("cat-file", "--batch-check", input_=asked, check=False).stdout.splitlines()
    absent = [
        p
        for p, line in zip(here, found, strict=False)
        if line.endswith(" missing") and not _empty_dir(repo.root / p)  # git keeps none
    ]
    skip = ignored(repo, absent)
    out = [(p, "ignored" if p in skip else "absent") for p in absent]
    runnable = [
        p
        for p in here
        if p not in absent and (repo.root / p).is_file() and os.access(repo.root / p, os.X_OK)
    ]
    if runnable:
        listed = repo.git("ls-tree", "-z", commit, "--", *runnable, check=False).stdout
        modes = {e.split("\t", 1)[1]: e.split(" ", 1)[0] for e in listed.split("\0") if "\t" in e}
        out += [(p, "mode") for p in runnable if modes.get(p, "100755") != "100755"]
    return out


def unseen_text(path: str, kind: str, base: str = "", root: Path | None = None) -> str:
    """Why a task cannot see `path` of the user's checkout, and the fix, in a line
    (`base`: the commit the run started from, for a path committed since: "later";
    `root`: the checkout, where a virtual environment holding it is looked for)."""
    parts = path.split("/")
    if kind == "ignored" and "node_modules" in parts[:-1]:
        packages = "/".join(parts[: parts.index("node_modules") + 1])
        return (
            f"{path} is in {packages}, your checkout's installed packages, which git ignores, "
            f"so a worktree has none: install them in the command (`npm ci && ...`), with "
            f"`worktrees: keep: [{packages}]` so that a reused worktree installs them once"
        )
    venv = _venv_holding(root, path) if root is not None and kind == "ignored" else None
    if venv is not None:
        # Copied, a virtual environment still runs its checkout's Python and packages (its
        # scripts' #! lines name them), and copying one into each worktree is slow.
        tool = path.rpartition("/")[2]
        use = (
            "activate it before `abreast run` rather than in the command (PATH then finds "
            "its tools)"
            if tool.startswith("activate")
            else f"activate it before `abreast run` and call `{tool}` by name, or write its "
            f"absolute path ({root / path if root else path})"
        )
        return (
            f"{path} is in {venv}, a virtual environment of your checkout that git ignores, "
            f"so a worktree has none: {use}; abreast points its editable installs at each "
            "task's worktree"
        )
    if kind == "later":
        return (
            f"{path} was committed in your checkout after the run started from "
            f"{base[:12]}: its tasks start from that commit and what the run landed since, "
            "so they do not see it; a new run (`abreast run`) does"
        )
    if kind == "mode":
        return (
            f"{path} is executable in your checkout but not as committed: commit the mode "
            f"(`git add {shlex.quote(path)}` and commit)"
        )
    if kind == "ignored":
        return (
            f"{path} is in your checkout but git ignores it, so a worktree has none: list it "
            "under `worktrees: copy` in the workflow file, or have a task make it"
        )
    return (
        f"{path} is in your checkout but not committed, and tasks see only committed files: "
        f"commit it (`git add {shlex.quote(path)}` and commit)"
    )


def _venv_holding(root: Path, path: str) -> str | None:
    """The directory of the checkout at `root` holding `path` that is a virtual
    environment (has a pyvenv.cfg), if one does."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        if (root.joinpath(*parts[:i]) / "pyvenv.cfg").is_file():
            return "/".join(parts[:i])
    return None


def _empty_dir(path: Path) -> bool:
    if not path.is_dir() or path.is_symlink():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None
