"""Many attempts at once: `abreast run` of N tasks that all run side by side.

    python bench/scale_bench.py [--sizes 100,500,1500] [--seconds 2] [--children 2]
                                [--repeat 3]

Each task is a small process tree that lives `--seconds` (a shell with `--children`
sleeping children, as an agent CLI is a tree of processes), `max_parallel` N so that
all N run together, `isolation: none`, the resource monitor off, the journal on. What
is measured is what abreast adds on top of the `--seconds` every task must take: the
run's whole wall time minus those seconds ("overhead"), and the lag between a task's
processes ending and abreast noticing (its recorded wall time minus the seconds, the
median over tasks). The supervisor looks at every running attempt's process tree
each tick (heartbeats, orphans, memory): this is what shows whether that, and the
reaping of N exits that come together, stay cheap as N grows. Then the same N
tasks as `sleep 60`, cancelled once all have started (`abreast cancel`): the time
until the run has ended them all and ended itself. Medians of `--repeat` runs. The
open-files limit is raised to what N needs, as a user running that many would.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# As a user's shell has it (output to a pipe buffered)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def workflow(d: str, n: int, command: str) -> Path:
    """D/w.json: `n` tasks of `command`, all at once, `isolation: none`, the monitor off."""
    wf = Path(d) / "w.json"
    spec = {
        "version": 1,
        "name": "scale",
        "isolation": "none",
        "max_parallel": n,
        "resources": {"monitor": False},
        "tasks": {f"t{i}": {"run": command} for i in range(n)},
    }
    wf.write_text(json.dumps(spec))
    return wf


def one(n: int, seconds: float, children: int) -> tuple[float, float, bool]:
    """(wall s, median task lag s, whether stderr was clean) of one run."""
    kids = " ".join([f"sleep {seconds} &"] * children)
    with tempfile.TemporaryDirectory() as d:
        wf = workflow(d, n, f"{kids} sleep {seconds}; wait")
        env = ENV
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "abreast", "run", str(wf), "--plain", "--no-monitor"],
            cwd=d,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"run failed ({proc.returncode}): {proc.stdout[-2000:]}")
        import sqlite3

        db = sqlite3.connect(Path(d) / ".abreast" / "state.db")
        walls = [w for (w,) in db.execute("SELECT wall_s FROM attempts") if w is not None]
        db.close()
        lag = statistics.median(walls) - seconds
        clean = "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
        return wall, lag, clean


def cancel(n: int) -> float:
    """Seconds from `abreast cancel` to the end of a run of `n` running `sleep 60` tasks."""
    with tempfile.TemporaryDirectory() as d:
        wf = workflow(d, n, "sleep 60")
        env = ENV
        abreast = [sys.executable, "-m", "abreast"]
        proc = subprocess.Popen(
            [*abreast, "run", str(wf), "--plain", "--no-monitor"],
            cwd=d,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        started = 0
        while started < n:  # every attempt has started: its line is out
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the run ended before its tasks all started")
            started += " start " in line
        t0 = time.perf_counter()
        subprocess.run([*abreast, "cancel"], cwd=d, env=env, capture_output=True, check=True)
        proc.stdout.read()
        proc.wait()
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,500,1500")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * max(sizes) + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print(
        f"{args.children + 2} processes per task (shell, {args.children} children, its own "
        f"sleep), each living {args.seconds:g}s; medians of {args.repeat}"
    )
    print(
        "| tasks at once | wall | overhead (wall - task time) | task lag (median) | stderr "
        "| cancel (to the run's end) |"
    )
    print("| ---: | ---: | ---: | ---: | --- | ---: |")
    for n in sizes:
        runs = [one(n, args.seconds, args.children) for _ in range(args.repeat)]
        wall = statistics.median(r[0] for r in runs)
        lag = statistics.median(r[1] for r in runs)
        clean = "clean" if all(r[2] for r in runs) else "tracebacks"
        stop = statistics.median(cancel(n) for _ in range(args.repeat))
        print(
            f"| {n} | {wall:.2f} s | {wall - args.seconds:.2f} s | {lag * 1000:.0f} ms | {clean} "
            f"| {stop:.2f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
