"""Small tools the run tests share: scripted tasks that record what they did."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PY = sys.executable

# A task that records its start and end (monotonic clock, shared by all processes) and
# sleeps in between: `python record.py DIR SECONDS`.
RECORD = textwrap.dedent("""
    import json, os, sys, time
    d, seconds = sys.argv[1], float(sys.argv[2])
    task, attempt = os.environ["ABREAST_TASK_ID"], os.environ["ABREAST_ATTEMPT"]
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    with open(os.path.join(d, f"{task}.{attempt}.json"), "w") as f:
        json.dump({"task": task, "start": start, "end": end, "pid": os.getpid()}, f)
""")


def write_recorder(root: Path) -> str:
    """Write record.py under root; returns the command prefix to run it."""
    (root / "rec").mkdir(exist_ok=True)
    (root / "record.py").write_text(RECORD)
    return f"{PY} {root / 'record.py'} {root / 'rec'}"


def intervals(root: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for f in (root / "rec").glob("*.json"):
        data = json.loads(f.read_text())
        out[data["task"]] = (data["start"], data["end"])
    return out


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def max_concurrency(spans: dict[str, tuple[float, float]]) -> int:
    points = sorted(
        [(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()],
        key=lambda p: (p[0], p[1]),
    )
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def pairs_overlapping(
    spans: dict[str, tuple[float, float]], ids: list[str]
) -> list[tuple[str, str]]:
    return [(a, b) for a, b in itertools.combinations(ids, 2) if overlap(spans[a], spans[b])]


def query(db: Path, sql: str, *params: Any) -> list[Any]:
    """The rows of one SQL query on the SQLite file `db` (the connection closed after)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `predicate` until true or fail after `timeout` (for watching other processes)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def reaper(pid: int) -> tuple[Callable[[], bool], list[int]]:
    """For `wait_for`: a predicate that is true once child `pid` has ended, and the list
    its waitpid status is appended to then."""
    status: list[int] = []

    def ended() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(code)
        return bool(done)

    return ended, status


def ignored_signals(sigign_line: str) -> set[str]:
    """The names of the signals a `grep SigIgn /proc/$$/status` line says are ignored."""
    mask = int(sigign_line.split()[1], 16)
    return {s.name for s in signal.Signals if mask & (1 << (s - 1))}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_run(
    path: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`abreast run PATH --no-monitor --plain ARGS` in the background, with its run id
    (read from its first line). Returns (the Popen, the run id)."""
    proc = subprocess.Popen(
        [PY, "-m", "abreast", "run", str(path), "--no-monitor", "--plain", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("run: "), line
    return proc, line[5:].strip()


@contextlib.contextmanager
def ended_after(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever the test asserts, these processes it started are gone when it leaves:
    killed (by their pid) if they are still running."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def touched_after(*paths: Path) -> Iterator[None]:
    """Whatever the test asserts, these files exist when it leaves: the processes it
    started that wait for them (a task, a lock holder's command, in sessions of their
    own that killing their parent would not reach) end by themselves."""
    try:
        yield
    finally:
        for path in paths:
            path.touch()


def write_workflow(root: Path, name: str, tasks: dict[str, Any], **top: Any) -> Path:
    """ROOT/w.json: a workflow of `tasks` with `isolation: none` (unless `top` says)."""
    path = root / "w.json"
    spec = {"version": 1, "name": name, "isolation": "none", **top, "tasks": tasks}
    path.write_text(json.dumps(spec))
    return path


@contextlib.contextmanager
def engine_for(wf: Path, state: Path, options: Any, view: Any = None) -> Iterator[Any]:
    """An in-process Engine for workflow file `wf`, its run `r1` journaled in `state`
    (the journal closed when the block ends)."""
    from abreast.coord.journal import Journal
    from abreast.engine.engine import Engine
    from abreast.engine.runs import RunRequest, prepare

    p = prepare(RunRequest(file=wf, state=f"sqlite://{state}"))
    journal = Journal(state)
    journal.create_run(
        "r1",
        workflow=p.wf.name,
        file=str(wf),
        file_sha256="x",
        root=str(wf.parent),
        pid=0,
        pid_start=0,
        host="h",
        options={},
        task_ids=list(p.wf.tasks),
        started_at=0.0,
    )
    with journal:
        yield Engine(p.wf, "r1", p.location, journal, p.graph, options, view=view)


def disk_in_a_namespace(tmp_path: Path) -> tuple[Path, Path]:
    """(where to mount a tmpfs in a user+mount namespace of the test's own, `unshare
    -Urm`, and a directory outside it for what the script there says): a real small
    disk; skips the test where such namespaces cannot be made."""
    if subprocess.run(["unshare", "-Urm", "true"], check=False).returncode != 0:
        pytest.skip("no user namespaces here (unshare -Urm)")
    disk, said = tmp_path / "disk", tmp_path / "said"
    disk.mkdir()
    said.mkdir()
    return disk, said
