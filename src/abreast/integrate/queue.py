"""The merge queue: one task's work at a time, in the order tasks finish.

    job ─▶ merge-tree (no checkout) ─conflict─▶ send back (files, the other side's commits)
              │ clean
              ▼
           commit-tree ─▶ checks in a scratch worktree ─red─▶ send back (tail of output)
              │ green
              ▼
           update-ref INTEGRATION NEW OLD   (compare-and-swap: moved meanwhile? merge again)

With `merge: {batch: N}`, up to N jobs waiting in the queue are merged one after
the other and checked once; green lands them all with one compare-and-swap; red
splits the batch in halves, each taken the same way (first half first), down to
single jobs, so that only the work that breaks the checks is sent back. (A job
that conflicts inside a batch, or a compare-and-swap that fails, is taken alone.)

The integration ref only ever points at a merge whose checks passed: the
merge commit exists unreferenced until then. The decision to land is journaled
before the ref moves; after a crash, a task whose commit is already in the
integration history counts as landed, never twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abreast.coord.backend import WaitStopped
from abreast.coord.journal import Journal
from abreast.executor.logs import visible_name
from abreast.integrate.base import Outcome, Verdict, commit_message
from abreast.integrate.checks import CheckControl, CheckResult, LockHolder, run_checks
from abreast.spec.model import Check
from abreast.workspace.pool import WorktreePool
from abreast.workspace.repo import Repo, dirty_paths
from abreast.workspace.room import NoRoom

MAX_CAS_RETRIES = 10
CANCELLED_IN_CHECKS = Verdict(Outcome.FAILED, "cancelled while its checks ran", kind="cancelled")


@dataclass
class MergeJob:
    task_id: str
    attempt: int
    base: str  # the integration head the attempt started from
    head: str  # the attempt's final commit
    summary: str | None = None  # what the task is for, for the landing's commit message
    done: asyncio.Future[Verdict] | None = field(repr=False, default=None)


@dataclass
class QueueStats:
    landed: int = 0
    conflicts: int = 0
    red_checks: int = 0
    lock_wait_s: float = 0.0


class MergeQueue:
    def __init__(
        self,
        repo: Repo,
        ref: str,
        run_id: str,
        journal: Journal,
        checks: list[Check],
        check_pool: WorktreePool,
        check_env: dict[str, str],
        check_logs: Path,
        hold: LockHolder,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        path_env: Callable[[Path], dict[str, str]] | None = None,
        batch: int = 1,
        max_log: int = 0,
        quiet_s: float = 0.0,
        why_failed: Callable[[str, str], list[str]] | None = None,
        masked: list[tuple[str, str]] | None = None,
        put_back: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        self.warn = warn or (lambda _text: None)  # said at once and in the run's summary
        # Where the integration ref was last seen (or moved to by this queue), and what
        # puts it back there (journaled, said) when it is found deleted during the run.
        self.last_head: str | None = None
        self.put_back = put_back
        self.batch = batch  # at most this many queued merges checked together
        self.path_env = path_env or (lambda _path: {})  # what a check in that worktree needs
        self.ref = ref
        self.run_id = run_id
        self.journal = journal
        self.checks = checks
        self.check_pool = check_pool
        self.check_env = check_env
        self.check_logs = check_logs
        self.hold = hold
        self.on_event = on_event or (lambda _type, _data: None)
        self.stats = QueueStats()
        self.phase: dict[str, str] = {}  # task -> where its job is: queued, checking, ...
        self._jobs: asyncio.Queue[MergeJob] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._checks = CheckControl(
            max_log=max_log, quiet_s=quiet_s, why_failed=why_failed, masked=masked or []
        )
        self._stopping: list[asyncio.Task[None]] = []
        self._wrote_said = False  # that checks rewrote the work they checked (once a run)
        self._union_said = False  # that merge=union would keep both sides' lines (once)

    @property
    def depth(self) -> int:
        return self._jobs.qsize()

    async def submit(self, job: MergeJob) -> Verdict:
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        job.done = done
        self.phase[job.task_id] = "queued"
        done.add_done_callback(lambda _f: self.phase.pop(job.task_id, None))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        await self._jobs.put(job)
        self.journal.stage_event(
            self.run_id,
            "merge.queued",
            job.task_id,
            attempt=job.attempt,
            head=job.head,
            depth=self._jobs.qsize(),
        )
        return await done

    def abort(self, grace_s: float) -> None:
        """The run is cancelling: end running checks (TERM, KILL after `grace_s`); no job
        lands from now on, and none queued waits for its turn."""
        self._stopping += self._checks.stop(grace_s)

    async def close(self) -> None:
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            jobs = [await self._jobs.get()]
            while len(jobs) < self.batch and not self._jobs.empty():
                jobs.append(self._jobs.get_nowait())
            await self._land_all(jobs)

    async def _land_all(self, jobs: list[MergeJob]) -> None:
        """Give every job its verdict: several are merged and checked together; a red
        batch is split in halves, each taken the same way (the first half first), down to
        single jobs, so that only the work that breaks the checks is sent back."""
        try:
            if len(jobs) == 1:
                _resolve(jobs[0], await self._land(jobs[0]))
                return
            red, alone = await self._land_batch(jobs)
        except Exception as e:  # each job not given its verdict yet fails with it
            for job in jobs:
                _resolve(job, Verdict(Outcome.FAILED, f"merge queue error: {e}", kind="error"))
            return
        self._set_phase((*red, *alone), "queued")
        if red:
            half = len(red) // 2
            await self._land_all(red[:half])
            await self._land_all(red[half:])
        for job in alone:
            await self._land_all([job])

    async def _land_batch(self, jobs: list[MergeJob]) -> tuple[list[MergeJob], list[MergeJob]]:
        """Merge queued jobs onto the integration head one after the other and check the
        result once: green lands them all with one move of the ref (each keeps its own merge
        commit in the history). Returns (the batch, if its checks were red: to be split;
        what is to be taken alone, in order, as without batching: those that conflict or
        add nothing, so that their messages are the usual ones, and all of them when no
        batch could be made or the ref moved meanwhile)."""
        repo = self.repo
        found = await self.head()
        if found is None or self._checks.stopped:
            return [], jobs
        old, tree = found
        members: list[tuple[MergeJob, str]] = []
        alone: list[MergeJob] = []
        chain = old
        for job in jobs:
            merge = await asyncio.to_thread(repo.merge_tree, chain, job.head)
            if not merge.clean or merge.tree == tree:
                alone.append(job)
                continue
            chain = await self._merge_commit(merge.tree, chain, job)
            tree = merge.tree
            members.append((job, chain))
        if len(members) < 2:
            return [], jobs
        together = [job for job, _ in members]
        result = await self._checks_on(together, chain)
        if result is None:  # cancelled meanwhile
            for job in together:
                _resolve(job, CANCELLED_IN_CHECKS)
            return [], alone
        if not result.ok:
            self.journal.stage_event(
                self.run_id,
                "merge.batch_failed",
                None,
                tasks=[job.task_id for job in together],
                check=result.name,
                log=result.log,
                check_s=result.ran_s,
            )
            if result.cannot_start:  # no half of the batch would fare better
                for job in together:
                    _resolve(job, self._red(result))
                return [], alone
            return together, alone
        for i, (job, commit) in enumerate(members):
            self.journal.stage_event(
                self.run_id,
                "merge.checked",
                job.task_id,
                attempt=job.attempt,
                commit=chain,
                check_s=result.ran_s if i == 0 else 0.0,  # one run checked them all
            )
            self._stage_landing(job, commit, old)
        self.journal.commit()  # the decision is durable before the ref moves
        if not await asyncio.to_thread(repo.update_ref, self.ref, chain, old):
            return [], together + alone  # someone else moved it: each alone, onto the new head
        previous = old
        for job, commit in members:
            landed = self._landed(job, commit, previous, batch=len(members), moved_to=chain)
            _resolve(job, landed)
            previous = commit
        return [], alone

    async def _land(self, job: MergeJob) -> Verdict:
        repo = self.repo
        for _ in range(MAX_CAS_RETRIES):
            if self._checks.stopped:
                return Verdict(Outcome.FAILED, "cancelled before it landed", kind="cancelled")
            found = await self.head()
            if found is None:
                return Verdict(
                    Outcome.FAILED, f"the integration branch {self.ref} is gone", kind="error"
                )
            old, old_tree = found
            merge = await asyncio.to_thread(repo.merge_tree, old, job.head)
            if not merge.clean:
                self.stats.conflicts += 1
                return await self._conflict(job, old, merge.conflicts)
            if merge.tree == old_tree:
                # Nothing to add: the work is already there (landed before a crash, or the
                # task changed nothing). Never a second landing.
                self.journal.stage_event(
                    self.run_id,
                    "merge.landed",
                    job.task_id,
                    attempt=job.attempt,
                    commit=old,
                    already=True,
                )
                return Verdict(Outcome.LANDED, "already on the integration branch")
            new = await self._merge_commit(merge.tree, old, job)
            if self.checks:
                red = await self._check(job, new)
                if red is not None:
                    return red
            self._stage_landing(job, new, old)
            self.journal.commit()  # the decision is durable before the ref moves
            if await asyncio.to_thread(repo.update_ref, self.ref, new, old):
                return self._landed(job, new, old)
            # Someone else moved the integration branch: merge again onto its new head.
        return Verdict(
            Outcome.FAILED,
            f"{self.ref} kept moving; gave up after {MAX_CAS_RETRIES} tries",
            kind="error",
        )

    async def head(self) -> tuple[str, str] | None:
        """(commit, tree) of the integration head; if the branch was deleted during the run
        (`git branch -D`, a cleanup by mistake), put back first where it was last seen, so
        that what landed is not lost and the run goes on. None when it cannot be."""
        found = await asyncio.to_thread(self.repo.commit_and_tree, self.ref)
        if found is None and self.last_head is not None and self.put_back is not None:
            self.put_back(self.last_head)
            found = await asyncio.to_thread(self.repo.commit_and_tree, self.ref)
        if found is not None:
            self.last_head = found[0]
        return found

    def _set_phase(self, jobs: Sequence[MergeJob], phase: str) -> None:
        """Say where these jobs are (for the live view), those still waiting a verdict."""
        for job in jobs:
            if job.task_id in self.phase:
                self.phase[job.task_id] = phase

    async def _merge_commit(self, tree: str, onto: str, job: MergeJob) -> str:
        """The merge commit that lands `job` on `onto` (not referenced until it lands)."""
        return await asyncio.to_thread(
            self.repo.commit_tree,
            tree,
            [onto, job.head],
            commit_message(f"abreast: land {job.task_id}", job.summary, self.run_id, job.attempt),
        )

    def _stage_landing(self, job: MergeJob, commit: str, old: str) -> None:
        """The decision to land `job` as `commit` on `old`, journaled before the ref moves."""
        self.journal.stage_event(
            self.run_id, "merge.landing", job.task_id, attempt=job.attempt, commit=commit, old=old
        )

    def _landed(self, job: MergeJob, commit: str, old: str, **extra: Any) -> Verdict:
        """The integration ref moved from `old` to (a descendant of) `commit`, the merge of
        `job`: journal and count it."""
        self.stats.landed += 1
        self.last_head = extra.get("moved_to") or commit
        self.journal.stage_event(
            self.run_id,
            "merge.landed",
            job.task_id,
            attempt=job.attempt,
            commit=commit,
            old=old,
            **extra,
        )
        self.on_event("merge.landed", {"task": job.task_id, "commit": commit})
        return Verdict(Outcome.LANDED, commit)

    async def _conflict(self, job: MergeJob, old: str, files: list[str]) -> Verdict:
        theirs = await asyncio.to_thread(self.repo.log_oneline, f"{job.base}..{old}")
        shown = ", ".join(map(visible_name, files[:20]))
        shown += f" (+{len(files) - 20} more)" if len(files) > 20 else ""
        landed = await asyncio.to_thread(self._landed_since, job.base, old)
        landed = landed or f"{len(theirs)} commit{'s' if len(theirs) != 1 else ''}"
        detail = (
            f"merge conflict with the integration branch in: {shown} "
            f"({landed} landed there since this attempt started)\n"
            f"They are:\n"
            + "\n".join(f"  {c}" for c in theirs)
            + f"\nThe next attempt starts from {old[:12]}, which includes them; "
            "redo the change on top of it."
        )
        added = await asyncio.to_thread(self._added_only, old, job.head, files[:20])
        # Said to the user, once a run, not to the agent: whether both sides belong is the
        # user's to say (a union of two definitions of one function is no merge).
        said = None
        if added and not self._union_said:
            self._union_said = True
            said = f"{_union_hint(added)} (a conflict sent {job.task_id} back)"
        self.journal.stage_event(
            self.run_id,
            "merge.conflict",
            job.task_id,
            attempt=job.attempt,
            files=files,
            theirs=theirs,
            added_only=added,
            warning=said,
        )
        if said:
            self.warn(said)
        self.on_event("merge.conflict", {"task": job.task_id, "files": files})
        return Verdict(Outcome.SEND_BACK, detail, kind="conflict", files=tuple(files))

    def _landed_since(self, base: str, head: str) -> str:
        """Whose work landed on the integration branch between `base` and `head`, as
        tasks (`api and web`); "" when not all of it was the run's tasks' landing."""
        out = self.repo.git("rev-list", "--first-parent", "--reverse", f"{base}..{head}")
        firsts = out.stdout.split()
        by = {
            str(e.data.get("commit")): e.task_id
            for e in self.journal.events(self.run_id, types=("merge.landed",))
        }
        tasks = [by.get(c) for c in firsts]
        if not tasks or None in tasks:
            return ""
        names = list(dict.fromkeys(t for t in tasks if t))
        if len(names) > 5:
            return f"{', '.join(names[:5])} and {len(names) - 5} more tasks"
        return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]

    def _added_only(self, ours: str, theirs: str, files: list[str]) -> list[str]:
        """Of the conflicted `files`, those both sides only added lines to (git cannot
        tell which go first), that their merge base has: a list both added to."""
        base = self.repo.merge_base(ours, theirs)
        if base is None or not files:
            return []
        had = self.repo.existing(base, files)  # not both creating one file

        def adding(rev: str) -> set[str]:
            spec = [f":(literal){f}" for f in files if f in had]
            if not spec:
                return set()
            out = self.repo.git("diff", "--numstat", "-z", "--no-renames", base, rev, "--", *spec)
            found = set()
            for entry in out.stdout.split("\0"):
                plus, minus, path = [*entry.split("\t", 2), "", ""][:3]
                if plus.isdigit() and int(plus) > 0 and minus == "0":
                    found.add(path)
            return found

        return sorted(adding(ours) & adding(theirs))

    async def _checks_on(self, jobs: list[MergeJob], commit: str) -> CheckResult | None:
        """Run the checks on `commit`, the merge of `jobs` (one, or a batch) onto the
        integration head; None if the run was cancelled meanwhile."""
        first = jobs[0]
        self._set_phase(jobs, "checking" if len(jobs) == 1 else f"checking, batch of {len(jobs)}")
        self.journal.stage_event(  # for watchers: which merges are being checked now
            self.run_id,
            "merge.checking",
            first.task_id,
            attempt=first.attempt,
            tasks=[job.task_id for job in jobs],
            commit=commit,
        )
        name = f"{first.task_id}.{first.attempt}"
        if len(jobs) > 1:
            name = f"batch-{name}+{len(jobs) - 1}"
        tasks = ", ".join(job.task_id for job in jobs)
        result = await self._run_checks_at(
            commit,
            name,
            f"{self.run_id}/{first.task_id}/check",
            {
                "ABREAST_TASK_ID": " ".join(job.task_id for job in jobs),
                "ABREAST_ATTEMPT": " ".join(str(job.attempt) for job in jobs),
            },
            lambda path: self._wrote(jobs, path),
            f"checking {tasks}",
            first.task_id,
        )
        if result is None:
            return None
        for job in jobs:
            self.on_event(
                "checks.finished",
                {"task": job.task_id, "ok": result.ok, "lock_wait_s": result.wait_s},
            )
        return result

    async def check_result(self, commit: str, what: str) -> CheckResult | None:
        """Run the checks on `commit`, the run's result merged with what `base` gained
        since the run started (`--land`), as on a task's merge; None if cancelled
        meanwhile (`abort`). `what`: that merge, in a few words, for a flaky check's
        warning. No task is landed: `ABREAST_TASK_ID` and `ABREAST_ATTEMPT` are empty."""
        env = {"ABREAST_TASK_ID": "", "ABREAST_ATTEMPT": ""}
        holder = f"{self.run_id}/_result/check"
        return await self._run_checks_at(commit, "_result", holder, env, None, what, None)

    async def _run_checks_at(
        self,
        commit: str,
        name: str,
        holder: str,
        env: dict[str, str],
        on_green: Callable[[Path], Awaitable[None]] | None,
        what: str,
        task_id: str | None,
    ) -> CheckResult | None:
        """The checks run in a check worktree at `commit`, their logs `checks/<name>.*`;
        `on_green` looks at the worktree they were green in. None when cancelled."""
        try:
            path = await asyncio.to_thread(self.check_pool.acquire, None, commit)
        except NoRoom as e:  # no work can change that: the run stops, said (`_red`)
            name = self.checks[0].name or self.checks[0].run
            said = f"check `{name}` not run: {e}"
            return CheckResult(False, name, said, "", 0.0, cannot_start=str(e))
        try:
            env = {
                **self.check_env,
                **self.path_env(path),
                **env,
                "ABREAST_CHECK_COMMIT": commit,
            }
            started = time.monotonic()
            try:
                result = await run_checks(
                    self.checks,
                    path,
                    env,
                    str(self.check_logs / name),
                    self.hold,
                    holder=holder,
                    control=self._checks,
                )
            except WaitStopped:
                result = None
            if result is not None:
                took = time.monotonic() - started - result.wait_s
                result = dataclasses.replace(result, ran_s=round(max(0.0, took), 3))
                if result.ok and on_green is not None:
                    await on_green(path)
        finally:
            self.check_pool.release(path, clean=False)
        if result is None or self._checks.stopped:  # not a verdict on the work
            return None
        self.stats.lock_wait_s += result.wait_s
        for text in result.flaky:  # green in the end: said, as the suite may be flaky
            said = f"{text} ({what})"
            self.journal.stage_event(self.run_id, "check.flaky", task_id, warning=said)
            self.warn(said)
        return result

    async def _wrote(self, jobs: list[MergeJob], path: Path) -> None:
        """Checks that changed files of the merge result they were green on (a formatter,
        `ruff format`, `prettier --write`): what they wrote is not what lands. Journaled
        each time, said once a run; a check's untracked output (a build) is no news."""
        files = await asyncio.to_thread(dirty_paths, self.repo, path, untracked=False)
        if not files:
            return
        said = None
        if not self._wrote_said:
            self._wrote_said = True
            tasks = ", ".join(job.task_id for job in jobs)
            first, more = ", ".join(map(visible_name, files[:5])), len(files) - 5
            said = (
                f"the merge checks changed files of the work they checked ({first}"
                f"{f' and {more} more' if more > 0 else ''}; checking {tasks}), and what a "
                "check writes does not land: the work lands as its task left it. A formatter "
                "or fixer run as a check (`ruff format`, `prettier --write`, `eslint --fix`) "
                "should only check (`--check`), or run in the tasks"
            )
        self.journal.stage_event(
            self.run_id, "check.wrote", jobs[0].task_id, files=files[:50], warning=said
        )
        if said:
            self.warn(said)

    async def _check(self, job: MergeJob, commit: str) -> Verdict | None:
        result = await self._checks_on([job], commit)
        if result is None:
            return CANCELLED_IN_CHECKS
        if result.ok:
            self.journal.stage_event(
                self.run_id,
                "merge.checked",
                job.task_id,
                attempt=job.attempt,
                commit=commit,
                check_s=result.ran_s,
            )
            return None
        self.stats.red_checks += 1
        self.journal.stage_event(
            self.run_id,
            "merge.checks_failed",
            job.task_id,
            attempt=job.attempt,
            check=result.name,
            log=result.log,
            check_s=result.ran_s,
        )
        return self._red(result)

    def _red(self, result: CheckResult) -> Verdict:
        """The verdict on work whose checks were red: sent back, unless the check could
        not start at all, which no work can change."""
        detail = result.detail + (f"\ncheck log: {result.log}" if result.log else "")
        if not result.cannot_start:
            return Verdict(Outcome.SEND_BACK, detail, kind="check")
        why = f"check `{result.name}` cannot start ({result.cannot_start})"
        detail += (
            f"\nnot sent back: {why}, whatever the work; fix it (the check in the workflow "
            "file, or what it needs on this machine), then "
            f"`abreast resume {self.run_id} --retry-failed`"
        )
        return Verdict(Outcome.FAILED, detail, kind="check", stops_run=why)


def _union_hint(files: list[str]) -> str:
    shown = ", ".join(map(visible_name, files))
    return (
        f"both sides only added lines to {shown}, where git cannot tell which go first; if "
        "both belong (a list: exports, routes, a changelog), a line "
        f"`{visible_name(files[0])} merge=union` in .gitattributes, committed, has git keep "
        "both"
    )


def _resolve(job: MergeJob, verdict: Verdict) -> None:
    if job.done is not None and not job.done.done():
        job.done.set_result(verdict)


def check_env(base: dict[str, str], run_id: str, coord_url: str) -> dict[str, str]:
    return {
        **base,
        "ABREAST_RUN_ID": run_id,
        "ABREAST_STATE": coord_url,
        "PATH": base.get("PATH", os.defpath),
    }
