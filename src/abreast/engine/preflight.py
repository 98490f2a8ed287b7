"""Notes before a run on what the tasks' and checks' commands will not find.

A script written for the workflow and not yet committed, one named from the
workflow file's directory rather than the root (where commands run), or an
agent's CLI that is not installed fails every task that runs it, after the run
has started, with no more than `exit 127 (command not found)`. These are
notes, not refusals: an upstream task may make the file or install the tool.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from abreast.spec.commands import (
    BASH_WORDS,
    SHELL_OWN,
    bash_word_fix,
    bash_words,
    beside_text,
    beside_workflow,
    command_paths,
    crlf_script,
    crlf_text,
    first_word,
    sh_lacks,
)
from abreast.spec.model import Task, Workflow

if TYPE_CHECKING:
    from abreast.workspace.repo import Repo


def command_notes(
    root: Path, wf: Workflow, committed: tuple[Repo, str, str | None] | None = None
) -> list[str]:
    """The notes for `wf`'s commands, run at `root`. With worktrees, `committed` is the
    repository, the commit tasks start from and the workflow file's path in it."""
    misplaced = wf.source is not None and Path(wf.source).parent.resolve() != root.resolve()
    commands = _commands(wf)
    users = _command_users(commands) if committed is not None or misplaced else {}
    out = [] if committed is None else _unseen(users, wf, *committed)
    if misplaced:
        out += _misplaced(root, wf, users)
    return out + _not_on_path(wf) + _not_in_sh(wf) + _crlf(root, commands)


def _command_users(commands: dict[str, list[str]]) -> dict[str, list[str]]:
    """The words of the workflow's distinct `commands` that may be paths
    (`spec.commands.command_paths`), each with the tasks and checks whose command names it."""
    users: dict[str, list[str]] = {}
    for command, who in commands.items():
        for path in command_paths(command):
            users.setdefault(path, []).extend(who)
    return users


def _commands(wf: Workflow) -> dict[str, list[str]]:
    """Each distinct command of the workflow, with the tasks and checks that run it."""
    commands: dict[str, list[str]] = {}
    for run in _runs(wf):
        commands.setdefault(run.command, []).append(run.who)
    return commands


class _Run(NamedTuple):
    command: str
    path: str | None  # the PATH it runs with, when its `env` sets one
    shell: str
    who: str  # `task ID` or check `NAME`


def _runs(wf: Workflow) -> list[_Run]:
    """What each task and check runs, and with what."""
    runs = [_Run(*_task_run(wf, t), t.shell, f"task {tid}") for tid, t in wf.tasks.items()]
    return runs + [
        _Run(c.run, None, c.shell or "sh", f"check `{c.name or c.run}`") for c in wf.checks
    ]


def _task_run(wf: Workflow, task: Task) -> tuple[str, str | None]:
    """The command a task runs (its own, else its agent's) and the PATH it sets, if any
    (the task's `env` wins over its agent's, as when it is launched)."""
    agent = wf.agents[task.agent] if task.run is None and task.agent is not None else None
    command = task.run if task.run is not None else (agent.run if agent else "")
    path = task.env.get("PATH") or (agent.env.get("PATH") if agent else None)
    return command, path


def _named_by(who: list[str]) -> str:
    return "; it is named by " + _listed(who)


def _misplaced(root: Path, wf: Workflow, users: dict[str, list[str]]) -> list[str]:
    """Paths commands name that are not at the root, where commands run, but beside a
    workflow file kept in a subdirectory."""
    assert wf.source is not None
    found = beside_workflow(root, Path(wf.source).parent, list(users))
    return [f"note: {beside_text(p, there)}{_named_by(users[p])}" for p, there in found]


def _unseen(
    users: dict[str, list[str]], wf: Workflow, repo: Repo, commit: str, own: str | None
) -> list[str]:
    """Files of the user's checkout that commands name and a worktree will not have as
    they are there (never committed, ignored, `chmod +x` not committed)."""
    from abreast.workspace.provision import not_committed, unseen_text

    copied = [c.strip("/") for c in wf.worktrees.copy]
    wanted = [
        path
        for path in users
        if path != own and not any(path == c or path.startswith(c + "/") for c in copied)
    ]
    return [
        f"note: {unseen_text(path, kind, root=repo.root)}{_named_by(users[path])}"
        for path, kind in not_committed(repo, commit, wanted)
    ]


def _not_on_path(wf: Workflow) -> list[str]:
    """Programs commands start (their first word) that are not on the PATH they will run
    with: an agent's CLI not installed here."""
    base = os.environ.get("PATH", os.defpath)
    missing: dict[str, list[str]] = {}
    firsts: dict[str, str | None] = {}
    found: dict[tuple[str, str], bool] = {}
    for command, given, _shell, who in _runs(wf):
        path = given or base
        if command not in firsts:
            firsts[command] = first_word(command)
        word = firsts[command]
        if not word or word in SHELL_OWN or word in BASH_WORDS or "/" in word:
            continue
        if (word, path) not in found:
            found[word, path] = shutil.which(word, path=path) is not None
        if not found[word, path]:
            missing.setdefault(word, []).append(who)
    return [
        f"note: `{word}` is not on PATH here, and {_listed(who)} start"
        f"{'s' if len(who) == 1 else ''} with it: install it, or give its directory in PATH"
        " (a task's `env:`), unless a task installs it first"
        for word, who in missing.items()
    ]


def _not_in_sh(wf: Workflow) -> list[str]:
    """bash's words (`[[`, `source`, ...) that commands given to /bin/sh start a command
    with and that /bin/sh here does not have (Debian's dash): each fails as "not found",
    and in an `if` quietly counts as false."""
    users: dict[str, list[str]] = {}
    for run in _runs(wf):
        if run.shell == "sh":
            for word in bash_words(run.command):
                users.setdefault(word, []).append(run.who)
    if not users:
        return []
    notes = []
    for word in sh_lacks(tuple(sorted(users))):
        who = users[word]
        notes.append(
            f"note: /bin/sh here has no `{word}` (a word of bash), and {_listed(who)} "
            f"use{'s' if len(who) == 1 else ''} it: "
            + bash_word_fix(word, "it" if len(who) == 1 else "them")
        )
    return notes


def missing_shell(wf: Workflow) -> str | None:
    """Why the run cannot start when a task or check is given to a shell not installed
    here (`shell: bash` where there is no bash); None when each is."""
    from abreast.executor.wrapper import shell_path

    wanted: dict[str, list[str]] = {}
    for run in _runs(wf):
        wanted.setdefault(run.shell, []).append(run.who)
    for shell, who in wanted.items():
        if shell_path(shell) is None:
            return (
                f"{_listed(who)} {'is' if len(who) == 1 else 'are'} given to {shell} "
                f"(`shell: {shell}`), and there is no {shell} on PATH here"
            )
    return None


def _crlf(root: Path, commands: dict[str, list[str]]) -> list[str]:
    """Scripts commands run directly that were saved with Windows line endings."""
    return [
        f"note: {crlf_text(script)}{_named_by(who)}"
        for command, who in commands.items()
        if (script := crlf_script(root, command)) is not None
    ]


def _listed(who: list[str]) -> str:
    """`task a`, `task b`, `check x` as `tasks a, b and check x` (three names at most)."""
    tasks = [w.removeprefix("task ") for w in who if w.startswith("task ")]
    checks = [w for w in who if not w.startswith("task ")]
    shown = tasks[:3]
    more = len(tasks) - len(shown)
    parts = []
    if tasks:
        parts.append(("tasks " if len(tasks) > 1 else "task ") + ", ".join(shown))
        if more:
            parts[-1] += f" and {more} more"
    parts += checks[:2]
    return " and ".join(parts)
