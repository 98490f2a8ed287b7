"""Starting, resuming and cancelling runs: the glue between the command line and the engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import random
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abreast import dag
from abreast.coord.backend import BEST_EFFORT_WAIT_S, CoordError, open_coordinator
from abreast.coord.journal import CANCEL_REQUESTED, DRAIN_REQUESTED, Journal, RunRow, TaskRow
from abreast.coord.location import StateLocation, locate, redact_url
from abreast.engine import preflight
from abreast.engine.engine import Engine, EngineOptions, RunOutcome, View, defer_stop_signals
from abreast.engine.lookup import (
    described_process,
    find_run,
    on_this_host,
    open_journal,
    orchestrator_alive,
    waiting_note,
)
from abreast.engine.monitor import ResourceMonitor
from abreast.engine.states import FAILED_STATES, TERMINAL, TaskState
from abreast.engine.supervise import Supervisor
from abreast.errors import StateError, UsageError, did_you_mean
from abreast.executor.exits import recorded_exits
from abreast.executor.local import Exit
from abreast.executor.process import (
    RUN_TAG_ENV,
    freeze_all,
    group_members,
    is_same_process,
    kill_pids,
    marked_processes,
    own_output_files,
    start_ticks,
    stop_then_kill,
)
from abreast.integrate.base import Isolation
from abreast.plan import DEFAULT_ESTIMATE_S, TaskGraph, analyze, history
from abreast.plan.analysis import Analysis
from abreast.plan.ownership import nesting_hint
from abreast.spec import load_workflow
from abreast.spec.durations import counted, listed
from abreast.spec.envsubst import expand_env
from abreast.spec.model import TASK_ID_PATTERN, Scalar, Workflow
from abreast.spec.overrides import flag_overrides, listed_names, only_tasks, parallel_cap

if TYPE_CHECKING:
    from abreast.executor.ray_exec import RayCluster
    from abreast.keys.broker import KeyBroker
    from abreast.observe.dashboard_process import Observer
    from abreast.observe.events import Sink
    from abreast.workspace.repo import Repo

_RUN_ID = re.compile(TASK_ID_PATTERN.replace("62", "99"))
IsolationFactory = Callable[[Workflow, StateLocation, str, Journal], Isolation]


@dataclass
class RunRequest:
    file: Path
    run_id: str | None = None
    max_parallel: int | None = None
    sequential: bool = False
    flags: list[str] = field(default_factory=list)
    state: str | None = None
    monitor: bool = True
    isolation: IsolationFactory | None = None
    land: bool = False
    observer: Observer | None = None  # serves --dashboard / --metrics-port (the caller's)
    executor: str = "local"  # or "ray"
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local cluster for the run
    only: list[str] = field(default_factory=list)  # --only: these tasks and what they need
    fail_fast: bool = False  # --fail-fast: the first failure stops the run (as a drain)


@dataclass
class Prepared:
    wf: Workflow
    location: StateLocation
    flags: dict[str, Scalar]
    cap: int
    analysis: Analysis
    graph: TaskGraph
    left_out: int = 0  # tasks of the file --only left out


def new_run_id(name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{os.urandom(2).hex()}"


def prepare(req: RunRequest, *, look_only: bool = False) -> Prepared:
    """The run `req` asks for, planned; `look_only` (a dry run): nothing written."""
    # An empty --run-id (`--run-id "$RUN"` with RUN unset) is a mistake, not a request
    # for a new id; a dry run says so too.
    if req.run_id is not None and not _RUN_ID.fullmatch(req.run_id):
        shown = req.run_id if len(req.run_id) <= 60 else f"{req.run_id[:40]}…"
        raise UsageError(
            f"--run-id {shown!r} is not allowed"
            + (f" ({len(req.run_id)} characters)" if len(req.run_id) > 100 else ""),
            hint="use 1-100 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        )
    whole = expand_env(load_workflow(req.file), os.environ)
    wf = only_tasks(whole, req.only) if req.only else whole
    location = locate(req.file, req.state, look_only=look_only)
    flags = {**wf.flags, **flag_overrides(wf, req.flags)}
    cap = parallel_cap(wf, req.max_parallel, req.sequential)
    graph = TaskGraph.from_workflow(wf, history.for_workflow(wf, location))
    checked = history.check_time(location.journal, wf, str(location.root)) if wf.checks else None
    analysis = analyze(wf, flags=flags, max_parallel=cap, graph=graph, check_time=checked)
    return Prepared(wf, location, flags, cap, analysis, graph, len(whole.tasks) - len(wf.tasks))


def _only_note(p: Prepared) -> str:
    """What --only leaves of the workflow, said before a run (or a dry run)."""
    n = len(p.wf.tasks)
    shown = ", ".join(list(p.wf.tasks)[:10]) + (", ..." if n > 10 else "")
    return (
        f"note: --only: running {n} of {n + p.left_out} tasks ({shown}: those named and "
        f"what they need); {p.left_out} left out"
    )


def dry_run(req: RunRequest, out: Any) -> int:
    from abreast.plan.render import checks_named, checks_took
    from abreast.spec.durations import counted, format_duration

    p = prepare(req, look_only=True)
    if p.left_out:
        _note(_only_note(p))
    committed = _dry_run_repo(p)
    _dry_run_room(p, committed)
    out.write(
        f"dry run of {p.wf.name}: {counted(len(p.wf.tasks), 'task')}, up to {p.cap} at once\n"
    )
    out.write("would start, in this order (times by the estimates):\n")
    by_id = {t.id: t for t in p.analysis.tasks}
    for i, tid in enumerate(p.analysis.start_order(), 1):
        t = by_id[tid]
        note = "  (when: decided at run time)" if t.conditional else ""
        out.write(f"  {i:>3}. {tid}  at {format_duration(t.start_s)}{note}\n")
    if p.analysis.skipped:
        out.write("skipped by when: " + ", ".join(p.analysis.skipped) + "\n")
    out.write(
        f"estimated {format_duration(p.analysis.estimates.scheduled_s)} "
        f"(one at a time: {format_duration(p.analysis.estimates.sequential_s)})\n"
    )
    measured = [t for t in p.analysis.tasks if t.estimate_source == "measured"]
    if measured:
        names = ", ".join(f"{t.id} {format_duration(t.estimate_s)}" for t in measured[:8])
        more = ", ..." if len(measured) > 8 else ""
        out.write(f"(without an `estimate:`, as measured in earlier runs: {names}{more})\n")
    assumed = [t.id for t in p.analysis.tasks if not t.estimated]
    if assumed:
        each = f"counted as {format_duration(DEFAULT_ESTIMATE_S)}"
        if len(assumed) == len(p.analysis.tasks):
            out.write(f"(no task has an `estimate:`; each is {each})\n")
        else:
            names = ", ".join(assumed[:8]) + (", ..." if len(assumed) > 8 else "")
            out.write(f"(without an `estimate:`, {each}: {names})\n")
    checks = p.analysis.merge_checks
    if checks is not None and _in_worktrees(p):
        batch = f", up to {checks.batch} merges checked at once" if checks.batch > 1 else ""
        took = ""
        if checks.each_s is not None:
            took = f"a run of them took {checks_took(checks)}; "
        out.write(
            f"each task's work lands once its merge passes {checks_named(checks.names)}{batch} "
            f"({took}their time is not in the estimates)\n"
        )
    for line in _dry_run_notes(p, committed):
        _note(line)
    no_shell = preflight.missing_shell(p.wf)
    if no_shell:
        _note(f"note: a run would be refused: {no_shell}")
    return 0


def _in_worktrees(p: Prepared) -> bool:
    """Whether a run of `p` would give tasks worktrees (as far as a dry run can tell)."""
    return (p.wf.isolation or ("worktree" if p.location.in_git else "none")) == "worktree"


def _dry_run_room(p: Prepared, committed: tuple[Repo, str, str | None] | None) -> None:
    """What a run would say of the room on the disk for its worktrees: the cap lowered
    (`p.cap` too, so that the dry run says it), or the refusal, as a note."""
    if committed is not None:
        try:
            _room_for_worktrees(p, committed[0], committed[1], _note)
        except UsageError as e:
            _note(f"note: a run would be refused: {e}")


def _dry_run_repo(p: Prepared) -> tuple[Repo, str, str | None] | None:
    """With worktrees, as far as a dry run can tell: the repository, the commit tasks
    would start from, and the workflow file's path in it; None otherwise."""
    if not _in_worktrees(p):
        return None
    from abreast.workspace.git import GitMissing
    from abreast.workspace.repo import NotARepository, Repo

    with contextlib.suppress(GitMissing, NotARepository):
        repo = Repo(p.location.root)
        commit = repo.rev_parse(p.wf.base)
        own = os.path.relpath(p.wf.source, repo.root) if p.wf.source else None
        if commit is not None:
            return repo, commit, own
    return None


def _dry_run_notes(p: Prepared, committed: tuple[Repo, str, str | None] | None) -> list[str]:
    """What a run would note about its commands (`preflight`), as far as a dry run can
    tell: with worktrees, against the commit tasks would start from."""
    root = committed[0].root if committed is not None else p.location.root
    return preflight.command_notes(root, p.wf, committed)


def task_env(
    location: StateLocation,
    keys: KeyBroker | None,
    cluster: RayCluster | None = None,
    tag: str | None = None,
    *,
    worktrees: bool = False,
) -> dict[str, str]:
    """The environment tasks and checks start from: this one, less the keys' real values
    (a task gets only its leased key) and what connecting to Ray added, with `abreast` on
    PATH as this very abreast, the run's tag (none for a run journaled before tags:
    not the tag of a run this one is a task of) and git's editor `true`. In `worktrees`,
    less what would point git at another repository or index than the task's worktree
    (GIT_DIR, ...)."""
    env = keys.scrub(dict(os.environ)) if keys else dict(os.environ)
    if worktrees:
        from abreast.workspace.git import without_repo_vars

        env = without_repo_vars(env)
    for name in cluster.added_env if cluster else ():
        env.pop(name, None)
    env.pop(RUN_TAG_ENV, None)
    if tag:
        env[RUN_TAG_ENV] = tag
    # No terminal to edit in: git takes the message it proposes (`rebase --continue`,
    # `commit --amend`) and a `git commit` with none fails at once, instead of starting
    # vim blind or opening a `code --wait` window on the desktop that the task waits on.
    env["GIT_EDITOR"] = "true"
    shim = _abreast_shim(location.bin_dir)
    if shim is not None:
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH') or os.defpath}"
    return env


def _abreast_shim(bin_dir: Path) -> Path | None:
    """A directory holding an `abreast` that runs this interpreter's abreast: a task's
    `abreast lock` and `abreast signal` work whether or not abreast is on the user's PATH
    (a virtual environment not activated, `python -m abreast`), and are the same version
    as the orchestrator. None where it cannot be written (the tasks keep the user's PATH)."""
    import shlex

    if not sys.executable:
        return None
    # Inside a worktree PYTHONPATH may lead to the task's own copy of the checkout's
    # packages (workspace/pyenv.py): abreast runs with the orchestrator's, and keeps the
    # task's for the command `abreast lock` runs.
    from abreast.workspace.pyenv import OWN, TASKS

    script = (
        "#!/bin/sh\n"
        f'if [ -n "${{{OWN}+x}}" ]; then\n'
        f'  {TASKS}="${{PYTHONPATH-}}"; export {TASKS}\n'
        f'  PYTHONPATH="${OWN}"; export PYTHONPATH\n'
        '  [ -n "$PYTHONPATH" ] || unset PYTHONPATH\n'
        "fi\n"
        f'exec {shlex.quote(sys.executable)} -m abreast "$@"\n'
    )
    target = bin_dir / "abreast"
    try:
        if target.read_text() == script and os.access(target, os.X_OK):
            return bin_dir
    except OSError:
        pass
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        tmp = bin_dir / f".abreast.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        os.replace(tmp, target)  # whole, even with another run writing it too
    except OSError:
        return None
    return bin_dir


def _options(
    p: Prepared,
    monitor_on: bool,
    supervisor: Supervisor,
    base_env: dict[str, str],
    sinks: list[Sink] | None = None,
    keys: KeyBroker | None = None,
    cluster: RayCluster | None = None,
    fail_fast: bool = False,
    masked: list[tuple[str, str]] | None = None,
) -> EngineOptions:
    monitor = None
    if monitor_on and p.wf.resources.monitor:
        monitor = ResourceMonitor(p.wf.resources.thresholds)
    hb = p.wf.heartbeat
    quiet = min([hb.orphan_after] + [t.orphan_after for t in p.wf.task_list() if t.orphan_after])
    options = EngineOptions(
        cap=p.cap,
        flags=p.flags,
        policy=p.analysis.policy,
        monitor=monitor,
        rng=random.Random(),
        base_env=base_env,
        supervisor=supervisor,
        keys=keys,
        sinks=sinks or [],
        # Ticks often enough to notice an orphan within a quarter of its threshold.
        tick_s=min(1.0, hb.interval, quiet / 4),
        fail_fast=fail_fast,
        masked=masked or [],
        check_s=(p.analysis.merge_checks.each_s or 0.0) if p.analysis.merge_checks else 0.0,
        merge_batch=p.wf.merge.batch,
    )
    if cluster is not None:  # its nodes end a task with the run's grace period
        from abreast.executor.ray_exec import RayExecutor

        options.executor = functools.partial(RayExecutor, grace_s=options.kill_grace_s)
    return options


def _connect_ray(
    address: str | None, wf: Workflow, location: StateLocation, cap: int
) -> RayCluster:
    """The run's Ray cluster (`--executor ray`), checked, or a UsageError before anything of
    the run exists; what it is, on stderr."""
    from abreast.executor.ray_exec import connect

    location.runs_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(location.root), str(location.runs_dir)]
    cluster = connect(address, paths, max(cap, os.cpu_count() or 1))
    elsewhere = [h for h in cluster.hosts if h != socket.gethostname()]
    proxied = sorted(name for name, pool in wf.keys.items() if pool.upstream)
    if elsewhere and proxied:
        cluster.close()
        raise UsageError(
            f"keys {', '.join(proxied)} are served by a proxy on this machine (127.0.0.1), "
            f"which tasks on {', '.join(elsewhere)} cannot reach",
            hint="use direct mode for these keys (no `upstream:`), or a cluster on this "
            "machine only",
        )
    if elsewhere and not location.is_redis:
        _note(
            f"note: tasks on {', '.join(elsewhere)} that run `abreast lock` or `abreast signal` "
            f"reach the journal {location.journal} over the shared filesystem, where SQLite "
            "is not safe; --state redis://HOST:PORT/0 shares them properly"
        )
    _note(f"note: {cluster.describe()}")
    if cluster.cpus < cap:
        _note(
            f"note: at most {cluster.cpus:g} tasks run at once there (max_parallel is {cap}); "
            "the others wait in Ray's queue, their timeouts running"
        )
    return cluster


def _sinks(p: Prepared) -> list[Sink]:
    """Event sinks for a run; reachable-or-refuse checks happen here, before anything is
    journaled."""
    sinks: list[Sink] = []
    if p.location.is_redis:
        from abreast.observe.events import RedisSink

        sinks.append(RedisSink(p.location.coord_url, p.wf.events.subject))
    if p.wf.events.nats:
        from abreast.observe.events import NatsSink

        _probe(p.wf.events.nats)
        sinks.append(NatsSink(p.wf.events.nats, p.wf.events.subject))
    return sinks


def _probe(url: str) -> None:
    """A TCP connection to the server in `url`, or a clear error before the run starts."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise StateError(
            f"cannot reach NATS at {redact_url(url)}: {e.strerror or e}",
            hint="start nats-server, or remove `events.nats` from the workflow",
        ) from None


def _observe(observer: Observer, location: StateLocation, run_id: str) -> None:
    """Point the observer at the run, and say where it serves."""
    urls = observer.start(location, run_id)
    if urls.problem is not None:
        print(
            f"warning: no dashboard or metrics for this run: the observer could not start: "
            f"{urls.problem} (check how abreast and its dependencies are installed)",
            file=sys.stderr,
            flush=True,
        )
    for name, url in (("metrics", urls.metrics), ("dashboard", urls.dashboard)):
        if url:
            print(f"{name}: {url}", flush=True)


def _keys(p: Prepared, supervisor: Supervisor, journal: Journal, run_id: str) -> KeyBroker | None:
    if not p.wf.keys:
        return None
    from abreast.keys.broker import KeyBroker

    return KeyBroker(p.wf, supervisor.coord, journal, run_id)


def _supervisor(p: Prepared, run_id: str, journal: Journal) -> Supervisor:
    try:
        # Its calls renew, beat and measure (each may fail until a ttl runs out), on the
        # orchestrator's own thread: one that finds Redis gone holds it a moment, not for
        # the whole wait (which the first contact still gets: a CI service starting).
        coord = open_coordinator(p.location.coord_url, calls_wait_s=BEST_EFFORT_WAIT_S)
    except CoordError as e:
        raise StateError(str(e), hint="check --state / ABREAST_STATE") from e
    return Supervisor(p.wf, run_id, coord, journal, lambda _text: None)


def isolation_kind(wf: Workflow, location: StateLocation) -> str:
    """`worktree` or `none`: the file's choice, else worktree inside a git repository."""
    in_git = location.in_git
    if wf.isolation == "worktree" and not in_git:
        raise UsageError(
            f"isolation: worktree needs a git repository; {location.root} is not in one",
            hint="run `git init` there, or set `isolation: none`",
        )
    kind = wf.isolation or ("worktree" if in_git else "none")
    if kind == "worktree":
        from abreast.workspace.git import MIN_TEXT, missing_filter, worktree_git_problem

        problem = worktree_git_problem()
        if problem is None and (filtered := missing_filter(location.root)) is not None:
            raise filtered
        if problem:
            default = "" if wf.isolation else ", the default in a git repository,"
            raise UsageError(
                f"isolation: worktree{default} needs git {MIN_TEXT} or later; {problem}",
                hint=f"install git {MIN_TEXT} or later, or set `isolation: none` to run "
                "tasks in the project directory itself",
            )
    return kind


def _isolation(
    req: RunRequest,
    p: Prepared,
    run_id: str,
    journal: Journal,
    kind: str,
    base_commit: str | None,
    base_env: dict[str, str],
    supervisor: Supervisor | None = None,
    keys: KeyBroker | None = None,
    masked: list[tuple[str, str]] | None = None,
    base_branch: str | None = None,
) -> Isolation:
    if req.isolation is not None:
        return req.isolation(p.wf, p.location, run_id, journal)
    if kind == "none":
        return Isolation(p.location.root)
    from abreast.integrate.worktrees import WorktreeIsolation

    return WorktreeIsolation(
        p.wf,
        p.location,
        run_id,
        journal,
        p.graph,
        base_commit=base_commit,
        base_env=base_env,
        secrets=keys.secrets if keys is not None else None,
        masked=masked or [],
        land=req.land,
        hold=supervisor.hold if supervisor and supervisor.coord else None,
        base_branch=base_branch,
    )


def _room_for_worktrees(
    p: Prepared, repo: Repo, commit: str, announce_note: Callable[[str], None]
) -> None:
    """Refuse a run whose disk has no room for a worktree (and one for the merge checks),
    and lower the cap to the worktrees it has room for: each task at once works in one,
    and worktrees that fill the disk leave the journal unwritable (workspace/room.py)."""
    from abreast.spec.durations import format_size
    from abreast.workspace.room import (
        RESERVE_BYTES,
        disk_of,
        fit,
        room_text,
        worktree_bytes,
    )

    size = worktree_bytes(repo, commit)
    where = repo.abreast_dir / "worktrees"
    found = fit(where, size)
    if size is None or found is None:
        return
    n, free = found
    checks = 1 if p.wf.checks else 0  # the merge checks' own worktree
    if n < 1 + checks:
        need = "a worktree for a task and one for the merge checks" if checks else "a worktree"
        raise UsageError(
            f"no room on the disk ({disk_of(where)}) for {need}: {room_text(size, free)}",
            hint="make room (`abreast cleanup` removes what finished runs left), or set "
            "`isolation: none` to run the tasks in the project directory itself",
        )
    most = min(p.cap, len(p.wf.tasks))
    if n - checks < most:
        also = ", with one for the merge checks" if checks else ""
        most = n - checks
        tasks = "1 task runs" if most == 1 else f"{most} tasks run"
        announce_note(
            f"note: the disk ({disk_of(where)}) has room for {n} worktrees of about "
            f"{format_size(size)}{also} ({format_size(free)} free; abreast leaves "
            f"{format_size(RESERVE_BYTES)} of it free): at most {tasks} at once "
            f"(max_parallel is {p.cap})"
        )
        p.cap = n - checks


def _base_commit(
    p: Prepared, kind: str, announce_note: Callable[[str], None], *, land: bool = False
) -> str | None:
    if kind != "worktree":
        if land:
            announce_note(
                "note: --land does nothing here: tasks work in the project directory itself"
                " (isolation: none), so there is no result branch to bring in"
            )
        unused = [
            key
            for key, used in (
                ("checks", bool(p.wf.checks)),
                ("merge", p.wf.merge.batch != 1),
                ("worktrees", bool(p.wf.worktrees.copy or p.wf.worktrees.keep)),
            )
            if used
        ]
        if unused:
            keys = " and ".join(f"`{k}:`" for k in unused)
            announce_note(
                f"note: {keys} do{'es' if len(unused) == 1 else ''} nothing here: tasks run "
                "in the project directory, and there is no merge queue (isolation: none)"
            )
        for line in preflight.command_notes(p.location.root, p.wf):
            announce_note(line)
        return None
    from abreast.workspace.repo import Repo, base_name, dirty_paths, unknown_base

    repo = Repo(p.location.root)
    commit = repo.rev_parse(p.wf.base)
    if commit is None:
        raise unknown_base(repo, p.wf.base)
    # Git keeps a branch as a file named by it: a branch `abreast` leaves no room for the
    # run's `abreast/<run>/...` branches (found here, before anything is journaled).
    if repo.rev_parse("refs/heads/abreast") is not None:
        raise UsageError(
            f"{repo.root} has a branch named 'abreast', and git cannot create the run's "
            "branches (abreast/<run>/<task>) beside it",
            hint="rename it, e.g. `git branch -m abreast abreast-main`",
        )
    if land:  # refused now rather than after the work: --land moves a branch
        name = base_name(repo, p.wf.base)
        if repo.rev_parse(f"refs/heads/{name}") is None:
            what = "HEAD is detached" if name == "HEAD" else f"base {name!r} is not a branch"
            raise UsageError(
                f"--land fast-forwards a local branch to the result, and {what} in {repo.root}",
                hint="check out a branch or set `base:` to one; or leave out --land and "
                "merge the result branch (named at the end of the run) where you like",
            )
    from abreast.workspace.provision import problems

    bad = problems(repo, list(p.wf.worktrees.copy), list(p.wf.worktrees.keep))
    if bad:
        raise UsageError("\n  ".join(bad), hint="fix `worktrees:` in the workflow file")
    _room_for_worktrees(p, repo, commit, announce_note)
    from abreast.workspace.git import REPO_VARS

    steering = sorted(REPO_VARS.intersection(os.environ))
    if steering:
        announce_note(
            f"note: {', '.join(steering)} {'is' if len(steering) == 1 else 'are'} set here "
            "(as in a git hook): left out of abreast's git and of the tasks' environment, "
            "where each worktree is its own repository's checkout"
        )
    # The workflow file is the orchestrator's, not the tasks': it is not counted.
    own = os.path.relpath(p.wf.source, repo.root) if p.wf.source else None
    for line in preflight.command_notes(repo.root, p.wf, (repo, commit, own)):
        announce_note(line)
    dirty = [d for d in dirty_paths(repo, repo.root) if not d.startswith(".abreast/") and d != own]
    if dirty:  # the run's own output (`> run.log`, `| tee run.log`) is not worth a note
        from abreast.integrate.guard import being_written

        logs = being_written(repo.root, dirty).values()
        dirty = [d for d in dirty if d not in logs]
    if dirty:
        named = listed(dirty, 3)
        announce_note(
            f"note: {counted(len(dirty), 'uncommitted change')} in {repo.root} "
            f"{'is' if len(dirty) == 1 else 'are'} not seen by tasks"
            f" ({named}); they start from {p.wf.base} ({commit[:12]})"
        )
    return commit


def _base_branch(p: Prepared, base_commit: str | None) -> str | None:
    """With worktrees (a base commit): the name `base` goes by (workspace.repo.base_name)."""
    if base_commit is None:
        return None
    from abreast.workspace.repo import Repo, base_name

    return base_name(Repo(p.location.root), p.wf.base)


def _running_beside(journal: Journal, wf: Workflow) -> list[str]:
    """Notes on runs of the same workflow file running now: started twice (two terminals,
    a run thought dead), the same work is done twice, and without worktrees both runs
    write the same files at once."""
    running = journal.running_ids(wf.source) if wf.source else []
    if not running:
        return []  # (most starts: no imports)
    from abreast.spec.durations import format_duration

    notes = []
    for run_id in running:
        row = journal.run(run_id)
        if row is None or not orchestrator_alive(row):
            continue
        silent = time.time() - (row.heartbeat_at or 0) > wf.heartbeat.orphan_after
        if not on_this_host(row) and silent:
            continue  # elsewhere and silent: dead, as far as anyone here can tell
        where = f"pid {row.pid}" + ("" if on_this_host(row) else f" on {row.host}")
        ago = format_duration(max(0.0, time.time() - row.started_at))
        both = (
            "both work in the project directory itself (isolation: none), over each other's files"
            if row.options.get("isolation") == "none"
            else "both do the same tasks' work, each in worktrees of its own"
        )
        notes.append(
            f"note: run {row.id} of this workflow file is running too ({where}, started "
            f"{ago} ago): {both}; `abreast cancel {row.id}` stops it"
        )
    return notes


def key_secrets(wf: Workflow, env: dict[str, str]) -> tuple[set[str], list[tuple[str, str]]]:
    """Without a key broker (`abreast land`): the variables the real keys of the
    workflow's pools are read from, and (fingerprint, value) of those `env` has."""
    from abreast.keys.pool import fingerprint

    names = {v for spec in wf.keys.values() for v in spec.from_}
    return names, [(fingerprint(env[n]), env[n]) for n in sorted(names) if env.get(n)]


def masked_secrets(wf: Workflow) -> list[tuple[str, str]]:
    """The secrets of the environments the run's tasks and checks get (abreast's own, and
    the tasks' and agents' `env:`), by their variables' names (keys/envsecrets.py)."""
    from abreast.keys.envsecrets import env_secrets

    tasks = [t.env for t in wf.tasks.values()]
    return env_secrets([os.environ, *tasks, *(a.env for a in wf.agents.values())])


def _note(text: str) -> None:
    """Something to know before the run starts, on stderr."""
    print(text, file=sys.stderr)


def start_run(req: RunRequest, view: View, announce: Callable[[str], None]) -> RunOutcome:
    """Journal a new run, announce its id, and run it to the end."""
    p = prepare(req)
    run_id = new_run_id(p.wf.name) if req.run_id is None else req.run_id
    if p.left_out:
        _note(_only_note(p))
    kind = "none" if req.isolation is not None else isolation_kind(p.wf, p.location)
    if kind == "none" and req.isolation is None and p.wf.isolation is None:
        _note(
            f"note: {p.location.root} is not in a git repository, so tasks run in it "
            "directly, side by side (isolation: none); `git init` there gives each task "
            "a worktree of its own, or set `isolation: none` to say this is meant"
        )
    no_shell = preflight.missing_shell(p.wf)
    if no_shell:
        raise UsageError(no_shell, hint="install it, or leave out `shell:` for /bin/sh")
    base_commit = _base_commit(p, kind, _note, land=req.land)
    for (x, y), via in p.analysis.overlap_via.items():
        _note(f"note: {x} and {y} never run side by side: {nesting_hint(via)}")
    sinks = _sinks(p)
    journal = Journal(p.location.journal)
    with journal:  # closed however this ends, a refusal before the run included
        supervisor = _supervisor(p, run_id, journal)  # an unreachable backend stops us here
        stops: list[Callable[[], None]] = []
        try:  # the supervisor's backend connection is closed whatever stops us
            cluster = None
            if req.executor == "ray":  # an unreachable or unfit cluster stops us here
                cluster = _connect_ray(req.ray_address, p.wf, p.location, p.cap)
                stops.append(cluster.close)
            keys = _keys(p, supervisor, journal, run_id)  # a key variable not set stops us here
            started = time.time()
            me = os.getpid()
            tag = os.urandom(8).hex()  # what tells this run's processes from another run's
            masked = masked_secrets(p.wf)
            options: dict[str, Any] = {
                "flags": p.flags,
                "max_parallel": p.cap,
                "sequential": req.sequential,
                "state": redact_url(req.state) if req.state else req.state,
                "monitor": req.monitor,
                "policy": p.analysis.policy.value,
                "isolation": kind,
                "base_commit": base_commit,
                # The branch `base` named then (for `HEAD`: the one checked out), which
                # `--land`, `resume` and `abreast land` move, wherever HEAD is by then.
                "base": _base_branch(p, base_commit),
                "land": req.land,
                "executor": req.executor,
                # The cluster to resume on: the one given (flag or RAY_ADDRESS), or None
                # for a local one started for the run (resume starts another).
                "ray_address": cluster.address if cluster and not cluster.started_here else None,
                "tag": tag,
                "only": list(p.wf.tasks) if req.only else None,  # what resume runs again
                "fail_fast": req.fail_fast,
                # What a live log is masked of (their values are nowhere in the journal).
                "masked": [fp for fp, _ in masked],
                # Where this run's output goes, if to files: another run beside it does
                # not blame its tasks for them (integrate/guard.py).
                "output_files": sorted(own_output_files()),
                # Which merge checks its check times are of (`analyze` reads them back).
                "checks_sha": history.checks_sha(p.wf),
            }
            for line in _running_beside(journal, p.wf):
                _note(line)
            defer_stop_signals()
            journal.create_run(
                run_id,
                workflow=p.wf.name,
                file=p.wf.source,
                file_sha256=p.wf.source_sha256,
                root=str(p.location.root),
                pid=me,
                pid_start=start_ticks(me) or 0,
                host=socket.gethostname(),
                started_at=started,
                task_ids=list(p.wf.tasks),
                options={**options, "plan": plan_summary(p.analysis, kind == "worktree")},
            )
            journal.stage_event(
                run_id,
                "run.started",
                ts=started,
                workflow=p.wf.name,
                tasks=len(p.wf.tasks),
                **options,
            )
            announce(run_id)
            env = task_env(p.location, keys, cluster, tag, worktrees=kind == "worktree")
            isolation = _isolation(
                req,
                p,
                run_id,
                journal,
                kind,
                base_commit,
                env,
                supervisor,
                keys,
                masked,
                options["base"],
            )
            sources = getattr(isolation, "python_sources", None)
            if sources:
                _note(
                    "note: Python packages installed in editable mode from this checkout "
                    f"({', '.join(sources)}) are imported from each task's own worktree "
                    "(its copy first on PYTHONPATH)"
                )
            go_work = getattr(isolation, "go_work", "")
            if go_work:
                _note(f"note: {go_work}")
            links = getattr(isolation, "node_links", None)
            if links:
                named = ", ".join(
                    os.path.normpath(os.path.join(os.path.dirname(rel), text))
                    for rel, text in links[:5]
                )
                more = f" and {len(links) - 5} more" if len(links) > 5 else ""
                _note(
                    f"note: the workspace packages your node_modules links ({named}{more}) "
                    "are linked in each task's worktree to its own copy (Node would find "
                    "your checkout's, worktrees being inside it)"
                )
            engine = Engine(
                p.wf,
                run_id,
                p.location,
                journal,
                p.graph,
                _options(
                    p, req.monitor, supervisor, env, sinks, keys, cluster, req.fail_fast, masked
                ),
                view=view,
                isolation=isolation,
                started_at=started,
            )
            if req.observer is not None:
                _observe(req.observer, p.location, run_id)
            if keys is not None:
                keys.start()
                stops.append(keys.stop)
            return asyncio.run(engine.run())
        finally:
            for stop in stops:
                stop()
            supervisor.close()


PLAN_LIMIT = 20_000
# tasks; above this the run keeps no plan for dashboards and reports


def plan_summary(a: Analysis, merges: bool = False) -> dict[str, Any] | None:
    """What dashboards and reports need of the plan, kept with the run (`merges`: whether
    its tasks' work lands through the merge queue, checked)."""
    if len(a.tasks) > PLAN_LIMIT:
        return None
    checks = a.merge_checks if merges else None
    return {
        "edges": [[x, y] for x, y, _ in a.edges],
        # Where y waits only for x's signal, not its end: [x, y, signal].
        "signal_edges": [[x, y, s] for x, y, s in a.edges if s],
        "waves": a.waves,
        "skipped": a.skipped,  # by `when:` over the flags alone: they count no time
        "critical_path": a.critical_path,
        "estimates": {t.id: t.estimate_s for t in a.tasks},
        "estimates_given": any(t.estimated for t in a.tasks),
        # Those measured in earlier runs (plan/history.py), not given in the file; and
        # those with neither (counted as the default).
        "measured": [t.id for t in a.tasks if t.estimate_source == "measured"],
        "assumed": [t.id for t in a.tasks if t.estimate_source == "assumed"],
        "default_estimate_s": DEFAULT_ESTIMATE_S,  # what each of those was counted as
        "max_parallel": a.max_parallel,
        "scheduled_s": a.estimates.scheduled_s,
        "sequential_s": a.estimates.sequential_s,
        "critical_path_s": a.estimates.critical_path_s,
        # One run of the merge checks, measured in earlier runs (None: unknown, or none).
        "check_s": checks.each_s if checks else None,
        "merge_batch": checks.batch if checks else 1,
    }


# -- finding runs ------------------------------------------------------------------------------


# -- cancel ------------------------------------------------------------------------------------


def cancel_run(journal: Journal, row: RunRow, *, drain: bool = False) -> str:
    if row.state not in ("running",):
        raise UsageError(
            f"run {row.id} is not running (it {row.state})",
            hint="`abreast status` lists runs and their states",
        )
    if drain:
        return _drain(journal, row)
    journal.write("UPDATE runs SET cancel_requested = ? WHERE id = ?", (CANCEL_REQUESTED, row.id))
    if orchestrator_alive(row):
        return _ask_to_cancel(row)
    # No orchestrator: this process ends the run, with resume and cleanup kept out (a
    # resume that took the run up since it was read is asked to cancel instead).
    with journal.exclusive(waiting_note(f"cancelling {row.id}")):
        now = journal.run(row.id)
        if now is None or now.state != "running":
            it = now.state if now else "was forgotten"
            return f"run {row.id} is not running any more (it {it})"
        if orchestrator_alive(now):
            return _ask_to_cancel(now)
        return _cancel_dead(journal, now)


def _drain(journal: Journal, row: RunRow) -> str:
    """`abreast cancel --drain`: the orchestrator starts nothing new and lets what runs
    finish (and land); a request journaled, and the orchestrator woken to read it."""
    if not orchestrator_alive(row):
        raise UsageError(
            f"run {row.id} has no live orchestrator: nothing of it is running to finish",
            hint=f"`abreast resume {row.id}` carries it on; `abreast cancel {row.id}` "
            "stops what it left running",
        )
    asked = journal.cancel_requested(row.id)
    if asked == CANCEL_REQUESTED:
        return f"run {row.id} is already being cancelled"
    if asked == DRAIN_REQUESTED:
        return f"run {row.id} is already draining"
    journal.write(
        "UPDATE runs SET cancel_requested = ? WHERE id = ? AND cancel_requested = 0",
        (DRAIN_REQUESTED, row.id),
    )
    said = (
        "no task starts any more; those running finish and land, then the run ends "
        f"(cancelled) and `abreast resume {row.id}` runs the rest"
    )
    # SIGUSR1: read the journal now, not at the next tick.
    return _ask(row, signal.SIGUSR1, f"drain: {said}")


def _ask_to_cancel(row: RunRow) -> str:
    """SIGTERM, as Ctrl-C."""
    return _ask(row, signal.SIGTERM, "cancel")


def _ask(row: RunRow, sig: int, what: str) -> str:
    """Send the orchestrator `sig` for the request just journaled, and say so; one on
    another machine reads the request at its next tick instead (its pid means nothing
    here)."""
    assert row.pid is not None
    if not on_this_host(row):
        return (
            f"asked the orchestrator of {row.id} (pid {row.pid} on {row.host}) to {what}; "
            "it reads the request within a second"
        )
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(row.pid, sig)
    return f"asked the orchestrator of {row.id} (pid {row.pid}) to {what}"


def _cancel_dead(journal: Journal, row: RunRow) -> str:
    from abreast.observe.rundata import ended_note, ended_while_down, interrupted_until

    # Those that ran on and ended: their work is not lost (what a resume takes up). Read,
    # as resume reads them, with every process of the run stopped: what the kill makes
    # a shell record (143, an agent's own status on TERM) is not how its attempt ended.
    strays = _freeze_strays(journal, row.id)
    down = ended_while_down(journal, row.id)
    killed = kill_pids(strays)
    # It ended when it was last at work (the time since, to this cancel, is not its own,
    # as the time between a cancel and its resume is not), or now if a task still ran.
    now = time.time() if killed else min(time.time(), interrupted_until(journal, row, down))
    journal.stage_run(row.id, state="cancelled", finished_at=now)
    for a in journal.attempts(row.id):  # the others ended here: not for a resume to take
        if a.ended_at is None and (a.task_id, a.attempt) not in down:
            journal.stage_attempt(
                row.id, a.task_id, a.attempt, state="interrupted", ended_at=now,
                reason="cancelled while its orchestrator was gone",
            )  # fmt: skip
    kept = []
    for t in journal.tasks(row.id):
        if t.state in ("pending", "ready", "running", "integrating"):
            ended = down.get((t.task_id, t.attempts)) if t.state == "running" else None
            if ended is not None:
                kept.append(t.task_id)
            journal.stage_task(
                row.id,
                t.task_id,
                state="cancelled",
                reason="cancelled while its orchestrator was gone"
                if ended is None
                else ended_note(ended[0]),
                **({"finished_at": ended[2] or now} if ended else {}),
            )
    journal.stage_event(row.id, "run.cancelled", reason="orchestrator dead", killed=killed)
    journal.commit()
    said = (
        f"; {listed(kept, 5)} ended meanwhile: `abreast resume {row.id}` takes "
        f"{'its result' if len(kept) == 1 else 'their results'}"
        if kept
        else ""
    )
    return (
        f"run {row.id} had no live orchestrator; marked cancelled, "
        f"{counted(killed, 'stray process', 'stray processes')} killed{said}"
    )


def _stray_pids(journal: Journal, run_id: str) -> set[int]:
    """Every live process of `run_id`: members of its journaled process groups (leader
    verified by start time), and any process carrying the run's marker (and its tag)."""
    pids: set[int] = set()
    for a in journal.attempts(run_id):
        if a.ended_at is None and a.pgid and a.pid and is_same_process(a.pid, a.start_ticks):
            pids.update(group_members(a.pgid))
    row = journal.run(run_id)
    tag = row.options.get("tag") if row else None
    pids.update(p.pid for p in marked_processes(run_id, tag=tag))
    return pids


def _freeze_strays(journal: Journal, run_id: str) -> set[int]:
    """Stop (SIGSTOP) every live process of `run_id`, until no new one appears (one may fork
    while we look); the stopped pids."""
    return freeze_all(lambda: _stray_pids(journal, run_id))


async def _kill_strays(journal: Journal, run_id: str, grace_s: float = 2.0) -> int:
    """Kill every live process of `run_id`, all stopped first. Returns how many there were."""
    return await asyncio.to_thread(stop_then_kill, lambda: _stray_pids(journal, run_id), grace_s)


# -- resume ------------------------------------------------------------------------------------


def resume_run(
    run_id: str,
    *,
    state: str | None,
    force: bool,
    view: View,
    announce: Callable[[str], None],
    monitor: bool = True,
    isolation: IsolationFactory | None = None,
    observer: Observer | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    retry: Sequence[str] = (),
    file: str | None = None,
    redo: Sequence[str] = (),
    feedback: str | None = None,
) -> RunOutcome:
    """Carry on a run whose orchestrator died (`observer`: one spawned for --dashboard /
    --metrics-port, told the run once it is found; `ray_address`: the Ray cluster to use
    now, for a run started with `--executor ray`; `retry_failed`: its failed tasks run
    again too, and a run that ended failed is carried on; `retry`: as `retry_failed`,
    only these of its failed tasks, as `--retry TASK[,TASK]` gives them; `file`: the
    workflow file where it is now, renamed or moved since the run started; `redo`:
    tasks that succeeded, run again with `feedback` (`--redo TASK --feedback TEXT`),
    also in a run that ended)."""
    found_at, journal = open_journal(None, state)
    with journal:  # closed however this ends, a refusal included
        return _resume_found(
            found_at,
            journal,
            run_id,
            force,
            view,
            announce,
            monitor,
            isolation,
            observer,
            ray_address,
            retry_failed,
            retry,
            file,
            redo,
            feedback,
        )


def _resume_found(
    found_at: StateLocation,
    journal: Journal,
    run_id: str,
    force: bool,
    view: View,
    announce: Callable[[str], None],
    monitor: bool,
    isolation: IsolationFactory | None,
    observer: Observer | None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    named: Sequence[str] = (),
    moved_to: str | None = None,
    redo_named: Sequence[str] = (),
    feedback: str | None = None,
) -> RunOutcome:
    row = find_run(journal, run_id)
    # The run's own project, wherever resume is typed; the journal stays where it was found.
    location = dataclasses.replace(found_at, root=Path(row.root))
    tasks = {t.task_id: t for t in journal.tasks(row.id)}
    failed = [tid for tid, t in tasks.items() if TaskState(t.state) in FAILED_STATES]
    if named:  # `--retry TASK`: those (each one that failed), and only those
        failed = _named_failures(row, tasks, failed, named)
        retry_failed = True
    redo = _named_successes(row, tasks, redo_named) if redo_named else []
    if retry_failed and not failed and not redo and row.state in ("succeeded", "failed"):
        # (A run that did not end is carried on all the same: --retry-failed only adds.)
        raise UsageError(
            f"run {row.id} has no failed task to run again (it {row.state})",
            hint="start a new run with `abreast run`",
        )
    if row.state in ("succeeded", "failed") and not retry_failed and not redo:
        raise UsageError(
            f"run {row.id} already finished ({row.state}); nothing to resume",
            hint=f"`abreast resume {row.id} --retry-failed` runs its failed "
            f"task{'s' if len(failed) > 1 else ''} "
            f"({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}) again, and "
            "those they blocked, keeping what succeeded; `abreast run` starts over"
            if failed
            else "start a new run with `abreast run`",
        )
    if orchestrator_alive(row) and not on_this_host(row):
        beat = row.heartbeat_at
        beat_said = f"; its last heartbeat {time.time() - beat:.0f}s ago" if beat else ""
        raise UsageError(
            f"run {row.id} runs on {row.host} (orchestrator pid {row.pid}{beat_said}), whose "
            "processes cannot be seen from here",
            hint=f"resume it on {row.host}, where abreast can tell whether it still runs",
        )
    if orchestrator_alive(row):
        raise UsageError(
            f"run {row.id} is still running (orchestrator pid {row.pid})",
            hint=f"`abreast cancel {row.id}` stops it",
        )
    if not row.file:  # journaled so by earlier builds when `env:` named variables
        raise UsageError(
            f"the journal does not say which workflow file run {row.id} ran",
            hint=f"`abreast cancel {row.id}` ends it; start a new run with `abreast run`",
        )
    file = Path(row.file)
    if moved_to is not None:
        file = _moved_file(row, Path(moved_to))
        row = dataclasses.replace(row, file=str(file))  # journaled as the run is taken up
    if not file.exists():
        raise UsageError(
            f"the workflow file of {row.id} is gone: {file}",
            hint="put it back at that path (the project moved? resume from where it was), "
            f"or give where it is now: `abreast resume {row.id} --file PATH` (with a "
            "changed file, add --force)",
        )
    wf = expand_env(load_workflow(file), os.environ)  # as this resume's environment has it
    only = row.options.get("only")
    if only:  # `run --only`: the tasks it ran, of those the file still has
        kept = [tid for tid in only if tid in wf.tasks]
        if not kept:
            raise UsageError(
                f"{file} no longer has any of the tasks run {row.id} ran (--only): "
                + ", ".join(only),
                hint="start a new run with `abreast run`",
            )
        wf = only_tasks(wf, kept)
    if wf.source_sha256 != row.file_sha256 and (retry_failed or redo) and not force:
        # Running failed tasks again is what one does once they are fixed, and the fix is
        # often in the file itself (a wrong command): it is taken as it is now, and said.
        _note(f"note: {file.name} changed since run {row.id} started; going by it as it is now")
        force = True
    if wf.source_sha256 != row.file_sha256 and not force:
        raise UsageError(
            f"{file} changed since run {row.id} started",
            hint="resuming could run a different workflow; pass --force to "
            "resume anyway with the file as it is now",
        )
    # Not while `abreast land` lands it: both would move its result branch. (Once taken
    # up, the run's orchestrator is alive, which `abreast land` refuses.)
    from abreast.engine.landlock import landing_lock

    with landing_lock(location, row.id, None):
        if row.options.get("isolation") == "worktree":
            from abreast.integrate.worktrees import recover_result

            restored = recover_result(location.root, journal, row.id)
            if restored:
                _note(f"note: {restored}")
        cluster = None
        if row.options.get("executor") == "ray":
            cap = int(row.options.get("max_parallel") or wf.max_parallel)
            address = ray_address or row.options.get("ray_address")
            cluster = _connect_ray(address, wf, location, cap)
        elif ray_address:
            raise UsageError(
                f"run {row.id} runs its tasks here, not on Ray; --ray-address is for runs "
                "started with --executor ray",
                hint="leave --ray-address out",
            )
        try:
            _take_up(journal, row)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
    try:
        announce(row.id)
        if observer is not None:
            _observe(observer, location, row.id)
        retry = frozenset(failed) if retry_failed else frozenset()
        again = (frozenset(redo), feedback)
        return asyncio.run(
            _resume(
                wf, row, journal, location, force, view, monitor, isolation, cluster, retry, again
            )
        )
    finally:
        if cluster is not None:
            cluster.close()


def _named_task(row: RunRow, tasks: dict[str, TaskRow], flag: str, name: str, can: str) -> TaskRow:
    """The run's task `flag NAME` names; a UsageError naming the closest one otherwise."""
    task = tasks.get(name)
    if task is None:
        raise UsageError(
            f"{flag} {name}: run {row.id} has no task {name!r}" + did_you_mean(name, tasks),
            hint=f"name one of {can}",
        )
    return task


def _named_successes(row: RunRow, tasks: dict[str, TaskRow], names: Sequence[str]) -> list[str]:
    """The tasks `--redo TASK[,TASK]` names, each checked to be one of the run's `tasks`
    that succeeded: a clear error for any other, saying what to name."""
    wanted = listed_names(names)
    if not wanted:
        raise UsageError("--redo names no task", hint="--redo TASK[,TASK...] (repeatable)")
    done = [tid for tid, t in tasks.items() if t.state == TaskState.SUCCEEDED.value]
    can = f"its tasks that succeeded: {listed(done, 10)}" if done else "no task of it succeeded"
    for name in wanted:
        task = _named_task(row, tasks, "--redo", name, can)
        state = TaskState(task.state)
        if state is TaskState.SUCCEEDED:
            continue
        if state in FAILED_STATES:
            raise UsageError(
                f"--redo {name}: {name} {state}; --redo runs again a task that succeeded",
                hint=f"`abreast resume {row.id} --retry {name}` runs it again, told why it failed",
            )
        if state is TaskState.SKIPPED:
            raise UsageError(
                f"--redo {name}: {name} was skipped ({task.reason or 'its when: was false'}), "
                "so it did nothing to do again",
                hint=f"name one of {can}",
            )
        raise UsageError(
            f"--redo {name}: {name} did not succeed (it is {state})",
            hint=f"a plain `abreast resume {row.id}` runs it; {can}",
        )
    return wanted


def _named_failures(
    row: RunRow, tasks: dict[str, TaskRow], failed: list[str], names: Sequence[str]
) -> list[str]:
    """The tasks `--retry TASK[,TASK]` names, each checked to be one of the run's `tasks`
    that `failed` (or timed out): a clear error for any other, saying what to name."""
    wanted = listed_names(names)
    if not wanted:
        raise UsageError("--retry names no task", hint="--retry TASK[,TASK...] (repeatable)")
    listed = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
    can = (
        f"its failed task{'s' if len(failed) > 1 else ''}: {listed}"
        if failed
        else "it has no failed task"
    )
    for name in wanted:
        task = _named_task(row, tasks, "--retry", name, can)
        state = TaskState(task.state)
        if state in FAILED_STATES:
            continue
        if state is TaskState.BLOCKED:
            why = task.reason or "a task it needs did not succeed"
            raise UsageError(
                f"--retry {name}: {name} did not fail, it is blocked ({why})",
                hint=f"retry what blocked it, and {name} runs after it; {can}",
            )
        if state in (TaskState.SUCCEEDED, TaskState.SKIPPED):
            raise UsageError(
                f"--retry {name}: {name} {state}, so there is nothing to run again",
                hint=f"a resume never runs again what succeeded; {can}",
            )
        raise UsageError(  # pending, cancelled, running: a resume runs it anyway
            f"--retry {name}: {name} did not fail (it is {state})",
            hint=f"a plain `abreast resume {row.id}` runs it; {can}",
        )
    return wanted


def _take_up(journal: Journal, row: RunRow) -> None:
    """Make this process the run's orchestrator, unless another took it up or cleanup
    forgot it since it was read (two `resume`s at once: exactly one goes on)."""
    defer_stop_signals()
    me = os.getpid()
    with journal.exclusive(waiting_note(f"resuming {row.id}")):
        if journal.claim_run(
            row,
            state="running",
            pid=me,
            pid_start=start_ticks(me) or 0,
            host=socket.gethostname(),
            heartbeat_at=time.time(),
            cancel_requested=0,  # the cancel that stopped it, if one did: done with
        ):
            return
        now = journal.run(row.id)
    if now is None:
        raise UsageError(
            f"run {row.id} was forgotten by `abreast cleanup --older-than` just now",
            hint="start a new run with `abreast run`",
        )
    if orchestrator_alive(now) and now.pid:
        raise UsageError(
            f"run {row.id} was taken up by {described_process(now.pid)} just now",
            hint=f"`abreast status {row.id}` follows it; `abreast cancel {row.id}` stops it",
        )
    raise UsageError(
        f"run {row.id} changed while it was being resumed (it is {now.state} now)",
        hint="look at `abreast status`, then try again",
    )


async def _resume(
    wf: Workflow,
    row: RunRow,
    journal: Journal,
    location: StateLocation,
    force: bool,
    view: View,
    monitor_on: bool,
    isolation: IsolationFactory | None,
    cluster: RayCluster | None = None,
    retry: frozenset[str] = frozenset(),
    redo: tuple[frozenset[str], str | None] = (frozenset(), None),
) -> RunOutcome:
    if cluster is not None:  # the dead orchestrator's attempts on every node
        # Each asked to die first, through the kill file its node reads before it starts
        # the attempt: one Ray had handed to a worker but not yet started when the
        # orchestrator died starts after the sweep, and would run beside its next attempt.
        from abreast.executor.remote import KILL, request_kill_at

        for a in journal.attempts(row.id):
            if a.ended_at is None and a.log:
                with contextlib.suppress(OSError):
                    request_kill_at(f"{a.log}.kill", KILL)
        swept = await asyncio.to_thread(cluster.sweep, row.id, row.options.get("tag"))
        if swept:
            swept_said = counted(len(swept), "stray process", "stray processes")
            view.note(f"killed {swept_said} of the dead orchestrator on Ray")
        # An environment left for a node that never took it (it may hold a leased key).
        for stale in (location.run_dir(row.id) / "logs").glob("*.env"):
            stale.unlink(missing_ok=True)
    # How attempts ended while nobody watched is read with every process of the run
    # stopped: what is recorded then ended by itself; what ends after we kill it (a shell
    # records the kill as its status) is not the attempt's result, and nothing can end
    # unseen between the reading and the kill.
    exits_file = str(location.run_dir(row.id) / "exits")
    strays = _freeze_strays(journal, row.id)
    ended = recorded_exits(exits_file)
    killed = await asyncio.to_thread(kill_pids, strays)
    if killed:
        view.note(
            f"killed {counted(killed, 'stray process', 'stray processes')} of the dead orchestrator"
        )
    interrupted: dict[str, tuple[int, Exit | None]] = {}
    now = time.time()
    # Until when the run was at work with no orchestrator: its attempts went on. To now
    # where one was still running (killed above) or ended at a time not known.
    busy_until = now if killed else 0.0
    for a in journal.attempts(row.id):
        if a.ended_at is not None:
            continue
        recorded = ended.get(f"{a.task_id}.{a.attempt}")
        exit_ = None
        # (Stopped by the machine going down: run it again, as an interrupted one.)
        if recorded is not None and not recorded.stopped_by_shutdown:
            start = a.started_at or now
            # (A time before the attempt started or after now is not of this attempt.)
            end = recorded.ended_at or now
            end = end if start <= end <= now else now
            busy_until = max(busy_until, end)
            exit_ = Exit(
                exit_code=recorded.status,
                signal=None,
                wall_s=max(0.0, end - start),
                maxrss_bytes=0,
                ended_at=end,
            )
        interrupted[a.task_id] = (a.attempt, exit_)
        if exit_ is None:
            journal.stage_attempt(
                row.id,
                a.task_id,
                a.attempt,
                state="interrupted",
                ended_at=now,
                reason="the orchestrator died",
            )
            task = wf.tasks.get(a.task_id)
            if task is not None and task.carry_work and a.base_commit and a.workdir:
                from abreast.workspace.repo import keep_files

                # its files, before the resumed run reuses its worktree (its processes
                # were stopped and killed above)
                keep_files(Path(a.workdir), row.id, a.task_id, a.attempt, ", cut short")
    me = os.getpid()
    options = row.options
    flags = {**wf.flags, **{k: v for k, v in options.get("flags", {}).items() if k in wf.flags}}
    cap = int(options.get("max_parallel") or wf.max_parallel)
    graph = TaskGraph.from_workflow(wf, history.for_workflow(wf, location))
    analysis = analyze(wf, flags=flags, max_parallel=cap, graph=graph)
    p = Prepared(wf, location, flags, cap, analysis, graph)
    # The time no orchestrator ran it (from the last one's end, or when it was last seen at
    # work if it died, to now) is not the run's: its wall time and savings leave it out;
    # but not the time its attempts went on running after it died.
    last_alive = max(row.finished_at or min(now, journal.last_alive(row)), busy_until)
    pauses = [list(span) for span in row.pauses] + ([[last_alive, now]] if now > last_alive else [])
    masked = masked_secrets(wf)  # this resume's environment's, and those the run had
    known = list(dict.fromkeys([*row.options.get("masked", []), *(fp for fp, _ in masked)]))
    outputs = {tuple(x) for x in row.options.get("output_files", [])} | own_output_files()
    options = {
        **row.options,
        "pauses": pauses,
        "masked": known,
        "output_files": sorted(outputs),
    }
    journal.stage_run(
        row.id,
        state="running",
        pid=me,
        pid_start=start_ticks(me) or 0,
        host=socket.gethostname(),
        heartbeat_at=now,
        finished_at=None,
        options=options,
        file=row.file,  # where it is now (`--file`: renamed or moved since)
    )
    added, removed = _adopt_changed_file(journal, row, p, options, retry) if force else ([], [])
    journal.stage_event(
        row.id,
        "run.resumed",
        killed=killed,
        forced=force,
        interrupted=sorted(interrupted),
        added=added,
        removed=removed,
        retried=sorted(retry - set(removed)),
    )
    for what, ids in (("added to", added), ("removed from", removed)):
        if ids:
            view.note(f"{', '.join(ids)}: {what} {row.file} since the run started")
    again = retry - set(removed) - journal.held_back(row.id)  # the others' work is checked
    if again:
        view.note(f"{', '.join(sorted(again))}: failed; run again")
    redone = redo[0] - set(removed)
    if redone:
        view.note(f"{', '.join(sorted(redone))}: succeeded; run again (--redo)")
        ids = list(wf.tasks)
        after = {d for t in redone for d in dag.ancestors(ids.index(t), graph.succs)}
        left = [ids[v] for v in sorted(after) if ids[v] not in redone]
        if left:
            one = len(left) == 1
            it, them = ("it", "it") if one else ("they", "them")
            view.note(
                f"{listed(left, 5)}, which need{'s' if one else ''} "
                f"{'it' if len(redone) == 1 else 'them'}, {'is' if one else 'are'} left as "
                f"{it} ended (--redo {them} too to run {them} again after)"
            )
    req = RunRequest(
        file=Path(row.file), monitor=monitor_on, isolation=isolation, land=bool(options.get("land"))
    )
    kind = options.get("isolation") or "none"
    if kind == "worktree":
        from abreast.workspace.repair import repair

        for line in await asyncio.to_thread(repair, location.root, row.id):
            view.note(line)
    supervisor = _supervisor(p, row.id, journal)
    keys = None
    try:  # the supervisor's backend connection is closed whatever stops us
        supervisor.forget_attempts([(task, n) for task, (n, _) in interrupted.items()])
        _release_dead_leases(supervisor, journal, row.id, view)
        keys = _keys(p, supervisor, journal, row.id)
        if keys is not None:
            keys.start()
        env = task_env(
            location, keys, cluster, row.options.get("tag"), worktrees=kind == "worktree"
        )
        engine = Engine(
            wf,
            row.id,
            location,
            journal,
            graph,
            _options(
                p,
                monitor_on,
                supervisor,
                env,
                keys=keys,
                cluster=cluster,
                fail_fast=bool(options.get("fail_fast")),
                masked=masked,
            ),
            view=view,
            isolation=_isolation(
                req,
                p,
                row.id,
                journal,
                kind,
                options.get("base_commit"),
                env,
                supervisor,
                keys,
                masked,
                options.get("base"),
            ),
            started_at=row.started_at,
            paused_s=sum(b - a for a, b in pauses),
        )
        rows = {t.task_id: dict(t.__dict__, busy_s=0.0) for t in journal.tasks(row.id)}
        for a in journal.attempts(row.id):  # what the attempts so far took, for the summary
            if a.task_id in rows and a.wall_s:
                rows[a.task_id]["busy_s"] += a.wall_s
        engine.restore(rows, interrupted, retry, redone, redo[1])
        journal.commit()
        return await engine.run()
    finally:
        if keys is not None:
            keys.stop()
        supervisor.close()


def _release_dead_leases(supervisor: Supervisor, journal: Journal, run_id: str, view: View) -> None:
    """The locks the dead orchestrator held for its tasks (and `abreast lock` in them),
    now that their processes are gone: given back, rather than left to hold up the tasks
    run again until their ttl runs out."""
    if supervisor.coord is None:
        return
    from abreast.engine.cleanup import release_dead_holders

    try:
        done = release_dead_holders(supervisor.coord, run_id)
    except CoordError as e:
        view.note(f"the dead orchestrator's locks were not looked at: {e}")
        return
    for what, lock, token in done:
        if token is None:
            view.note(f"left {what}")
            continue
        view.note(f"released {what}: its holder died with the orchestrator")
        journal.stage_event(
            run_id, "lock.released", lock=lock, token=token, reason="the orchestrator died"
        )


def _adopt_changed_file(
    journal: Journal,
    row: RunRow,
    p: Prepared,
    options: dict[str, Any],
    retry: frozenset[str] = frozenset(),
) -> tuple[list[str], list[str]]:
    """`resume --force` of a run whose workflow file changed: the run goes on as the file
    now says. Tasks added to it are journaled (pending); tasks removed from it that had
    not ended (or had failed, and were to be run again: `retry`) are journaled as
    skipped, with why (they will not run, and the run is not waiting for them); the
    file's checksum and plan become the new file's, so that another resume needs no
    --force. `options`: the run's, as this resume stages them. (added, removed) task
    ids."""
    if p.wf.source_sha256 == row.file_sha256:
        return [], []
    known = {t.task_id: t for t in journal.tasks(row.id)}
    added = [tid for tid in p.wf.tasks if tid not in known]
    removed = [tid for tid in known if tid not in p.wf.tasks]
    journal.stage_new_tasks(row.id, added, first_position=len(known))
    for tid in removed:
        state = known[tid].state
        again = retry and (tid in retry or state == TaskState.BLOCKED)  # runs no more
        if state not in TERMINAL or state == TaskState.CANCELLED or again:
            journal.stage_task(
                row.id,
                tid,
                state="skipped",
                reason="removed from the workflow file before the run was resumed",
            )
    plan = plan_summary(p.analysis, options.get("isolation") == "worktree")
    options = {**options, "plan": plan}
    journal.stage_run(row.id, file_sha256=p.wf.source_sha256, options=options)
    return added, removed


def _moved_file(row: RunRow, given: Path) -> Path:
    """`resume --file`: the run's workflow file where it is now, which must be a file of
    the run's project (its tasks run there)."""
    file = given.resolve()
    if not file.is_file():
        raise UsageError(f"--file {given}: no such file", hint="give the workflow file's path")
    root = Path(row.root).resolve()
    if not file.is_relative_to(root):
        raise UsageError(
            f"--file {given}: not in the project of run {row.id} ({root})",
            hint="give the run's workflow file where it is now, inside that project",
        )
    return file


def default_view() -> View:
    if sys.stdout.isatty():
        from abreast.observe.live import LiveView

        return LiveView()
    from abreast.observe.plain import PlainView

    return PlainView()
