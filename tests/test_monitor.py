"""The adaptive cap (seed US-043's table), and the engine honouring it on a real run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from abreast.coord.journal import Journal
from abreast.engine.cgroup import Cgroup
from abreast.engine.engine import EngineOptions
from abreast.engine.monitor import ResourceMonitor, adaptive_cap
from abreast.observe import report
from abreast.observe.plain import PlainView
from abreast.observe.summary import summarize
from tests.helpers import engine_for, intervals, max_concurrency, query, wait_for, write_recorder


@pytest.mark.parametrize(
    ("use", "cap"), [(10, 4), (49.9, 4), (50, 3), (69, 3), (70, 2), (79.9, 2), (80, 1), (100, 1)]
)
def test_the_seed_table_with_cap_4(use: float, cap: int) -> None:
    assert adaptive_cap(4, use, (50, 70, 80)) == cap


def test_thresholds_are_configurable_and_never_below_one() -> None:
    assert adaptive_cap(8, 35, (30, 40, 60)) == 7
    assert adaptive_cap(8, 45, (30, 40, 60)) == 4
    assert adaptive_cap(1, 75, (50, 70, 80)) == 1
    assert adaptive_cap(2, 55, (50, 70, 80)) == 1


def test_monitor_smooths_and_takes_the_larger_of_cpu_and_memory() -> None:
    samples = iter([(0, 0), (90, 10), (10, 10), (10, 10)])
    m = ResourceMonitor(sample=lambda: next(samples), smoothing=0.5)
    assert m.update() is None  # the first sample only primes psutil's CPU counter
    assert m.update() == 90
    assert m.update() == 50  # smoothed: one quiet sample does not undo a burst at once
    assert m.cap(4) == 3
    assert "cpu 10%" in (m.reason(4) or "")


@pytest.mark.parametrize(("use", "expected"), [(90.0, 1), (60.0, 2)])
def test_engine_starts_no_more_than_the_monitor_allows(
    tmp_path: Path, use: float, expected: int
) -> None:
    rec = write_recorder(tmp_path)
    wf = tmp_path / "w.json"
    wf.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "mon",
                "isolation": "none",
                "max_parallel": 3,
                "tasks": {f"t{i}": {"run": f"{rec} 0.3"} for i in range(5)},
            }
        )
    )
    monitor = ResourceMonitor(sample=lambda: (use, 20.0))
    monitor.update()
    monitor.update()
    options = EngineOptions(cap=3, flags={}, monitor=monitor, tick_s=0.05)
    said = io.StringIO()
    with engine_for(wf, tmp_path / "state.db", options, view=PlainView(said)) as engine:
        outcome = asyncio.run(engine.run())
        reasons = engine.waiting_reasons()
    assert outcome.state == "succeeded"
    assert max_concurrency(intervals(tmp_path)) == expected
    assert reasons == {}  # nothing waits once the run is over
    # Why tasks waited with slots free, said as it happened and in the summary (a CI's
    # log showed tasks not starting, and no reason).
    why = f"resources over threshold (cpu {use:.0f}%, memory 20%): cap {expected} of 3"
    assert outcome.lowest_cap == (expected, why)
    lines = said.getvalue().splitlines()
    assert sum("the resource monitor lowered the cap" in line for line in lines) == 1
    assert lines[0].endswith(f"the resource monitor lowered the cap: {why}"), lines
    summary = io.StringIO()
    summarize(outcome, summary)
    assert f"  the resource monitor lowered the cap; at its lowest: {why}\n" in summary.getvalue()
    with Journal(tmp_path / "state.db") as journal:  # and the report, from the journal
        rep = report.build(journal, "r1")
    told = f"resource monitor: cap 3, lowered once, to {expected} at the lowest ({why})"
    assert f"\n  {told}\n" in report.text(rep) + "\n"
    assert f"<p>{told}</p>" in report.html_page(rep)


# -- containers: the cgroup's own limits ------------------------------------------------------

V1_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A real cgroup v1 memory group of our own (root, and a v1 memory hierarchy, needed)."""
    group = V1_MEMORY / f"abreast-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    try:
        yield group
    finally:
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), what="group empty")
        group.rmdir()


def in_group(group: Path, cwd: Path, *python_args: str) -> subprocess.CompletedProcess[str]:
    """Run this Python with `python_args` as a member of cgroup `group` from its start."""
    return subprocess.run(
        [
            "sh",
            "-c",
            f'echo $$ > {group}/cgroup.procs && exec "$@"',
            "sh",
            sys.executable,
            *python_args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_container_memory_limit_lowers_the_cap_though_the_host_has_room(
    tmp_path: Path, memory_cgroup: Path
) -> None:
    # The run, and so its tasks, in a group limited to 512 MB on a host with gigabytes
    # free: a task holding 420 MB fills the group (over 80%), not the host (a few %). The
    # monitor read the host's figures only, and let every task start.
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(512 << 20))
    host = psutil.virtual_memory()
    assert host.available > 4 << 30, "the test wants a host with room to spare"
    hog = (
        f"{sys.executable} -c \"b = bytearray(420 << 20); b[::4096] = b'x' * len(b[::4096]); "
        f"open('{tmp_path}/holding', 'w').close(); import time; time.sleep(4)\""
    )
    recorder = write_recorder(tmp_path)
    tasks: dict[str, Any] = {"hog": {"run": hog}}
    # Each waits until the hog holds its memory, then takes a moment.
    wait = f"until [ -e {tmp_path}/holding ]; do sleep 0.05; done; sleep 2.5; "
    tasks.update({f"t{i}": {"run": wait + f"{recorder} 0.1"} for i in range(4)})
    path = tmp_path / "abreast.yaml"
    path.write_text(
        json.dumps({"version": 1, "max_parallel": 4, "isolation": "none", "tasks": tasks})
    )
    proc = in_group(memory_cgroup, tmp_path, "-m", "abreast", "run", str(path), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = tmp_path / ".abreast" / "state.db"
    caps = [json.loads(d) for (d,) in query(db, "SELECT data FROM events WHERE type = 'run.cap'")]
    lowered = [c for c in caps if c["cap"] < 4]
    assert lowered, (caps, proc.stdout)
    assert "memory" in lowered[0]["reason"]
    memory = float(lowered[0]["reason"].split("memory ")[1].split("%")[0])
    assert memory >= 70  # the group's use: the host's was a few percent
    # The dashboard's resources are the same figures (they were the host's).
    run_id = proc.stdout.splitlines()[0].removeprefix("run: ")
    look = (
        "import json, sys, urllib.request\n"
        "from abreast.coord.location import locate\n"
        "from abreast.observe.dashboard import DashboardServer\n"
        "held = bytearray(420 << 20); held[::4096] = b'x' * len(held[::4096])\n"
        "board = DashboardServer(locate(__import__('pathlib').Path(sys.argv[1])))\n"
        "board.start()\n"
        "with urllib.request.urlopen(board.url + 'api/runs/' + sys.argv[2]) as page:\n"
        "    snap = json.loads(page.read())\n"
        "    print(json.dumps([snap['resources'], snap['cap']]))\n"
        "board.stop()\n"
    )
    seen = in_group(memory_cgroup, tmp_path, "-c", look, str(path), run_id)
    assert seen.returncode == 0, seen.stderr
    resources, cap = json.loads(seen.stdout)
    assert resources["memory_pct"] >= 70
    # ...and it says what the monitor did to the cap: from 4, how low, and why.
    assert (cap["first"], cap["now"]) == (4, caps[-1]["cap"])
    assert cap["lowest"] == min(c["cap"] for c in caps) < 4
    assert "memory" in cap["lowest_reason"] and cap["lowered"] >= 1


def test_cgroup_v2_limits_are_read_at_every_level(tmp_path: Path) -> None:
    # No cgroup v2 controllers on this machine (a v1 host): these are the files the kernel
    # writes there, as it writes them, for the reading of them.
    root = tmp_path / "cgroup"
    pod, container = root / "kubepods" / "pod1", root / "kubepods" / "pod1" / "c1"
    container.mkdir(parents=True)
    (pod / "memory.max").write_text("1073741824\n")  # 1 GiB for the pod
    (pod / "memory.current").write_text("966367641\n")  # 0.9 GiB
    (pod / "memory.stat").write_text("anon 1\ninactive_file 107374182\nactive_file 3\n")
    (container / "memory.max").write_text("max\n")  # the container itself: no limit
    (pod / "cpu.max").write_text("200000 100000\n")  # two cores
    (container / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 900000\n")
    cg = Cgroup(root, "0::/kubepods/pod1/c1\n", host_memory=64 << 30, cpus=16, host_cpus=16)
    assert cg.memory_percent() == pytest.approx(80.0, abs=0.01)  # (0.9 - 0.1) / 1 GiB
    assert cg.cpu is not None and cg.cpu.cores == 2.0
    assert cg.cpu_percent(now=10.0) is None  # the first reading only starts the count
    (pod / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1800000\n")
    assert cg.cpu_percent(now=11.0) == pytest.approx(75.0)  # 1.5 CPU-seconds of 2 in 1 s
    # Nothing limited, nothing added.
    free = Cgroup(root, "0::/kubepods\n", host_memory=64 << 30, cpus=16, host_cpus=16)
    assert (free.memory_percent(), free.cpu_percent()) == (None, None)
