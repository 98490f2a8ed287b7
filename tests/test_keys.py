"""API key pools against a real local stand-in provider: limits, rotation, backoff, the proxy,
streaming, and a canary sweep for leaked keys."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abreast.coord.backend import open_coordinator
from abreast.keys import KeyPool, fingerprint
from abreast.keys.tokens import MAX_LINE_BYTES, Tokens, UsageReader
from tests.conftest import RedisServer, free_port, run_abreast
from tests.helpers import query, start_run, wait_for
from tests.provider import Provider

KEYS = ["sk-test-alpha-0001", "sk-test-bravo-0002", "sk-test-charlie-0003"]
ENV = {f"TEST_KEY_{i}": k for i, k in enumerate(KEYS)}


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider(limit=100, window_s=2.0)
    p.start()
    yield p
    p.stop()


def assert_under_limits(provider: Provider) -> None:
    for key in KEYS:
        assert provider.max_in_any_window(key) <= provider.limit, fingerprint(key)


def test_a_request_waits_out_a_redis_outage_for_its_keys_window(own_redis: RedisServer) -> None:
    # The keys' windows are in Redis: a request through a pool while Redis was gone
    # failed (a 502 from the key proxy to the agent). It waits for Redis now, then is
    # sent with a key as usual.
    from abreast.coord.redis_coord import RedisCoordinator

    server = own_redis
    coord = RedisCoordinator(server.url, calls_wait_s=0.2)
    pool = KeyPool("p", KEYS, limit=(100, 60.0), coord=coord)
    sent: list[str] = []

    async def do(value: str, _fp: str) -> int:
        sent.append(value)
        return 200

    async def request_while_gone() -> int:
        server.stop()
        asking = asyncio.create_task(pool.send(do, lambda status: status, lambda _r: None))
        await asyncio.sleep(1.5)  # Redis stays gone a while; the request waits meanwhile
        assert not asking.done() and sent == []
        await asyncio.to_thread(server.start)
        return await asyncio.wait_for(asking, timeout=20)

    try:
        assert asyncio.run(request_while_gone()) == 200
        assert len(sent) == 1 and sent[0] in KEYS
    finally:
        coord.close()


def test_300_requests_with_3_keys_at_100_per_window_all_succeed(
    provider: Provider, coord_url: str
) -> None:
    coord = open_coordinator(coord_url)
    pool = KeyPool("p", KEYS, limit=(100, 2.0), coord=coord, initial_s=0.2, max_retries=6)

    async def main() -> list[int]:
        import httpx

        # 300 at once wait for the client's 100 connections: on a loaded machine longer
        # than httpx's default 5 s (PoolTimeout), which is the client's, not the pool's
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    pool.request(
                        "POST", provider.url + "/v1/messages", client=client, json={"n": i}
                    )
                    for i in range(300)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(main())
    assert statuses == [200] * 300
    stats = pool.stats()
    assert stats["keys_used"] == 3
    assert all(s["requests"] <= 100 for s in stats["keys"].values())
    assert_under_limits(provider)
    assert not any(k in json.dumps(stats) for k in KEYS)  # fingerprints only
    coord.close()


POOL_SCRIPT = """
import asyncio, json, sys
from abreast.coord.backend import open_coordinator
from abreast.keys import KeyPool
keys, url, coord_url = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
pool = KeyPool("shared", keys, limit=(100, 2.0), coord=open_coordinator(coord_url),
               initial_s=0.2, max_retries=8)
async def main():
    import httpx
    async with httpx.AsyncClient(timeout=60) as c:
        calls = (pool.request("POST", url, client=c, json={}) for _ in range(50))
        rs = await asyncio.gather(*calls)
    print(json.dumps([r.status_code for r in rs]))
asyncio.run(main())
"""


def test_six_processes_share_the_limits(provider: Provider, coord_url: str) -> None:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                POOL_SCRIPT,
                json.dumps(KEYS),
                provider.url + "/v1/messages",
                coord_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for (out, err), p in zip(results, procs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out) == [200] * 50
    assert_under_limits(provider)
    assert len({k for k, _, s in provider.log if s == 200}) == 3  # every key was used


def test_two_pools_drawing_on_one_key_share_its_window(coord_url: str) -> None:
    # The provider limits the key, not the pool: two pools (here of two projects on one
    # backend, named apart) that hold the same key count its uses together. A pool with
    # another window length counts apart.
    coord = open_coordinator(coord_url)
    try:
        mine = KeyPool("anthropic", [KEYS[0]], limit=(3, 60.0), coord=coord)
        theirs = KeyPool("claude", [KEYS[0], KEYS[1]], limit=(3, 60.0), coord=coord)
        hourly = KeyPool("slow", [KEYS[0]], limit=(3, 3600.0), coord=coord)
        for _ in range(2):
            assert mine._take_best(mine.ranked()) is not None
        key = theirs.ranked()[0]
        assert key.fp == fingerprint(KEYS[1])  # the shared key has less headroom
        assert [theirs.used(k) for k in theirs._keys] == [2, 0]
        assert theirs._take_best([theirs._keys[0]]) is not None  # its third use
        assert mine._take_best(mine.ranked()) is None  # the window is full for both
        assert hourly.used(hourly._keys[0]) == 0
    finally:
        coord.close()


def test_backoff_when_every_key_is_limited_then_the_providers_429(provider: Provider) -> None:
    provider.all_limited = True
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:  # records, and waits out the Retry-After only
        sleeps.append(s)
        await asyncio.sleep(provider.retry_after_s + 0.02)

    pool = KeyPool(
        "p",
        KEYS[:2],
        limit=None,
        initial_s=1.0,
        factor=2.0,
        max_s=8.0,
        max_retries=4,
        sleep=fake_sleep,
    )
    response = asyncio.run(pool.request("POST", provider.url + "/v1/messages"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0.05"
    assert len(sleeps) == 4
    for got, nominal in zip(sleeps, [1, 2, 4, 8], strict=True):
        assert nominal * 0.75 <= got <= nominal * 1.25
    assert pool.stats()["backoff_delays"] == sleeps
    assert sum(s["limited"] for s in pool.stats()["keys"].values()) == 10  # 2 keys x 5 rounds


def write(root: Path, spec: dict) -> Path:  # type: ignore[type-arg]
    path = root / "w.json"
    path.write_text(json.dumps({"version": 1, "isolation": "none", **spec}))
    return path


CLIENT = """
import json, os, sys, urllib.request, urllib.error
base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
codes, errors = [], []
for i in range(int(sys.argv[1])):
    req = urllib.request.Request(base + "/v1/messages", data=b"{}", method="POST",
                                 headers={"x-api-key": key, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            codes.append(r.status)
    except urllib.error.HTTPError as e:
        codes.append(e.code)
        said = json.loads(e.read() or b"{}").get("error", {}).get("message")
        errors.append({"retry_after": e.headers.get("retry-after"), "message": said})
json.dump({"codes": codes, "errors": errors, "env": dict(os.environ)},
          open(os.environ["ABREAST_OUTPUT"].replace(".json", ".client.json"), "w"))
"""


def test_proxy_serves_six_tasks_under_the_limits_and_agents_hold_no_key(
    tmp_path: Path, provider: Provider
) -> None:
    (tmp_path / "client.py").write_text(CLIENT)
    path = write(
        tmp_path,
        {
            "name": "proxy",
            "max_parallel": 6,
            "keys": {
                "anthropic": {
                    "from": list(ENV),
                    "limit": "100/2s",
                    "upstream": provider.url,
                    "style": "anthropic",
                    "backoff": {"initial": "0.2s"},
                    "max_retries": 8,
                }
            },
            "agents": {
                "caller": {"run": f"{sys.executable} {tmp_path}/client.py 50", "keys": "anthropic"}
            },
            "tasks": {f"t{i}": {"agent": "caller"} for i in range(6)},
        },
    )
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 0, result.out + result.err
    outs = list((tmp_path / ".abreast" / "runs").glob("*/outputs/*.client.json"))
    assert len(outs) == 6
    for f in outs:
        data = json.loads(f.read_text())
        assert data["codes"] == [200] * 50
        env = data["env"]
        assert env["ANTHROPIC_API_KEY"].startswith("abreast-")  # a worthless token
        assert not any(k in json.dumps(env) for k in KEYS)  # no real key, anywhere in it
        assert not any(name in env for name in ENV)
    assert_under_limits(provider)
    used = {k for k, _, s in provider.log if s == 200}
    assert used == set(KEYS)  # the provider saw real keys only, never a token
    run_id = result.out.splitlines()[0][5:]
    keys = run_abreast("keys", run_id, cwd=tmp_path)
    assert keys.code == 0
    for key in KEYS:
        assert fingerprint(key) in keys.out
    rows = [line.split() for line in keys.out.splitlines() if line.startswith("anthropic")]
    assert sum(int(r[4]) for r in rows) == 300  # OK column: every request succeeded once
    assert sum(int(r[3]) for r in rows) >= 300  # REQUESTS: plus any 429 retried
    # The tokens the provider's answers said each task used (10 + 2 bytes in, 5 out each).
    assert "tokens: 3.6k in, 1.5k out, as the provider counted" in result.out
    report = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)
    each = {"input": 50 * 12, "output": 50 * 5, "cache_read": 0, "cache_write": 0}
    assert [t["tokens"] for t in report["tasks"]] == [each] * 6
    assert report["tokens"] == {k: 6 * n for k, n in each.items()}
    seen = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    assert [t["tokens"] for t in seen["tasks"]] == [each] * 6
    usage = json.loads(run_abreast("keys", run_id, "--json", cwd=tmp_path).out)["keys"]
    assert {u["fingerprint"] for u in usage} == {fingerprint(k) for k in KEYS}
    assert all(u["limit"] == "100/2s" for u in usage)
    # The dashboard and /metrics show the same use.
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    board = DashboardServer(locate(path))
    board.start()
    try:
        with urllib.request.urlopen(f"{board.url}api/runs/{run_id}", timeout=10) as page:
            snap = json.loads(page.read())
        with urllib.request.urlopen(f"{board.url}metrics", timeout=10) as page:
            metrics = page.read().decode()
    finally:
        board.stop()

    assert snap["keys"] == usage_without_limits(usage)
    assert [(t["tokens"], t["tokens_text"]) for t in snap["tasks"]] == [
        (each, "600 in, 250 out")
    ] * 6
    assert "tokens through anthropic: 3.6k in, 1.5k out, as the provider counted" in keys.out
    listed = json.loads(run_abreast("keys", run_id, "--json", cwd=tmp_path).out)["tokens"]
    assert listed == {"anthropic": report["tokens"]}
    for u in usage:
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith(f'api_key_requests_total{{fingerprint="{u["fingerprint"]}"')
        )
        assert served == u["requests"]
    tokens = {
        line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("api_tokens_total{") and 'pool="anthropic"' in line
    }
    assert tokens == {"input": 3600.0, "output": 1500.0}
    page = tmp_path / "report.html"
    assert run_abreast("report", run_id, "--html", str(page), cwd=tmp_path).code == 0
    assert "<td>600/250</td>" in page.read_text()


GEMINI_CLIENT = """
import json, os, urllib.request
base, key = os.environ["GOOGLE_GEMINI_BASE_URL"], os.environ["GEMINI_API_KEY"]
seen = []
for i in range(3):  # the key in its header, as Google's SDK sends it
    req = urllib.request.Request(base + "/v1beta/models/m:generateContent", data=b"{}",
                                 method="POST", headers={"x-goog-api-key": key})
    with urllib.request.urlopen(req, timeout=60) as r:
        seen.append(json.load(r))
# and in the URL, as the API also takes it; streamed
req = urllib.request.Request(base + "/v1beta/models/m:streamGenerateContent?alt=sse&key=" + key,
                             data=b"{}", method="POST")
with urllib.request.urlopen(req, timeout=60) as r:
    seen.append(r.read().decode())
json.dump({"seen": seen, "env": dict(os.environ)},
          open(os.environ["ABREAST_OUTPUT"].replace(".json", ".client.json"), "w"))
"""


def test_gemini_agents_use_the_proxy_too_and_hold_no_key(
    tmp_path: Path, provider: Provider
) -> None:
    # `style: gemini` (Gemini CLI, Google's Gen AI SDK): its base URL in
    # GOOGLE_GEMINI_BASE_URL, a token in GEMINI_API_KEY, sent in `x-goog-api-key` or in
    # the URL's `key=`; the real key goes in the header only, and `usageMetadata` counts.
    (tmp_path / "gemini.py").write_text(GEMINI_CLIENT)
    path = write(
        tmp_path,
        {
            "name": "gemini",
            "keys": {"g": {"from": list(ENV), "upstream": provider.url, "style": "gemini"}},
            "tasks": {
                f"t{i}": {"run": f"{sys.executable} {tmp_path}/gemini.py", "keys": "g"}
                for i in range(2)
            },
        },
    )
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 0, result.out + result.err
    outs = list((tmp_path / ".abreast" / "runs").glob("*/outputs/*.client.json"))
    assert len(outs) == 2
    for f in outs:
        data = json.loads(f.read_text())
        env = data["env"]
        assert env["GEMINI_API_KEY"].startswith("abreast-")
        assert env["GOOGLE_GEMINI_BASE_URL"].startswith("http://127.0.0.1:")
        assert not any(k in json.dumps(env) for k in KEYS)
        fps = {fingerprint(k) for k in KEYS}
        assert all(x["key"] in fps and x["query"] == "" for x in data["seen"][:3])
        streamed = [json.loads(x[6:]) for x in data["seen"][3].split("\r\n\r\n") if x]
        assert [(x["key"] in fps, x["query"]) for x in streamed] == [(True, "alt=sse")] * 3
    assert {k for k, _, status in provider.log} <= set(KEYS)  # never a token
    run_id = result.out.splitlines()[0][5:]
    report = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)
    # 3 answers of 12 in, 5 + 2 thinking out; a stream of 12 in, 15 out by its last chunk
    each = {"input": 4 * 12, "output": 3 * 7 + 15, "cache_read": 0, "cache_write": 0}
    assert [t["tokens"] for t in report["tasks"]] == [each] * 2


def test_an_openai_style_agent_finds_the_proxy_by_either_name(
    tmp_path: Path, provider: Provider
) -> None:
    # Aider (LiteLLM) reads OPENAI_API_BASE, not OPENAI_BASE_URL: one exported in the
    # user's shell, pointing at the provider, had it send its worthless token there.
    seen = tmp_path / "seen"
    path = write(
        tmp_path,
        {
            "name": "openai",
            "keys": {"o": {"from": list(ENV), "upstream": provider.url, "style": "openai"}},
            "tasks": {
                "aider": {
                    "run": f'echo "$OPENAI_BASE_URL $OPENAI_API_BASE $OPENAI_API_KEY" > {seen}',
                    "keys": "o",
                }
            },
        },
    )
    env = {**os.environ, **ENV, "OPENAI_API_BASE": "https://api.openai.com/v1"}
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env=env)
    assert result.code == 0, result.out + result.err
    base, api_base, key = seen.read_text().split()
    assert base == api_base and base.startswith("http://127.0.0.1:")
    assert key.startswith("abreast-")


def test_the_agent_finally_sees_the_providers_429_through_the_proxy(
    tmp_path: Path, provider: Provider
) -> None:
    provider.all_limited = True
    (tmp_path / "client.py").write_text(CLIENT)
    path = write(
        tmp_path,
        {
            "name": "limited",
            "keys": {
                "anthropic": {
                    "from": list(ENV),
                    "upstream": provider.url,
                    "backoff": {"initial": "0.1s", "max": "0.4s"},
                    "max_retries": 3,
                }
            },
            "tasks": {
                "t": {"run": f"{sys.executable} {tmp_path}/client.py 1", "keys": "anthropic"}
            },
        },
    )
    t0 = time.monotonic()
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 0, result.err
    data = json.loads(
        next((tmp_path / ".abreast" / "runs").glob("*/outputs/*.client.json")).read_text()
    )
    assert data["codes"] == [429]
    assert time.monotonic() - t0 >= (0.1 + 0.2 + 0.4) * 0.75  # it backed off first
    assert len(provider.log) == 3 * 4  # every key tried in each of the 4 rounds


def one_client(tmp_path: Path, name: str, pool: dict[str, Any], calls: int) -> tuple[Any, Any]:
    """Run task t, the client making `calls` requests through pool `anthropic` (`pool`):
    (abreast's result, what the client recorded)."""
    (tmp_path / "client.py").write_text(CLIENT)
    client = {"run": f"{sys.executable} {tmp_path}/client.py {calls}", "keys": "anthropic"}
    path = write(tmp_path, {"name": name, "keys": {"anthropic": pool}, "tasks": {"t": client}})
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 0, result.err
    found = next((tmp_path / ".abreast" / "runs").glob("*/outputs/*.client.json"))
    return result, json.loads(found.read_text())


def test_an_agent_told_every_key_is_at_abreasts_limit_gets_a_429_to_wait_out(
    tmp_path: Path, provider: Provider
) -> None:
    """abreast's own `limit:` spent (no request left to send in the window): the agent
    is answered 429 with a Retry-After, as by the provider, so its client waits; not a 502."""
    backoff = {"initial": "0.1s", "max": "0.1s"}
    pool = {"from": ["TEST_KEY_0"], "limit": "1/1m", "upstream": provider.url, "backoff": backoff}
    _, data = one_client(tmp_path, "spent", pool, 2)
    assert data["codes"] == [200, 429]
    assert len(provider.log) == 1  # the second was not sent
    (said,) = data["errors"]
    assert 50 <= int(said["retry_after"]) <= 64  # when the window lets the key be used again
    assert "every key of 'anthropic' stayed at its limit of 1 per 1m each" in said["message"]


def test_an_upstream_out_of_reach_is_said_to_the_agent_and_warned_of(tmp_path: Path) -> None:
    """A key pool whose `upstream:` nothing answers at: the agent is told why its request
    failed (not only 502), and the run warns once, naming the pool."""
    port = free_port()  # nothing listens there
    pool = {"from": list(ENV), "upstream": f"http://127.0.0.1:{port}"}
    result, data = one_client(tmp_path, "unreached", pool, 2)
    assert data["codes"] == [502, 502]
    assert all(f"cannot connect to 127.0.0.1:{port}" in e["message"] for e in data["errors"])
    warning = (
        f"through the key proxy could not reach key pool anthropic's upstream "
        f"(http://127.0.0.1:{port}): cannot connect to 127.0.0.1:{port}"
    )
    assert result.out.count(warning) == 2, result.out  # said as it came, and in the summary
    db = tmp_path / ".abreast" / "state.db"
    rows = query(db, "SELECT data FROM events WHERE type = 'api.failed' ORDER BY seq")
    assert sum(json.loads(r[0])["count"] for r in rows) == 2


def quick_orphans(tmp_path: Path, name: str, tasks: dict[str, Any], **top: Any) -> Path:
    """A workflow whose quiet attempts count as orphans after 1 s (a heartbeat each 0.2 s)."""
    heartbeat = {"interval": "0.2s", "orphan_after": "1s"}
    return write(tmp_path, {"name": name, "heartbeat": heartbeat, **top, "tasks": tasks})


def test_an_agent_waiting_on_a_slow_answer_through_the_proxy_is_not_an_orphan(
    tmp_path: Path, provider: Provider
) -> None:
    # A model that thinks for minutes before it answers: the agent's process tree shows
    # no CPU, I/O or output meanwhile, and was killed as an orphan (`orphan_after`).
    provider.slow_s = 3.0
    (tmp_path / "ask.py").write_text(
        "import json, os, urllib.request\n"
        "req = urllib.request.Request(\n"
        "    os.environ['ANTHROPIC_BASE_URL'] + '/v1/slow', data=b'{}', method='POST',\n"
        "    headers={'x-api-key': os.environ['ANTHROPIC_API_KEY']})\n"
        "print(json.loads(urllib.request.urlopen(req, timeout=60).read()))\n"
    )
    path = quick_orphans(
        tmp_path,
        "slow",
        {
            "thinks": {"run": f"{sys.executable} {tmp_path}/ask.py", "keys": "anthropic"},
            # the same silence with no request under way is still taken for a hang
            "hangs": {"run": "sleep 3"},
        },
        keys={"anthropic": {"from": list(ENV), "upstream": provider.url}},
    )
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 1, result.out + result.err
    db = tmp_path / ".abreast" / "state.db"
    assert dict(query(db, "SELECT task_id, state FROM tasks")) == {
        "thinks": "succeeded",
        "hangs": "failed",
    }
    assert "hangs: orphan: no sign of life (CPU, I/O, output or an API request)" in result.out
    orphans = query(db, "SELECT task_id FROM events WHERE type = 'orphan.cleaned'")
    assert orphans == [("hangs",)]
    log = next((tmp_path / ".abreast" / "runs").glob("*/logs/thinks.1.log")).read_text()
    assert "'thought_s': 3.0" in log


def test_an_agent_reading_a_slow_stream_is_not_an_orphan(
    tmp_path: Path, provider: Provider
) -> None:
    # An answer streamed slowly, read with `recv` (not counted in the bytes /proc shows)
    # and quietly (no output, next to no CPU): each part wakes the reader, which is what
    # tells it from a hung one.
    provider.chunks, provider.gap_s = 16, 0.2
    (tmp_path / "read.py").write_text(
        "import sys, urllib.request\n"
        "with urllib.request.urlopen(sys.argv[1], timeout=60) as r:\n"
        "    parts = [line for line in r if line.startswith(b'data: chunk')]\n"
        "print(len(parts), 'parts')\n"
    )
    path = quick_orphans(
        tmp_path,
        "stream",
        {"reads": {"run": f"{sys.executable} {tmp_path}/read.py {provider.url}/v1/stream"}},
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    log = next((tmp_path / ".abreast" / "runs").glob("*/logs/reads.1.log")).read_text()
    assert log == "16 parts\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_a_large_body_and_expect_100_continue(provider: Provider) -> None:
    from abreast.keys.proxy import KeyProxy, Route

    proxy = KeyProxy({"p": Route(KeyPool("p", KEYS, limit=None), provider.url, "anthropic")})
    proxy.start()
    try:
        token = proxy.issue("p")
        body = json.dumps({"text": "x" * 200_000})

        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--fail",
                "-H",
                f"x-api-key: {token}",
                "-H",
                "Expect: 100-continue",
                "--expect100-timeout",
                "60",  # without the proxy's 100 Continue, curl would wait out the timeout
                "--data-binary",
                "@-",
                proxy.url + "/v1/messages?beta=true",
            ],
            input=body,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["bytes"] == len(body) and answer["query"] == "beta=true"
        assert answer["key"] in {fingerprint(k) for k in KEYS}
    finally:
        proxy.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_body_over_the_limit_is_refused_unread(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, framing: str
) -> None:
    # The proxy holds a body whole (to retry it with another key): one over the limit is
    # answered 413 without being read (said by its Content-Length), or as soon as that
    # much has come (chunked), and never reaches the provider. The limit is lowered here.
    from abreast.keys import proxy as proxy_module
    from abreast.keys.proxy import KeyProxy, Route

    monkeypatch.setattr(proxy_module, "MAX_REQUEST_BYTES", 100_000)
    proxy = KeyProxy({"p": Route(KeyPool("p", KEYS, limit=None), provider.url, "anthropic")})
    proxy.start()
    try:
        token = proxy.issue("p")
        extra = ["-H", "Transfer-Encoding: chunked"] if framing == "chunked" else []
        argv = ["curl", "-sS", "-H", f"x-api-key: {token}", *extra, "-w", "\n%{http_code}"]
        out = subprocess.run(
            [*argv, "--data-binary", "@-", proxy.url + "/v1/messages"],
            input="x" * 300_000,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        body, code = out.stdout.rsplit("\n", 1)
        assert code == "413", out.stdout + out.stderr
        error = json.loads(body)["error"]
        assert error["type"] == "request_too_large"
        assert "over 100,000 bytes" in error["message"]
        assert provider.log == []
    finally:
        proxy.stop()


def test_a_streamed_response_arrives_intact_and_incrementally(
    tmp_path: Path, provider: Provider
) -> None:
    from abreast.keys.proxy import KeyProxy, Route

    proxy = KeyProxy({"p": Route(KeyPool("p", KEYS, limit=None), provider.url, "openai")})
    proxy.start()
    try:
        token = proxy.issue("p")
        req = urllib.request.Request(
            proxy.url + "/v1/stream", headers={"Authorization": f"Bearer {token}"}
        )
        arrivals = []
        with urllib.request.urlopen(req, timeout=30) as r:
            body = b""
            while True:
                chunk = r.read1(4096) if hasattr(r, "read1") else r.read(64)
                if not chunk:
                    break
                body += chunk
                arrivals.append(time.monotonic())
        lines = [x for x in body.decode().split("\n\n") if x.startswith("data: chunk")]
        assert [x.split()[2] for x in lines] == ["0", "1", "2", "3", "4"]
        # What the answer said it used, read on its way through: the largest count of each
        # kind (the output count grows as the stream goes).
        wait_for(lambda: bool(proxy.used(token)), what="the answer's usage to be counted")
        assert proxy.used(token) == Tokens(input=7, output=15, cache_read=100)
        assert arrivals[-1] - arrivals[0] >= 3 * provider.gap_s  # not buffered to the end
        assert provider.seen_headers[-1]["authorization"] in {f"Bearer {k}" for k in KEYS}
        bad = urllib.request.Request(
            proxy.url + "/v1/stream", headers={"Authorization": "Bearer forged"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        proxy.revoke(token)
        with pytest.raises(urllib.error.HTTPError) as revoked:
            urllib.request.urlopen(req, timeout=10)
        assert revoked.value.code == 401
        revoked.value.close()

    finally:
        proxy.stop()


SPENDER = """
import os, sys, time, urllib.request, urllib.error
base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
out = open(sys.argv[1], "a")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # an agent that keeps asking, whatever it is told
    req = urllib.request.Request(base + "/v1/messages", data=b"{}", method="POST",
                                 headers={"x-api-key": key, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
        e.read()
    out.write(f"{code}\\n")
    out.flush()
    if code != 200:
        time.sleep(0.05)
"""


def test_an_attempt_over_its_max_tokens_is_refused_then_killed(
    tmp_path: Path, provider: Provider
) -> None:
    # A runaway agent: each answer says 17 tokens (12 in, 5 out); with max_tokens 100 the
    # proxy refuses it once its answers have said 100 (403, which clients do not retry as
    # a rate limit), and the attempt is killed and fails, saying why.
    (tmp_path / "spend.py").write_text(SPENDER)
    codes = tmp_path / "codes"
    path = write(
        tmp_path,
        {
            "name": "budget",
            "keys": {"anthropic": {"from": list(ENV)[:1], "upstream": provider.url}},
            "tasks": {
                "spender": {
                    "run": f"{sys.executable} {tmp_path}/spend.py {codes}",
                    "keys": "anthropic",
                    "max_tokens": 100,
                }
            },
        },
    )
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 1, result.out + result.err
    assert "(input + output), reaching its max_tokens of 100; it was killed" in result.out
    seen = codes.read_text().split()
    served = seen.count("200")
    # Refused once 100 were said: after the 6th answer (102), or the 7th when that one was
    # asked before the 6th's count came in.
    assert 6 <= served <= 7 and seen[:served] == ["200"] * served, seen
    assert set(seen[served:]) == {"403"}
    assert sum(1 for _, _, status in provider.log if status == 200) == served
    run_id = result.out.splitlines()[0][5:]
    spent = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)["tokens"]
    assert (spent["input"], spent["output"]) == (12 * served, 5 * served)


def test_max_tokens_needs_the_key_proxy(tmp_path: Path) -> None:
    direct = {"from": list(ENV)[:1]}
    path = write(
        tmp_path,
        {
            "keys": {"direct": direct},
            "tasks": {
                "plain": {"run": "true", "max_tokens": 1000},
                "held": {"run": "true", "keys": "direct", "max_tokens": 1000},
            },
        },
    )
    result = run_abreast("validate", str(path), cwd=tmp_path)
    assert result.code == 2
    assert "task 'plain' has max_tokens but no key pool: its tokens are not counted" in result.err
    assert "task 'held' has max_tokens but its key pool 'direct' is in direct mode" in result.err
    assert "give pool 'direct' an `upstream:` (proxy mode)" in result.err
    # In `defaults` it applies to the tasks whose calls go through the proxy, and is no
    # error for the others.
    path = write(
        tmp_path,
        {
            "defaults": {"max_tokens": 1000},
            "keys": {"direct": direct},
            "tasks": {"plain": {"run": "true"}, "held": {"run": "true", "keys": "direct"}},
        },
    )
    assert run_abreast("validate", str(path), cwd=tmp_path).code == 0


def test_a_missing_key_variable_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "keys": {"k": {"from": ["NOT_SET_ANYWHERE_1"], "limit": "10/s"}},
            "tasks": {"a": {"run": "true", "keys": "k"}},
        },
    )
    result = run_abreast("run", str(path), cwd=tmp_path)
    assert result.code == 2
    assert "NOT_SET_ANYWHERE_1 is not set" in result.err
    db = tmp_path / ".abreast" / "state.db"
    if db.exists():
        assert query(db, "SELECT count(*) FROM runs")[0][0] == 0


def test_key_values_are_trimmed_and_one_key_listed_twice_is_refused(tmp_path: Path) -> None:
    spec = {
        "keys": {"k": {"from": ["DUP_KEY_1", "DUP_KEY_2"], "limit": "10/s", "env": "K"}},
        "tasks": {"a": {"run": 'printf "[%s]" "$K"', "keys": "k"}},
    }
    path = write(tmp_path, spec)
    env = {**os.environ, "DUP_KEY_1": "sk-same", "DUP_KEY_2": " sk-same\r\n"}
    result = run_abreast("run", str(path), "--no-monitor", cwd=tmp_path, env=env)
    assert result.code == 2
    assert "DUP_KEY_1 and DUP_KEY_2 hold the same key" in result.err
    assert f"({fingerprint('sk-same')})" in result.err
    blank = run_abreast("run", str(path), cwd=tmp_path, env={**env, "DUP_KEY_2": " \n"})
    assert blank.code == 2 and "DUP_KEY_2 is not set" in blank.err
    # A newline or '\r' read with a key (from a file, a Windows .env) is not part of it.
    ok = run_abreast(
        "run", str(path), "--no-monitor", cwd=tmp_path, env={**env, "DUP_KEY_2": "sk-other\n"}
    )
    assert ok.code == 0, ok.out + ok.err
    log = next((tmp_path / ".abreast" / "runs").glob("*/logs/a.1.log")).read_text()
    assert log in (
        "[[key " + fingerprint("sk-same") + "]]",
        "[[key " + fingerprint("sk-other") + "]]",
    )


def test_direct_mode_leases_one_key_per_attempt(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "name": "direct",
            "max_parallel": 4,
            "keys": {"k": {"from": list(ENV), "env": "PROVIDER_KEY", "max_concurrent_per_key": 1}},
            "tasks": {
                f"t{i}": {
                    "run": "sleep 0.3; printenv PROVIDER_KEY > /dev/null; "
                    "env | grep -c TEST_KEY_ || true",
                    "keys": "k",
                }
                for i in range(4)
            },
        },
    )
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env={**os.environ, **ENV}
    )
    assert result.code == 0, result.out + result.err

    leased = [
        json.loads(d)["fingerprint"]
        for (d,) in query(
            tmp_path / ".abreast" / "state.db", "SELECT data FROM events WHERE type = 'key.leased'"
        )
    ]
    assert len(leased) == 4
    assert set(leased) == {fingerprint(k) for k in KEYS}  # spread over the keys
    for log in (tmp_path / ".abreast" / "runs").glob("*/logs/*.log"):
        assert log.read_text().strip() == "0"  # no task saw the keys' source variables


@pytest.mark.slow
def test_a_key_a_direct_mode_task_prints_is_not_copied_by_abreast(tmp_path: Path) -> None:
    key = f"sk-printed-{uuid.uuid4().hex}"
    feedback = tmp_path / "feedback"
    path = write(
        tmp_path,
        {
            "name": "prints",
            "keys": {"direct": {"from": ["PRINTED_KEY"], "env": "API_KEY"}},
            "tasks": {
                "t": {
                    "run": f'echo "$ABREAST_FEEDBACK" >> {feedback}; echo "using $API_KEY"; exit 1',
                    "keys": "direct",
                    "retries": 1,
                    "backoff": {"initial": 0.01, "max": 0.01},
                }
            },
        },
    )
    ran = subprocess.run(
        [sys.executable, "-m", "abreast", "run", str(path), "--plain", "--no-monitor"],
        cwd=tmp_path,
        env={**os.environ, "PRINTED_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr
    shown = f"using [key {fingerprint(key)}]"
    assert shown in ran.stdout  # the summary's last lines of the log
    assert shown in feedback.read_text()  # what the second attempt was told
    assert key not in ran.stdout + ran.stderr + feedback.read_text()
    state = tmp_path / ".abreast"
    assert key.encode() not in (state / "state.db").read_bytes()
    wal = state / "state.db-wal"
    assert not wal.exists() or key.encode() not in wal.read_bytes()
    # Nor does its log keep it, once the attempt has ended.
    logs = "".join(p.read_text() for p in state.rglob("t.*.log"))
    assert shown in logs and key not in logs


def test_a_key_a_direct_mode_task_writes_to_its_output_is_not_kept(tmp_path: Path) -> None:
    key = f"sk-output-{uuid.uuid4().hex}"
    path = write(
        tmp_path,
        {
            "name": "outputs",
            "keys": {"direct": {"from": ["OUTPUT_KEY"], "env": "API_KEY"}},
            "tasks": {
                "t": {
                    "run": 'printf \'{"debug": "%s", "ok": 1}\' "$API_KEY" > "$ABREAST_OUTPUT"',
                    "keys": "direct",
                },
                "next": {
                    "run": 'cat "$ABREAST_INPUTS"',
                    "needs": ["t"],
                    "when": "outputs.t.ok == 1",
                },
            },
        },
    )
    ran = run_abreast(
        "run",
        str(path),
        "--plain",
        "--no-monitor",
        cwd=tmp_path,
        env={**os.environ, "OUTPUT_KEY": key},
    )
    assert ran.code == 0, ran.out + ran.err
    state = tmp_path / ".abreast"
    inputs = "".join(p.read_text() for p in state.rglob("next.*.log"))
    assert f"[key {fingerprint(key)}]" in inputs  # what the dependent was given
    kept = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    assert key.encode() not in kept  # journal, outputs, logs


def test_a_key_a_direct_mode_task_prints_is_masked_while_its_attempt_runs(
    tmp_path: Path,
) -> None:
    # The log keeps the key until the attempt ends; what reads it meanwhile (`abreast
    # logs`, `-f`, the dashboard's log tail) shows it as `[key FP]`, as the run does.
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    key = f"sk-live-{uuid.uuid4().hex}"
    release = tmp_path / "release"
    path = write(
        tmp_path,
        {
            "name": "live",
            "keys": {"direct": {"from": ["LIVE_KEY"], "env": "API_KEY"}},
            "tasks": {
                "t": {
                    "run": f'echo "header x-api-key:$API_KEY"; echo "API_KEY=$API_KEY" '
                    f"&& while [ ! -e {release} ]; do sleep 0.05; done",
                    "keys": "direct",
                }
            },
        },
    )
    proc, run_id = start_run(path, cwd=tmp_path, env={**os.environ, "LIVE_KEY": key})
    try:
        logs = list((tmp_path / ".abreast" / "runs" / run_id / "logs").glob("t.1.log"))
        deadline = time.monotonic() + 30
        while not (logs and "API_KEY=" in logs[0].read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
            logs = list((tmp_path / ".abreast" / "runs" / run_id / "logs").glob("t.1.log"))
        assert key in logs[0].read_text()  # still there: the attempt runs
        shown = run_abreast("logs", run_id, "t", cwd=tmp_path)
        server = DashboardServer(locate(path, None))
        server.start()
        try:
            with urllib.request.urlopen(f"{server.url}api/runs/{run_id}/tasks/t/log") as r:
                tail = r.read().decode()
        finally:
            server.stop()
    finally:
        release.touch()
        out, err = proc.communicate(timeout=60)
    fp = fingerprint(key)
    assert shown.out == f"header x-api-key:[key {fp}]\nAPI_KEY=[key {fp}]\n"
    assert tail == f"header x-api-key:[key {fp}]\nAPI_KEY=[key {fp}]"
    assert proc.returncode == 0, out + err


def live_log_then_end(
    proc: subprocess.Popen[str], run_id: str, root: Path, task: str, marker: str, release: Path
) -> tuple[str, str, str, Path]:
    """`abreast logs RUN TASK` once attempt 1 of `task` has printed `marker`, while it
    runs (it waits for `release`); then the run let end: (that log, the run's stdout and
    stderr, the log file)."""
    try:
        log = root / ".abreast" / "runs" / run_id / "logs" / f"{task}.1.log"
        wait_for(lambda: log.exists() and marker in log.read_text(), what=f"{task} to print")
        live = run_abreast("logs", run_id, task, cwd=root).out
    finally:
        release.touch()
        out, err = proc.communicate(timeout=60)
    return live, out, err, log


def test_secrets_of_the_tasks_environment_are_masked_as_keys_are(tmp_path: Path) -> None:
    # A token abreast's environment has (GITHUB_TOKEN) or a task's `env:` gives it
    # (`GH: ${MY_TOKEN}`), printed by the task (`curl -v`, a stack trace), was copied into
    # the journal, the summary, the next attempt's feedback, its dependents' inputs and the
    # JUnit file CI keeps. Masked now by their variables' names, as the pools' keys are;
    # a short value (`DB_PASSWORD=postgres`) and one of another name are left alone.
    inherited, given = f"ghs_{uuid.uuid4().hex}", f"ghp_{uuid.uuid4().hex}"
    release, feedback = tmp_path / "release", tmp_path / "feedback"
    first = (
        'echo "Authorization: token $GITHUB_TOKEN"; echo "GH=$GH db=$DB_PASSWORD $BUILD_ID"; '
        'printf \'{"debug": "%s"}\' "$GH" > "$ABREAST_OUTPUT"; '
        f"while [ ! -e {release} ]; do sleep 0.05; done; exit 1"
    )
    again = f'echo "$ABREAST_FEEDBACK" | tee {feedback}; exit 1'
    path = write(
        tmp_path,
        {
            "name": "envsecrets",
            "tasks": {
                "t": {
                    "run": f'if [ "$ABREAST_ATTEMPT" = 1 ]; then {first}; else {again}; fi',
                    "env": {"GH": "${MY_TOKEN}"},
                    "retries": 1,
                    "backoff": {"initial": 0.01, "max": 0.01},
                }
            },
        },
    )
    env = {**os.environ, "GITHUB_TOKEN": inherited, "MY_TOKEN": given}
    env |= {"DB_PASSWORD": "postgres", "BUILD_ID": "build-1234567890abcdef"}
    junit = tmp_path / "junit.xml"
    proc, run_id = start_run(path, "--junit", str(junit), cwd=tmp_path, env=env)
    live, out, err, _log = live_log_then_end(proc, run_id, tmp_path, "t", "GH=", release)
    assert proc.returncode == 1, out + err
    a, b = f"[key {fingerprint(inherited)}]", f"[key {fingerprint(given)}]"
    assert live == f"Authorization: token {a}\nGH={b} db=postgres build-1234567890abcdef\n"
    assert f"| GH={b} db=postgres build-1234567890abcdef" in out  # attempt 2's log lines
    assert f"Authorization: token {a}" in feedback.read_text()  # what attempt 2 was told
    kept = b"".join(p.read_bytes() for p in (tmp_path / ".abreast").rglob("*") if p.is_file())
    told = out + err + feedback.read_text() + junit.read_text()
    for secret in (inherited, given):
        assert secret not in told and secret.encode() not in kept  # journal, logs, output
    assert b"postgres" in kept  # too short to be masked


def test_a_secret_a_task_made_given_to_another_in_a_secret_variable_is_masked(
    tmp_path: Path,
) -> None:
    # `auth` makes a token and hands it on in its output; `deploy` gets it as
    # DEPLOY_TOKEN (`${{ outputs.auth.token }}`) and prints it (`curl -v`). It was
    # copied as it is into deploy's log, the summary and `abreast logs`: the value was
    # unknown when the run started, so not among the environment's secrets.
    token, name = f"tok_{uuid.uuid4().hex}", f"release-{uuid.uuid4().hex}"
    release, made = tmp_path / "release", json.dumps({"token": token, "name": name})
    path = write(
        tmp_path,
        {
            "name": "made",
            "tasks": {
                "auth": {"run": f"printf '%s' '{made}' > \"$ABREAST_OUTPUT\""},
                "deploy": {
                    "needs": ["auth"],
                    "env": {
                        "DEPLOY_TOKEN": "${{ outputs.auth.token }}",
                        "RELEASE": "${{ outputs.auth.name }}",  # not a secret by its name
                    },
                    "run": 'echo "Authorization: Bearer $DEPLOY_TOKEN for $RELEASE"; '
                    f"while [ ! -e {release} ]; do sleep 0.05; done; exit 1",
                },
            },
        },
    )
    proc, run_id = start_run(path, cwd=tmp_path)
    live, out, err, log = live_log_then_end(proc, run_id, tmp_path, "deploy", "Bearer", release)
    assert proc.returncode == 1, out + err
    shown = f"Authorization: Bearer [key {fingerprint(token)}] for {name}"
    assert live == shown + "\n"
    assert f"| {shown}" in out  # the failure's last lines
    assert log.read_text() == shown + "\n"  # rewritten when the attempt ended
    events = query(
        tmp_path / ".abreast" / "state.db",
        "SELECT task_id, data FROM events WHERE type = 'secret.masked'",
    )
    assert [(t, json.loads(d)) for t, d in events] == [
        ("deploy", {"variable": "DEPLOY_TOKEN", "fingerprint": fingerprint(token)})
    ]


def test_a_key_a_direct_mode_task_writes_into_its_work_is_not_merged(tmp_path: Path) -> None:
    key = f"sk-written-{uuid.uuid4().hex}"
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    for setting in (["diff.noprefix", "true"], ["diff.external", "/bin/false"]):  # user taste
        subprocess.run(["git", "config", *setting], cwd=tmp_path, check=True)
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    ident |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    path = write(
        tmp_path,
        {
            "name": "writes",
            "isolation": "worktree",
            "keys": {"direct": {"from": ["WRITTEN_KEY"], "env": "API_KEY"}},
            "tasks": {
                "careless": {"run": 'echo "key=$API_KEY" > config.env', "keys": "direct"},
                "careful": {"run": "echo 'key from the environment' > README.md"},
            },
        },
    )
    env = {**os.environ, **ident, "WRITTEN_KEY": key}
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "wf"], cwd=tmp_path, check=True, env=env)
    ran = run_abreast("run", str(path), "--plain", "--no-monitor", cwd=tmp_path, env=env)
    assert ran.code == 1, ran.out + ran.err
    assert (
        f"its changes hold the value of an API key: config.env (key {fingerprint(key)})" in ran.out
    )
    assert key not in ran.out + ran.err
    run_id = ran.out.splitlines()[0][5:]
    assert f"its work: abreast diff {run_id} careless --name-only" in ran.out
    result = f"abreast/{run_id}/_integration"
    tree = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", result],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "README.md" in tree and "config.env" not in tree  # careful landed, careless did not
    # `abreast diff` does not print the key either; which files, it says.
    shown = run_abreast("diff", "careless", cwd=tmp_path, env=env)
    assert shown.code == 2 and key not in shown.out + shown.err
    assert "was sent back because its changes hold the value of an API key" in shown.err
    names = run_abreast("diff", "careless", "--name-only", cwd=tmp_path, env=env)
    assert names.out.split() == ["config.env"], names.err


def test_canary_key_never_leaks(tmp_path: Path, provider: Provider, redis_url: str) -> None:
    canary = f"sk-canary-{uuid.uuid4().hex}"
    direct_canary = f"sk-canary-direct-{uuid.uuid4().hex}"
    (tmp_path / "client.py").write_text(CLIENT)
    (tmp_path / "boom.py").write_text(
        "import os\nraise RuntimeError('task blew up with ' + "
        "os.environ['ANTHROPIC_API_KEY'][:8])\n"
    )
    env = {**os.environ, "CANARY_KEY": canary, "CANARY_DIRECT": direct_canary}
    mport, dport = free_port(), free_port()
    path = write(
        tmp_path,
        {
            "name": "canary",
            "keys": {
                "proxied": {"from": ["CANARY_KEY"], "upstream": provider.url, "limit": "100/2s"},
                "direct": {"from": ["CANARY_DIRECT"], "env": "DIRECT_KEY"},
            },
            "tasks": {
                "call": {"run": f"{sys.executable} {tmp_path}/client.py 3", "keys": "proxied"},
                "boom": {"run": f"{sys.executable} {tmp_path}/boom.py", "keys": "proxied"},
                "uses": {"run": 'test -n "$DIRECT_KEY" && sleep 1.5', "keys": "direct"},
            },
        },
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abreast",
            "run",
            str(path),
            "--plain",
            "--no-monitor",
            "--state",
            redis_url,
            "--metrics-port",
            str(mport),
            "--dashboard",
            str(dport),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[str] = []
    pages: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(
                subprocess.run(
                    ["ps", "-eo", "args"], capture_output=True, text=True, check=False
                ).stdout
            )
            for url in (
                f"http://127.0.0.1:{mport}/metrics",
                f"http://127.0.0.1:{dport}/",
                f"http://127.0.0.1:{dport}/api/runs",
            ):
                try:
                    with urllib.request.urlopen(url, timeout=2) as page:
                        pages.append(page.read().decode())
                except OSError:
                    pass
            time.sleep(0.1)  # sampling what the machine shows while the run goes

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate(timeout=120)
    stop.set()
    sampler.join()
    assert proc.returncode == 1, out + err  # "boom" failed with a traceback
    assert (
        "Traceback"
        in run_abreast(
            "logs", out.splitlines()[0][5:], "boom", "--state", redis_url, cwd=tmp_path
        ).out
    )
    haystacks = {"stdout": out, "stderr": err, "ps": "\n".join(samples), "pages": "\n".join(pages)}
    for f in (tmp_path / ".abreast").rglob("*"):
        if f.is_file():
            haystacks[str(f)] = f.read_bytes().decode("latin-1")
    import redis

    r = redis.Redis.from_url(redis_url)
    dump = []
    for key in r.scan_iter("*"):
        dump.append(key.decode())
        kind = r.type(key).decode()
        if kind == "string":
            dump.append(str(r.get(key)))
        elif kind == "hash":
            dump.append(str(r.hgetall(key)))
        elif kind == "zset":
            dump.append(str(r.zrange(key, 0, -1, withscores=True)))
        elif kind == "list":
            dump.append(str(r.lrange(key, 0, -1)))
    r.close()
    haystacks["redis"] = "\n".join(dump)

    for name, text in haystacks.items():
        assert canary not in text, f"the proxied key leaked into {name}"
        assert direct_canary not in text, f"the direct key leaked into {name}"
    client = json.loads(
        next((tmp_path / ".abreast" / "runs").glob("*/outputs/*.client.json")).read_text()
    )
    assert canary not in json.dumps(client["env"])  # the agent's environment: a token only
    assert "CANARY_KEY" not in client["env"]


def usage_without_limits(usage: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in u.items() if k != "limit"} for u in usage]


@pytest.mark.parametrize("chunk", [3, 8, 19, 1 << 22])
def test_a_log_is_scrubbed_of_keys_however_they_fall_across_reads(
    tmp_path: Path, chunk: int
) -> None:
    from abreast.executor.logs import scrub_secrets

    key = "sk-0123456789abcdef"  # 19 bytes: reads of 3, 8 and 19 split it every way
    text = b"".join(
        (b"x" * (i % 7) + (key.encode() if i % 3 == 0 else b"") + b"\n") for i in range(60)
    )
    log = tmp_path / "t.1.log"
    log.write_bytes(text)
    assert scrub_secrets(str(log), [("abcd1234", key)], chunk=chunk) == 20
    assert log.read_bytes() == text.replace(key.encode(), b"[key abcd1234]")
    untouched = tmp_path / "clean.log"
    untouched.write_bytes(b"nothing here\n")
    before = untouched.stat().st_ino
    assert scrub_secrets(str(untouched), [("abcd1234", key)], chunk=chunk) == 0
    assert untouched.stat().st_ino == before  # not rewritten


def test_scrubbing_never_writes_through_a_link_a_task_put_beside_its_file(
    tmp_path: Path,
) -> None:
    # The output file's name is the task's to know ($ABREAST_OUTPUT): a symlink at the
    # scrub's temporary name (`t.1.json.scrub`) made abreast write over what it named.
    from abreast.executor.logs import scrub_secrets

    key = "sk-0123456789abcdef"
    output, victim = tmp_path / "t.1.json", tmp_path / "victim"
    output.write_text(f'{{"k": "{key}"}}')
    victim.write_text("mine\n")
    (tmp_path / "t.1.json.scrub").symlink_to(victim)
    assert scrub_secrets(str(output), [("abcd1234", key)]) == 1
    assert victim.read_text() == "mine\n"
    assert output.read_text() == '{"k": "[key abcd1234]"}'


def test_which_variables_hold_secrets_by_their_names() -> None:
    from abreast.keys.envsecrets import env_secrets, secret_name

    secret = [
        "GITHUB_TOKEN", "NPM_CONFIG__AUTH", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
        "OPENAI_API_KEY", "STRIPE_KEY", "gpg_passphrase", "GOOGLE_CREDENTIALS", "apikey",
    ]  # fmt: skip
    plain = [
        "GIT_AUTHOR_NAME", "KEYBOARD", "SSH_AUTH_SOCK", "TOKEN_FILE", "SECRETS_DIR",
        "MONKEY", "PATH", "HOME",
    ]  # fmt: skip
    assert [n for n in secret if not secret_name(n)] == []
    assert [n for n in plain if secret_name(n)] == []
    long, inner = "tok-0123456789abcdef", "0123456789abcdef"
    found = env_secrets(
        [
            {"GITHUB_TOKEN": inner, "DB_PASSWORD": "postgres", "HOME": "/home/someone-long"},
            {"OTHER_TOKEN": long, "ABREAST_PROMPT_TOKEN": "x" * 20, "SAME_SECRET": long},
        ]
    )
    assert found == [(fingerprint(long), long), (fingerprint(inner), inner)]  # longest first


@pytest.mark.parametrize("chunk", [1, 5, 19, 4096])
def test_a_live_log_is_masked_of_leased_keys_however_it_is_read(chunk: int) -> None:
    from abreast.executor.logs import KeyMasker, mask_keys

    key = "sk-live-0123456789abcdef=="
    fp = fingerprint(key)
    text = "".join(
        f"{'x' * (i % 5)} {['', key, f'KEY={key}', f'auth:{key}:tail'][i % 4]}\n" for i in range(40)
    )
    want = text.replace(key, f"[key {fp}]")
    assert mask_keys(text, {fp}) == want
    assert mask_keys(text, set()) == text  # nothing leased: nothing to hash
    assert mask_keys(text, {"00000000"}) == text  # another key's fingerprint
    masker = KeyMasker({fp})
    shown = "".join(masker.feed(text[i : i + chunk]) for i in range(0, len(text), chunk))
    assert shown + masker.flush() == want


def _read_usage(headers: dict[str, str], body: bytes, cut: int) -> Tokens:
    reader = UsageReader(headers)
    for i in range(0, len(body), cut):
        reader.feed(body[i : i + cut])
    return reader.tokens()


@pytest.mark.parametrize("cut", [1, 7, 4096])
def test_the_tokens_an_answer_says_it_used_are_read_however_it_is_cut(cut: int) -> None:
    def sse(*events: object) -> bytes:
        return b"".join(b"event: e\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)

    stream = {"content-type": "text/event-stream; charset=utf-8"}
    anthropic = sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"text": 'a "usage" in the text'}},
        {"type": "message_delta", "usage": {"output_tokens": 40, "cache_creation_input_tokens": 9}},
    )
    assert _read_usage(stream, anthropic, cut) == Tokens(input=25, output=40, cache_write=9)
    # OpenAI: a stream asked with include_usage (null until the last chunk); the Responses
    # API's completed event; a whole answer, gzipped.
    openai = sse(
        {"choices": [], "usage": None}, {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    )
    assert _read_usage(stream, openai, cut) == Tokens(input=3, output=4)
    responses = sse({"type": "response.completed", "response": {"usage": {"input_tokens": 6}}})
    assert _read_usage(stream, responses, cut) == Tokens(input=6)
    whole = gzip.compress(
        json.dumps({"usage": {"prompt_tokens": 8, "completion_tokens": 2}}).encode()
    )
    gzipped = {"content-type": "application/json", "content-encoding": "gzip"}
    assert _read_usage(gzipped, whole, cut) == Tokens(input=8, output=2)

    # Gemini: `usageMetadata` in each chunk, the last counting all (thinking is output, the
    # prompt's count includes what was cached); streamed without SSE, a JSON array.
    def meta(prompt: int, out: int, **more: int) -> dict[str, object]:
        return {"usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": out, **more}}

    gemini = sse(meta(30, 2), meta(30, 9, thoughtsTokenCount=4, cachedContentTokenCount=20))
    assert _read_usage(stream, gemini, cut) == Tokens(input=30, output=13, cache_read=20)
    array = json.dumps([meta(5, 1), meta(5, 6)]).encode()
    assert _read_usage({"content-type": "application/json"}, array, cut) == Tokens(5, 6)
    # An event line too long to hold is passed over, and what follows is still read.
    long_line = b"data: " + b"x" * (MAX_LINE_BYTES + 10) + b"\n\n"
    later = sse({"type": "message_delta", "usage": {"output_tokens": 2}})
    assert _read_usage(stream, long_line + later, max(cut, 65536)) == Tokens(output=2)
    # Nothing is made up: not a count (true, -1, "5"), an answer compressed otherwise, an
    # answer of another type.
    odd = sse(
        {"usage": {"input_tokens": True, "output_tokens": -1, "cache_read_input_tokens": "5"}}
    )
    assert not _read_usage(stream, odd, cut)
    brotli = {"content-type": "application/json", "content-encoding": "br"}
    assert not _read_usage(brotli, b'{"usage": {"input_tokens": 1}}', cut)
    assert not _read_usage({"content-type": "text/plain"}, b'{"usage": {"input_tokens": 1}}', cut)
