"""What running tasks on Ray costs: `--executor ray` against the local executor.

    python bench/ray_bench.py [--tasks 200] [--parallel 4] [--sleep 0] [--repeat 3]

Whole-process wall time of `abreast run` (`isolation: none`, the journal on) on TASKS
independent tasks that each `sleep SLEEP`, up to PARALLEL at once: *local*: the default
executor; *ray*: `--executor ray` attached to a running local cluster (started once by the
benchmark, with PARALLEL CPUs); *ray, own cluster*: `--executor ray` with no address, so
the run starts (and stops) a cluster of its own. Runs alternate, medians of REPEAT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abreast.executor.ray_exec import start_local


def one_run(path: Path, env: dict[str, str], *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "abreast", "run", str(path), "--plain", "--no-monitor", *args],
        check=False,
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"abreast run exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON"))}
    head = start_local(args.parallel, env)
    attached = {**env, "RAY_ADDRESS": head.address}
    if head.auth_mode:
        attached["RAY_AUTH_MODE"] = head.auth_mode
    contenders = {
        "local": (env, []),
        "ray": (attached, ["--executor", "ray"]),
        "ray, own cluster": (env, ["--executor", "ray"]),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "w.json"
            spec = {
                "version": 1,
                "name": "raybench",
                "isolation": "none",
                "max_parallel": args.parallel,
                "tasks": {f"t{i}": {"run": f"sleep {args.sleep:g}"} for i in range(args.tasks)},
            }
            path.write_text(json.dumps(spec))
            for _ in range(args.repeat):
                for name, (run_env, extra) in contenders.items():
                    times[name].append(one_run(path, run_env, *extra))
                    print(f"{name:>16}  {times[name][-1]:6.2f} s", flush=True)
    finally:
        head.stop()
    base = statistics.median(times["local"])
    print(
        f"\n{args.tasks} tasks of `sleep {args.sleep:g}`, {args.parallel} at once, "
        f"medians of {args.repeat}\n\n"
        "| executor | wall | per task | against local |\n| --- | ---: | ---: | ---: |"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} s | {med / args.tasks * 1000:.1f} ms | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
