"""Git submodules in task and check worktrees.

A new worktree has empty directories where the repository's submodules go: git
populates submodules only when asked, per checkout. Tasks (and the merge
checks) see the submodules as the user's checkout has them: each submodule the
user's checkout has populated is cloned into the worktree from that checkout's
own copy of it (`.git/modules/NAME`), so no network is needed and the commit
the superproject records is there. Submodules the user's checkout left empty
stay empty. A submodule's own submodules are populated from their configured
URLs (`--recursive`).

What a task does inside a submodule: a new commit there (its recorded commit
moved, e.g. `git -C vendor/lib checkout v2`) is part of the task's work, as git
records it; abreast copies that commit into the user's copy of the submodule
under `refs/abreast/kept/`, so that the merge checks, and the user after
bringing the result in, can check it out. Files changed inside a submodule
without a commit there cannot be landed by the superproject's commit: the
attempt is sent back, naming them (see `uncommitted`).

A repository a task makes of its own inside its worktree (`git init` or `git clone`
into a subdirectory, a scaffolding tool that runs `git init`) is not a submodule:
git would record it as a link to a commit that only that repository holds, which
goes with the worktree, and its files would be lost (or, without a commit in it,
`git add` refuses it). Such an attempt is sent back, naming it (see `own_repos`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from abreast.spec.durations import listed
from abreast.workspace.repo import Repo

# Submodules cloned from a local path: git >= 2.38 refuses the file transport for
# submodules unless allowed (CVE-2022-39253); the path is the user's own repository.
FILE_OK = ("-c", "protocol.file.allow=always")


class SubmoduleError(Exception):
    pass


@dataclass(frozen=True)
class Submodule:
    name: str
    url: str  # as the user's checkout has it configured
    store: Path  # the user's checkout's copy: <git-common-dir>/modules/<name>


def populated(repo: Repo) -> list[Submodule]:
    """The submodules the user's checkout has initialised and cloned ([] for most
    repositories: one `git config` call when there is a .gitmodules, none otherwise)."""
    if not (repo.root / ".gitmodules").exists() and not (repo.common_dir / "modules").is_dir():
        return []
    proc = repo.git("config", "-z", "--local", "--get-regexp", r"^submodule\..*\.url$", check=False)
    found = []
    for key, url in _entries(proc.stdout):
        name = key[len("submodule.") : -len(".url")]
        store = repo.common_dir / "modules" / name
        if url and (store / "HEAD").is_file():
            found.append(Submodule(name, url, store))
    return found


def _entries(out: str) -> list[tuple[str, str]]:
    """(key, value) pairs of `git config -z` output: names and values may hold spaces."""
    pairs = []
    for entry in out.split("\0"):
        key, _, value = entry.partition("\n")
        if key:
            pairs.append((key, value))
    return pairs


def _paths(repo: Repo, path: Path, subs: list[Submodule]) -> dict[str, Submodule]:
    """Where the worktree at `path` (at its own commit) puts each populated submodule."""
    by_name = {s.name: s for s in subs}
    return {where: by_name[name] for name, where in _declared(repo, path) if name in by_name}


def _declared(repo: Repo, path: Path) -> list[tuple[str, str]]:
    """(name, path) of each submodule the .gitmodules of the worktree at `path` declares."""
    if not (path / ".gitmodules").is_file():
        return []
    proc = repo.git(
        "config", "-z", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.path$",
        cwd=path, check=False,
    )  # fmt: skip
    found = []
    for key, where in _entries(proc.stdout):
        if where:
            found.append((key[len("submodule.") : -len(".path")], where))
    return found


def sync(repo: Repo, path: Path, subs: list[Submodule]) -> None:
    """Check out, in the worktree at `path`, the commit its superproject records for each
    populated submodule, discarding whatever an earlier task left inside them (a pooled
    worktree). First use in a worktree clones from the user's copy, which it keeps
    borrowing objects from (git alternates: a commit that reaches the user's copy later is
    there too); its `origin` is the user's, so a commit found in neither is fetched from
    there, as `git submodule update` in the checkout would."""
    where = _paths(repo, path, subs)
    if not where:
        return
    local: list[str] = []
    for sub in where.values():
        local += ["-c", f"submodule.{sub.name}.url={sub.store}"]
    fresh = [p for p in where if not (path / p / ".git").exists()]
    update = [*FILE_OK, "submodule", "update", "--init", "--recursive", "--force", "--"]
    proc = repo.git(*local, *update, *where, cwd=path, check=False)
    for p in fresh:
        _borrow(repo, path / p, where[p])
    if proc.returncode != 0 and fresh:  # not in the user's copy: from where it comes from
        proc = repo.git(*update, *where, cwd=path, check=False)
    if proc.returncode != 0:
        said = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SubmoduleError(
            f"could not check out the submodule{'s' if len(where) != 1 else ''} "
            f"{', '.join(where)}: "
            + (said[-1].strip() if said else f"git exited with {proc.returncode}")
            + "; the commit the work records is neither in your checkout's copy of the "
            "submodule nor at its URL (`git submodule update` in your checkout says why)"
        )
    # What an earlier task left inside: untracked and ignored files (tracked ones were
    # reset by --force). One `git clean` a submodule; `foreach` (a shell and a git each,
    # ten times slower) only into those that have submodules of their own.
    for p in where:
        repo.git("clean", "-q", "-f", "-f", "-d", "-x", cwd=path / p, check=False)
        if (path / p / ".gitmodules").is_file():
            repo.git(
                "submodule", "foreach", "--quiet", "--recursive", "git clean -q -f -f -d -x",
                cwd=path / p, check=False,
            )  # fmt: skip


def _borrow(repo: Repo, clone: Path, sub: Submodule) -> None:
    """A submodule just cloned from the user's copy: its origin becomes the user's origin,
    and it sees every object of the user's copy, now and later."""
    if not (clone / ".git").exists():
        return  # the clone itself failed
    proc = repo.git("rev-parse", "--absolute-git-dir", cwd=clone, check=False)
    if proc.returncode != 0:
        return
    git_dir = Path(proc.stdout.strip())
    _set_origin(git_dir / "config", sub.url)
    alternates = git_dir / "objects" / "info" / "alternates"
    alternates.parent.mkdir(parents=True, exist_ok=True)
    with alternates.open("a", encoding="utf-8") as f:
        f.write(f"{sub.store / 'objects'}\n")


def _set_origin(config: Path, url: str) -> None:
    """Point the remote `origin` of a fresh clone at `url`, written into its config file
    rather than passed to `git remote set-url`: a URL may hold a token, which must not
    appear in any process's argv."""
    quoted = '"' + url.replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = config.read_text(encoding="utf-8").splitlines()
    section = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        elif section == '[remote "origin"]' and stripped.split("=", 1)[0].strip() == "url":
            lines[i] = f"\turl = {quoted}"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def uncommitted(repo: Repo, path: Path, subs: list[Submodule]) -> dict[str, list[str]]:
    """Submodule path -> files changed or added inside it without a commit there (what the
    superproject's commit cannot carry), for the worktree at `path`."""
    where = _paths(repo, path, subs)
    if not where:
        return {}
    out = repo.git(
        "-c", "core.fsmonitor=false",  # a submodule's config is the task's to write
        "status", "--porcelain=v2", "-z", "--ignore-submodules=none", "--untracked-files=no",
        "--", *where,
        cwd=path,
    ).stdout  # fmt: skip
    found: dict[str, list[str]] = {}
    for entry in out.split("\0"):
        # "1 XY S<c><m><u> ..." for a submodule; m: tracked changes, u: untracked files.
        parts = entry.split(" ", 8)
        if len(parts) == 9 and parts[0] == "1" and parts[2].startswith("S"):
            flags = parts[2]
            if flags[2] == "M" or flags[3] == "U":
                inner = repo.git(
                    "status", "--porcelain=v1", "--untracked-files=all",
                    cwd=path / parts[8], check=False,
                ).stdout  # fmt: skip
                found[parts[8]] = [line[3:] for line in inner.splitlines() if line[3:]]
    return found


def keep_commits(repo: Repo, path: Path, subs: list[Submodule], changed: list[str]) -> None:
    """Copy the commits a task moved submodules to into the user's copies of them, under
    refs/abreast/kept/<commit> (kept after `abreast cleanup`: the superproject's result
    records them, and a submodule commit nobody pushed yet lives only there)."""
    where = _paths(repo, path, subs)
    for p in changed:
        sub = where.get(p)
        if sub is None or not (path / p / ".git").exists():
            continue
        head = repo.git("rev-parse", "HEAD", cwd=path / p).stdout.strip()
        repo.git(
            *FILE_OK, "fetch", "--quiet", "--no-tags", str(path / p),
            f"+HEAD:refs/abreast/kept/{head}",
            cwd=sub.store,
        )  # fmt: skip


def own_repos(repo: Repo, path: Path, changed: Iterable[str] | None = None) -> list[str]:
    """Repositories the task made of its own in the worktree at `path` (not submodules its
    .gitmodules registers). Among the `changed` paths of its commit (git records each as a
    link to a commit: a stat a path); or, given None, among its untracked files (those
    without a commit, which `git add` refuses: failures only)."""
    if changed is None:
        out = repo.git(
            "ls-files", "--others", "--exclude-standard", "-z", cwd=path, check=False
        ).stdout
        # A repository inside is listed as its directory, with a slash; files as files.
        changed = [p.rstrip("/") for p in out.split("\0") if p.endswith("/")]
    nested = [p for p in changed if os.path.lexists(path / p / ".git")]
    if not nested:
        return []
    registered = {where for _, where in _declared(repo, path)}
    return [p for p in nested if p not in registered]


def own_repos_text(found: list[str]) -> str:
    """Why an attempt that made repositories of its own is sent back, and what to do."""
    where = listed(found, 10, lambda p: f"{p}/")
    many = len(found) > 1
    first = found[0]
    return (
        f"made {'git repositories' if many else 'a git repository'} of its own inside its "
        f"worktree: {where} (a .git there); git records such a directory only as a link to "
        f"a commit that {'those repositories hold' if many else 'repository holds'}, so its "
        f"files would not land. Remove the .git (`rm -rf {first}/.git`) to keep the files "
        "in this repository, or leave out the `git init`/`git clone` (scaffolding tools "
        "have an option to skip git); for a real submodule, `git submodule add URL PATH`"
    )
