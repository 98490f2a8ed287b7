"""Planning speed: validate + plan random layered DAGs, beside networkx on the same graph.

    python bench/plan_bench.py [--sizes 10000,100000] [--repeat 3]

For each size it writes a JSON workflow, then measures (median of --repeat):
  - validate: the file's data to a Workflow (pydantic models, references, cycles)
  - plan: waves, critical path, slack, overlaps, both schedule simulations
  - process: the whole `abreast analyze --format json FILE` as a new process
  - networkx: DiGraph build + topological_generations + dag_longest_path_length
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


def layered_dag(n: int, seed: int = 1, width: int = 100, max_needs: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    tasks: dict[str, Any] = {}
    layers: list[list[str]] = []
    i = 0
    while i < n:
        layer = []
        for _ in range(min(rng.randint(width // 2, width * 3 // 2), n - i)):
            tid = f"t{i}"
            spec: dict[str, Any] = {"run": "true", "estimate": rng.randint(1, 120)}
            if layers:
                prev = layers[-1] + (layers[-2] if len(layers) > 1 else [])
                spec["needs"] = rng.sample(prev, k=min(len(prev), rng.randint(1, max_needs)))
            tasks[tid] = spec
            layer.append(tid)
            i += 1
        layers.append(layer)
    return {"version": 1, "name": f"bench-{n}", "max_parallel": 8, "tasks": tasks}


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        # The last round's result is freed here, not inside the next measurement (at 100k
        # tasks freeing an analysis takes 0.2 s; `abreast analyze` never frees it).
        result = None
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_size(n: int, repeat: int, tmp: Path) -> dict[str, Any]:
    from abreast.plan import TaskGraph, analyze
    from abreast.spec.loader import parse_json
    from abreast.spec.validate import parse_workflow

    data = layered_dag(n)
    path = tmp / f"dag-{n}.json"
    text = json.dumps(data)
    path.write_text(text)
    load_s, doc = timed(lambda: parse_json(text, str(path)), repeat)
    validate_s, wf = timed(lambda: parse_workflow(doc), repeat)
    plan_s, an = timed(lambda: analyze(wf), repeat)
    graph_s, _ = timed(lambda: TaskGraph.from_workflow(wf), repeat)

    def process() -> None:
        subprocess.run(
            [sys.executable, "-m", "abreast", "analyze", "--format", "json", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    process_s, _ = timed(process, repeat)

    import networkx as nx

    def with_networkx() -> float:
        g = nx.DiGraph()
        for tid, spec in data["tasks"].items():
            g.add_node(tid, weight=spec["estimate"])
            for dep in spec.get("needs", []):
                g.add_edge(dep, tid, weight=spec["estimate"])
        list(nx.topological_generations(g))
        return float(nx.dag_longest_path_length(g, weight="weight"))

    nx_s, _ = timed(with_networkx, repeat)
    return {
        "tasks": n,
        "edges": sum(len(t.get("needs", [])) for t in data["tasks"].values()),
        "json_load_s": load_s,
        "validate_s": validate_s,
        "graph_s": graph_s,
        "plan_s": plan_s,
        "process_s": process_s,
        "networkx_s": nx_s,
        "critical_path_s": an.estimates.critical_path_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_size(int(s), args.repeat, Path(tmp)) for s in args.sizes.split(",")]
    print(
        f"{'tasks':>7} {'edges':>7} {'load':>7} {'validate':>9} {'plan':>7} "
        f"{'process':>8} {'networkx':>9} {'plan/nx':>8}"
    )
    for r in rows:
        print(
            f"{r['tasks']:>7} {r['edges']:>7} {r['json_load_s']:7.3f} {r['validate_s']:9.3f} "
            f"{r['plan_s']:7.3f} {r['process_s']:8.3f} {r['networkx_s']:9.3f} "
            f"{r['plan_s'] / r['networkx_s']:8.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
