"""`abreast diff [RUN] TASK`: what a task's attempt changed, as git shows it.

With worktree isolation every attempt that got as far as having its work taken in has
two commits journaled: the one it started from and the one its work was committed as.
The diff between them is what the task did (what the owns check read and the merge
queue merged), whatever it was: landed, sent back, failed as evidence. Landed tasks'
branches are deleted at a run's end, so this was found by hand among the integration
branch's merge commits.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TextIO

from abreast.coord.journal import AttemptRow, Journal, RunRow
from abreast.errors import UsageError
from abreast.integrate.base import KEY_IN_WORK, integration_branch
from abreast.observe.rundata import headline
from abreast.observe.status import find_attempt
from abreast.spec.durations import counted
from abreast.workspace.git import git


def pick(journal: Journal, row: RunRow, task_id: str, attempt: int | None) -> AttemptRow:
    """The attempt to show: the one named, else the task's latest whose work was taken in."""
    latest = find_attempt(journal, row.id, task_id, attempt, command="diff")
    if attempt is not None or latest.head_commit:
        return latest
    committed = [a for a in journal.attempts(row.id, task_id) if a.head_commit]
    return max(committed, key=lambda a: a.attempt) if committed else latest


def _repository(row: RunRow, here: Path, commits: str | None = None) -> Path:
    """The repository the run's commits are in: where it ran, or `here` (where its journal
    was found) for a project moved or renamed since, its journal with it."""
    for root in (Path(row.root), here):
        if (root / ".git").exists():
            return root
    raise UsageError(  # removed since the run, or moved without its journal
        f"run {row.id} ran in {row.root}, where there is no git repository now",
        hint=f"where the repository is now, `{commits}` shows it" if commits else None,
    )


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A question to git in the repository at `root` (through abreast's own runner: the
    user's hooks off, a clear error when git is missing)."""
    return git(*args, cwd=root, check=False)


def endpoints(
    root: Path, a: AttemptRow, isolation: str | None = None, since: str | None = None
) -> tuple[str, str]:
    """(from, to) of attempt `a`'s work in the repository at `root`; a UsageError saying
    why there is none. `isolation`: the run's, as journaled."""
    what = f"attempt {a.attempt} of {a.task_id!r}"
    if isolation != "worktree" and not a.base_commit:
        raise UsageError(
            f"{what} ran in the project directory (isolation: none): its changes were not "
            "kept apart from the others'",
            hint="`git status` and `git diff` in the project show what the run left",
        )
    if a.ended_at is None and not a.head_commit:
        raise UsageError(
            f"{what} has not ended, so its work is not taken in yet",
            hint=f"`abreast status {a.run_id}` says whether it runs; its run interrupted, "
            f"`abreast resume {a.run_id}` carries it on",
        )
    if not a.base_commit or not a.head_commit:
        why = f" ({headline(a.reason)})" if a.reason else ""
        raise UsageError(
            f"{what} has no work taken in: it ended {a.state}{why} before its work was committed",
            hint=f"abreast logs {a.run_id} {a.task_id} --attempt {a.attempt} shows what it did",
        )
    for commit in (a.base_commit, a.head_commit):
        if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
            raise UsageError(
                f"the commit of {what}'s work ({commit[:12]}) is no longer in {root}: its "
                "branch was deleted (`abreast cleanup`) and git has since collected it"
            )
    if since and _git(root, "cat-file", "-e", f"{since}^{{commit}}").returncode == 0:
        return since, a.head_commit  # it merged work landed after it started: not its own
    base = a.base_commit
    if _git(root, "merge-base", "--is-ancestor", base, a.head_commit).returncode != 0:
        # Started on another task's signal: its work was replayed as one commit onto the
        # integration head, without the files it started with.
        base = _git(root, "rev-parse", f"{a.head_commit}^").stdout.strip()
    return base, a.head_commit


def show(
    journal: Journal, row: RunRow, task_id: str, attempt: int | None, git_args: list[str],
    note: TextIO, here: Path,
) -> int:  # fmt: skip
    """Show the attempt's diff; `here`: the project the journal was found for now."""
    a = pick(journal, row, task_id, attempt)
    commits = (
        f"git diff {a.base_commit[:12]} {a.head_commit[:12]}"
        if a.base_commit and a.head_commit
        else None
    )
    root = _repository(row, here, commits)
    committed = [
        e.data.get("since")
        for e in journal.events(row.id, types=("work.committed",))
        if e.task_id == task_id and e.data.get("attempt") == a.attempt
    ]
    since = str(committed[-1]) if committed and committed[-1] else None
    base, head = endpoints(root, a, row.options.get("isolation"), since)
    if a.reason and a.reason.startswith(KEY_IN_WORK) and not git_args:
        # Printed, a key would be in a terminal's scrollback, a CI log, a pasted review.
        raise UsageError(
            f"attempt {a.attempt} of {task_id!r} was sent back because {headline(a.reason)}"
            ": its lines are not shown",
            hint=f"--stat or --name-only show which files; `git diff {base[:12]} {head[:12]}` "
            "shows them, key and all",
        )
    state = a.state + (f": {headline(a.reason)}" if a.reason else "")
    return _diff(root, git_args, base, head, f"{task_id}, attempt {a.attempt} ({state})", note)


def show_result(
    journal: Journal, row: RunRow, git_args: list[str], note: TextIO, here: Path
) -> int:
    """What the run's result changes against where it started: what bringing it in would
    change (`abreast diff --all`)."""
    root = _repository(row, here)
    base = row.options.get("base_commit")
    if not base:
        raise UsageError(
            f"run {row.id} ran in the project directory (isolation: none): there is no "
            "result apart from your checkout",
            hint="`git status` and `git diff` in the project show what the run left",
        )
    branch = integration_branch(row.id)
    head = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").stdout.strip()
    landed = journal.events(row.id, types=("merge.landed",))
    if not head:  # deleted (`abreast cleanup --results`, or by hand): where work last landed
        last = landed[-1].data if landed else {}
        head = str(last.get("moved_to") or last.get("commit") or "")
        if not head or _git(root, "cat-file", "-e", f"{head}^{{commit}}").returncode != 0:
            raise UsageError(
                f"run {row.id}'s result branch {branch} is gone"
                + (", and so are its commits" if head else ", and nothing of it landed")
            )
    tasks = len({e.task_id for e in landed})
    # Merged with what base gained since the run started (`--land`): from there, so that
    # it shows what the run brings, not those commits too.
    for e in journal.events(row.id, types=("result.caught_up",)):
        caught = str(e.data.get("commit") or "")
        if caught and _git(root, "merge-base", "--is-ancestor", caught, head).returncode == 0:
            base = str(e.data.get("base") or base)
    return _diff(
        root,
        git_args,
        base,
        head,
        f"run {row.id}, its result ({counted(tasks, 'task')} landed)",
        note,
    )


def _diff(root: Path, git_args: list[str], base: str, head: str, what: str, note: TextIO) -> int:
    """Say on `note` (stderr) what is shown, so that stdout is the diff alone; then show it
    with the user's own git, configuration and pager, as `git diff` in their checkout."""
    note.write(f"{what}: git diff {base[:12]} {head[:12]}\n")
    note.flush()
    sys.stdout.flush()
    return subprocess.run(["git", "diff", *git_args, base, head], cwd=root, check=False).returncode
