"""Finding a project's journal and a run in it, and whether its orchestrator lives.

Kept apart from `runs.py` so that the commands that only look or poke (`status`,
`logs`, `report`, `keys`, `signal`) start without importing the engine, the
workflow models or asyncio.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from abreast.coord.journal import Journal, RunRow
from abreast.coord.location import StateLocation, locate
from abreast.errors import UsageError, did_you_mean
from abreast.executor.process import is_live_process


def open_journal(file: Path | None, state: str | None) -> tuple[StateLocation, Journal]:
    location = locate(file, state)
    if not location.journal.exists() and not state:
        # Inside a task in a worktree (which has no `.abreast/`): its own run's journal,
        # so that a reviewing agent's `abreast diff implement` reads the run it is in.
        enclosing = os.environ.get("ABREAST_STATE", "") if os.environ.get("ABREAST_RUN_ID") else ""
        if enclosing.startswith("sqlite://") and Path(enclosing[9:]).is_file():
            location = locate(file, enclosing)
    if not location.journal.exists():
        raise UsageError(
            f"no runs yet: there is no journal at {location.journal}",
            hint="start one with `abreast run FILE`; a run started with --state or "
            "ABREAST_STATE is found with the same",
        )
    return location, Journal(location.journal)


def find_run(journal: Journal, run_id: str | None) -> RunRow:
    """The run `run_id` names: its whole id, or the start of the id of one run only (as git
    takes a commit's), None for the latest; a UsageError saying what it names otherwise."""
    if run_id is None:
        row = journal.latest_run()
        if row is None:
            raise UsageError("no runs in this project yet", hint="start one with `abreast run`")
        return row
    row = journal.run(run_id)
    if row is None and run_id:
        starting = journal.run_ids_starting(run_id)
        if len(starting) > 1:
            more = " and more" if len(starting) > 5 else ""
            raise UsageError(
                f"{run_id!r} is the start of several runs' ids: {', '.join(starting[:5])}{more}",
                hint="give more of the id (see `abreast status`)",
            )
        row = journal.run(starting[0]) if starting else None
    if row is None:
        recent = [r.id for r in journal.runs(5)]
        import difflib

        close = difflib.get_close_matches(run_id, [r.id for r in journal.runs(200)], n=1)
        raise UsageError(
            f"no run {run_id!r} in {journal.path}"
            + (f"; did you mean {close[0]!r}?" if close else ""),
            hint="recent runs: "
            + (", ".join(recent) or "none")
            + " (see `abreast status`); a run started with --state or ABREAST_STATE is found "
            "with the same",
        )
    return row


def only_run(journal: Journal, fits: Callable[[RunRow], bool], one: str, many: str) -> RunRow:
    """The one recent run that `fits` (what a command takes when no RUN is named); else
    an error saying none or naming them. `one`/`many`: how such runs are said ("is
    running", "are running")."""
    runs = [r for r in journal.runs(200) if fits(r)]
    if len(runs) != 1:
        raise UsageError(
            f"no run {one}" if not runs else f"{len(runs)} runs {many}",
            hint="see `abreast status`"
            if not runs
            else f"name one: {', '.join(r.id for r in runs)}",
        )
    return runs[0]


def on_this_host(row: RunRow) -> bool:
    """Whether the run's orchestrator runs (or ran) on this machine, where its pid means
    something: a journal on a shared filesystem is read from other machines too."""
    return not row.host or row.host == socket.gethostname()


def orchestrator_alive(row: RunRow) -> bool:
    """Whether the process that runs `row` is still there (same host, pid and start time)."""
    if row.state != "running" or row.pid is None:
        return False
    if not on_this_host(row):
        return True  # cannot see another host's processes; assume it lives
    return is_live_process(row.pid, row.pid_start)


def described_process(pid: int) -> str:
    """`pid 41 (abreast cleanup)`: a process, said for a message. Only the command and
    its first argument: the rest may hold a secret (`--state redis://:pw@host`)."""
    try:
        import psutil

        words = psutil.Process(pid).cmdline()
    except Exception:  # gone meanwhile, or not ours to read: the pid says enough
        return f"pid {pid}"
    if words and os.path.basename(words[0]).startswith("python"):
        words = words[1:]  # python -m abreast, python .../bin/abreast: the command tells
        if words[:1] == ["-m"]:
            words = words[1:]
    said = " ".join([os.path.basename(words[0]), *words[1:2]]) if words else ""
    return f"pid {pid} ({said[:80]})" if said else f"pid {pid}"


def waiting_note(what: str) -> Callable[[int | None], None]:
    """What `Journal.exclusive` says on stderr while it waits: who holds the journal."""

    def note(pid: int | None) -> None:
        who = described_process(pid) if pid else "another process"
        print(
            f"abreast: waiting for {who} to finish with the journal before {what}", file=sys.stderr
        )

    return note


_SIGNAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")  # spec.model's NAME_PATTERN


def signal_run(name: str) -> str:
    """`abreast signal NAME` from inside a task: journal it and wake the orchestrator."""
    if not _SIGNAL_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a signal name",
            hint="a task declares its signals in `signals:`: 1-63 letters, digits, '_', '.'"
            " or '-', starting with a letter, digit or '_'",
        )
    run_id = os.environ.get("ABREAST_RUN_ID")
    task_id = os.environ.get("ABREAST_TASK_ID")
    state = os.environ.get("ABREAST_STATE")
    if not (run_id and task_id and state):
        raise UsageError(
            "abreast signal runs inside a task: ABREAST_RUN_ID, ABREAST_TASK_ID "
            "and ABREAST_STATE are not all set",
            hint="call it from a task's command while abreast runs it",
        )
    location = locate(None, state)
    journal = Journal(location.journal)
    try:
        row = find_run(journal, run_id)
        tasks = {t.task_id for t in journal.tasks(run_id)}
        if task_id not in tasks:
            raise UsageError(f"run {run_id} has no task {task_id!r}")
        declared = _declared_signals(row, task_id)
        if declared is not None and name not in declared:
            # Nothing can wait for it (`needs:` names declared signals only): a typo
            # would leave the dependents waiting for the task's end, unsaid.
            raise UsageError(
                f"task {task_id!r} does not declare the signal {name!r}"
                + (f" (it declares: {', '.join(declared)})" if declared else ""),
                hint=f"add it to the task's `signals:` in {row.file}"
                + did_you_mean(name, declared),
            )
        worktree = os.environ.get("ABREAST_WORKTREE")
        if worktree:  # before the signal is journaled: the waiting tasks start with it
            from abreast.workspace.git import GitError
            from abreast.workspace.repo import Repo, signal_ref, snapshot

            try:
                snapshot(
                    Path(worktree),
                    signal_ref(run_id, task_id, name),
                    f"abreast: {task_id} signalled {name!r} (run {run_id}): its files then",
                )
            except GitError as e:
                from abreast.workspace.submodules import own_repos, own_repos_text

                found = own_repos(Repo(Path(worktree)), Path(worktree))
                raise UsageError(
                    f"could not take a snapshot of the worktree's files for the signal {name!r}: "
                    + (own_repos_text(found) if found else str(e))
                ) from None
        fresh = journal.add_signal(run_id, task_id, name)
        # SIGUSR1 wakes the orchestrator to read it at once, when it runs on this machine;
        # one elsewhere (this task runs on a Ray node) reads new signals every tick. The
        # pid means nothing on another host: a signal sent there would hit a stranger.
        if fresh and on_this_host(row) and orchestrator_alive(row) and row.pid:
            os.kill(row.pid, 10)
    finally:
        journal.close()
    return f"{task_id} signalled {name!r}" + ("" if fresh else " (again)")


def _declared_signals(row: RunRow, task_id: str) -> list[str] | None:
    """The signals `task_id` declares in the run's workflow file; None where that file is
    no longer the one the run started with (changed, gone), which is then not checked."""
    from abreast.errors import SpecError
    from abreast.spec import load_workflow

    try:
        wf = load_workflow(row.file)
    except SpecError:
        return None
    task = wf.tasks.get(task_id)
    if wf.source_sha256 != row.file_sha256 or task is None:
        return None
    return list(task.signals)
