"""Key proxy overhead: per-request latency and throughput through abreast's proxy vs direct.

    python bench/keys_bench.py [--requests 2000] [--rounds 5] [--concurrency 32]

Three processes: the stand-in provider (tests/provider.py, limits out of reach), the
proxy (abreast.keys.KeyProxy over a pool of 3 keys), and this client. The proxy runs
in three configurations: no limit (no coordinator call per request), a limit counted
on SQLite, and a limit counted on Redis (a redis-server started for it on 127.0.0.1).

- latency: one keep-alive connection, sequential POSTs, `--rounds` rounds of
  `--requests`, direct and proxied interleaved round by round; median and p99, and the
  added median (proxied minus direct);
- throughput: `--concurrency` requests in flight, requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

KEYS = ["sk-bench-alpha", "sk-bench-bravo", "sk-bench-charlie"]
BODY = {"model": "bench", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def serve_provider() -> None:
    from tests.provider import Provider

    p = Provider(limit=10**9, window_s=60.0)
    p.start()
    print(p.url, flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    p.stop()


def serve_proxy(upstream: str, coord_url: str) -> None:
    from abreast.coord.backend import open_coordinator
    from abreast.keys import KeyPool
    from abreast.keys.proxy import KeyProxy, Route

    coord = open_coordinator(coord_url) if coord_url != "-" else None
    limit = (10**9, 60.0) if coord is not None else None
    pool = KeyPool("bench", KEYS, limit=limit, coord=coord)
    proxy = KeyProxy({"bench": Route(pool, upstream, "anthropic")})
    proxy.start()
    print(proxy.url, proxy.issue("bench"), flush=True)
    sys.stdin.read()
    proxy.stop()
    if coord is not None:
        coord.close()


def spawn(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def sequential(url: str, key: str, n: int) -> list[float]:
    """Latency on one keep-alive connection (http.client: the least client overhead)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    body = json.dumps(BODY).encode()
    headers = {"x-api-key": key, "content-type": "application/json"}
    out = []
    for i in range(n + 20):  # the first 20 warm the connection
        t0 = time.perf_counter()
        conn.request("POST", parts.path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if i >= 20:
            out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return out


async def concurrent(url: str, key: str, n: int, width: int) -> float:
    """Requests per second with `width` in flight (abreast's lean client: httpx's pool
    slows down sharply with many connections and would measure itself)."""
    from urllib.parse import urlsplit

    from abreast.keys.upstream import Upstream

    parts = urlsplit(url)
    client = Upstream(f"{parts.scheme}://{parts.netloc}")
    body = json.dumps(BODY).encode()
    headers = [("x-api-key", key), ("content-type", "application/json")]
    sem = asyncio.Semaphore(width)

    async def one() -> None:
        async with sem:
            r = await client.send("POST", parts.path, headers, body)
            await r.aread()
            assert r.status_code == 200, r.status_code

    await asyncio.gather(*(one() for _ in range(width)))  # warm
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    rate = n / (time.perf_counter() - t0)
    await client.aclose()
    return rate


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--serve-provider", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-proxy", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_provider:
        serve_provider()
        return
    if args.serve_proxy:
        serve_proxy(*args.serve_proxy)
        return

    from tests.conftest import RedisServer, redis_server_binary

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = None
        binary = redis_server_binary()
        if binary:
            redis = RedisServer(binary, Path(tmp))
            redis.start()
        provider, (upstream,) = spawn("--serve-provider")
        configs = {"proxy, no limit": "-", "proxy, limit on sqlite": f"sqlite://{tmp}/state.db"}
        if redis is not None:
            configs["proxy, limit on redis"] = redis.url
        try:
            direct_url = upstream + "/v1/messages"
            for name, coord_url in configs.items():
                proxy, (proxy_url, token) = spawn("--serve-proxy", upstream, coord_url)
                try:
                    direct: list[float] = []
                    proxied: list[float] = []
                    for _ in range(args.rounds):
                        direct += sequential(direct_url, KEYS[0], args.requests)
                        proxied += sequential(proxy_url + "/v1/messages", token, args.requests)
                    rps_direct = asyncio.run(
                        concurrent(direct_url, KEYS[0], args.requests, args.concurrency)
                    )
                    rps_proxied = asyncio.run(
                        concurrent(
                            proxy_url + "/v1/messages", token, args.requests, args.concurrency
                        )
                    )
                finally:
                    stop(proxy)
                ms = 1000.0
                row = {
                    "direct_median_ms": statistics.median(direct) * ms,
                    "direct_p99_ms": pct(direct, 0.99) * ms,
                    "proxied_median_ms": statistics.median(proxied) * ms,
                    "proxied_p99_ms": pct(proxied, 0.99) * ms,
                    "added_median_ms": (statistics.median(proxied) - statistics.median(direct))
                    * ms,
                    "direct_rps": rps_direct,
                    "proxied_rps": rps_proxied,
                }
                results[name] = row
                print(
                    f"{name:<24} direct {row['direct_median_ms']:.3f} ms (p99 "
                    f"{row['direct_p99_ms']:.3f})  proxied {row['proxied_median_ms']:.3f} ms "
                    f"(p99 {row['proxied_p99_ms']:.3f})  added {row['added_median_ms']:.3f} ms  "
                    f"| {rps_direct:,.0f} vs {rps_proxied:,.0f} req/s",
                    flush=True,
                )
        finally:
            stop(provider)
            if redis is not None:
                redis.stop()
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "keys.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
