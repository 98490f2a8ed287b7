"""Worktree isolation: each attempt in its own git worktree; work lands through the queue.

    prepare ─▶ pooled worktree on abreast/<run>/<task> at the integration head
    (the task runs there)
    integrate ─▶ containment (hooks, config, main checkout, symlinks)
              ─▶ commit what it left ─▶ ownership ─▶ merge queue ─▶ landed / sent back
    finished ─▶ the worktree goes back to the pool, or is kept as evidence

The integration branch is `abreast/<run>/_integration` (git cannot hold both a
branch `abreast/<run>` and branches under `abreast/<run>/`; task ids cannot
start with `_`, so this name never clashes with a task's branch).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abreast.coord.journal import Journal
from abreast.coord.location import StateLocation
from abreast.engine.states import TERMINAL, TaskState
from abreast.errors import UsageError
from abreast.executor.logs import visible, visible_name
from abreast.integrate.base import (
    KEY_IN_WORK,
    Isolation,
    Outcome,
    Verdict,
    commit_message,
    integration_branch,
    task_summary,
)
from abreast.integrate.checks import LocalLocks, LockHolder
from abreast.integrate.guard import SLACK_S, Change, Guard, landed_by, symlinks_out
from abreast.integrate.ownership import violations
from abreast.integrate.queue import MergeJob, MergeQueue, check_env
from abreast.plan.graph import TaskGraph
from abreast.spec.durations import counted, listed
from abreast.spec.model import Workflow
from abreast.workspace import generated, provision, pyenv, submodules
from abreast.workspace.git import GitError
from abreast.workspace.pool import WorktreePool
from abreast.workspace.provision import Provision
from abreast.workspace.repo import (
    Repo,
    base_name,
    carried_ref,
    commit_all,
    dirty_paths,
    head_commit,
    index_identity,
    keep_files,
    signal_ref,
    unfinished,
    unknown_base,
    worktree_git_dir,
)


def _too_large(large: list[tuple[str, int]], limit: int) -> str:
    """Why work that adds files larger than `merge.max_file_size` is sent back."""

    def mib(n: int) -> str:  # as the limit is written, and GitHub says its own
        return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n / (1 << 20):.1f} MiB"

    shown = ", ".join(f"{visible_name(path)} ({mib(size)})" for path, size in large[:5])
    more = f" and {len(large) - 5} more" if len(large) > 5 else ""
    return (
        f"its commits add a file larger than merge.max_file_size ({mib(limit)}): "
        f"{shown}{more}; nothing of it was merged (git hosts refuse such files in a push: "
        "GitHub above 100 MiB, and a file removed by a later commit is still in the "
        "history). Leave it out of the work (.gitignore, or a path outside the "
        "repository), track it with Git LFS, or raise merge.max_file_size"
    )


def integration_ref(run_id: str) -> str:
    return f"refs/heads/{integration_branch(run_id)}"


def recover_result(root: Path, journal: Journal, run_id: str) -> str | None:
    """Before a run is resumed: its result branch, if it is gone (`abreast cleanup
    --results`, `git branch -D`) after tasks' work landed on it, put back (journaled
    first) at the last landing the journal holds, so that the run does not go on from its
    base without that work, and say so; None when nothing was missing. A UsageError when
    that commit is gone too."""
    repo = Repo(root)
    ref = integration_ref(run_id)
    if repo.rev_parse(ref) is not None:
        return None
    landed = journal.events(run_id, types=("merge.landed",))
    if not landed:
        return None  # nothing landed: the branch is made again at the run's base
    commit = str(landed[-1].data.get("commit") or "")
    tasks = ", ".join(sorted({e.task_id for e in landed if e.task_id}))
    branch = integration_branch(run_id)
    if not commit or repo.rev_parse(commit) is None:
        raise UsageError(
            f"the result branch {branch} of run {run_id} is gone, and so is the commit the "
            f"work of its tasks ({tasks}) last landed on ({commit[:12] or 'unknown'})",
            hint="going on from the run's base would lose that work; start a new run with "
            "`abreast run`",
        )
    journal.stage_event(run_id, "result.restored", commit=commit, branch=branch)
    journal.commit()
    if not repo.update_ref(ref, commit, None):
        raise UsageError(f"could not put back {branch} at {commit[:12]}")
    return (
        f"the result branch {branch} was gone (`abreast cleanup --results`, or deleted by "
        f"hand); put back at {commit[:12]}, where the work of {tasks} last landed"
    )


def task_branch(run_id: str, task_id: str) -> str:
    return f"abreast/{run_id}/{task_id}"


@dataclass
class _Attempt:
    task_id: str
    attempt: int
    base: str
    path: Path
    started: float = field(default_factory=time.time)
    ended: float | None = None
    head: str | None = None
    own_repos: bool = False  # made git repositories inside its worktree (sent back for it)
    no_carry: bool = False  # its work is not handed to its next attempt (it held a secret)
    broken: bool = False  # its `.git` replaced by something git cannot repair: never reused
    index: tuple[int, int, int] | None = None  # its index file as handed to the attempt
    released: bool = False  # given back to the pool once its work was committed
    # When `base` is a start made for it (the integration head with the signal snapshots of
    # tasks it waited for merged in): that integration head, which its work is replayed onto,
    # and the tasks whose snapshots it took (its work lands after theirs).
    onto: str | None = None
    took: list[str] = field(default_factory=list)


class WorktreeIsolation(Isolation):
    instant = False

    def __init__(
        self,
        wf: Workflow,
        location: StateLocation,
        run_id: str,
        journal: Journal,
        graph: TaskGraph,
        *,
        base_commit: str | None = None,
        land: bool = False,
        hold: LockHolder | None = None,
        base_env: dict[str, str] | None = None,
        secrets: Callable[[], list[tuple[str, str]]] | None = None,
        masked: list[tuple[str, str]] | None = None,
        landing_only: bool = False,
        base_branch: str | None = None,
    ) -> None:
        """`landing_only`: for `abreast land`, no attempt is started (nothing probed for
        them)."""
        super().__init__(location.root)
        self.wf = wf
        self.run_id = run_id
        self.journal = journal
        self.repo = Repo(location.root)
        self.land = land
        # Once the result was merged with what base gained since the run started: (where
        # base was, how many commits it gained, the run that had landed its result there)
        self.caught_up: tuple[str, int, str | None] | None = None
        self.rechecked = ""  # `abreast land`: commits made on the result since, checked
        self.secrets = secrets  # (fingerprint, value) of the run's API keys
        self.ref = integration_ref(run_id)
        # As journaled when the run started (HEAD may be on another branch by now).
        self.base_name = base_branch or base_name(self.repo, wf.base)
        self.unlanded = False
        existing = self.repo.rev_parse(self.ref)
        if existing is None:
            start = base_commit or self.repo.rev_parse(wf.base)
            if start is None:
                raise unknown_base(self.repo, wf.base)
            if not self.repo.update_ref(self.ref, start, None):
                raise UsageError(f"could not create {self.ref}")
            self.base_commit = existing = start
        else:
            self.base_commit = base_commit or existing
        # After a crash: worktrees of attempts that may have ended with work to take in are
        # not handed to new tasks.
        reserved = {
            Path(a.workdir)
            for a in journal.attempts(run_id)
            if a.workdir and not a.head_commit and a.state not in ("failed", "interrupted")
        }
        self.subs = submodules.populated(self.repo)
        env = self._env = base_env if base_env is not None else dict(os.environ)
        # Editable installs of the checkout's own packages: tasks import the worktree's.
        # (those in the repository's files: not a link tree under an ignored build/)
        self.python_sources = (
            [
                rel
                for rel in pyenv.editable_sources(self.repo.root, env)
                if rel == "." or self.repo.has_path(self.base_commit, rel)
            ]
            if wf.worktrees.pythonpath
            else []
        )
        # Workspace packages the checkout's node_modules links: each worktree its own.
        self.node_links = provision.workspace_links(self.repo) if wf.worktrees.node_links else []
        # A go.work of the checkout's own, which `go` in a worktree would find: said.
        self.go_work = provision.go_work_unseen(self.repo, list(wf.worktrees.copy))
        provided = None
        if self.subs or wf.worktrees.copy or wf.worktrees.keep or self.node_links:
            provided = Provision(
                self.repo.root,
                self.subs,
                list(wf.worktrees.copy),
                list(wf.worktrees.keep),
                self.node_links,
            )
        self.pool = WorktreePool(self.repo, run_id, "tasks", reserved, provided)
        self.check_pool = WorktreePool(self.repo, run_id, "checks", provided=provided)
        self.guard = Guard(
            self.repo, location.journal.parent, [s.store for s in self.subs], self.run_id
        )
        if wf.containment.main_checkout == "protect" and not landing_only:
            self.sandbox = self._protection(location)
        self._began = time.time()
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._blamed: dict[tuple[str, int], list[Change]] = {}
        self._landed: list[str] = []
        self._carried: dict[tuple[str, int], str] = {}  # what an attempt is told it carries
        self._kept: list[Path] = []
        ids = list(wf.tasks)
        # task -> [(task it waits for a signal of, signal)]
        self._signal_waits: dict[str, list[tuple[str, str]]] = {}
        for (u, v), signal in graph.signal_waits.items():
            self._signal_waits.setdefault(ids[v], []).append((ids[u], signal))
        self._landed_before: set[str] = set()
        # Tasks that reached their final state: a task started with one's snapshot lands
        # only after it (or once it failed), so that the checks see the files it used.
        self._ended: dict[str, asyncio.Event] = {}
        self.queue_aborted = False
        self._phase: dict[str, str] = {}  # task -> what its merge waits for, before the queue
        if self._signal_waits:  # after a crash: tasks whose own work is on the branch now
            events = journal.events(run_id, types=("merge.landed",))
            self._landed_before = {e.task_id for e in events if e.task_id is not None}
            for t in journal.tasks(run_id):  # a cancelled task runs again on resume
                if t.state in TERMINAL and t.state != TaskState.CANCELLED:
                    self._ended_event(t.task_id).set()
        self._neighbours: dict[str, list[tuple[str, list[str]]]] = {}
        owners = [(v, t) for v, t in enumerate(wf.tasks.values()) if t.owns]
        for v, task in enumerate(wf.tasks.values()):
            if not task.owns:
                self._neighbours[task.id] = [
                    (ids[u], list(o.owns)) for u, o in owners if u != v and not graph.ordered(u, v)
                ]
        self._owns = {t.id: list(t.owns) for t in wf.tasks.values() if t.owns}
        run_dir = location.run_dir(run_id)
        self.queue = MergeQueue(
            self.repo,
            self.ref,
            run_id,
            journal,
            list(wf.checks),
            self.check_pool,
            check_env(env, run_id, location.coord_url),
            run_dir / "checks",
            hold or LocalLocks().hold,
            path_env=lambda path: self.env_for(str(path)),
            batch=wf.merge.batch,
            max_log=wf.logs.max_size,
            quiet_s=wf.heartbeat.orphan_after,
            why_failed=self.why_failed,
            masked=masked,
            put_back=self._put_back,
            warn=self.warn,
        )
        self.queue.last_head = existing  # where the integration head is at the start

    def _protection(self, location: StateLocation) -> tuple[str, ...]:
        """`containment: {main_checkout: protect}`: what starts each attempt with the
        checkout read-only to it (its git directory and abreast's state writable), once a
        probe shows it works here; else () and a warning (writes are found after each
        attempt, as with `fail`)."""
        from abreast.executor import protect

        state = location.journal.parent
        keep = [self.repo.root / ".git", self.repo.common_dir, state, location.run_dir(self.run_id)]
        argv = protect.prefix(self.repo.root, keep)
        why = "there is no `unshare` (util-linux) here" if argv is None else protect.probe(argv)
        if argv is None or why is not None:
            said = (
                f"containment: main_checkout: protect cannot keep tasks from writing in your "
                f"checkout here ({why}: unprivileged user namespaces may be off); what they "
                "write there is found after each attempt instead, as with `fail`"
            )
            self.journal.stage_event(self.run_id, "run.warning", None, warning=said)
            self.warn(said)
            return ()
        return argv

    # -- before an attempt -------------------------------------------------------------------

    def env_for(self, workdir: str) -> dict[str, str]:
        return pyenv.env_for(Path(workdir), self.python_sources, self._env)

    def bounds(self, task_id: str) -> str:
        own = self._owns.get(task_id)
        if own:
            return (
                f"Change only files matching {_patterns(own)}: other tasks run beside this "
                "one, and an attempt that changes any other file is sent back."
            )
        neighbours = self._neighbours.get(task_id, [])
        if not neighbours:
            return ""
        theirs = "; ".join(f"{_patterns(pats)} (task {tid}'s)" for tid, pats in neighbours[:20])
        if len(neighbours) > 20:
            theirs += f"; and what {len(neighbours) - 20} more tasks own"
        return (
            f"Do not change files matching {theirs}: tasks that run beside this one own them, "
            "and an attempt that changes them is sent back."
        )

    def why_failed(self, workdir: str, command: str) -> list[str]:
        found = provision.missing_in_worktree(command, self.repo.root, Path(workdir))[:3]
        skip = provision.ignored(self.repo, [p for p, kind in found if kind == "absent"])
        out = []
        for path, kind in found:
            said = kind
            if path in skip:
                said = "ignored"
            elif kind == "absent" and self.repo.has_path("HEAD", path):
                said = "later"  # committed in the checkout since the run started
            out.append(provision.unseen_text(path, said, self.base_commit, self.repo.root))
        return out

    def _put_back(self, commit: str) -> None:
        """The integration branch was found deleted during the run: put it back (journaled
        first, as `resume` does) at `commit`, where it was last seen, and say so."""
        if self.repo.rev_parse(commit) is None:
            return
        branch = integration_branch(self.run_id)
        said = (
            f"the run's integration branch {branch} was deleted while it ran; put back at "
            f"{commit[:12]}, where it was last seen (delete it after the run, or "
            "`abreast cleanup --results`)"
        )
        self.journal.stage_event(
            self.run_id,
            "result.restored",
            commit=commit,
            branch=branch,
            during_run=True,
            warning=said,
        )
        self.journal.commit()
        if self.repo.update_ref(self.ref, commit, None):
            self.warn(said)

    async def prepare(self, task_id: str, attempt: int) -> Path:
        found = await self.queue.head()
        if found is None:
            raise RuntimeError(f"the integration branch {self.ref} is gone")
        base = found[0]
        start, onto = base, None
        waits = [
            (dep, signal)
            for dep, signal in self._signal_waits.get(task_id, [])
            if dep not in self._landed_before and dep not in self._landed
        ]
        took: list[str] = []
        if waits:
            start, took = await asyncio.to_thread(self._start_with_snapshots, task_id, base, waits)
            onto = base if took else None
        fresh = not self.pool._idle
        path = await asyncio.to_thread(self.pool.acquire, task_branch(self.run_id, task_id), start)
        if fresh:
            self.guard.note_new_worktree_config()
        self._attempts[(task_id, attempt)] = _Attempt(
            task_id, attempt, start, path, onto=onto, took=took, index=index_identity(path)
        )
        self.journal.stage_attempt(
            self.run_id, task_id, attempt, base_commit=start, workdir=str(path)
        )
        if attempt > 1 and self.wf.tasks[task_id].carry_work:
            said = await asyncio.to_thread(self._carry, task_id, attempt, start, path)
            if said:
                self._carried[(task_id, attempt)] = said
        return path

    def carried(self, task_id: str, attempt: int) -> str:
        return self._carried.pop((task_id, attempt), "")

    def _keep_for_next(self, a: _Attempt) -> None:
        """Keep the work of attempt `a`, which did not land, for its task's next attempt
        (`carry_work`): its commit if its work was committed (a red check, a conflict),
        else a snapshot of its worktree's files (it failed, timed out, missed its gate, was
        cancelled), under a ref of the run's: it outlives the orchestrator, for a
        `resume` (`--retry-failed`) to carry on from."""
        ref = carried_ref(self.run_id, a.task_id, a.attempt)
        older = list(self.repo.refs(carried_ref(self.run_id, a.task_id)))
        self.repo.delete_refs([r for r in older if r != ref])
        if a.head is not None:
            if not a.no_carry:
                self.repo.git("update-ref", ref, a.head)
        elif not a.released and not a.broken:
            keep_files(a.path, self.run_id, a.task_id, a.attempt)

    def _carry(self, task_id: str, attempt: int, start: str, path: Path) -> str:
        """Put the last attempt's work, kept by `_keep_for_next`, in the worktree at `path`
        (at `start`) as uncommitted changes, merged with what landed since it started;
        what the attempt is told of it ("" when there is none)."""
        kept = self.repo.refs(carried_ref(self.run_id, task_id))
        if not kept:
            return ""
        n, work = max((int(ref.rsplit("/", 1)[1]), commit) for ref, commit in kept.items())
        merged = self.repo.merge_tree(start, work)
        said: dict[str, Any] = {"attempt": attempt, "from_attempt": n, "commit": work}
        since = self.repo.merge_base(start, work) or start  # where that work began
        shows = f"`git diff {since[:12]} {work[:12]}` shows that work"
        if not merged.clean:
            shown = listed(merged.conflicts, 20, visible_name)
            self.journal.stage_event(
                self.run_id,
                "work.carried",
                task_id,
                carried=False,
                conflicts=merged.conflicts[:100],
                **said,
            )
            return (
                f"The work of attempt {n} was not carried over: it conflicts with what "
                f"landed since it started, in: {shown}. This attempt starts from the current "
                f"integration head; {shows}"
            )
        files = self.repo.changed_paths(start, merged.tree)
        if not files:
            return ""
        # Its files become the merged tree's; the index stays HEAD's: the work shows as
        # uncommitted changes (`git status`, `git diff`), as an agent left it.
        try:
            self.repo.git("read-tree", "-m", "-u", "HEAD", merged.tree, cwd=path)
            self.repo.git("reset", "-q", cwd=path)
        except GitError as e:  # the attempt starts afresh rather than not at all
            self.repo.git("reset", "-q", "--hard", "HEAD", cwd=path, check=False)
            self.repo.git("clean", "-q", "-ffd", cwd=path, check=False)  # not ignored ones
            return (
                f"The work of attempt {n} could not be put in its worktree ({e}); this "
                f"attempt starts from the integration head; {shows}"
            )
        self.journal.stage_event(
            self.run_id, "work.carried", task_id, carried=True, files=len(files), **said
        )
        return (
            f"This attempt starts with the work of attempt {n}, uncommitted in its worktree "
            f"({counted(len(files), 'file')} changed: `git status` and `git diff` show it): "
            "build on it rather than start over"
        )

    def _start_with_snapshots(
        self, task_id: str, base: str, waits: list[tuple[str, str]]
    ) -> tuple[str, list[str]]:
        """The integration head with the files each awaited task had when it signalled (it
        has not landed yet), merged in: a task started on `needs: [api:ready]` sees what
        api had written. A snapshot that does not merge cleanly is left out. Returns the
        start and the tasks whose snapshots it took."""
        start, took = base, []
        for dep, signal in waits:
            snap = self.repo.rev_parse(signal_ref(self.run_id, dep, signal))
            if snap is None:
                continue  # signalled by a task not in a worktree, or by an older abreast
            merged = self.repo.merge_tree(start, snap)
            if merged.clean:
                start = self.repo.commit_tree(
                    merged.tree,
                    [start, snap],
                    f"abreast: {task_id} starts with {dep}'s files at its signal {signal!r}",
                )
                took.append(dep)
        return start, took

    def _onto(self, task_id: str, start: str) -> str | None:
        """After a crash: the integration head a start made with snapshots was made from
        (None when `start` is on the integration branch itself)."""
        if task_id not in self._signal_waits or self.repo.is_ancestor(start, self.ref):
            return None
        first_parents = self.repo.git("rev-list", "--first-parent", start).stdout.split()
        return next((c for c in first_parents[1:] if self.repo.is_ancestor(c, self.ref)), None)

    # -- after a successful attempt ----------------------------------------------------------

    async def settle(self, task_id: str, attempt: int) -> Verdict | None:
        a = self._attempts.get((task_id, attempt)) or self._recover(task_id, attempt)
        if a is None:
            return None  # resumed after a crash with its commit journaled: straight to merge
        a.ended = a.ended or time.time()
        blamed = await self._containment(a)
        if blamed:
            return Verdict(Outcome.SEND_BACK, blamed, kind="containment")
        if self.subs:
            inside = await asyncio.to_thread(submodules.uncommitted, self.repo, a.path, self.subs)
            if inside:
                return Verdict(Outcome.SEND_BACK, _uncommitted_inside(inside), kind="submodule")
        if not a.path.is_dir():
            a.broken = True
            return Verdict(
                Outcome.SEND_BACK,
                f"deleted its worktree: the directory it ran in ({a.path}) is gone, and its "
                "work with it (`rm -rf` of its working directory?); nothing of it was merged. "
                "An agent must not remove the directory it runs in",
                kind="containment",
            )
        if not await asyncio.to_thread(self._git_file_sound, a.path):
            a.broken = True
            return Verdict(
                Outcome.SEND_BACK,
                "replaced its worktree's `.git` file (with a repository of its own: `git "
                "init`?), so git cannot read its work there; nothing of it was merged. Leave "
                "`.git` at the worktree's root as it is: it points git at the repository",
                kind="containment",
            )
        await asyncio.to_thread(self._drop_stale_locks, a)
        half_done = await asyncio.to_thread(unfinished, self.repo, a.path, a.index)
        if half_done:
            return Verdict(Outcome.SEND_BACK, half_done, kind="unfinished")
        summary = self._summary(task_id)
        message = commit_message(f"abreast: {task_id}", summary, self.run_id, attempt)
        # Its HEAD where it started (no commit of its own): what is committed now descends
        # from its start, and git need not be asked.
        before = await asyncio.to_thread(head_commit, self.repo, a.path)
        untouched = before == a.base
        try:
            head = await asyncio.to_thread(commit_all, self.repo, a.path, message)
        except GitError:  # `git add` refuses a repository without a commit inside
            found = await asyncio.to_thread(submodules.own_repos, self.repo, a.path)
            if found:
                a.own_repos = True
                text = submodules.own_repos_text(found)
                return Verdict(Outcome.SEND_BACK, text, kind="submodule")
            raise
        rewritten = not untouched and not await asyncio.to_thread(
            self.repo.is_ancestor, a.base, head
        )
        if rewritten:
            # Its agent reset, rebased, amended or orphaned below the commit it started
            # from. Its work is what its files say, as for what it left uncommitted: the
            # tree it left, on that commit. (Merging its history instead dropped what a
            # reset undid, and one with no history in common could not be merged at all.)
            head = await asyncio.to_thread(
                self.repo.commit_tree, f"{head}^{{tree}}", [a.base], message
            )
        # Its work is what it changed since the newest of the run's landed work it holds: an
        # agent that merged (or rebased onto) the integration branch to work on the latest
        # brought other tasks' files, which are not its own.
        since = a.base
        if not untouched and not rewritten and a.onto is None:
            since = await asyncio.to_thread(self._landed_in, a.base, head)
        changed, added, deleted = await asyncio.to_thread(self.repo.diff_numstat, since, head)
        left = await asyncio.to_thread(self._generated, task_id, since, changed)
        if left:
            # Made by abreast (its commit of what was left, or the one above): made again
            # without them; the agent's own commit: one on top that takes them out.
            parents = [a.base] if rewritten else [before] if before and head != before else [head]
            tree = await asyncio.to_thread(self.repo.tree_without, head, list(left))
            head = await asyncio.to_thread(self.repo.commit_tree, tree, parents, message)
            warning = generated.said(task_id, left)
            self.journal.stage_event(
                self.run_id,
                "work.left_out",
                task_id,
                attempt=attempt,
                paths=dict(list(left.items())[:100]),
                warning=warning,
            )
            self.warn(warning)
            changed, added, deleted = await asyncio.to_thread(self.repo.diff_numstat, since, head)
        a.head = head
        if a.onto is None:
            self.journal.stage_attempt(self.run_id, task_id, attempt, head_commit=head)
        self.journal.stage_event(  # what the attempt changed, for the report
            self.run_id,
            "work.committed",
            task_id,
            attempt=attempt,
            commit=head,
            files=len(changed),
            added=added,
            deleted=deleted,
            since=since if since != a.base else None,
        )
        limit = self.wf.merge.max_file_size
        large = await asyncio.to_thread(self.repo.large_files, since, head, limit) if limit else []
        if large:
            return Verdict(Outcome.SEND_BACK, _too_large(large, limit), kind="large_file")
        if self.secrets is not None:
            leaked = await asyncio.to_thread(self.repo.added_secrets, since, head, self.secrets())
            if leaked:
                a.no_carry = True
                shown = ", ".join(f"{visible_name(path)} (key {fp})" for path, fp in leaked[:10])
                return Verdict(
                    Outcome.SEND_BACK,
                    f"{KEY_IN_WORK}: {shown}; nothing of it was "
                    "merged. Keep keys out of files: read them from the environment",
                    kind="secret",
                )
        found = await asyncio.to_thread(submodules.own_repos, self.repo, a.path, changed)
        if found:
            a.own_repos = True
            return Verdict(Outcome.SEND_BACK, submodules.own_repos_text(found), kind="submodule")
        links = await asyncio.to_thread(symlinks_out, a.path, changed)
        if links:
            return Verdict(
                Outcome.SEND_BACK,
                "left symlinks pointing outside its worktree: "
                + ", ".join(map(visible_name, links)),
                kind="containment",
            )
        task = self.wf.tasks[task_id]
        bad = violations(changed, task.owns, self._neighbours.get(task_id, []))
        if bad:
            # The first line says it whole (the live view and plain lines show only it).
            first, shown = _listed(bad)
            why = (
                "\n  (its HEAD left the commit it started from — a `git reset`, rebase or "
                "amend below it — so its files undo what that history held)"
                if rewritten
                else ""
            )
            return Verdict(
                Outcome.SEND_BACK,
                f"changed files it does not own: {first}\n  {shown}{why}",
                kind="ownership",
            )
        if rewritten and not task.owns and before is not None:
            undone = await asyncio.to_thread(self._undone, before, a.base, head)
            if undone:
                return Verdict(Outcome.SEND_BACK, _undid(undone, a.base), kind="ownership")
        if self.subs:  # commits it moved submodules to: where the checks can check them out
            await asyncio.to_thread(submodules.keep_commits, self.repo, a.path, self.subs, changed)
        if a.onto is not None:
            # Its work without the snapshots it started with: those land with their tasks.
            replayed = await asyncio.to_thread(self.repo.replay, a.onto, a.base, head, message)
            commit, conflicts = replayed
            if commit is None:
                return Verdict(
                    Outcome.SEND_BACK,
                    "changed files it was started with from a signal of a task it waits for: "
                    + ", ".join(map(visible_name, conflicts[:20]))
                    + "\nthose land with that task; leave them to it",
                    kind="ownership",
                )
            a.head = commit
            self.journal.stage_attempt(self.run_id, task_id, attempt, head_commit=a.head)
        # The merge needs only commits: the worktree can serve the next task meanwhile.
        self.pool.release(a.path, clean=True)
        a.released = True
        return None

    def _undone(self, before: str, base: str, head: str) -> list[str]:
        """Files of the work an attempt started with that its history rewound undid: its
        HEAD (`before`, what it left committed) went back below `base`, the commit it
        started from, and `head` (the tree it left) has them as they were there, not as
        `base` has them. (With `owns:`, the ownership check says it instead; an orphan's
        history shares none to go back to.)"""
        back = self.repo.merge_base(before, base)
        if back is None or back == base:
            return []
        rewound = set(self.repo.changed_paths(back, base))
        if not rewound:
            return []
        kept = set(self.repo.changed_paths(back, head))  # changed since: its own doing
        return sorted(p for p in set(self.repo.changed_paths(base, head)) & rewound - kept)

    def _landed_in(self, base: str, head: str) -> str:
        """The newest commit of the integration branch that `head` (a descendant of `base`,
        where the attempt started) holds: `base`, unless its agent merged or rebased onto
        work that landed after it started."""
        now = self.repo.rev_parse(self.ref)
        found = self.repo.merge_base(head, now) if now and now != base else None
        return found if found and found != base and self.repo.is_ancestor(base, found) else base

    def _generated(self, task_id: str, base: str, changed: list[str]) -> dict[str, int]:
        """What of `changed` tools generated and the task's work should not land (see
        `generated`): neither named by its owns nor already in `base`."""
        found = generated.roots(changed)
        owns = self.wf.tasks[task_id].owns
        found = {root: n for root, n in found.items() if not generated.owned(root, owns)}
        if found:
            there = self.repo.existing(base, list(found))
            found = {root: n for root, n in found.items() if root not in there}
        return found

    def _git_file_sound(self, path: Path) -> bool:
        """Whether the worktree's `.git` file points at its git dir, put back first when
        the attempt deleted it (`git worktree repair`, which knows the way from the git dir
        back to the worktree): its work is still all in its files."""
        gitfile = path / ".git"
        if not os.path.lexists(gitfile):
            self.repo.git("worktree", "repair", str(path), check=False)
        try:
            return gitfile.is_file() and (worktree_git_dir(path) / "HEAD").is_file()
        except (OSError, IndexError):
            return False

    def _drop_stale_locks(self, a: _Attempt) -> None:
        """Remove the `*.lock` files a git process of the attempt left in its worktree's git
        dir and on its branch (`index.lock`: one killed mid-write, when its tree was ended)
        that no process holds open: else taking its work in fails with git's "Unable to
        create index.lock: File exists"."""
        from abreast.workspace.repair import unheld

        refs = self.repo.common_dir / "refs" / "heads" / task_branch(self.run_id, a.task_id)
        found = [*worktree_git_dir(a.path).glob("*.lock"), refs.with_name(refs.name + ".lock")]
        for lock in unheld(found):
            with contextlib.suppress(OSError):
                lock.unlink()

    def _recover(self, task_id: str, attempt: int) -> _Attempt | None:
        """An attempt that ended while no orchestrator watched: its work is still in its
        worktree, uncommitted. Claim the worktree back from the pool and settle it."""
        row = next(
            (r for r in self.journal.attempts(self.run_id, task_id) if r.attempt == attempt), None
        )
        if row is None or row.head_commit or not row.workdir or not row.base_commit:
            return None
        path = Path(row.workdir)
        if not path.exists():
            return None
        self.pool.take_back(path)
        self.pool.claim(path)
        onto = self._onto(task_id, row.base_commit)
        a = _Attempt(
            task_id,
            attempt,
            row.base_commit,
            path,
            started=row.started_at or 0.0,
            ended=row.ended_at or time.time(),
            onto=onto,
            took=[dep for dep, _ in self._signal_waits.get(task_id, [])] if onto else [],
        )
        self._attempts[(task_id, attempt)] = a
        return a

    async def integrate(self, task_id: str, attempt: int) -> Verdict:
        a = self._attempts.get((task_id, attempt))
        if a is None or a.head is None:
            return await self._integrate_resumed(task_id, attempt)
        refused = await self._after(task_id, a.took)
        if refused is not None:
            return refused
        job = MergeJob(task_id, attempt, a.base, a.head, self._summary(task_id))
        verdict = await self.queue.submit(job)
        if verdict.outcome is Outcome.LANDED:
            self._landed.append(task_id)
        return verdict

    async def _integrate_resumed(self, task_id: str, attempt: int) -> Verdict:
        row = next(
            (r for r in self.journal.attempts(self.run_id, task_id) if r.attempt == attempt), None
        )
        if row is None or not row.head_commit or not row.base_commit:
            return Verdict(Outcome.SEND_BACK, "its work was lost in a crash", kind="resume")
        if self._signal_waits.get(task_id) and self._onto(task_id, row.base_commit):
            refused = await self._after(task_id, [dep for dep, _ in self._signal_waits[task_id]])
            if refused is not None:
                return refused
        verdict = await self.queue.submit(
            MergeJob(task_id, attempt, row.base_commit, row.head_commit, self._summary(task_id))
        )
        if verdict.outcome is Outcome.LANDED:
            self._landed.append(task_id)
        return verdict

    def phase(self, task_id: str) -> str | None:
        return self._phase.get(task_id) or self.queue.phase.get(task_id)

    def _ended_event(self, task_id: str) -> asyncio.Event:
        return self._ended.setdefault(task_id, asyncio.Event())

    def task_ended(self, task_id: str) -> None:
        if self._signal_waits:
            self._ended_event(task_id).set()

    async def _after(self, task_id: str, deps: list[str]) -> Verdict | None:
        """Wait until the tasks whose snapshots `task_id` started with have ended (landed,
        failed, cancelled): its work lands after theirs, so that the checks on its merge
        see the files it was written against. If one ended without landing, that work
        cannot land either: the verdict that says so."""
        waiting = [d for d in deps if not self._ended_event(d).is_set()]
        if waiting:
            self.journal.stage_event(self.run_id, "merge.waiting", task_id, for_tasks=waiting)
            self.note(
                f"{task_id}: its work lands after {', '.join(waiting)}'s,"
                " whose files it started with"
            )
            self._phase[task_id] = f"lands after {', '.join(waiting)}"
            try:
                for d in waiting:
                    await self._ended_event(d).wait()
            finally:
                self._phase.pop(task_id, None)
        lost = [d for d in deps if d not in self._landed and d not in self._landed_before]
        if not lost or self.queue_aborted:
            return None
        return Verdict(
            Outcome.FAILED,
            f"upstream {', '.join(lost)} ended without landing; this task's work was written"
            " against their files at their signal, which will not land",
            kind="blocked",
        )

    def abort(self, grace_s: float) -> None:
        self.queue_aborted = True
        for event in self._ended.values():
            event.set()  # nothing waits for another task's landing once the run cancels
        self.queue.abort(grace_s)

    def can_resume_integration(self, task_id: str, attempt: int) -> bool:
        row = next(
            (r for r in self.journal.attempts(self.run_id, task_id) if r.attempt == attempt), None
        )
        return bool(
            row and row.head_commit and row.base_commit and self.repo.rev_parse(row.head_commit)
        )

    def _other_runs_output(self) -> set[tuple[int, int]]:
        """(device, inode) of the files the output of other runs of this journal went to,
        those running or ended since this one began (`abreast run a.yaml > a.log` beside
        this run, in the repository: written by nobody this run started, and closed once
        that run ended, so not seen held open)."""
        out: set[tuple[int, int]] = set()
        for row in self.journal.runs(50):
            if row.id == self.run_id or not row.options.get("output_files"):
                continue
            if row.state == "running" or (row.finished_at or 0) >= self._began - SLACK_S:
                out.update((int(dev), int(ino)) for dev, ino in row.options["output_files"])
        return out

    def _summary(self, task_id: str) -> str | None:
        task = self.wf.tasks.get(task_id)
        return task_summary(task.description, task.prompt) if task is not None else None

    async def _containment(self, a: _Attempt) -> str:
        """What this attempt is blamed for writing outside its worktree ("" if nothing).

        A change is blamed on every attempt that was running when it was written (by its
        mtime); each suspect hears of it when it, in turn, is integrated.
        """
        warn_only = self.wf.containment.main_checkout == "warn"
        changes: list[Change] = await asyncio.to_thread(self.guard.check_repo_files)
        others = self._other_runs_output()
        changes += await asyncio.to_thread(self.guard.check_main_checkout, others)
        changes += await asyncio.to_thread(self.guard.check_stash, not warn_only)
        changes += await asyncio.to_thread(self.guard.check_refs, not warn_only)
        now = time.time()
        for c in changes:
            suspects = [
                x
                for x in self._attempts.values()
                if x.started - SLACK_S <= c.mtime <= (x.ended or now) + SLACK_S
            ]
            # Protected, no task could write in the checkout: a change there is the user's.
            theirs = bool(self.sandbox) and c.what == "main checkout"
            blamed = c.blame and not (warn_only and c.what in YOURS) and not theirs
            warning = None if blamed or theirs else _warning(c, suspects)
            said: dict[str, Any] = {"detail": c.detail} if c.detail else {}
            if warning:
                said["warning"] = warning
            self.journal.stage_event(
                self.run_id,
                "containment.violation",
                a.task_id,
                what=c.what,
                path=c.path,
                suspects=[f"{x.task_id}.{x.attempt}" for x in suspects],
                blamed=blamed,
                **said,
            )
            if warning:
                self.warn(warning)
            if not blamed:
                continue
            for x in suspects:
                self._blamed.setdefault((x.task_id, x.attempt), []).append(c)
        mine = self._blamed.pop((a.task_id, a.attempt), [])
        if not mine:
            return ""
        lines = list(dict.fromkeys(_said(c) for c in mine))  # a file changed again: once
        hint = ""
        if any(c.what in YOURS for c in mine):
            hint = (
                "\n(if you changed these yourself during the run, set `containment:"
                " {main_checkout: protect}` in the workflow file: tasks then cannot write in"
                " your checkout, so what changes there is yours; or `warn`, to be told only)"
            )
        return (
            "wrote outside its worktree while it ran, so nothing of it was merged:\n  "
            + "\n  ".join(lines)
            + hint
        )

    # -- after an attempt's fate is known ------------------------------------------------------

    def finished(self, task_id: str, attempt: int, *, keep: bool) -> None:
        a = self._attempts.pop((task_id, attempt), None)
        if a is None:
            return
        if task_id not in self._landed and self.wf.tasks[task_id].carry_work:
            self._keep_for_next(a)
        if keep or a.broken:
            # Evidence: the worktree if it is still ours (or idle in the pool), and always
            # the task's branch with its last commit. One whose `.git` its agent replaced
            # is never handed out again either (git would work on the agent's repository);
            # nor is one its agent deleted, and git forgets it (nothing is left to keep).
            if not a.released or self.pool.take_back(a.path):
                self.pool.keep(a.path)
                if a.path.is_dir():
                    self._kept.append(a.path)
                else:
                    self.repo.git("worktree", "prune", check=False)
        elif not a.released:
            self.pool.release(a.path, clean=a.head is not None, after_move=a.own_repos)

    async def close(self, *, success: bool) -> str | None:
        # With --land, what base gained since the run started is merged into the result
        # and checked first (the checks' worktrees are still there).
        refused = await self._catch_up() if success and self.land else None
        await self.queue.close()
        await asyncio.to_thread(self.pool.close)
        await asyncio.to_thread(self.check_pool.close)
        # Every task of the run that landed, before a crash or a cancel included: this
        # process knows only its own.
        events = self.journal.events(self.run_id, types=("merge.landed",))
        landed = {e.task_id for e in events if e.task_id is not None} | set(self._landed)
        gone = [f"refs/heads/{task_branch(self.run_id, task_id)}" for task_id in sorted(landed)]
        if self._signal_waits or any(t.carry_work for t in self.wf.tasks.values()):
            # Signal snapshots serve only while the run runs; a task's work kept for its
            # next attempt until the task lands (a `resume --retry-failed` carries it on).
            left = await asyncio.to_thread(self.repo.refs, f"refs/abreast/{self.run_id}/")
            gone += [
                r
                for r in left
                if not r.startswith(f"refs/abreast/{self.run_id}/carried/")
                or r.split("/")[4] in landed
            ]
        await asyncio.to_thread(self.repo.delete_refs, gone)
        found = await self.queue.head()
        branch = integration_branch(self.run_id)
        if found is None:  # deleted, and where it was is gone too
            head, ahead = "", 0
            lines = [f"result: none: the integration branch {branch} is gone"]
        else:
            head = found[0]
            since = self.caught_up[0] if self.caught_up else self.base_commit
            ahead = len(await asyncio.to_thread(self.repo.log_oneline, f"{since}..{head}", 100000))
            on = self.base_name if self.base_name != "HEAD" else f"{since[:12]} (a detached HEAD)"
            lines = [
                f"result: branch {branch} at {head[:12]}: {counted(len(landed), 'task')} landed,"
                f" {ahead} commit{'s' if ahead != 1 else ''} on top of {on}"
            ]
        if self._kept:
            lines.append(
                "kept for inspection (until `abreast cleanup`): "
                + ", ".join(str(p) for p in self._kept)
            )
        given_up = self.pool.given_up + self.check_pool.given_up
        if given_up:
            lines.append(
                "left aside, a process still working in it that abreast did not start or "
                "could not end (until `abreast cleanup`): " + ", ".join(map(str, given_up))
            )
        stashed = await asyncio.to_thread(self.guard.run_stashes, self.run_id)
        if stashed:
            for commit, message in stashed:  # journaled before they are taken off
                self.journal.stage_event(
                    self.run_id, "stash.taken", commit=commit, message=message[:500]
                )
            self.journal.commit()
            if not await asyncio.to_thread(self.guard.drop_run_stashes, self.run_id):
                stashed = []
        if stashed:
            lines.append(
                f"taken off your stash: {len(stashed)} entr{'ies' if len(stashed) > 1 else 'y'} "
                "the run's tasks left there ("
                + "; ".join(f"{m[:80]}: `git stash store {c[:12]}`" for c, m in stashed[:5])
                + (", ..." if len(stashed) > 5 else "")
                + " puts one back)"
            )
        if head:
            taken = await self._take_refs_of_the_work(head)
            if taken:
                lines.append(taken)
        tags = await asyncio.to_thread(self.guard.tags_on_yours, self.base_commit)
        if tags:
            named = ", ".join(f"{r.removeprefix('refs/tags/')} at {o[:12]}" for r, o in tags[:5])
            more = f" and {len(tags) - 5} more" if len(tags) > 5 else ""
            onto = f"`git tag -f NAME {branch}` moves it onto the result, " if head else ""
            lines.append(
                f"made while the run ran, on a commit of yours without the run's work: tag "
                f"{named}{more}; left as it is (if a task made it before its work was "
                f"committed, {onto}`git tag -d NAME` removes it)"
            )
        if not success:
            if self.land:
                partial = (
                    f" (`abreast land {self.run_id} --partial` brings in the work of the "
                    f"{counted(len(landed), 'task')} that landed)"
                    if landed and head
                    else ""
                )
                lines.append(f"not landed: the run did not succeed{partial}")
        elif not head:
            self.unlanded = self.land
        elif self.land:
            lines.append(await self._landing(refused, str(head)))
        elif ahead:
            gained, _ = await asyncio.to_thread(self._gained)
            moved = len(gained)
            land = f"abreast land {self.run_id}"
            if self.repo.rev_parse(f"refs/heads/{self.base_name}") is None:
                # A detached HEAD, a tag, a commit: no branch for `abreast land` to move.
                name = self.base_name
                what = "HEAD was detached" if name == "HEAD" else f"{name} is not a branch"
                lines.append(
                    f"bring it in: git merge {branch}   (where you want it: {what}, so "
                    f"abreast land has no branch to move; or `git branch NAME {branch}` names it)"
                )
            elif moved:
                # Named: one a task made in your checkout is otherwise taken for yours.
                named = listed([visible(c) for c in reversed(gained)], 3)
                lines.append(
                    f"bring it in: git merge {branch}   ({self.base_name} moved on since the "
                    f"run started, {counted(moved, 'commit')} ({named}): not a fast-forward; "
                    f"or `{land}`, which merges and checks them)"
                )
            else:
                lines.append(f"bring it in: git merge --ff-only {branch}   (or `{land}`)")
        return "\n  ".join(lines)

    async def _landing(self, refused: str | None, head: str) -> str:
        """The landing line: `refused` (why `_catch_up` did not land it), else what
        fast-forwarding `base` to `head` came to. Sets `unlanded`."""
        landing = refused if refused else await asyncio.to_thread(self._land, head)
        self.unlanded = landing.startswith("not landed")
        if self.rechecked and not self.unlanded:
            landing += f" (the result {self.rechecked}, checked)"
        if self.caught_up and not self.unlanded:
            _, n, other = self.caught_up
            landing += (
                f" (the result merged with {self.base_name}'s {counted(n, 'new commit')}"
                f"{', checked' if self.wf.checks else ''}"
                f"{f'; run {other} had landed its result there' if other else ''})"
            )
        return landing

    async def land_finished(self) -> str:
        """`abreast land RUN`: bring the result of a run that has ended in now, as `--land`
        would have at its end (what `base` gained since merged in and checked first); the
        landing line. The tasks' worktrees are left as they are (kept ones with them)."""
        try:
            refused = await self._catch_up()
            found = await self.queue.head()
            if found is None:
                self.unlanded = True
                return f"not landed: the result branch {integration_branch(self.run_id)} is gone"
            if refused is None and not self.caught_up:
                refused = await self._check_changed_result(found[0])
            return await self._landing(refused, found[0])
        finally:
            await self.queue.close()
            await asyncio.to_thread(self.check_pool.close)

    async def _check_changed_result(self, head: str) -> str | None:
        """A result branch with commits made on it since the run (a task's landing
        reverted after review, a fix by hand) is not what the checks were green on: they
        run on it as it is now. Why it is not landed, or None."""
        events = self.journal.events(self.run_id, types=("merge.landed", "result.caught_up"))
        last = events[-1].data if events else {}
        checked = str(last.get("moved_to") or last.get("commit") or "")
        if not self.wf.checks or not checked or checked == head:
            return None
        made = len(await asyncio.to_thread(self.repo.log_oneline, f"{checked}..{head}", 100000))
        # (Moved elsewhere, a reset: what it is now is all the same unchecked.)
        how = f"with {counted(made, 'commit')} made on it" if made else "moved"
        self.note(f"the result branch, {how} since the run: running the merge checks on it")
        result = await self.queue.check_result(head, "checking the result as it is now")
        if result is None:
            return "not landed: cancelled while the merge checks ran on the result"
        if not result.ok:
            return (
                f"not landed: the result branch, {how} since the run, fails the merge checks: "
                f"{result.detail.splitlines()[0]}; log: {result.log}; fix it there, then "
                f"`abreast land {self.run_id}`"
            )
        self.rechecked = f"{how} since the run"
        return None

    def _moved_on(self) -> tuple[int, str]:
        """How many commits `base` gained since the run started, when it only moved on
        (the commit the run started from still on it) and the result lacks them, and
        where `base` is; (0, "") otherwise."""
        commits, current = self._gained()
        return len(commits), current

    def _gained(self) -> tuple[list[str], str]:
        """`_moved_on`'s commits (`git log --oneline`, newest first) and where `base` is."""
        current = self.repo.rev_parse(f"refs/heads/{self.base_name}")
        head = self.repo.rev_parse(self.ref)
        if current is None or head is None or self.repo.is_ancestor(current, head):
            return [], ""
        if self.repo.is_ancestor(head, current):
            return [], ""  # it has the result already (merged by hand, or nothing landed)
        if not self.repo.is_ancestor(self.base_commit, current):
            return [], ""  # rewritten: `_land` says so
        return self.repo.log_oneline(f"{head}..{current}", 100000), current

    async def _catch_up(self) -> str | None:
        """`--land`, and `base` moved on since the run started (your commits, a
        teammate's, another run's landing): merge them into the result and run the merge
        checks on that, as on each task's merge, so that `base` can be fast-forwarded to
        it. Journaled before the result branch moves. Returns why it is not landed (the
        landing line), or None: done, or nothing to do (or nothing this can do: `_land`
        says why)."""
        found = await self.queue.head()
        moved, current = await asyncio.to_thread(self._moved_on)
        if found is None or not moved:
            return None
        head = found[0]
        branch = integration_branch(self.run_id)
        other = landed_by(self.repo, current, self.run_id)
        by = f"; run {other} landed its result there" if other else ""
        them = f"{self.base_name}'s {counted(moved, 'new commit')}"
        said = f"{self.base_name} moved on since the run started ({counted(moved, 'commit')}{by})"
        merge = await asyncio.to_thread(self.repo.merge_tree, head, current)
        if not merge.clean:
            files = listed(merge.conflicts, 5, visible_name)
            return (
                f"not landed: {said}, and {'it conflicts' if moved == 1 else 'they conflict'} "
                f"with the result in {files}; bring both in: git merge {branch}, and resolve "
                f"(or merge {self.base_name} into the result branch, resolve there, and "
                f"`abreast land {self.run_id}`, which checks it)"
            )
        message = f"abreast: land run {self.run_id} on {self.base_name}\n\nrun {self.run_id}"
        new = await asyncio.to_thread(self.repo.commit_tree, merge.tree, [current, head], message)
        check_s = 0.0
        if self.wf.checks:
            self.note(f"{said}: running the merge checks on the result merged with {them}")
            result = await self.queue.check_result(new, f"checking the result merged with {them}")
            if result is None:
                return (
                    "not landed: cancelled while the merge checks ran on the result merged "
                    f"with {them}"
                )
            if not result.ok:
                return (
                    f"not landed: {said}, and the result merged with {them} fails the merge "
                    f"checks: {result.detail.splitlines()[0]}; log: {result.log}; fix it (on "
                    f"{self.base_name}, or on the result branch {branch}), then "
                    f"`abreast land {self.run_id}`"
                )
            check_s = result.ran_s
        self.journal.stage_event(
            self.run_id,
            "result.caught_up",
            base=current,
            old=head,
            commit=new,
            commits=moved,
            check_s=check_s,
        )
        self.journal.commit()  # the decision is durable before the branch moves
        if not await asyncio.to_thread(self.repo.update_ref, self.ref, new, head):
            return f"not landed: the result branch {branch} moved while it was merged with {them}"
        self.queue.last_head = new
        self.caught_up = (current, moved, other)
        return None

    async def _take_refs_of_the_work(self, head: str) -> str:
        """Remove the branches and tags the run's tasks made on their work, which the
        result holds (journaled first, each with how to put it back); what to say."""
        found = await asyncio.to_thread(self.guard.refs_of_the_work, self.base_commit, head)
        if not found:
            return ""
        for ref, sha in found:
            self.journal.stage_event(self.run_id, "ref.taken", ref=ref, commit=sha)
        self.journal.commit()
        taken = []
        for ref, sha in found:
            gone = await asyncio.to_thread(self.repo.git, "update-ref", "-d", ref, sha, check=False)
            if gone.returncode == 0:
                taken.append((ref, sha))
        if not taken:
            return ""

        def name(ref: str) -> str:
            kind, _, short = ref.removeprefix("refs/").partition("/")
            return f"{'branch' if kind == 'heads' else 'tag'} {short}"

        more = f" and {len(taken) - 5} more" if len(taken) > 5 else ""
        back = ", ".join(f"`git update-ref {ref} {sha[:12]}`" for ref, sha in taken[:5])
        return (
            f"removed what the run's tasks made on their work, which the result holds: "
            f"{', '.join(name(ref) for ref, _ in taken[:5])}{more} ({back} put"
            f"{'s it' if len(taken) == 1 else ' them'} back)"
        )

    def _land(self, head: str) -> str:
        """Fast-forward `base` to the result, when that is possible; say why not otherwise."""
        ref = f"refs/heads/{self.base_name}"
        current = self.repo.rev_parse(ref)
        if current is None:
            return f"not landed: base {self.base_name!r} is not a branch"
        if self.repo.is_ancestor(head, current):  # merged by hand since, say
            return f"{self.base_name} already has the result"
        if not self.repo.is_ancestor(self.base_commit, current):
            return (
                f"not landed: {self.base_name} was rewritten since the run started (the "
                f"commit it started from, {self.base_commit[:12]}, is no longer on it: an "
                "amend, a rebase, a forced push?), and merging would bring that commit back; "
                f"bring both in, if you mean to: git merge {integration_branch(self.run_id)}"
            )
        if not self.repo.is_ancestor(current, head):
            other = landed_by(self.repo, current, self.run_id)
            by = f" (run {other} landed its result there)" if other else ""
            return (
                f"not landed: {self.base_name} moved since the run started{by} and is not "
                f"an ancestor of the result; bring both in: git merge "
                f"{integration_branch(self.run_id)}"
            )
        # Checked out in your checkout or in another worktree of yours: its files must move
        # with it (moving the branch alone would leave them as they were, the work showing
        # there as undone), so it is merged there.
        where = self.repo.checked_out_at(ref)
        if where is not None:
            there = "" if where.resolve() == self.repo.root.resolve() else f" in {where}"
            # (What to run once it is put right: `abreast land` lands the result even if
            # base has moved on by then, by a commit of those changes, say.)
            merge = f"`abreast land {self.run_id}`"
            # Uncommitted changes to files the result leaves alone go along, as with git's
            # own fast-forward; those to files it changes would be lost or refused.
            dirty = dirty_paths(self.repo, where, untracked=False)
            clash = sorted(set(dirty) & set(self.repo.changed_paths(current, head)))
            if clash:
                named = listed(clash, 5, visible_name)
                return (
                    f"not landed: {self.base_name} is checked out{there} with uncommitted "
                    f"changes to {named}, which the result changes too; commit or stash "
                    f"{'it' if len(clash) == 1 else 'them'}, then {merge}"
                )
            # Files git does not track that the result would write over: git refuses
            # untracked ones (with a message of several lines) and silently overwrites
            # ignored ones; neither is abreast's to lose.
            blocking = _in_the_way(where, *self.repo.added_and_removed(current, head))
            if blocking:
                named = listed(blocking, 5, visible_name)
                return (
                    f"not landed: the result would write over {named} in your checkout"
                    f"{there}, which git does not track; move or remove "
                    f"{'it' if len(blocking) == 1 else 'them'}, then {merge}"
                )
            proc = self.repo.git("merge", "--ff-only", "-q", head, cwd=where, check=False)
            if proc.returncode != 0:
                said = "; ".join(x.strip() for x in proc.stderr.splitlines() if x.strip())
                return f"not landed: git merge --ff-only failed{there}: {said}; once fixed, {merge}"
            kept = (
                f" (kept as they were: your uncommitted changes to "
                f"{counted(len(dirty), 'file')} it leaves alone)"
                if dirty
                else ""
            )
            return f"landed: {self.base_name} fast-forwarded to {head[:12]}{there}{kept}"
        if not self.repo.update_ref(ref, head, current):
            return f"not landed: {self.base_name} moved while landing"
        return f"landed: {self.base_name} fast-forwarded to {head[:12]}"


# What containment watches that is the user's own (their checkout, stash, branches and
# tags): with `containment: {main_checkout: warn}` changes to these are warned about, not
# blamed.
YOURS = ("main checkout", "stash", "branch", "tag")


def _warning(c: Change, suspects: list[_Attempt]) -> str:
    """What is said of a change containment does not blame (`main_checkout: warn`, a moved
    branch): as it happens, in the summary and in `abreast report`."""
    who = ", ".join(x.task_id for x in suspects) or "no task"
    if c.what == "stash":
        what = f"your stash entry {c.path!r} was dropped"
    elif c.detail:
        what = f"your {c.what} {c.path} was {c.detail}"
    else:
        what = f"{c.path} changed in your checkout"
    return f"{what} while {who} ran; if a task did it, check its work" + (
        " (containment: main_checkout: warn)" if c.blame else ""
    )


def _said(c: Change) -> str:
    """One line of what an attempt is blamed for writing outside its worktree."""
    if c.what == "stash":
        return f"your stash: entry {c.path!r} dropped (put back)"
    if c.detail:  # a branch or tag
        return f"your {c.what} {c.path}: {c.detail}"
    return f"{c.what}: {visible_name(c.path)}" + (" (undone)" if c.what != "main checkout" else "")


def _in_the_way(where: Path, added: list[str], removed: set[str]) -> list[str]:
    """Paths (or their parent directories) that exist in `where` where `added` would go and
    that the merge does not remove: untracked or ignored, since `where` has no uncommitted
    changes to files the merge changes (a file added to the index is one)."""
    found: set[str] = set()
    for path in added:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            at = where / sub
            if i < len(parts) and at.is_dir() and not at.is_symlink():
                continue
            if (at.exists() or at.is_symlink()) and sub not in removed:
                found.add(sub)
            break
    return sorted(found)


def _listed(items: list[str], limit: int = 30) -> tuple[str, str]:
    """(the first item and how many more, for a message's first line; up to `limit` items,
    one an indented line, and how many are left out)."""
    first = items[0] + (f" and {len(items) - 1} more" if len(items) > 1 else "")
    rest = f"\n  (+{len(items) - limit} more)" if len(items) > limit else ""
    return first, "\n  ".join(items[:limit]) + rest


def _undid(undone: list[str], base: str) -> str:
    first, shown = _listed(undone)
    return (
        "its HEAD went back below the commit it started from (a `git reset` of commits it "
        f"did not make?), and so undid work it started with: {first}\n  {shown}\n"
        "nothing of it was merged. Undo only your own commits: reset no further back than "
        f"{base[:12]}, where it started; to take back work that landed before, use `git "
        "revert`, which lands as a change of its own (or name those files in the task's "
        "`owns:`)"
    )


def _uncommitted_inside(inside: dict[str, list[str]]) -> str:
    files = [visible_name(f"{sub}/{f}") for sub, fs in inside.items() for f in fs]
    where = ", ".join(inside)
    first, shown = _listed(files)
    return (
        f"changed files inside the submodule{'s' if len(inside) > 1 else ''} {where} without "
        f"committing them there: {first}"
        f"\n  {shown}\nthe task's commit records only which commit a submodule is at: commit "
        "the change inside the submodule (its new commit is then part of the work), or leave "
        "the submodule alone"
    )


def _patterns(patterns: list[str], most: int = 20) -> str:
    """`a`, `b` or `c` (for a prompt); past `most`, `... or 12 more`."""
    items = [f"`{p}`" for p in patterns[:most]]
    if len(patterns) > most:
        items.append(f"{len(patterns) - most} more")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
