"""Dispatch speed: `abreast run` against GNU make on the same DAGs of `true` tasks.

    python bench/dispatch_bench.py [--sizes 1000,5000] [--jobs 2,8] [--repeat 3]
                                   [--shapes wide,chain,layered] [--extra-args ...]

Whole-process wall time, journal on (SQLite, a fresh file per run), `isolation:
none`, the resource monitor off (make has none either; `--monitor` turns it on).
abreast and make alternate run by run; medians are reported, with the ratio.
Start-up is the same measurement for a single task.
"""

from __future__ import annotations

import argparse
import json
import random
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


def timed(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(
    shape: str, n: int, jobs: int, repeat: int, tmp: Path, extra: list[str]
) -> dict[str, Any]:
    d = tmp / f"{shape}-{n}-{jobs}"
    d.mkdir()
    wf, mk = write_inputs(d, dag(shape, n), jobs)
    ours, make = [], []
    for r in range(repeat):
        state = f"sqlite://{d}/state-{r}.db"
        ours.append(
            timed(
                [
                    sys.executable,
                    "-m",
                    "abreast",
                    "run",
                    str(wf),
                    "--plain",
                    "--state",
                    state,
                    *extra,
                ],
                d,
            )
        )
        make.append(timed(["make", "-s", "-f", str(mk), f"-j{jobs}"], d))
    a, m = statistics.median(ours), statistics.median(make)
    return {
        "shape": shape,
        "tasks": n,
        "jobs": jobs,
        "abreast_s": a,
        "make_s": m,
        "ratio": a / m,
        "abreast_runs": ours,
        "make_runs": make,
    }


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
    # Not /tmp: on the project's machine, creating files there is ~20x slower than in the
    # project's own directory (same disk), which would measure the sandbox, not abreast.
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        rows.append(measure("wide", 1, 1, max(args.repeat, 5), Path(tmp), extra))
        rows[-1]["shape"] = "start-up"
        for n in map(int, args.sizes.split(",")):
            for shape in args.shapes.split(","):
                for jobs in map(int, args.jobs.split(",")):
                    rows.append(measure(shape, n, jobs, args.repeat, Path(tmp), extra))
                    r = rows[-1]
                    print(
                        f"{r['shape']:>8} {r['tasks']:>5} -j{r['jobs']:<2} abreast "
                        f"{r['abreast_s']:6.3f}s  make {r['make_s']:6.3f}s  "
                        f"x{r['ratio']:.2f}",
                        flush=True,
                    )
    print("\n| DAG | tasks | -j | abreast | make | abreast / make |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['shape']} | {r['tasks']} | {r['jobs']} | {r['abreast_s']:.3f} s | "
            f"{r['make_s']:.3f} s | {r['ratio']:.2f} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
