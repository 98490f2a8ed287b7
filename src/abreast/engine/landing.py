"""`abreast land [RUN]`: bring the result of a run that has ended in, now.

A run without `--land` leaves its result on `abreast/<run>/_integration`, to be looked
at first (`abreast diff RUN --all`, its report) — agents' work is read before it goes
in — and by the time it has been, `base` has often moved on. This does what `--land`
would have done at the run's end: what `base` gained since the run started is merged
into the result and the merge checks run on the two together, then `base` is
fast-forwarded to it (in the checkout that has it checked out, its files with it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from abreast.coord.backend import BEST_EFFORT_WAIT_S, CoordError, open_coordinator
from abreast.coord.journal import Journal, RunRow
from abreast.coord.location import StateLocation
from abreast.engine.engine import EngineOptions, on_stop_signals
from abreast.engine.landlock import landing_lock
from abreast.engine.lookup import find_run, open_journal, orchestrator_alive
from abreast.engine.supervise import Supervisor
from abreast.errors import StateError, UsageError
from abreast.integrate.base import integration_branch
from abreast.spec import load_workflow
from abreast.spec.envsubst import expand_env
from abreast.spec.model import Workflow


@dataclasses.dataclass(frozen=True)
class Landed:
    run_id: str
    line: str  # what was done, or why not ("landed: …", "not landed: …")
    unlanded: bool  # not landed (exit status 3)
    interrupted: int = 0  # the signal of a Ctrl-C (or the terminal closing) meanwhile


def land_run(
    run_id: str | None, *, state: str | None, partial: bool, note: Callable[[str], None]
) -> Landed:
    found_at, journal = open_journal(None, state)
    with journal:
        run_id = find_run(journal, run_id).id  # (the latest, without RUN: this one, then)
        with landing_lock(found_at, run_id, note):
            return _land_locked(journal, found_at, run_id, partial, note)


def _land_locked(
    journal: Journal,
    found_at: StateLocation,
    run_id: str,
    partial: bool,
    note: Callable[[str], None],
) -> Landed:
    """The landing, with the run's landing lock held."""
    row = find_run(journal, run_id)  # as it is now that no other landing is at work
    landed = _landed_tasks(journal, row)
    wf = _workflow(row, journal, partial, landed, note)
    location = dataclasses.replace(found_at, root=Path(row.root))
    branch = integration_branch(row.id)
    if not _has_branch(location.root, branch):
        raise UsageError(
            f"run {row.id}'s result branch {branch} is gone (`abreast cleanup --results`, "
            "or deleted by hand)",
            hint=f"`abreast diff {row.id} --all` says whether git still has its commits",
        )
    if not landed:
        return Landed(row.id, f"nothing to land: no task's work landed in run {row.id}", False)
    _refuse_without_base_branch(location.root, row, branch)
    try:
        coord = open_coordinator(location.coord_url, calls_wait_s=BEST_EFFORT_WAIT_S)
    except CoordError as e:
        raise StateError(str(e), hint="check --state / ABREAST_STATE") from e
    supervisor = Supervisor(wf, row.id, coord, journal, lambda _text: None)
    try:
        done = asyncio.run(_land(wf, location, row, journal, supervisor, note))
    finally:
        supervisor.close()
    _journal(journal, row, done.line, done.unlanded)
    return done


def _has_branch(root: Path, branch: str) -> bool:
    from abreast.workspace.git import git

    proc = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=root, check=False)
    return proc.returncode == 0


def _refuse_without_base_branch(root: Path, row: RunRow, result: str) -> None:
    """A run started from a detached HEAD, a tag, a remote-tracking branch or a commit,
    or whose branch was deleted since, has no branch to land on: said before anything is
    checked, with the git command that brings the result in where the user wants it."""
    base = row.options.get("base")
    if not base or _has_branch(root, base):
        return  # (a run journaled before `base` was: WorktreeIsolation says)
    from abreast.workspace.git import git

    start = str(row.options.get("base_commit") or "")[:12]
    if base == "HEAD":
        why = f"started on a detached HEAD (at {start})"
    elif git("rev-parse", "--verify", "--quiet", base, cwd=root, check=False).returncode == 0:
        why = (
            f"started from {base}, which is not a local branch (a tag, a remote-tracking "
            "branch or a commit)"
        )
    else:
        why = f"started from the branch {base}, which is gone now"
    raise UsageError(
        f"run {row.id} {why}: there is no branch for abreast land to move to its result",
        hint=f"`git merge {result}` in the checkout you want it in brings it in there "
        f"(`git branch NAME {result}` keeps it under a name of yours)",
    )


def _landed_tasks(journal: Journal, row: RunRow) -> set[str]:
    events = journal.events(row.id, types=("merge.landed",))
    return {e.task_id for e in events if e.task_id is not None}


def _workflow(
    row: RunRow, journal: Journal, partial: bool, landed: set[str], note: Callable[[str], None]
) -> Workflow:
    """The run's workflow file (its merge checks and `base`), once the run is found to be
    one whose result may be landed; a UsageError saying why not otherwise."""
    if row.options.get("isolation") != "worktree":
        raise UsageError(
            f"run {row.id} ran in the project directory (isolation: none): its work is "
            "already there, and there is no result apart from it to land",
            hint="`git status` and `git diff` in the project show what the run left",
        )
    if orchestrator_alive(row):
        raise UsageError(
            f"run {row.id} is still running (orchestrator pid {row.pid})",
            hint=f"let it end first; started with --land, it lands itself; `abreast cancel "
            f"{row.id} --drain` ends it once what runs has landed",
        )
    if row.state == "running":
        raise UsageError(
            f"run {row.id} did not end: its orchestrator was stopped before it could",
            hint=f"`abreast resume {row.id}` carries it on; then `abreast land {row.id}`",
        )
    total = len(journal.tasks(row.id))
    if row.state != "succeeded" and not partial:
        raise UsageError(
            f"run {row.id} {row.state}: its result holds the work of only the tasks that "
            f"landed ({len(landed)} of {total})",
            hint=f"`abreast land {row.id} --partial` lands that; `abreast resume {row.id} "
            "--retry-failed` runs what failed first",
        )
    if not row.file or not Path(row.file).is_file():
        raise UsageError(
            f"the workflow file of run {row.id} is gone: {row.file or '(not journaled)'}",
            hint="put it back (its merge checks are run on what is landed), or bring the "
            f"result in yourself: git merge {integration_branch(row.id)}",
        )
    wf = expand_env(load_workflow(Path(row.file)), os.environ)
    if wf.source_sha256 != row.file_sha256:
        note(
            f"note: {Path(row.file).name} changed since run {row.id} started; its merge "
            "checks are taken as it has them now"
        )
    return wf


async def _land(
    wf: Workflow,
    location: StateLocation,
    row: RunRow,
    journal: Journal,
    supervisor: Supervisor,
    note: Callable[[str], None],
) -> Landed:
    from abreast.engine.runs import key_secrets, masked_secrets, task_env
    from abreast.integrate.worktrees import WorktreeIsolation
    from abreast.plan import TaskGraph

    # As the run's checks had it: no real key (there is no key broker to lease one), and
    # none of the secrets of its environment in their logs.
    env = task_env(location, None, None, row.options.get("tag"), worktrees=True)
    key_vars, keys = key_secrets(wf, env)
    iso = WorktreeIsolation(
        wf,
        location,
        row.id,
        journal,
        TaskGraph.from_workflow(wf),
        base_commit=row.options.get("base_commit"),
        land=True,
        hold=supervisor.hold if supervisor.coord else None,
        base_env={k: v for k, v in env.items() if k not in key_vars},
        masked=masked_secrets(wf) + keys,
        landing_only=True,
        base_branch=row.options.get("base"),
    )
    iso.note = note

    interrupted = []

    def stop(signum: int) -> None:
        note("cancelling: the merge checks are ended, nothing is landed")
        iso.abort(EngineOptions.kill_grace_s)  # as a run's own
        if signum != signal.SIGTERM:  # Ctrl-C, the terminal closed: abreast ends by it
            interrupted.append(signum)

    with on_stop_signals(stop):
        line = await iso.land_finished()
    return Landed(row.id, line, iso.unlanded, interrupted[0] if interrupted else 0)


def _journal(journal: Journal, row: RunRow, line: str, unlanded: bool) -> None:
    """The run's summary says the landing as `status` and `report` show it: the line
    that said how to bring the result in (or an earlier attempt's) replaced by this one.
    `base` already having the result replaces only a line that said how to bring it in
    (it was merged by hand, say), not one that says it landed."""
    summary = dict(row.summary or {})
    lines = [x for x in str(summary.get("landing") or "").split("\n  ") if x]
    if line.endswith(" already has the result") and any(x.startswith("landed:") for x in lines):
        return
    said = [x for x in lines if not x.startswith(("bring it in:", "landed:", "not landed:"))]
    said = [x for x in said if not x.endswith(" already has the result")]
    summary["landing"] = "\n  ".join([*said, line])
    journal.stage_run(row.id, summary=summary)
    if not unlanded:
        journal.stage_event(row.id, "result.landed", said=line, by="abreast land")
    journal.commit()


def say(landed: Landed) -> int:
    """Print the outcome; the exit status (3: not landed)."""
    print(f"run {landed.run_id}: {landed.line}")
    if landed.unlanded:
        print(f"abreast: the result of run {landed.run_id} was not landed", file=sys.stderr)
    if landed.interrupted:
        return 128 + landed.interrupted  # and abreast ends by it (cli.main)
    return 3 if landed.unlanded else 0
