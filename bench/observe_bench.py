"""Overhead of watching a run: metrics, events and the dashboard, on the dispatch benchmark.

    python bench/observe_bench.py [--tasks 1000] [--repeat 5]

The same wide DAG of `true` tasks (the dispatch benchmark's), run as a whole process:
  - plain:    `abreast run` (events are journaled anyway: they always are);
  - observed: `--metrics-port P --dashboard`, with a client following the dashboard's
              event stream and scraping /metrics during the run;
  - redis:    `abreast run --state redis://...`: the Redis backend, which also publishes
              every event on Redis pub/sub;
  - observed + Redis: both.
Runs alternate; medians are reported with the overhead against plain (and, for the
observed Redis run, against the plain Redis run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import RedisServer, free_port, redis_server_binary  # noqa: E402

from abreast.observe.dashboard import RUN_LINGER_S  # noqa: E402


def follow(proc: subprocess.Popen[str], port: int, mport: int) -> float:
    """Open the dashboard's event stream and scrape metrics until the run exits; when it
    exited (perf_counter)."""
    assert proc.stdout is not None
    run_id = proc.stdout.readline()[5:].strip()
    for line in proc.stdout:
        if line.startswith("dashboard:"):
            break
    # Keep reading its output, or the run blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()

    def stream() -> None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/runs/{run_id}/events", timeout=60
            ) as r:
                for _ in r:
                    pass
        except OSError:
            pass

    threading.Thread(target=stream, daemon=True).start()
    ended = threading.Event()
    at: list[float] = []

    def waiter() -> None:
        proc.wait()
        at.append(time.perf_counter())
        ended.set()

    threading.Thread(target=waiter, daemon=True).start()
    while not ended.is_set():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read()
        except OSError:
            pass
        ended.wait(0.2)  # a scraper's interval; the run's end is seen at once
    return at[0]


def once(wf: Path, extra: list[str], observed: bool) -> float:
    args = [sys.executable, "-m", "abreast", "run", str(wf), "--plain", "--no-monitor", *extra]
    port, mport = free_port(), free_port()
    if observed:
        args += ["--metrics-port", str(mport), "--dashboard", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=wf.parent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    if observed:
        # The run's end as its waiter saw it. (This used to be read after the scrape
        # loop's next 0.2 s sleep, which added 0.1 s to observed runs on average.)
        took = follow(proc, port, mport) - t0
    else:
        assert proc.stdout is not None
        proc.stdout.read()
        proc.wait()
        took = time.perf_counter() - t0
    if observed:
        time.sleep(RUN_LINGER_S)  # its dashboard process leaves before the next run
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        # Its own project root: the Redis runs keep their journal and logs at the project
        # root, which would otherwise be this repository's (and outlive the benchmark).
        subprocess.run(["git", "init", "-q", tmp], check=True)
        server = RedisServer(redis_server_binary() or "redis-server", Path(tmp))
        server.start()
        try:
            wf = Path(tmp) / "w.json"
            wf.write_text(
                json.dumps(
                    {
                        "version": 1,
                        "name": "obs",
                        "isolation": "none",
                        "max_parallel": 2,
                        "tasks": {f"t{i}": {"run": "true"} for i in range(args.tasks)},
                    }
                )
            )
            times: dict[str, list[float]] = {
                "plain": [],
                "observed": [],
                "redis": [],
                "observed+redis": [],
            }
            for r in range(args.repeat):
                times["plain"].append(once(wf, ["--state", f"sqlite://{tmp}/p{r}.db"], False))
                times["observed"].append(once(wf, ["--state", f"sqlite://{tmp}/o{r}.db"], True))
                times["redis"].append(once(wf, ["--state", server.url], False))
                times["observed+redis"].append(once(wf, ["--state", server.url], True))
        finally:
            server.stop()
    base = statistics.median(times["plain"])
    redis_base = statistics.median(times["redis"])
    for name, ts in times.items():
        m = statistics.median(ts)
        line = f"{name:>15}: {m:.3f} s  ({100 * (m - base) / base:+.1f}% vs plain"
        if name == "observed+redis":
            line += f", {100 * (m - redis_base) / redis_base:+.1f}% vs redis"
        print(line + ")")
    # Each round's runs are back to back: the median of the rounds' own ratios is the
    # figure least moved by the machine getting faster or slower over the minutes.
    for name, against in (("observed", "plain"), ("observed+redis", "redis")):
        ratios = [o / b for o, b in zip(times[name], times[against], strict=True)]
        print(
            f"{name:>15}: {100 * (statistics.median(ratios) - 1):+.1f}% vs {against}, "
            "median of the rounds' ratios"
        )
    print(json.dumps(times))


if __name__ == "__main__":
    main()
