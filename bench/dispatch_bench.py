"""Dispatch speed: `abreast run` against GNU make on the same DAGs of `true` tasks.

    python bench/dispatch_bench.py [--sizes 1000,5000] [--jobs 2,8] [--repeat 3]
                                   [--shapes wide,chain,layered] [--extra-args ...]

Whole-process wall time, journal on (SQLite, a fresh file per run), `isolation:
none`, the resource monitor off (make has none either; `--monitor` turns it on).
Four contenders alternate run by run: `abreast run`, the floor (`spawn_floor.py`: a
bare posix_spawn loop starting each task exactly as abreast does, log file and
all), the same loop starting plain `/bin/sh -c true` with no log ("sh only"), and
GNU `make -j`. Medians of wall time and of CPU time (the process and all it waited
for) are reported, with the ratios to make. Start-up is the same for a single task;
"(floor + start-up) / make" is what abreast would come to if it spent nothing per task
beyond the floor: the floor's time plus what abreast's start-up adds to the floor's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def dag(shape: str, n: int, seed: int = 1) -> dict[str, list[str]]:
    rng = random.Random(seed)
    if shape == "wide":
        return {f"t{i}": [] for i in range(n)}
    if shape == "chain":
        return {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    out: dict[str, list[str]] = {}
    width = max(2, int(n**0.5))
    prev: list[str] = []
    i = 0
    while i < n:
        layer = []
        for _ in range(min(width, n - i)):
            tid = f"t{i}"
            out[tid] = rng.sample(prev, k=min(len(prev), 2)) if prev else []
            layer.append(tid)
            i += 1
        prev = layer
    return out


def write_inputs(d: Path, graph: dict[str, list[str]], jobs: int) -> tuple[Path, Path]:
    wf = d / "w.json"
    wf.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "bench",
                "isolation": "none",
                "max_parallel": jobs,
                "tasks": {t: {"run": "true", "needs": needs} for t, needs in graph.items()},
            }
        )
    )
    mk = d / "Makefile"
    lines = ["all: " + " ".join(graph), ".PHONY: all " + " ".join(graph)]
    for t, needs in graph.items():
        lines += [f"{t}: {' '.join(needs)}", "\ttrue"]
    mk.write_text("\n".join(lines) + "\n")
    return wf, mk


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.stderr:  # a warning or a traceback is a finding, not noise to time over
        sys.exit(f"{argv[:4]} wrote to stderr:\n{proc.stderr.decode(errors='replace')[:2000]}")
    return wall, cpu


CONTENDERS = ("abreast", "floor", "sh", "make")
# As a user's shell has it: PYTHONUNBUFFERED (set in some CI images) would make each
# progress line a write of its own.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def measure(
    shape: str, n: int, jobs: int, repeat: int, tmp: Path, extra: list[str]
) -> dict[str, Any]:
    """All four contenders on one DAG, alternating round by round; medians of wall and CPU."""
    d = tmp / f"{shape}-{n}-{jobs}"
    d.mkdir()
    wf, mk = write_inputs(d, dag(shape, n), jobs)
    floor = [sys.executable, str(ROOT / "bench" / "spawn_floor.py"), str(wf), "-j", str(jobs)]
    runs: dict[str, list[tuple[float, float]]] = {c: [] for c in CONTENDERS}
    for r in range(repeat):
        state = f"sqlite://{d}/state-{r}.db"
        abreast = [sys.executable, "-m", "abreast", "run", str(wf), "--plain", "--state", state]
        runs["abreast"].append(timed([*abreast, *extra], d))
        runs["floor"].append(timed([*floor, "--logs", f"floor-{r}"], d))
        runs["sh"].append(timed([*floor, "--no-log"], d))
        runs["make"].append(timed(["make", "-s", "-f", str(mk), f"-j{jobs}"], d))
    row: dict[str, Any] = {"shape": shape, "tasks": n, "jobs": jobs}
    for c in CONTENDERS:
        row[f"{c}_s"] = statistics.median(w for w, _ in runs[c])
        row[f"{c}_cpu_s"] = statistics.median(cpu for _, cpu in runs[c])
        row[f"{c}_runs"] = runs[c]
    row["ratio"] = row["abreast_s"] / row["make_s"]
    row["floor_ratio"] = row["floor_s"] / row["make_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--jobs", default="2,8")
    ap.add_argument("--shapes", default="wide,chain,layered")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--monitor", action="store_true", help="leave the resource monitor on")
    args = ap.parse_args()
    extra = [] if args.monitor else ["--no-monitor"]
    # A normal install has bytecode; an editable one in a PYTHONDONTWRITEBYTECODE
    # environment would otherwise compile abreast on every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    rows = []
    # Under the project, as a user's runs would be. On the project's machine creating a
    # file costs from 20 us to 0.7 ms of CPU depending on the disk's recent history (in
    # /tmp as anywhere else), which is why the floor creates its logs as abreast does.
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        rows.append(measure("wide", 1, 1, max(args.repeat, 5), Path(tmp), extra))
        rows[-1]["shape"] = "start-up"
        # What abreast's start-up adds to the floor's: with no cost per task of its own,
        # abreast would take the floor's time plus this.
        startup = rows[-1]["abreast_s"] - rows[-1]["floor_s"]
        for n in map(int, args.sizes.split(",")):
            for shape in args.shapes.split(","):
                for jobs in map(int, args.jobs.split(",")):
                    rows.append(measure(shape, n, jobs, args.repeat, Path(tmp), extra))
                    r = rows[-1]
                    r["bound_ratio"] = (r["floor_s"] + startup) / r["make_s"]
                    print(
                        f"{r['shape']:>8} {r['tasks']:>5} -j{r['jobs']:<2} "
                        + "  ".join(
                            f"{c} {r[c + '_s']:6.3f}s ({r[c + '_cpu_s']:.2f} cpu)"
                            for c in CONTENDERS
                        )
                        + f"  x{r['ratio']:.2f} (floor x{r['floor_ratio']:.2f})",
                        flush=True,
                    )
    print(
        "\n| DAG | tasks | -j | abreast | floor | sh only | make | abreast / make "
        "| floor / make | (floor + start-up) / make | CPU s: abreast, floor, sh, make |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cpu = ", ".join(f"{r[c + '_cpu_s']:.2f}" for c in CONTENDERS)
        bound = f"{r['bound_ratio']:.2f}" if "bound_ratio" in r else "-"
        print(
            f"| {r['shape']} | {r['tasks']} | {r['jobs']} | {r['abreast_s']:.3f} s "
            f"| {r['floor_s']:.3f} s | {r['sh_s']:.3f} s | {r['make_s']:.3f} s "
            f"| {r['ratio']:.2f} | {r['floor_ratio']:.2f} | {bound} | {cpu} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
