"""The command line: parse, call one function, print. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from abreast import __version__
from abreast.errors import AbreastError, UsageError, did_you_mean

if TYPE_CHECKING:
    from abreast.coord.journal import Journal, RunRow
    from abreast.engine.engine import RunOutcome, View
    from abreast.observe.dashboard_process import Observer

DEFAULT_FILE = "abreast.yaml"
# `abreast run --land` (or a resume of such a run): every task succeeded, but the result
# could not be brought into `base` (the summary says why; the result branch is kept).
EXIT_NOT_LANDED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
EXIT_HANGUP = 129  # 128 + SIGHUP: the run's terminal closed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own wording, but through our one error path (exit 2, no traceback).
        m = re.search(r"invalid choice: '([^']*)'", message)
        if m and self._subparsers is not None:
            choices = [
                c
                for a in self._subparsers._group_actions
                for c in (getattr(a, "choices", None) or {})
            ]
            message += did_you_mean(m.group(1), choices)
        raise UsageError(f"{message}", hint=f"see `{self.prog} --help`")


def _workflow_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        nargs="?",
        help=f"workflow file (default: {DEFAULT_FILE} here, else the nearest one above, "
        "up to the repository's top)",
    )


DEFAULT_NAMES = (DEFAULT_FILE, "abreast.yml")


def workflow_file(given: str | None, command: str, cwd: Path | None = None) -> str:
    """The workflow file a command reads: the one given, else `abreast.yaml` (or
    `abreast.yml`) in the current directory, else, inside a git repository, in the
    nearest directory above it that has one, up to the repository's top (as git finds
    its repository, so that a command typed in `src/` finds the project's workflow).
    One found above is said on stderr. None found: an error saying where it looked.
    `-`, or a pipe given as a path (`<(./gen.py)`, `/dev/stdin`), is read now: the
    workflow named `-` (`spec.loader.give`)."""
    if given is not None:
        return _read_given(given)
    here = Path.cwd() if cwd is None else cwd
    top = next((d for d in (here, *here.parents) if (d / ".git").exists()), here)
    for folder in (here, *here.parents):
        found = [folder / name for name in DEFAULT_NAMES if (folder / name).is_file()]
        if found:
            chosen = os.path.relpath(found[0], here)
            if folder != here:
                sys.stderr.write(f"note: using {chosen} (none in this directory)\n")
            elif len(found) > 1:
                sys.stderr.write(f"note: using {DEFAULT_FILE}; {found[1].name} is not read\n")
            return chosen
        if folder == top:
            break
    from abreast.errors import SpecError, SpecProblem

    where = f"in {here}"
    if top != here:
        where += f" nor above it up to the repository's top, {top}"
    raise SpecError(
        DEFAULT_FILE,
        [
            SpecProblem(
                f"no such file {where}",
                hint=f"give its path (`abreast {command} path/to/flow.yaml`), or write a "
                "starter abreast.yaml with `abreast init`",
            )
        ],
    )


def _read_given(given: str) -> str:
    """`given`, unless it is standard input or a pipe: then `-`, its bytes read."""
    import stat

    from abreast.spec import loader

    if given == loader.STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(
                "`-` reads the workflow from standard input, which is a terminal here",
                hint="pipe one in: ./make-workflow.py | abreast run -",
            )
        loader.give(sys.stdin.buffer.read())
        return given
    try:
        mode = os.stat(given).st_mode
    except OSError:
        return given  # said by the loader
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return given
    with open(given, "rb") as f:  # read once: a pipe cannot be read again
        if f.isatty():
            raise UsageError(
                f"{given} is a terminal: a workflow is read from a file or a pipe",
                hint="pipe one in: ./make-workflow.py | abreast run -",
            )
        loader.give(f.read())
    return loader.STDIN


def _kept_workflow(file: str) -> str:
    """The file a run reads its workflow from: `file`, or, for one read from standard
    input, a copy kept under the project's `.abreast/workflows/` (checked first, so that
    its mistakes are named as `-`), which `abreast resume` reads again."""
    import hashlib

    from abreast.coord.location import STATE_DIR, project_root
    from abreast.spec import load_workflow, loader
    from abreast.workspace.git import exclude_locally

    if file != loader.STDIN:
        return file
    load_workflow(file)
    data = loader.read_bytes(file)
    root, in_git = project_root(Path(file))
    suffix = ".json" if data.lstrip().startswith(b"{") else ".yaml"
    kept = root / STATE_DIR / "workflows" / f"stdin-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if in_git:
        exclude_locally(root, f"/{STATE_DIR}/")
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        if kept.exists():
            os.utime(kept)  # read again now: `cleanup --older-than` leaves it
        else:
            tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, kept)
    except OSError as e:
        raise UsageError(
            f"cannot keep the workflow read from standard input at {kept}: {e.strerror}",
            hint="write it to a file and give its path",
        ) from None
    sys.stderr.write(
        f"note: the workflow read from standard input is kept as {os.path.relpath(kept)} "
        "(`abreast resume` reads it there)\n"
    )
    return str(kept)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        metavar="URL",
        help="sqlite:///path/state.db or redis://host:port/db (default: "
        "$ABREAST_STATE, else .abreast/ at the project root)",
    )


def _flag_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="set a workflow flag (repeatable); NAME alone means true",
    )


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535. The socket layer would take
    65536 and up modulo 2**16, and a negative one with a confusing message."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535; 0: any free one)")
    return port


def _write_file(path: Path, text: str) -> None:
    """Write a file the user named; a path that cannot be written is their mistake to fix."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(
            f"cannot write {path}: {e.strerror or e}",
            hint="give a path in a directory that exists and that you can write to",
        ) from None


def _observe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="P",
        help="serve Prometheus metrics on 127.0.0.1:P during the run",
    )
    p.add_argument(
        "--dashboard",
        nargs="?",
        const=0,
        type=_port,
        metavar="PORT",
        help="serve the dashboard on 127.0.0.1 during the run (PORT, or a free one)",
    )
    p.add_argument(
        "--junit",
        metavar="FILE",
        help="at the end, write the run as JUnit XML (a test case per task), for CI",
    )


def _args_analyze(p: argparse.ArgumentParser) -> None:
    _workflow_arg(p)
    p.add_argument("--format", choices=("table", "json", "mermaid", "dot"), default="table")
    p.add_argument("--max-parallel", type=int, metavar="N")
    _flag_arg(p)
    _only_arg(p, "analyze only these tasks and those they need (repeatable)")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="count a task without `estimate:` as 1m, not as its time in earlier runs",
    )
    _state_arg(p)


def _only_arg(p: argparse.ArgumentParser, help_line: str) -> None:
    p.add_argument("--only", action="append", default=[], metavar="TASK[,TASK]", help=help_line)


def _args_schema(p: argparse.ArgumentParser) -> None:
    pass


def _args_validate(p: argparse.ArgumentParser) -> None:
    _workflow_arg(p)


def _args_run(p: argparse.ArgumentParser) -> None:
    _workflow_arg(p)
    p.add_argument("--run-id", metavar="ID", help="name the run (default: NAME-DATE-TIME-XXXX)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="tasks at once")
    p.add_argument("--sequential", action="store_true", help="one task at a time")
    _flag_arg(p)
    _only_arg(p, "run only these tasks and those they need (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the start order and exit")
    _state_arg(p)
    p.add_argument(
        "--no-monitor", action="store_true", help="do not lower the cap when CPU or memory is busy"
    )
    p.add_argument("--plain", action="store_true", help="plain lines, even on a terminal")
    p.add_argument(
        "--land",
        action="store_true",
        help="fast-forward `base` to the result when the run succeeds",
    )
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="after the first task fails, start nothing new; what runs finishes (as make "
        "without -k)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where tasks run: here (default), or on a Ray cluster",
    )
    _ray_address_arg(p)
    _observe_args(p)


def _ray_address_arg(p: argparse.ArgumentParser, resume: bool = False) -> None:
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="for a run started with --executor ray: the Ray cluster to use now, or `local` "
        "(default: the run's, else a local cluster started for it)"
        if resume
        else "the Ray cluster for --executor ray, or `local` (default: RAY_ADDRESS, else a "
        "local cluster started for the run)",
    )


def _args_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_id", metavar="RUN", nargs="?", help="default: the one run whose orchestrator died"
    )
    p.add_argument(
        "--force", action="store_true", help="resume even though the workflow file changed"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the failed tasks again (and those they blocked), keeping what succeeded, "
        "going by the workflow file as it is now; also for a run that ended failed "
        "(default RUN: the latest run)",
    )
    p.add_argument(
        "--retry",
        action="append",
        default=[],
        metavar="TASK[,TASK]",
        help="as --retry-failed, but only these failed tasks (repeatable); the others stay failed",
    )
    p.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="TASK[,TASK]",
        help="run again these tasks that succeeded (repeatable), from the files their work is "
        "in, told --feedback; also in a run that ended (default RUN: the latest run)",
    )
    p.add_argument(
        "--feedback",
        metavar="TEXT",
        help="with --redo: what the tasks are told of their work (your review), as "
        "$ABREAST_FEEDBACK and after an agent's prompt",
    )
    p.add_argument(
        "--file",
        metavar="FILE",
        help="the run's workflow file where it is now, renamed or moved in its project since "
        "the run started (a changed one as with --force)",
    )
    _state_arg(p)
    p.add_argument("--no-monitor", action="store_true")
    p.add_argument("--plain", action="store_true")
    _ray_address_arg(p, resume=True)
    _observe_args(p)


def _args_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", metavar="RUN")
    p.add_argument("--json", action="store_true", help="machine-readable (one run)")
    p.add_argument(
        "--all", action="store_true", help="with --json: every run, newest first (no tasks)"
    )
    p.add_argument("--watch", action="store_true", help="refresh until the run ends")
    _state_arg(p)


def _args_logs(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "%(prog)s [-h] [--attempt N] [-f] [--all] [--prompt | --check] [--state URL] [RUN] [TASK]"
    )
    p.add_argument(
        "ids",
        nargs="*",
        metavar="[RUN] [TASK]",
        help="RUN defaults to the latest run; no TASK: every task's log (as --all)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every task's log, each line under its task's name (with -f: as they grow)",
    )
    p.add_argument("--attempt", type=int, metavar="N", help="default: the latest")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows")
    p.add_argument(
        "--prompt",
        action="store_true",
        help="the prompt the attempt was given ($ABREAST_PROMPT: its `${{ }}` values in, "
        "and why the attempt before was sent back), not its log",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="the output of the attempt's red merge check (what sent it back), not its log",
    )
    _state_arg(p)


def _args_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN", nargs="?", help="default: the one run running")
    p.add_argument(
        "--drain",
        action="store_true",
        help="start nothing new; let the tasks running finish and land, then stop "
        "(`abreast resume RUN` runs the rest)",
    )
    _state_arg(p)


def _args_land(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN", nargs="?", help="default: the latest run")
    p.add_argument(
        "--partial",
        action="store_true",
        help="land the result of a run that failed or was cancelled: the work of the tasks "
        "that landed",
    )
    _state_arg(p)


def _args_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_port, default=8765, metavar="P", help="default 8765")
    p.add_argument(
        "--host", default="127.0.0.1", help="default 127.0.0.1; any other address needs --token"
    )
    p.add_argument(
        "--token",
        metavar="SECRET",
        help="required on every request (default: $ABREAST_DASHBOARD_TOKEN, which, unlike"
        " an argument, other users cannot read in the process list)",
    )
    _state_arg(p)


def _args_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", metavar="RUN", help="default: the latest run")
    p.add_argument("--json", action="store_true", help="machine-readable")
    _state_arg(p)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", metavar="RUN", help="default: the latest run")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--html", metavar="FILE", help="write a self-contained page")
    p.add_argument(
        "--junit", metavar="FILE", help="write a JUnit XML report (a test case per task), for CI"
    )
    _state_arg(p)


def _args_lock(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--ttl",
        default="30s",
        metavar="D",
        help="a holder that stops renewing loses the lock after this (default 30s)",
    )
    p.add_argument("--timeout", metavar="D", help="give up waiting after this (default: wait)")
    _state_arg(p)


def _args_cleanup(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list what would be done")
    mode.add_argument(
        "--force",
        action="store_true",
        help="also runs whose orchestrator looks alive but no longer heartbeats",
    )
    p.add_argument(
        "--results",
        action="store_true",
        help="also delete result branches (abreast/<run>/_integration)",
    )
    p.add_argument(
        "--older-than",
        metavar="D",
        help="also forget runs that ended more than D ago (e.g. 30d): their journal "
        "entries, logs and outputs",
    )
    _state_arg(p)


def _args_signal(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", action="store_true", help="keep the throwaway repository")
    p.add_argument("--plain", action="store_true")


def _args_diff(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "%(prog)s [-h] [--attempt N] [--stat | --name-only] [--state URL] [RUN] TASK\n"
        "       abreast diff [-h] --all [--stat | --name-only] [--state URL] [RUN]"
    )
    p.add_argument("ids", nargs="*", metavar="[RUN] TASK", help="RUN defaults to the latest run")
    p.add_argument(
        "--all",
        action="store_true",
        help="the run's whole result against where it started (what bringing it in changes)",
    )
    p.add_argument(
        "--attempt",
        type=int,
        metavar="N",
        help="this attempt (default: the latest whose work was taken in)",
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--stat", action="store_true", help="files changed and lines, not lines")
    shape.add_argument("--name-only", action="store_true", help="the paths changed only")
    _state_arg(p)


def _args_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default=DEFAULT_FILE)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


# Each command: its line in --help, and what adds its own arguments.
_COMMAND_ARGS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "analyze": ("show waves, critical path, estimates and overlaps", _args_analyze),
    "schema": ("print the JSON Schema of the workflow file", _args_schema),
    "validate": ("check a workflow file and say what is wrong", _args_validate),
    "run": ("run a workflow", _args_run),
    "resume": ("carry on a run whose orchestrator died", _args_resume),
    "status": ("list runs, or show one run's tasks", _args_status),
    "logs": ("print a task's log", _args_logs),
    "diff": ("show what a task changed (its attempt's commits, as git diff)", _args_diff),
    "cancel": ("stop a running run", _args_cancel),
    "land": ("bring a finished run's result into its base branch, checked", _args_land),
    "dashboard": ("serve a live, read-only web view of the runs", _args_dashboard),
    "keys": ("API key use per key, by fingerprint", _args_keys),
    "report": ("what a run did and what parallelism saved", _args_report),
    "lock": ("run a command holding a named lock (e.g. the test lock)", _args_lock),
    "cleanup": ("remove what finished or dead runs left behind", _args_cleanup),
    "signal": ("(inside a task) announce a signal dependents wait for", _args_signal),
    "demo": ("run a realistic workflow in a throwaway repository", _args_demo),
    "init": ("write a starter abreast.yaml here", _args_init),
}


_USAGE = {"lock": "abreast lock NAME [--ttl D] [--timeout D] [--state URL] -- CMD ..."}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, the other commands are left out (it is all that
    `abreast ONLY ...` parses, and building all seventeen costs a few ms of every start)."""
    parser = _Parser(prog="abreast", description="Run a workflow's tasks side by side, safely.")
    parser.add_argument("--version", action="version", version=f"abreast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_line, add_arguments) in _COMMAND_ARGS.items():
        if only is None or name == only:
            add_arguments(sub.add_parser(name, help=help_line, usage=_USAGE.get(name)))
    return parser


def cmd_analyze(args: argparse.Namespace) -> int:
    from abreast.plan import analyze
    from abreast.plan.render import render
    from abreast.spec import load_workflow
    from abreast.spec.overrides import flag_overrides, only_tasks, parallel_cap

    file = workflow_file(args.file, "analyze")
    wf = load_workflow(file)
    if args.only:
        wf = only_tasks(wf, args.only)
    flags, cap = flag_overrides(wf, args.flag), parallel_cap(wf, args.max_parallel)
    graph, checked = None, None
    if not args.no_history:
        from abreast.coord.location import locate
        from abreast.plan import TaskGraph, history

        location = locate(Path(file), args.state, look_only=True)
        graph = TaskGraph.from_workflow(wf, history.for_workflow(wf, location))
        if wf.checks:
            checked = history.check_time(location.journal, wf, str(location.root))
    analysis = analyze(wf, flags=flags, max_parallel=cap, graph=graph, check_time=checked)
    print(render(analysis, args.format))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from abreast.spec.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from abreast.spec import load_workflow
    from abreast.spec.durations import counted

    file = workflow_file(args.file, "validate")
    wf = load_workflow(file)
    print(f"{file}: ok ({counted(len(wf.tasks), 'task')})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from abreast.starter import starter_for
    from abreast.workspace.git import toplevel

    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    where = path.parent if path.parent.is_dir() else Path(".")
    try:  # commands run at the repository's root: its files say what its tests are
        root = toplevel(where) or where
    except UsageError:  # a bare repository, git not installed: nothing to read there
        root = where
    text, found = starter_for(root)
    _write_file(path, text)
    print(f"wrote {path}; try `abreast analyze {path}`")
    if found:
        print(found)
    return 0


def _view(plain: bool) -> View:
    from abreast.engine.runs import default_view
    from abreast.observe.plain import PlainView

    return PlainView() if plain else default_view()


def _announce(run_id: str) -> None:
    print(f"run: {run_id}", flush=True)


def _junit_target(args: argparse.Namespace) -> Path | None:
    """Where `--junit` writes at the run's end, checked now: a directory that is not there
    (or not writable) is said before the run, not after it."""
    if getattr(args, "junit", None) is None:
        return None
    if getattr(args, "dry_run", False):
        raise UsageError("--junit writes what a run did; a dry run does nothing")
    path = Path(args.junit).absolute()
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UsageError(
            f"--junit {args.junit}: cannot write a file there",
            hint="give a file's path in a directory that exists and that you can write to",
        )
    return path


def _finish(outcome: RunOutcome, junit: Path | None = None) -> int:
    from abreast.observe.summary import summarize

    summarize(outcome, sys.stdout)
    journal_path = outcome.journal_path
    if journal_path is not None and journal_path.exists():
        from abreast.coord.journal import Journal
        from abreast.observe import report

        with Journal(journal_path) as journal:
            print(report.closing(journal, outcome.run_id))
            if junit is not None:  # the run's own exit status stays whatever happens here
                try:
                    _write_file(junit, report.junit_xml(report.build(journal, outcome.run_id)))
                    print(f"  junit: wrote {junit}")
                except UsageError as e:
                    print(f"abreast: {e}", file=sys.stderr)
    if outcome.interrupted:  # Ctrl-C, or the terminal closed
        return 128 + outcome.interrupted
    if outcome.state != "succeeded":
        return 1
    return EXIT_NOT_LANDED if outcome.unlanded else 0


@contextlib.contextmanager
def _observing(args: argparse.Namespace, wanted: bool = True) -> Iterator[Observer | None]:
    """The run's observer, for --dashboard / --metrics-port (None without them): its ports
    bound (a busy one stops us before anything is written) and its process started now, so
    that its start-up overlaps ours; stopped when the command ends."""
    if not wanted or (args.dashboard is None and args.metrics_port is None):
        yield None
        return
    from abreast.observe.dashboard_process import Observer

    observer = Observer(args.dashboard, args.metrics_port)
    try:
        observer.spawn()
        yield observer
    finally:
        observer.stop()


def cmd_run(args: argparse.Namespace) -> int:
    junit = _junit_target(args)
    with _observing(args, wanted=not args.dry_run) as observer:
        from abreast.engine.runs import RunRequest, dry_run, start_run

        req = RunRequest(
            file=Path(
                workflow_file(args.file, "run")
                if args.dry_run
                else _kept_workflow(workflow_file(args.file, "run"))
            ),
            run_id=args.run_id,
            max_parallel=args.max_parallel,
            sequential=args.sequential,
            flags=args.flag,
            state=args.state,
            monitor=not args.no_monitor,
            land=args.land,
            observer=observer,
            executor=args.executor,
            ray_address=args.ray_address,
            only=args.only,
            fail_fast=args.fail_fast,
        )
        if args.ray_address and args.executor != "ray":
            raise UsageError(
                "--ray-address is for --executor ray", hint="add --executor ray, or leave it out"
            )
        if args.dry_run:
            return dry_run(req, sys.stdout)
        return _finish(start_run(req, _view(args.plain), _announce), junit)


def cmd_resume(args: argparse.Namespace) -> int:
    if args.retry and args.retry_failed:
        raise UsageError(
            "--retry and --retry-failed together",
            hint="--retry-failed runs every failed task again; --retry TASK only those named",
        )
    if args.feedback is not None and not args.redo:
        raise UsageError(
            "--feedback is what --redo tasks are told; no --redo was given",
            hint="--redo TASK --feedback TEXT runs TASK again, told TEXT",
        )
    if args.run_id is None and (args.retry_failed or args.retry or args.redo):  # the latest
        from abreast.engine.lookup import find_run, open_journal

        _, journal = open_journal(None, args.state)
        with journal:
            args.run_id = find_run(journal, None).id
    elif args.run_id is None:  # the run whose orchestrator is gone, if one is
        from abreast.engine.lookup import only_run, open_journal, orchestrator_alive

        def gone(r: RunRow) -> bool:
            return r.state == "running" and not orchestrator_alive(r)

        _, journal = open_journal(None, args.state)
        with journal:
            latest = journal.latest_run()
            if latest is not None and not any(gone(r) for r in journal.runs(200)):
                if latest.state == "failed":  # typed after it failed: say what will help
                    raise UsageError(
                        f"no run was interrupted; the latest, {latest.id}, failed",
                        hint=f"`abreast resume {latest.id} --retry-failed` runs what failed "
                        "again, keeping what succeeded",
                    )
                if latest.state == "cancelled":  # Ctrl-C, `abreast cancel [--drain]`
                    args.run_id = latest.id
                if latest.state == "running":  # its orchestrator is alive: nothing to resume
                    raise UsageError(
                        f"no run was interrupted; the latest, {latest.id}, is running "
                        f"(orchestrator pid {latest.pid} on {latest.host})",
                        hint=f"`abreast status {latest.id} --watch` follows it; `abreast "
                        f"cancel {latest.id}` stops it",
                    )
            if args.run_id is None:
                args.run_id = only_run(journal, gone, "was interrupted", "were interrupted").id
    junit = _junit_target(args)
    with _observing(args) as observer:
        from abreast.engine.runs import resume_run

        outcome = resume_run(
            args.run_id,
            state=args.state,
            force=args.force,
            view=_view(args.plain),
            announce=_announce,
            monitor=not args.no_monitor,
            observer=observer,
            ray_address=args.ray_address,
            retry_failed=args.retry_failed,
            retry=args.retry,
            file=args.file,
            redo=args.redo,
            feedback=args.feedback,
        )
    return _finish(outcome, junit)


def cmd_status(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import open_journal

    _, journal = open_journal(None, args.state)
    with journal:
        return _status(args, journal)


def _status(args: argparse.Namespace, journal: Journal) -> int:
    from abreast.engine.lookup import find_run
    from abreast.observe import status

    if args.all:
        if args.run_id is not None or args.watch:
            raise UsageError("--all lists every run: give no RUN, and no --watch")
        if args.json:
            status.dump(status.runs_json(journal), sys.stdout)
        else:
            status.print_runs(journal, sys.stdout, limit=None)
        return 0
    if args.run_id is None and not args.json and not args.watch:
        status.print_runs(journal, sys.stdout)
        return 0
    row = find_run(journal, args.run_id)
    if args.json:
        status.dump(status.status_json(journal, row), sys.stdout)
        return 0
    if not args.watch:
        status.print_run(journal, row, sys.stdout)
        return 0
    if not sys.stdout.isatty():
        status.watch_plain(journal, lambda: find_run(journal, row.id), sys.stdout)
        return 0
    import io
    import time

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from abreast.observe.output import reader_gone

    def frame() -> Text:
        buf = io.StringIO()
        status.print_run(journal, find_run(journal, row.id), buf)
        return Text(buf.getvalue())

    with Live(frame(), console=Console(), refresh_per_second=2) as live:
        while status.run_state(find_run(journal, row.id)) == "running":
            time.sleep(1.0)  # a viewer re-reading the journal
            live.update(frame())
            if reader_gone(sys.stdout):
                return 0
        live.update(frame())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import find_run, open_journal
    from abreast.observe import status
    from abreast.observe.output import keep_bytes

    for option in ("prompt", "check"):
        if getattr(args, option) and (args.all or args.follow or not args.ids):
            raise UsageError(
                f"--{option} is for one task's attempt, without --all or -f",
                hint=f"abreast logs [RUN] TASK --{option} [--attempt N]",
            )
    if args.prompt and args.check:
        raise UsageError(
            "--prompt and --check show different things: one at a time",
            hint="abreast logs [RUN] TASK --prompt; abreast logs [RUN] TASK --check",
        )
    if args.all or not args.ids:
        return _all_logs(args)
    run_id, task_id = _run_and_task(args.ids, "logs")
    _, journal = open_journal(None, args.state)
    with journal:
        row = find_run(journal, run_id)
        wait = sys.stderr if args.follow else None
        attempt = status.find_attempt(journal, row.id, task_id, args.attempt, wait)
        if args.prompt:
            sys.stdout.write(status.attempt_prompt(journal, attempt))
            return 0
        keep_bytes(sys.stdout)
        if args.check:
            status.show_check_log(journal, attempt, sys.stdout)
            return 0
        status.show_log(
            journal,
            attempt,
            sys.stdout,
            args.follow,
            next_attempts=args.attempt is None,  # a named attempt is followed alone
            note=sys.stderr,
        )
    return 0


def _run_and_task(ids: list[str], command: str, more: str = "") -> tuple[str | None, str]:
    """`[RUN] TASK` of `abreast logs` and `abreast diff`: RUN None for the latest run."""
    if not ids or len(ids) > 2:
        raise UsageError(
            f"abreast {command} takes a run and a task, not {len(ids)} names",
            hint=f"abreast {command} [RUN] TASK{more}",
        )
    return (ids[0], ids[1]) if len(ids) == 2 else (None, ids[0])


def cmd_diff(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import find_run, open_journal
    from abreast.observe import diff

    shape = ["--stat"] if args.stat else ["--name-only"] if args.name_only else []
    if args.all:
        if len(args.ids) > 1 or args.attempt is not None:
            raise UsageError(
                "abreast diff --all takes a run at most (no task, no --attempt)",
                hint="abreast diff [RUN] --all; one task's: abreast diff [RUN] TASK",
            )
        location, journal = open_journal(None, args.state)
        with journal:
            row = find_run(journal, args.ids[0] if args.ids else None)
            return diff.show_result(journal, row, shape, sys.stderr, location.root)
    run_id, task_id = _run_and_task(
        args.ids, "diff", "; the whole result: abreast diff [RUN] --all"
    )
    location, journal = open_journal(None, args.state)
    with journal:
        row = find_run(journal, run_id)
        return diff.show(journal, row, task_id, args.attempt, shape, sys.stderr, location.root)


def _all_logs(args: argparse.Namespace) -> int:
    """`abreast logs [RUN] --all [-f]` (or no TASK): every task's log, line by line
    under its name."""
    from abreast.engine.lookup import find_run, open_journal
    from abreast.observe.alllogs import show_all_logs

    if len(args.ids) > 1:
        raise UsageError(
            f"abreast logs --all takes a run at most, not {len(args.ids)} names",
            hint="abreast logs [RUN] --all [-f]; one task's log: abreast logs [RUN] TASK",
        )
    if args.attempt is not None:
        raise UsageError(
            "--attempt is for one task's log", hint="abreast logs [RUN] TASK --attempt N"
        )
    _, journal = open_journal(None, args.state)
    with journal:
        row = find_run(journal, args.ids[0] if args.ids else None)
        show_all_logs(journal, row.id, sys.stdout, args.follow, sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import find_run, only_run, open_journal
    from abreast.engine.runs import cancel_run

    _, journal = open_journal(None, args.state)
    with journal:
        if args.run_id is not None:
            row = find_run(journal, args.run_id)
        else:
            row = only_run(journal, lambda r: r.state == "running", "is running", "are running")
        print(cancel_run(journal, row, drain=args.drain))
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    from abreast.engine.landing import land_run, say

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return say(land_run(args.run_id, state=args.state, partial=args.partial, note=note))


def cmd_dashboard(args: argparse.Namespace) -> int:
    from abreast.coord.location import locate
    from abreast.observe.dashboard import serve

    token = args.token or os.environ.get("ABREAST_DASHBOARD_TOKEN") or None
    serve(locate(None, args.state), args.host, args.port, token)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import find_run, open_journal
    from abreast.keys.usage import print_tokens, print_usage, usage
    from abreast.observe.rundata import token_use

    _, journal = open_journal(None, args.state)
    try:
        row = find_run(journal, args.run_id)
        rows = usage(journal, row.id)
        tokens = token_use(journal, row.id, per="pool")
    finally:
        journal.close()
    limits: dict[str, str] = {}
    try:
        from abreast.spec import load_workflow

        wf = load_workflow(row.file)
        limits = {
            name: f"{spec.limit[0]}/{spec.limit[1]:g}s" if spec.limit else "-"
            for name, spec in wf.keys.items()
        }
    except AbreastError:
        pass  # the file moved or changed: usage without limits
    if args.json:
        for r in rows:
            r["limit"] = limits.get(r["pool"])
        print(json.dumps({"run": row.id, "keys": rows, "tokens": tokens}, indent=2))
        return 0
    print(f"run {row.id}")
    print_usage(rows, limits, sys.stdout)
    print_tokens(tokens, sys.stdout)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import find_run, open_journal
    from abreast.observe import report

    _, journal = open_journal(None, args.state)
    try:
        rep = report.build(journal, find_run(journal, args.run_id).id)
    finally:
        journal.close()
    if args.html:
        _write_file(Path(args.html), report.html_page(rep))
        print(f"wrote {args.html}")
    if args.junit:
        _write_file(Path(args.junit), report.junit_xml(rep))
        print(f"wrote {args.junit}")
    if args.json:
        print(report.as_json(rep))
    elif not args.html and not args.junit:
        print(report.text(rep))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from abreast.coord.backend import CoordError, open_coordinator
    from abreast.coord.journal import Journal
    from abreast.coord.location import locate
    from abreast.engine.cleanup import cleanup, lease_releaser
    from abreast.engine.lookup import waiting_note

    forget_before = None
    if args.older_than is not None:
        import time

        from abreast.spec.durations import parse_duration

        try:
            forget_before = time.time() - parse_duration(args.older_than)
        except ValueError as e:
            raise UsageError(f"--older-than: {e}") from None
    location = locate(None, args.state)
    journal = Journal(location.journal) if location.journal.exists() else None
    coord = None
    # (A SQLite store that is not there holds no lease: not made here, where nothing ran.)
    if location.coord_file is None or location.coord_file.exists():
        try:
            coord = open_coordinator(location.coord_url)
        except CoordError as e:
            print(f"abreast: note: leases not checked: {e}", file=sys.stderr)
    # Resume and cancel wait while this takes runs down (it reads each run's state once).
    kept: list[tuple[str, bool]] = []  # result branches left (no --results), unlanded?
    hold = (
        journal.exclusive(waiting_note("cleaning up"))
        if journal is not None and not args.dry_run
        else contextlib.nullcontext()
    )
    try:
        with hold:
            plans = cleanup(
                journal,
                location.root,
                dry_run=args.dry_run,
                force=args.force,
                results=args.results,
                release_leases=lease_releaser(coord) if coord else None,
                forget_before=forget_before,
                runs_dir=location.runs_dir,
                kept_results=kept,
            )
            compacted = (
                _compact(journal)
                if journal is not None and not args.dry_run and any(p.forget for p in plans)
                else None
            )
    finally:
        if journal is not None:
            journal.close()
        if coord is not None:
            coord.close()
    if not plans:
        print("nothing to clean up")
        _say_kept_results(kept)
        return 0
    for plan in plans:
        verb = "would" if args.dry_run else "did"
        print(f"{plan.run_id} ({plan.reason}): {verb}")
        for action in plan.actions:
            print(f"  {action}")
    if compacted:
        print(compacted)
    _say_kept_results(kept)
    return 0


def _say_kept_results(kept: list[tuple[str, bool]]) -> None:
    """Result branches pile up run after run, and `cleanup` alone never deletes them;
    those whose work no branch of yours has are said first, with how to land them."""
    from abreast.spec.durations import counted, listed

    if not kept:
        return
    n = len(kept)
    kept = sorted(kept, key=lambda k: not k[1])  # not landed first
    names = [name for name, _ in kept]
    shown = listed(names, 3)
    unlanded = [
        name.removeprefix("abreast/").removesuffix("/_integration") for name, lost in kept if lost
    ]
    runs = listed(unlanded, 3)
    said = (
        f"the work of {'run ' if len(unlanded) == 1 else 'runs '}{runs} is in no branch of "
        f"yours: `abreast land {unlanded[0] if len(unlanded) == 1 else 'RUN'}` brings it in; "
        if unlanded
        else "merge what you want from them; "
    )
    print(
        f"kept {counted(n, 'result branch', 'result branches')}: {shown} "
        f"({said}`abreast cleanup --results` deletes them)"
    )


def _compact(journal: Journal) -> str:
    """After forgetting runs, shrink the journal file, unless a run is writing to it."""
    from abreast.engine.lookup import orchestrator_alive
    from abreast.spec.durations import format_size

    if any(r.state == "running" and orchestrator_alive(r) for r in journal.runs(None)):
        return "journal: not compacted while a run runs (the pages freed are used again)"
    before = journal.path.stat().st_size
    journal.compact()
    after = journal.path.stat().st_size
    return f"journal: {format_size(before)} -> {format_size(after)} ({journal.path})"


def cmd_lock(args: argparse.Namespace) -> int:
    from abreast.engine.lockcmd import lock_command

    return lock_command(args.name, args.cmd, ttl=args.ttl, timeout=args.timeout, state=args.state)


def cmd_signal(args: argparse.Namespace) -> int:
    from abreast.engine.lookup import signal_run

    print(signal_run(args.name))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from abreast import demo
    from abreast.engine.runs import RunRequest, start_run
    from abreast.workspace.git import MIN_TEXT, worktree_git_problem

    problem = worktree_git_problem()
    if problem:  # its agents work each in a worktree of a throwaway repository
        raise UsageError(
            f"abreast demo needs git {MIN_TEXT} or later; {problem}",
            hint=f"install git {MIN_TEXT} or later",
        )
    root, keep = demo.throwaway_dir(args.keep)
    try:
        workflow = demo.make_project(root, isolation="worktree")
        print(f"demo project: {root} (a throwaway git repository)")
        outcome = start_run(RunRequest(file=workflow, monitor=False), _view(args.plain), _announce)
        code = _finish(outcome)
        print("\n" + demo.describe_result(root, outcome.run_id))
        print(
            f"try: abreast status --state sqlite://{root}/.abreast/state.db {outcome.run_id}"
            if keep
            else "(the throwaway repository was removed; --keep keeps it)"
        )
        return code
    finally:
        if not keep:
            demo.remove(root)


# What starts, supervises or kills processes: Linux only (/proc, CLOCK_BOOTTIME, subreaper).
NEEDS_LINUX = frozenset({"run", "resume", "cancel", "land", "cleanup", "lock", "demo", "signal"})

COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "logs": cmd_logs,
    "diff": cmd_diff,
    "cancel": cmd_cancel,
    "land": cmd_land,
    "signal": cmd_signal,
    "cleanup": cmd_cleanup,
    "dashboard": cmd_dashboard,
    "report": cmd_report,
    "keys": cmd_keys,
    "lock": cmd_lock,
    "demo": cmd_demo,
    "analyze": cmd_analyze,
    "schema": cmd_schema,
    "validate": cmd_validate,
    "init": cmd_init,
}


def main(argv: Sequence[str] | None = None) -> int:
    as_process = argv is None  # the `abreast` command itself, not a caller in Python
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in _COMMAND_ARGS else None)
    # `abreast lock NAME [options] -- CMD ...`: what follows `--` is the command, untouched.
    command: list[str] = []
    if argv[:1] == ["lock"] and "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    from abreast.observe.output import guard_standard_streams

    guard_standard_streams()  # a reader that goes away (`| head`) must not end a run
    code = _main(parser, argv, command)
    if code in (EXIT_INTERRUPTED, EXIT_HANGUP) and as_process and command == []:
        _die_of(code - 128)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # what is still buffered, so that a failure to write it shows
    failed = getattr(sys.stdout, "failed", None)
    if failed is not None:  # the command ran; what it printed did not all arrive
        print(f"abreast: error: could not write to standard output: {failed}", file=sys.stderr)
        return code or 1
    return code


def _die_of(signum: int) -> None:
    """End as the signal that cancelled the run ended us: killed by SIGINT (Ctrl-C) or
    SIGHUP (the terminal closed), as shells expect of a command that was interrupted. A
    shell running `for f in *.yaml; do abreast run "$f"; done` stops the loop only if its
    command died of the signal; one that exits (even with 130) is taken to have dealt with
    it, and the loop goes on to the next run."""
    import signal

    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _unrecognized(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> None:
    """argparse's "unrecognized arguments", but with the command's own --help, and the
    closest option of that command to a misspelt one (`--max-paralel`)."""
    sub = next(
        (
            a.choices[command]
            for a in parser._subparsers._group_actions  # type: ignore[union-attr]
            if command and isinstance(a.choices, dict) and command in a.choices
        ),
        None,
    )
    options = list(sub._option_string_actions) if sub is not None else []
    first = next((x.split("=", 1)[0] for x in extra if x.startswith("--")), None)
    said = did_you_mean(first, options) if first else ""
    where = f"abreast {command}" if sub is not None else "abreast"
    raise UsageError(
        f"unrecognized arguments: {' '.join(extra)}{said}", hint=f"see `{where} --help`"
    )


def _main(parser: argparse.ArgumentParser, argv: list[str], command: list[str]) -> int:
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            _unrecognized(parser, args.command, extra)
        args.cmd = command
        if not args.command:
            parser.print_help()
            return 2
        if args.command in NEEDS_LINUX and not sys.platform.startswith("linux"):
            raise UsageError(
                f"abreast {args.command} runs on Linux only (it supervises processes through"
                f" /proc and Linux clocks); this is {sys.platform}",
                hint="analyze, validate, schema, init, status, logs, diff and report work here",
            )
        return COMMANDS[args.command](args)
    except AbreastError as e:
        print(f"abreast: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("abreast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:  # last: a GitError only (imported when one may be it)
        from abreast.workspace.git import GitError

        if not isinstance(e, GitError):
            raise
        # The repository refused something (permissions, a full disk, a corrupt object):
        # what git said, not a traceback.
        print(f"abreast: error: {e}\n  hint: {e.hint}", file=sys.stderr)
        return 1
