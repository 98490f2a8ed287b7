"""`abreast cleanup`: what finished or dead runs left behind, listed or removed.

A run is eligible when it finished (succeeded, failed, cancelled), or when it
says "running" but its orchestrator is gone (pid and start time checked). With
`--force`, also a run whose orchestrator looks alive but whose heartbeat is older
than the orphan threshold (a hung or stopped orchestrator). For each: its stray
processes are killed, the leases it holds are released, and its worktrees and
task branches are removed, and the links to the state files it kept in the git
directory (coord/anchor.py); each cleanup is journaled with its reason. Result
branches (`abreast/<run>/_integration`) stay unless `--results`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from abreast.coord.anchor import anchors_dir, remove_anchor, still_linked
from abreast.coord.backend import Coordinator
from abreast.coord.journal import Journal, RunRow
from abreast.coord.location import STATE_DIR
from abreast.engine.lookup import on_this_host, orchestrator_alive
from abreast.engine.runs import _kill_strays, _stray_pids
from abreast.engine.states import RUN_ENDED
from abreast.executor.process import kill_pids, marked_processes
from abreast.spec.durations import counted, format_size
from abreast.workspace.cleanup import Leftovers

ORPHAN_AFTER_S = 120.0


@dataclass
class Plan:
    run_id: str
    reason: str
    processes: int = 0
    orchestrator: int | None = None
    actions: list[str] = field(default_factory=list)
    forget: bool = False  # its journal entries and its directory of logs and outputs go
    kept_workflow: str | None = None  # the copy of a workflow read from stdin, gone with it
    # Worktrees holding the work of attempts that ended after the orchestrator died, which
    # a resume takes up (workdir -> task): kept, with their task branches.
    keep: dict[str, str] = field(default_factory=dict)
    leases: list[str] = field(default_factory=list)  # what it does in the coordinator


def eligible(row: RunRow, force: bool, orphan_after_s: float, now: float) -> str | None:
    if row.state in RUN_ENDED:
        return f"finished ({row.state})"
    if not orchestrator_alive(row):
        return "its orchestrator is gone"
    stale = row.heartbeat_at is None or now - row.heartbeat_at > orphan_after_s
    if force and stale:
        age = now - (row.heartbeat_at or row.started_at)
        return f"its orchestrator has not heartbeaten for {age:.0f}s (--force)"
    return None


def cleanup(
    journal: Journal | None,
    root: Path,
    *,
    dry_run: bool,
    force: bool,
    results: bool,
    orphan_after_s: float = ORPHAN_AFTER_S,
    release_leases: Callable[[str, bool], list[str]] | None = None,
    forget_before: float | None = None,
    runs_dir: Path | None = None,
    kept_results: list[tuple[str, bool]] | None = None,
) -> list[Plan]:
    """What to clean up, done unless `dry_run`. With `forget_before` (a time), runs that
    ended before it are forgotten too: their directory in `runs_dir` (logs, outputs),
    then their journal entries. The result branches left as they are (without `results`)
    are added to `kept_results`, each with whether its work is in no branch of yours."""
    from abreast.engine.landlock import being_landed
    from abreast.workspace.cleanup import (
        held_nowhere,
        leftovers,
        remove,
        remove_stale_indexes,
        runs_with_leftovers,
    )
    from abreast.workspace.git import toplevel
    from abreast.workspace.repo import Repo

    repo = Repo(root) if toplevel(root) else None
    now = time.time()
    plans: dict[str, Plan] = {}
    rows = journal.runs(100000) if journal else []
    for row in rows:
        why = eligible(row, force, orphan_after_s, now)
        if why is None:
            continue
        if runs_dir is not None and being_landed(runs_dir / row.id) is not None:
            continue  # `abreast land` is at work on it: its checks' worktree and processes
        plan = plans[row.id] = Plan(row.id, why)
        if "(--force)" in why and orchestrator_alive(row):
            if on_this_host(row):
                plan.actions.append(
                    f"stop its orchestrator (pid {row.pid}), which no longer heartbeats"
                )
                plan.orchestrator = row.pid
            else:  # its pid means nothing here
                plan.actions.append(
                    f"leave its orchestrator (pid {row.pid} on {row.host}), which no longer "
                    "heartbeats, to be stopped on that machine"
                )
        live = len(_stray_pids(journal, row.id)) if journal else 0
        if live:
            plan.processes = live
            plan.actions.append(f"kill {counted(live, 'process', 'processes')} still running")
        if release_leases:  # listed now, done once its processes are gone
            plan.leases = release_leases(row.id, True)
            plan.actions += plan.leases
        if forget_before is not None and _ended_before(row, forget_before):
            plan.forget = True
            where = f" and {_described(runs_dir / row.id)}" if runs_dir else ""
            plan.actions.append(f"forget it: its journal entries{where}")
    # A workflow read from standard input is kept for its run (cli._kept_workflow): it
    # goes with the last run that reads it.
    read_on = {r.file for r in rows if not (r.id in plans and plans[r.id].forget)}
    for row in rows:
        going = plans.get(row.id)
        if going is None or not going.forget or row.file in read_on or not _kept(row.file, root):
            continue
        if forget_before is not None and _mtime(row.file) >= forget_before:
            continue  # read again since by a run not journaled yet (`abreast run -` now)
        going.kept_workflow = row.file
        going.actions.append(
            f"remove {os.path.relpath(row.file, root)}, the workflow it read from standard "
            "input (no other run reads it)"
        )
    known = {r.id for r in rows}
    active = {r.id for r in rows if r.id not in plans}
    if repo is not None:
        for run_id in runs_with_leftovers(repo):
            if run_id in active or (run_id not in known and _running_elsewhere(root, run_id)):
                continue
            plan = _leftover_plan(plans, run_id, known)
            if journal is not None and run_id in known and not plan.forget:
                plan.keep = _work_to_take_up(journal, run_id)
            found = leftovers(repo, run_id)
            left = _without(found, plan.keep)
            plan.actions += [
                f"keep worktree {p}: the work of {plan.keep[str(p)]}, which ended after the "
                f"orchestrator died (`abreast resume {run_id}` takes it)"
                for p in found.worktrees
                if str(p) in plan.keep
            ]
            plan.actions += [f"remove worktree {p}" for p in left.worktrees]
            plan.actions += [
                f"delete branch {b.removeprefix('refs/heads/')}" for b in left.task_branches
            ]
            plan.actions += [f"delete {ref}" for ref in left.snapshots]
            if left.integration_branch:
                name = left.integration_branch.removeprefix("refs/heads/")
                lost = held_nowhere(repo.root, left.integration_branch)
                if results:
                    plan.actions.append(
                        f"delete result branch {name}"
                        + (
                            f", whose work no branch of yours has (not landed: `abreast land "
                            f"{run_id}` brings it in; `git branch {name} {lost[:12]}` puts "
                            "it back while git keeps the commit)"
                            if lost
                            else ""
                        )
                    )
                elif kept_results is not None:
                    kept_results.append((name, lost is not None))
    anchors = anchors_dir(root)
    for links in sorted(anchors.iterdir()) if anchors.is_dir() else ():
        # A run this journal does not know may be live in another journal (--state): its
        # links go only once its files are gone from their paths too.
        if links.name not in active and (links.name in known or not still_linked(links)):
            action = f"remove the links to its state files in {links}"
            _leftover_plan(plans, links.name, known).actions.append(action)
    plans = {k: v for k, v in plans.items() if v.actions}
    if dry_run:
        return list(plans.values())
    if repo is not None:
        remove_stale_indexes(repo)  # not worth a line: a few hundred bytes each
    for plan in plans.values():
        if plan.orchestrator:
            kill_pids([plan.orchestrator], grace_s=2.0)
        if plan.processes and journal:
            asyncio.run(_kill_strays(journal, plan.run_id))
        if release_leases and plan.leases:  # what was done, which may be less
            done = release_leases(plan.run_id, False)
            at = plan.actions.index(plan.leases[0])
            plan.actions[at : at + len(plan.leases)] = done
        if repo is not None:
            remove(repo, _without(leftovers(repo, plan.run_id), plan.keep), results=results)
        remove_anchor(anchors / plan.run_id)
        if journal and plan.run_id in known and not plan.forget:
            journal.stage_event(
                plan.run_id, "run.cleaned", reason=plan.reason, actions=plan.actions
            )
            for orphan in plan.actions:
                if orphan.startswith("kill"):
                    journal.stage_event(
                        plan.run_id, "orphan.cleaned", reason=plan.reason, detail=orphan
                    )
    if journal:
        journal.commit()
        for plan in plans.values():
            if plan.forget and forget_before is not None:
                _forget(journal, plan, forget_before, runs_dir)
    return list(plans.values())


def _ended_before(row: RunRow | None, when: float) -> bool:
    return (
        row is not None
        and row.state in RUN_ENDED
        and row.finished_at is not None
        and row.finished_at < when
    )


def _forget(journal: Journal, plan: Plan, before: float, runs_dir: Path | None) -> None:
    """The run's files first, then its journal entries: a crash between leaves a run whose
    logs are gone, which the next `cleanup --older-than` forgets; the other way round it
    would leave files that no journal names. Looked at again first: a resume may have
    taken the run up since it was planned."""
    if not _ended_before(journal.run(plan.run_id), before):
        plan.actions.append("(not forgotten: it was resumed meanwhile)")
        return
    if runs_dir is not None:
        shutil.rmtree(runs_dir / plan.run_id, ignore_errors=True)
        if (runs_dir / plan.run_id).exists():
            plan.actions.append(f"(not forgotten: {runs_dir / plan.run_id} could not be removed)")
            return
    journal.forget_run(plan.run_id, before)
    if plan.kept_workflow:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(plan.kept_workflow)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _kept(file: str, root: Path) -> bool:
    """Whether `file` is a copy abreast kept of a workflow read from standard input."""
    path = Path(file)
    return path.parent == root / STATE_DIR / "workflows" and path.name.startswith("stdin-")


def _described(run_dir: Path) -> str:
    """`.abreast/runs/RUN (1,204 files, 3.1 MB)`: what forgetting a run frees."""
    files = size = 0
    for parent, _dirs, names in os.walk(run_dir):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(parent, name)).st_blocks * 512  # on disk
                files += 1
    if not files:
        return str(run_dir)
    return f"{run_dir} ({files:,} file{'s' if files != 1 else ''}, {format_size(size)})"


def _running_elsewhere(root: Path, run_id: str) -> bool:
    """Whether a run this journal does not know is running, from another journal of the
    same repository (`--state`): a process of it is alive, or the state files it anchored
    are still in use. Its worktrees are its own, not leftovers."""
    return bool(marked_processes(run_id)) or still_linked(anchors_dir(root) / run_id)


def _work_to_take_up(journal: Journal, run_id: str) -> dict[str, str]:
    """Workdir -> task, of the run's attempts that ended well after its orchestrator died
    (the exits file says so; no orchestrator took them up since): their work is in their
    worktree, uncommitted, and `abreast resume` lands it. Removing it lost the work, and
    the resume failed the task: "its work was lost in a crash"."""
    from abreast.observe.rundata import ended_while_down

    down = ended_while_down(journal, run_id)
    return {
        a.workdir: a.task_id
        for a in journal.attempts(run_id)
        if a.workdir and (e := down.get((a.task_id, a.attempt))) is not None and e[0] == 0
    }


def _without(left: Leftovers, keep: dict[str, str]) -> Leftovers:
    """`left` less the worktrees in `keep`, and the branches of their tasks."""
    if not keep:
        return left
    branches = {f"refs/heads/abreast/{left.run_id}/{task}" for task in keep.values()}
    return dataclasses.replace(
        left,
        worktrees=[p for p in left.worktrees if str(p) not in keep],
        task_branches=[b for b in left.task_branches if b not in branches],
    )


def _leftover_plan(plans: dict[str, Plan], run_id: str, known: set[str]) -> Plan:
    """The plan for a run not running that left something behind in the repository."""
    reason = "not in the journal" if run_id not in known else "finished"
    return plans.setdefault(run_id, Plan(run_id, reason))


def release_dead_holders(
    coord: Coordinator, run_id: str, dry_run: bool = False
) -> list[tuple[str, str, int | None]]:
    """The leases of `run_id` whose holder is gone from this machine, released (that grant
    only, not a newer one); with what was done or left, as (what, lock, token released:
    None for a lease left alone).
    Run ids are not unique across projects sharing a backend (`--run-id ci-42`), and a
    holder elsewhere cannot be seen: any other lease runs out by its ttl."""
    here = socket.gethostname()
    out: list[tuple[str, str, int | None]] = []
    for lease in coord.leases():
        holder = lease.holder
        if holder.run != run_id:
            continue
        who = holder.task or "abreast lock"
        what = f"lock {lease.name!r} (token {lease.token}, held by {who}"
        if holder.host != here:
            out.append((f"{what} on {holder.host}) to run out by its ttl", lease.name, None))
            continue
        if not dry_run and holder.pid > 0 and psutil.pid_exists(holder.pid):
            rest = f"{what}, pid {holder.pid} is alive) to run out by its ttl"
            out.append((rest, lease.name, None))
            continue
        out.append((f"{what})", lease.name, lease.token))
        if not dry_run:
            coord.release(lease.name, lease.token)
    return out


def lease_releaser(coord: Coordinator) -> Callable[[str, bool], list[str]]:
    """What cleanup does in the coordination backend for a run: its leases and heartbeats."""

    def release(run_id: str, dry_run: bool) -> list[str]:
        done = release_dead_holders(coord, run_id, dry_run)
        out = [f"{'leave' if token is None else 'release'} {what}" for what, _, token in done]
        for hb in coord.heartbeats(f"attempt:{run_id}/") + coord.heartbeats(f"run:{run_id}"):
            out.append(f"forget heartbeat {hb.key}")
            if not dry_run:
                coord.forget(hb.key)
        return out

    return release
