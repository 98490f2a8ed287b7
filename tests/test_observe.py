"""Seeing a run: metrics (checked by promtool), events on Redis and NATS, the dashboard in a
real headless Chromium, and the report — against numbers computed from the journal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, free_port, run_abreast
from tests.helpers import PY, query, wait_for

SEED_METRICS = (
    "parallel_sprint_duration_seconds",
    "test_slot_wait_time_seconds",
    "memory_usage_per_sprint_bytes",
    "agent_orphan_cleanup_count",
    "conflict_resolution_count",
)


def write(root: Path, spec: dict[str, Any]) -> Path:
    path = root / "w.json"
    path.write_text(json.dumps({"version": 1, "isolation": "none", **spec}))
    return path


def start(path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "abreast", "run", str(path), "--no-monitor", "--plain", *args],
        cwd=path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet), or gone


def journal_events(root: Path) -> list[tuple[int, str, str | None]]:
    return query(
        root / ".abreast" / "state.db", "SELECT seq, type, task_id FROM events ORDER BY seq"
    )


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_follow_a_scripted_run_and_pass_promtool(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.sh"
    quiet.write_text('#!/bin/sh\nif [ "$ABREAST_ATTEMPT" = 1 ]; then sleep 30; fi\n')
    quiet.chmod(0o755)
    port = free_port()
    path = write(
        tmp_path,
        {
            "name": "metrics",
            "locks": {"tests": {"ttl": "10s"}},
            "heartbeat": {"interval": "0.2s", "orphan_after": "1s"},
            "tasks": {
                "locked": {"run": "sleep 0.2", "locks": ["tests"]},
                "orphan": {"run": str(quiet), "retries": 1, "backoff": {"initial": 0.05}},
                "bad": {"run": "exit 3"},
                "after": {"run": "true", "needs": ["bad"]},
                "slow": {"run": "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.4; done"},
            },
        },
    )
    proc = start(path, "--metrics-port", str(port))
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(
            lambda: "abreast_task_retries_total{" in get(url)[1],
            timeout=30,
            what="the orphan to be counted and retried",
        )
        _, text = get(url)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err  # "bad" failed
    for name in SEED_METRICS:
        assert f"# TYPE {name}" in text
    assert 'agent_orphan_cleanup_count_total{reason="no_activity"} 1.0' in text
    assert 'test_slot_wait_time_seconds_count{coordinator_id="locked",lock="tests"} 1.0' in text
    assert 'parallel_sprint_duration_seconds{sprint_id="bad",status="failed"}' in text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['abreast_tasks{state="running"}'] >= 1  # "slow" still runs
    assert values['abreast_tasks{state="blocked"}'] == 1

    assert 'abreast_task_retries_total{kind="retry"} 1.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_example_alerting_rules_pass_promtool_and_name_abreasts_metrics() -> None:
    # examples/prometheus: rules for Alertmanager to tell a team (seed 000: "Notify team
    # via alert-manager"), unit-tested on synthetic series by promtool; every metric they
    # read is one abreast serves (a renamed metric would leave an alert that never fires).
    import re

    import yaml
    from prometheus_client import generate_latest

    from abreast.observe.metrics import Metrics

    here = Path(__file__).parent.parent / "examples" / "prometheus"
    rules = yaml.safe_load((here / "abreast-alerts.yml").read_text())["groups"][0]["rules"]
    exposed = set(
        re.findall(r"^# TYPE (\w+) (\w+)", generate_latest(Metrics().registry).decode(), re.M)
    )
    names = {n for n, kind in exposed} | {f"{n}_total" for n, kind in exposed if kind == "counter"}
    names |= {f"{n}_bucket" for n, kind in exposed if kind == "histogram"}
    for rule in rules:
        used = set(re.findall(r"\b([a-z_]+_(?:total|bucket|tasks|seconds|bytes))\b", rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    for args in (
        ["check", "rules", "abreast-alerts.yml"],
        ["test", "rules", "abreast-alerts.test.yml"],
    ):
        done = subprocess.run(
            [promtool, *args], cwd=here, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("option", ["--metrics-port", "--dashboard"])
def test_a_busy_port_stops_the_run_before_anything_is_journaled(
    tmp_path: Path, option: str
) -> None:
    import socket

    path = write(tmp_path, {"tasks": {"a": {"run": "touch ran"}}})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = run_abreast("run", str(path), "--plain", option, port, cwd=tmp_path)
    assert result.code == 2
    assert f"{option} {port}: Address already in use" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / ".abreast" / "state.db").exists()  # no half-made run


def test_the_observer_serves_the_run_and_leaves_when_it_ends(tmp_path: Path) -> None:
    mport = free_port()
    gate = "while [ ! -f go ]; do sleep 0.05; done"  # the task ends when the test says
    path = write(tmp_path, {"tasks": {"a": {"run": gate}}})
    proc = start(path, "--metrics-port", str(mport), "--dashboard")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # run:, metrics:, dashboard:
        page = next(line.split(" ", 1)[1].strip() for line in lines if "dashboard:" in line)
        run_id = lines[0].split()[1]
        assert page.endswith(f"/runs/{run_id}")  # the address printed is the run's own page
        status, body = get(page)
        assert status == 200 and run_id in body
        dash = page.removesuffix(f"runs/{run_id}")
        metrics = f"http://127.0.0.1:{mport}/metrics"
        wait_for(lambda: 'abreast_tasks{state="running"} 1.0' in get(metrics)[1], what="metrics")
        assert get(f"http://127.0.0.1:{mport}/")[0] == 404  # that port serves /metrics only
        status, body = get(dash + "api/runs")
        assert status == 200 and lines[0].split()[1] in body
        assert get(dash + "metrics")[0] == 200
        (tmp_path / "go").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        # With no page open, the observer leaves once the run is over.
        wait_for(lambda: get(metrics)[0] == 0 and get(dash)[0] == 0, what="the observer to go")
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            proc.communicate(timeout=60)


def test_the_observer_started_early_leaves_when_the_run_never_begins(tmp_path: Path) -> None:
    import socket

    # `run` starts the observer before it reads the workflow; a mistake there must not
    # leave it holding the ports.
    path = write(tmp_path, {"tasks": {"a": {"run": "true", "needs": ["nope"]}}})
    mport, dport = free_port(), free_port()
    result = run_abreast(
        "run",
        str(path),
        "--plain",
        "--metrics-port",
        str(mport),
        "--dashboard",
        str(dport),
        cwd=tmp_path,
    )
    assert result.code == 2 and "nope" in result.err and "Traceback" not in result.err
    assert not (tmp_path / ".abreast" / "state.db").exists()

    def ports_free() -> bool:
        for port in (mport, dport):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                    s.listen()
                except OSError:
                    return False
        return True

    wait_for(ports_free, what="the observer to let go of the ports")


def test_an_observer_that_cannot_start_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    import os

    # A broken install, made real: a `starlette` that fails to import, first on the path.
    broken = tmp_path / "broken" / "starlette"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('starlette is broken here')\n")
    env = {
        **os.environ,
        "PYTHONPATH": f"{broken.parent}{os.pathsep}" + os.environ.get("PYTHONPATH", ""),
    }
    path = write(tmp_path, {"tasks": {"a": {"run": "touch ran"}}})
    result = run_abreast(
        "run",
        str(path),
        "--plain",
        "--no-monitor",
        "--metrics-port",
        str(free_port()),
        cwd=tmp_path,
        env=env,
    )
    assert result.code == 0, result.out + result.err
    assert (tmp_path / "ran").exists()
    assert "the observer could not start: ImportError: starlette is broken here" in result.err
    assert "Traceback" not in result.err
    assert "metrics:" not in result.out  # no address is printed that nothing serves


def test_conflict_resolution_is_counted_when_resolved(tmp_path: Path) -> None:
    from abreast.coord.journal import EventRow
    from abreast.observe.metrics import Metrics

    m = Metrics()
    m.consume(
        [
            EventRow(1, "r", 0, "task.retrying", "a", {"kind": "conflict"}),
            EventRow(2, "r", 0, "merge.conflict", "a", {}),
            EventRow(3, "r", 0, "task.retrying", "b", {"kind": "check"}),
            EventRow(4, "r", 0, "merge.landed", "a", {"commit": "c"}),
        ]
    )
    text = m.exposition().decode()
    assert 'conflict_resolution_count_total{resolved="false",type="conflict"} 1.0' in text
    assert 'conflict_resolution_count_total{resolved="true",type="conflict"} 1.0' in text
    assert 'conflict_resolution_count_total{resolved="false",type="check"} 1.0' in text
    assert 'conflict_resolution_count_total{resolved="true",type="check"}' not in text


# -- events ----------------------------------------------------------------------------------

EVENT_TASKS = {
    "a": {"run": "true"},
    "b": {"run": "true", "needs": ["a"]},
    "c": {"run": "exit 1", "retries": 1, "backoff": {"initial": 0.05}},
    "d": {"run": "true", "needs": ["b"]},
}


def test_every_event_reaches_a_redis_subscriber_in_order(tmp_path: Path, redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("abreast.events")
    got: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg:
                got.append(json.loads(msg["data"]))

    t = threading.Thread(target=listen)
    t.start()
    path = write(tmp_path, {"name": "events", "tasks": EVENT_TASKS})
    result = run_abreast(
        "run", str(path), "--no-monitor", "--plain", "--state", redis_url, cwd=tmp_path
    )
    assert result.code == 1  # "c" fails twice
    journaled = journal_events(tmp_path)
    wait_for(lambda: len(got) >= len(journaled), what="every event on Redis")
    stop.set()
    t.join()
    assert [(e["seq"], e["type"], e["task_id"]) for e in got] == journaled
    types = {e["type"] for e in got}
    assert {
        "run.started",
        "task.ready",
        "task.started",
        "task.finished",
        "task.retrying",
        "group.completed",
        "workflow.performance",
        "run.finished",
    } <= types
    perf = next(e for e in got if e["type"] == "workflow.performance")
    assert set(perf) >= {"sequentialTime", "parallelTime", "timeSaved", "percentageSaved"}


def test_a_redis_password_in_the_state_url_is_never_journaled_published_or_shown(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    secret = "hunter2-" + tmp_path.name
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(
        "abreast-test",
        enabled=True,
        passwords=[f"+{secret}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    client.acl_log_reset()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("abreast.events")
    try:
        url = redis_url.replace("redis://", f"redis://abreast-test:{secret}@")
        # The task's own `abreast lock` reaches the store through ABREAST_STATE.
        path = write(tmp_path, {"name": "pw", "tasks": {"a": {"run": "abreast lock t -- true"}}})
        result = run_abreast(
            "run", str(path), "--no-monitor", "--plain", "--state", url, cwd=tmp_path
        )
        assert result.code == 0, result.out + result.err
        published: list[str] = []

        def finished() -> bool:
            msg = pubsub.get_message(timeout=0.1)  # None also for the subscribe reply
            if msg is not None:
                published.append(msg["data"].decode())
            return any('"run.finished"' in m for m in published)

        wait_for(finished, what="the run's events on Redis")
        assert any('"run.started"' in m for m in published)
        shown = [result.out, result.err, *published]
        for args in (["status", "--json"], ["report", "--json"]):
            shown.append(run_abreast(*args, "--state", url, cwd=tmp_path).out)
        bad = url.replace(secret, "wrong-pw")
        wrong = run_abreast("lock", "t", "--state", bad, "--", "true", cwd=tmp_path)
        assert wrong.code == 2 and "abreast-test:***@" in wrong.err, wrong.err
        # A refused password is an answer, not a failure to retry (redis-py would, ten times).
        refusals = [e for e in client.acl_log() if e["username"] == "abreast-test"]
        assert [e["count"] for e in refusals] == [1]
        shown.append(wrong.err)
        journaled = b"".join(p.read_bytes() for p in (tmp_path / ".abreast").rglob("*.db*"))
        assert secret.encode() not in journaled
        assert b"abreast-test:***@" in journaled  # where the run's state was, redacted
        assert not [text for text in shown if secret in text or "wrong-pw" in text]
    finally:
        pubsub.close()
        client.acl_deluser("abreast-test")
        client.close()


class NatsServer:
    """A nats-server this test started (and alone stops), on 127.0.0.1."""

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import socket

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, what="nats-server to listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server (Debian package) is not installed; .ci/run installs it")
    server = NatsServer(binary)
    try:
        yield server
    finally:
        server.stop()


def test_every_event_reaches_a_nats_subscriber_in_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    import nats

    got: list[dict[str, Any]] = []
    ready = threading.Event()
    done = threading.Event()

    def listen() -> None:
        async def on_message(msg: Any) -> None:
            got.append(json.loads(msg.data))

        async def main() -> None:
            nc = await nats.connect(nats_server.url)
            await nc.subscribe("abreast.events", cb=on_message)
            await nc.flush()
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            await nc.drain()

        asyncio.run(main())

    t = threading.Thread(target=listen)
    t.start()
    ready.wait(10)
    path = write(
        tmp_path, {"name": "nats", "events": {"nats": nats_server.url}, "tasks": EVENT_TASKS}
    )
    result = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert result.code == 1
    journaled = journal_events(tmp_path)
    wait_for(lambda: len(got) >= len(journaled), what="every event on NATS")
    done.set()
    t.join()
    assert [(e["seq"], e["type"], e["task_id"]) for e in got] == journaled


def test_nats_gone_during_a_run_neither_fails_it_nor_garbles_its_output(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # NATS stopped mid-run: nats-py printed a traceback for each try to reconnect over
    # the run's output, and the run's end crashed closing the sink (ConnectionResetError:
    # a traceback instead of the summary, exit 1 for a run whose tasks all succeeded).
    gate, started = tmp_path / "go", tmp_path / "started"
    tasks = {
        "first": {"run": f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done"},
        "second": {"run": "true", "needs": ["first"]},
    }
    path = write(tmp_path, {"name": "gone", "events": {"nats": nats_server.url}, "tasks": tasks})
    proc = start(path)
    try:
        wait_for(started.exists, what="first to start")
        nats_server.stop()
        gate.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err and "nats: " not in out + err, out + err
    assert "succeeded in" in out


def test_unreachable_nats_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"events": {"nats": f"nats://127.0.0.1:{free_port()}"}, "tasks": {"a": {"run": "true"}}},
    )
    result = run_abreast("run", str(path), cwd=tmp_path)
    assert result.code == 2
    assert "cannot reach NATS" in result.err
    assert not (tmp_path / ".abreast" / "state.db").exists() or not journal_events(tmp_path)


# -- report ----------------------------------------------------------------------------------


def test_report_numbers_equal_the_journal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "name": "rep",
            "tasks": {
                "a": {"run": "sleep 0.3", "estimate": "10s"},
                "b": {"run": "sleep 0.2", "needs": ["a"], "estimate": "5s"},
                "c": {"run": "echo '<b>bold</b>' >&2; exit 1", "estimate": "1s"},
            },
        },
    )

    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    run_id = run.out.splitlines()[0][5:]
    assert "critical path: a -> b took" in run.out
    rep = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)
    db = tmp_path / ".abreast" / "state.db"
    started, finished = query(db, "SELECT started_at, finished_at FROM runs")[0]
    busy = query(db, "SELECT sum(wall_s) FROM attempts")[0][0]
    assert rep["wall_s"] == pytest.approx(finished - started)
    assert rep["sequential_s"] == pytest.approx(busy)
    assert rep["saved_s"] == pytest.approx(busy - (finished - started))
    tasks = {t["id"]: t for t in rep["tasks"]}
    for tid, s, f, state in query(db, "SELECT task_id, started_at, finished_at, state FROM tasks"):
        assert tasks[tid]["elapsed_s"] == pytest.approx(f - s)
        assert tasks[tid]["state"] == state
    cp = rep["critical_path"]
    assert cp["estimated"]["tasks"] == ["a", "b"]
    assert cp["estimated"]["seconds"] == 15
    assert cp["estimated"]["given"] is True
    assert cp["actual"]["tasks"] == ["a", "b"]
    (a_start,), (b_end,) = (
        query(db, f"SELECT {col} FROM tasks WHERE task_id = '{tid}'")[0]
        for col, tid in (("started_at", "a"), ("finished_at", "b"))
    )
    assert cp["actual"]["seconds"] == pytest.approx(b_end - a_start)  # a's start to b's end
    assert rep["failures"][0]["task"] == "c"
    assert "<b>bold</b>" in rep["failures"][0]["log_tail"]
    page = tmp_path / "r.html"
    assert run_abreast("report", run_id, "--html", str(page), cwd=tmp_path).code == 0
    text = page.read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold</b>" not in text
    assert "<script" not in text and "src=" not in text  # one self-contained file


def test_report_writes_junit_xml_a_test_case_per_task_for_ci(tmp_path: Path) -> None:
    # CI systems show test results from JUnit XML; a run's tasks had no way there.
    import xml.etree.ElementTree as ET

    path = write(
        tmp_path,
        {
            "name": "ci",
            "flags": {"deploy": False},
            "tasks": {
                "build": {"run": "true"},
                "test": {
                    "run": "printf '\\033[31m<FAIL>\\033[0m 3 & 4\\n'; exit 3",
                    "needs": ["build"],
                },
                "slow": {"run": "sleep 5", "timeout": "0.3s"},
                "package": {"run": "true", "needs": ["test"]},
                "deploy": {"run": "true", "when": "deploy"},
                "flaky": {
                    "run": f"test -e {tmp_path}/once || "
                    f"{{ touch {tmp_path}/once; echo 'db not up'; exit 3; }}",
                    "retries": 1,
                    "backoff": {"initial": 0.01},
                },
            },
        },
    )
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert ran.code == 1, ran.out
    xml_file = tmp_path / "junit.xml"
    done = run_abreast("report", "--junit", str(xml_file), cwd=tmp_path)
    assert done.code == 0 and done.out.strip() == f"wrote {xml_file}", done.err
    root = ET.parse(xml_file).getroot()  # well-formed: the log's ESC is not in it
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.get("name") == "ci"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "2", "2")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"run": ran.out.splitlines()[0][5:], "state": "failed"}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"build", "test", "slow", "package", "deploy", "flaky"}
    # Green in the end, after an attempt that was not: a pass that says so.
    said = cases["flaky"].find("system-out")
    assert said is not None and cases["flaky"].find("failure") is None
    assert said.text == (  # with its log's last line, as the run said it then
        "succeeded on attempt 2; before it:\nattempt 1: failed (exit 3: db not up)"
    ), said.text
    assert all(c.get("classname") == "ci" for c in cases.values())
    assert list(cases["build"]) == []  # passed
    failure = cases["test"].find("failure")
    assert failure is not None and failure.get("type") == "failed"
    assert failure.get("message") == "exit 3"
    assert "<FAIL> 3 & 4" in (failure.text or "") and "\x1b" not in (failure.text or "")
    timed_out = cases["slow"].find("failure")
    assert timed_out is not None and timed_out.get("type") == "timed_out"
    blocked = cases["package"].find("skipped")
    assert blocked is not None and blocked.get("message", "").startswith("blocked: "), blocked
    skipped = cases["deploy"].find("skipped")
    assert skipped is not None and "deploy" in skipped.get("message", "")
    assert float(cases["slow"].get("time", "0")) >= 0.3
    # `run --junit FILE` writes the same at the run's end, its exit status untouched; a
    # place it cannot write to is said before anything runs.
    again = tmp_path / "again.xml"
    ran = run_abreast(
        "run", str(path), "--no-monitor", "--plain", "--junit", str(again), cwd=tmp_path
    )
    assert ran.code == 1 and f"  junit: wrote {again}" in ran.out, ran.out + ran.err
    assert ET.parse(again).getroot()[0].get("failures") == "2"
    runs = len(query(tmp_path / ".abreast" / "state.db", "SELECT id FROM runs"))
    bad = run_abreast("run", str(path), "--junit", str(tmp_path / "no" / "x.xml"), cwd=tmp_path)
    assert bad.code == 2 and "--junit " in bad.err and "cannot write a file there" in bad.err
    assert len(query(tmp_path / ".abreast" / "state.db", "SELECT id FROM runs")) == runs
    # What XML 1.0 has no place for never reaches the file (a parser refuses it whole).
    from abreast.observe.report import _xml_text

    assert _xml_text("a\x01b\x1bc\td\ufffee") == "a\ufffdb\ufffdc\td\ufffde"


def test_failed_tasks_are_annotations_on_github_actions(tmp_path: Path) -> None:
    # On GitHub Actions a failed task was a line in a long log; it is an error annotation
    # on the job and the pull request now (a workflow command on stdout).
    path = write(
        tmp_path,
        {
            "name": "gh",
            "tasks": {
                "lint": {"run": "true"},
                "test": {"run": "exit 3", "retries": 1, "backoff": {"initial": 0.01}},
                # Failed alike: one annotation (GitHub shows ten errors of a step).
                "e2e": {"run": "echo no browser; exit 4"},
                "smoke": {"run": "echo no browser; exit 4"},
            },
        },
    )
    env = {**os.environ, "GITHUB_ACTIONS": "true"}
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path, env=env)
    assert ran.code == 1
    annotations = [x for x in ran.out.splitlines() if x.startswith("::")]
    assert annotations == [
        "::error title=abreast%3A test failed::exit 3 (after 2 attempts)",
        "::error title=abreast%3A e2e%2C smoke failed::exit 4: no browser",  # its log's end
    ]
    # A run's warnings too (here: a file generated that .gitignore does not exclude).
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "abreast.yaml").write_text(
        "version: 1\nname: gw\ntasks:\n  w: {run: mkdir __pycache__ && touch __pycache__/x.pyc}\n"
    )
    subprocess.run(
        "git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm wf",
        shell=True,
        cwd=repo,
        check=True,
    )
    warned = run_abreast("run", "--no-monitor", "--plain", cwd=repo, env=env)
    assert warned.code == 0, warned.out + warned.err
    assert any(
        x.startswith("::warning title=abreast::left out of w's work: __pycache__/")
        for x in warned.out.splitlines()
    ), warned.out
    elsewhere = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert elsewhere.code == 1 and "::error" not in elsewhere.out


def test_report_page_says_a_failed_tasks_log_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "quiet", "tasks": {"q": {"run": "exit 4"}}})
    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 1
    page = tmp_path / "r.html"
    run_id = run.out.splitlines()[0][5:]
    assert run_abreast("report", run_id, "--html", str(page), cwd=tmp_path).code == 0
    text = page.read_text()
    assert "the task's log is empty" in text and "<pre></pre>" not in text


def test_a_long_critical_path_is_shortened_and_default_estimates_are_not_quoted(
    tmp_path: Path,
) -> None:
    chain = {f"s{i}": {"run": "true", "needs": [f"s{i - 1}"] if i else []} for i in range(12)}
    path = write(tmp_path, {"name": "long", "tasks": chain})
    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.err
    line = next(x for x in run.out.splitlines() if "critical path:" in x)
    assert "critical path: s0 -> s1 -> s2 -> ... -> s9 -> s10 -> s11 (12 tasks) took" in line
    assert "estimated" not in line  # no task has an estimate: 12 x the default says nothing
    run_id = run.out.splitlines()[0][5:]
    rep = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)
    assert rep["critical_path"]["actual"]["tasks"] == [f"s{i}" for i in range(12)]
    assert rep["critical_path"]["estimated"]["given"] is False


def test_an_estimate_made_of_defaults_says_so_or_is_not_quoted(tmp_path: Path) -> None:
    # Only a has an estimate: the path a -> b is 10s of the user's and 1m of the default's.
    path = write(
        tmp_path,
        {
            "name": "some",
            "tasks": {
                "a": {"run": "true", "estimate": "10s"},
                "b": {"run": "true", "needs": ["a"]},
                "c": {"run": "true"},
            },
        },
    )
    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.err
    assert (
        "took" in run.out
        and "(estimated 1m10s: a -> b; b without an estimate, counted as 1m)" in run.out
    )
    report = run_abreast("report", run.out.splitlines()[0][5:], cwd=tmp_path).out
    assert (
        "estimated beforehand: 1m10s (one at a time 2m10s; 2 of 3 tasks without an "
        "estimate, counted as 1m each)" in report
    )
    # The table marks the defaults, as `abreast analyze` does.
    assert re.search(r"\n  b +succeeded .* 1m\?\n", report) and re.search(r"\n  a .* 10s\n", report)
    assert "  (?: no estimate given: counted as 1m)" in report
    # The estimated path is all defaults (2m of b2 -> c2 over a2's 10s): nothing to quote.
    path = write(
        tmp_path,
        {
            "name": "other",
            "tasks": {
                "a2": {"run": "true", "estimate": "10s"},
                "b2": {"run": "true"},
                "c2": {"run": "true", "needs": ["b2"]},
            },
        },
    )
    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.err
    line = next(x for x in run.out.splitlines() if "critical path:" in x)
    assert "took" in line and "estimated" not in line


# -- dashboard -------------------------------------------------------------------------------


def test_non_loopback_dashboard_needs_a_token(tmp_path: Path) -> None:
    result = run_abreast(
        "dashboard",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--state",
        f"sqlite://{tmp_path}/state.db",
        cwd=tmp_path,
    )
    assert result.code == 2
    assert "without a token" in result.err


def test_dashboard_token_from_the_environment_stays_out_of_argv(tmp_path: Path) -> None:
    import os

    port = free_port()
    env = {**os.environ, "ABREAST_DASHBOARD_TOKEN": "env-s3cret"}
    argv = [sys.executable, "-m", "abreast", "dashboard", "--port", str(port)]
    argv += ["--state", f"sqlite://{tmp_path}/state.db"]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(lambda: get(base)[0] != 0, what="the dashboard to listen")
        assert get(base)[0] == 401
        assert get(base, {"Authorization": "Bearer env-s3cret"})[0] == 200
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"env-s3cret" not in f.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_dashboard_shows_a_log_as_text_without_escape_sequences(tmp_path: Path) -> None:
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    noise = r"\033[31mred\033[0m\r\nnext \033]0;title\007line\n"
    path = write(tmp_path, {"tasks": {"a": {"run": f"printf '{noise}'"}}})
    ran = run_abreast("run", str(path), "--no-monitor", cwd=tmp_path)
    run_id = ran.out.splitlines()[0][5:]
    server = DashboardServer(locate(path, None))
    server.start()
    try:
        status, body = get(f"{server.url}api/runs/{run_id}/tasks/a/log")
    finally:
        server.stop()
    assert status == 200
    assert body == "red\nnext line"


def test_dashboard_says_why_an_attempt_failed_as_the_run_did(tmp_path: Path) -> None:
    # Its tooltips said only `exit 1`; the run's progress lines, status and the report
    # say the log's telling last line with it.
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    flaky = 'if [ "$ABREAST_ATTEMPT" = 1 ]; then echo "db not up"; exit 3; fi'
    path = write(
        tmp_path,
        {
            "tasks": {
                "flaky": {"run": flaky, "retries": 1, "backoff": {"initial": 0.05}},
                "bad": {"run": "echo 'it broke'; exit 7"},
            }
        },
    )
    ran = run_abreast("run", str(path), "--no-monitor", cwd=tmp_path)
    run_id = ran.out.splitlines()[0][5:]
    server = DashboardServer(locate(path, None))
    server.start()
    try:
        for _ in range(2):  # the second from what the first read
            status, body = get(f"{server.url}api/runs/{run_id}")
            assert status == 200
            snap = json.loads(body)
            tasks = {t["id"]: t["reason"] for t in snap["tasks"]}
            assert tasks == {"flaky": None, "bad": "exit 7: it broke"}
            tried = {(a["task"], a["attempt"]): a["reason"] for a in snap["attempts"]}
            assert tried == {
                ("flaky", 1): "exit 3: db not up",
                ("flaky", 2): None,
                ("bad", 1): "exit 7: it broke",
            }
    finally:
        server.stop()


def test_dashboard_refuses_foreign_hosts_origins_and_missing_tokens(tmp_path: Path) -> None:
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    path = write(tmp_path, {"tasks": {"a": {"run": "true"}}})
    run_abreast("run", str(path), "--no-monitor", cwd=tmp_path)
    server = DashboardServer(locate(path, None), token="s3cret")
    server.start()
    try:
        base = server.url
        assert get(base)[0] == 401
        assert get(base + "?token=wrong")[0] == 401
        assert get(base + "?token=s3cret")[0] == 200
        assert get(base, {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(base, {"Authorization": "Bearer s3cret", "Host": "evil.example"})[0] == 421
        assert (
            get(base, {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"})[0] == 403
        )
        status, body = get(base + "metrics", {"Authorization": "Bearer s3cret"})
        assert status == 200
        assert "parallel_sprint_duration_seconds" in body
        # The token in the address becomes a cookie the page's own requests then carry.
        with urllib.request.urlopen(base + "?token=s3cret", timeout=10) as r:
            cookie = r.headers["set-cookie"]
            assert r.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert cookie.startswith("abreast_token=s3cret;")
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert get(base, {"Cookie": "abreast_token=s3cret"})[0] == 200
        assert get(base, {"Cookie": "abreast_token=wrong"})[0] == 401
        # Refusals carry the same headers.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base, timeout=10)
        assert refused.value.code == 401
        assert refused.value.headers["x-content-type-options"] == "nosniff"
        refused.value.close()
    finally:
        server.stop()


def serve_dashboard(
    root: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """`abreast dashboard` of the project at `root` on a free port, answering; the caller
    terminates it."""
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "abreast", "dashboard", "--port", str(port)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/api/runs")[0] == 200, what="dashboard")
    except BaseException:
        dashboard.terminate()
        dashboard.wait(timeout=10)
        raise
    return dashboard, port


def chromium(profile: Path) -> Any:
    """A headless Chromium whose profile lives in `profile` (the test's tmp_path, not /tmp)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if binary is None or driver_bin is None:
        pytest.skip(
            "Chromium and chromedriver (Debian packages chromium, chromium-driver) are "
            "not installed; .ci/run installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_bin), options=options)


@pytest.mark.browser
@contextlib.contextmanager
def run_shown(root: Path, path: Path, code: int = 0) -> Iterator[tuple[str, Any]]:
    """Run the workflow at `path` to its end (exit `code`), and show it in Chromium through
    `abreast dashboard`: (the run's API address, the driver on its page). Both ended after."""
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=root)
    assert ran.code == code, ran.out
    run_id = ran.out.splitlines()[0][5:]
    dashboard, port = serve_dashboard(root)
    try:
        driver = chromium(root / "chromium-profile")
        try:
            driver.get(f"http://127.0.0.1:{port}/runs/{run_id}")
            yield f"http://127.0.0.1:{port}/api/runs/{run_id}", driver
        finally:
            driver.quit()
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)


def test_dashboard_shows_states_change_live_in_chromium(tmp_path: Path) -> None:
    gate, late_gate = tmp_path / "go", tmp_path / "late-go"
    html_text = "<img src=x onerror=document.title=/pwned/.source>"
    path = write(
        tmp_path,
        {
            "name": "live",
            "tasks": {
                "first": {"run": f"while [ ! -e {gate} ]; do sleep 0.05; done", "estimate": "1h"},
                "second": {"run": "true", "needs": ["first"], "estimate": "20m"},
                "judge": {
                    "run": f'echo \'{{"note": "{html_text}"}}\' > "$ABREAST_OUTPUT"',
                    "gate": "output.note == 'fine'",
                    "max_iterations": 1,
                    "estimate": "1m",
                },
                "late": {
                    "run": f"while [ ! -e {late_gate} ]; do sleep 0.05; done",
                    "estimate": "10m",
                },
            },
        },
    )
    proc = start(path)
    dashboard, port = serve_dashboard(tmp_path)
    driver = chromium(tmp_path / "chromium-profile")
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline()[5:].strip()
        driver.get(f"http://127.0.0.1:{port}/runs/{run_id}")
        node = '[data-task="first"]'

        def state_of(task: str) -> str | None:
            return driver.execute_script(  # type: ignore[no-any-return]
                "const n = document.querySelector(arguments[0]);"
                "return n && n.getAttribute('data-state');",
                f'[data-task="{task}"]',
            )

        wait_for(lambda: state_of("first") == "running", what="first to show as running")
        assert state_of("second") == "pending"
        # By the estimates: first's hour (less what it ran) and second's 20m.
        summary = driver.find_element("id", "summary")
        wait_for(lambda: "about 1h20m left" in summary.text, what="the time left")
        loaded_at = driver.execute_script("return performance.timeOrigin")
        gate.touch()
        wait_for(
            lambda: state_of("second") == "succeeded",
            timeout=30,
            what="second to show as succeeded, live",
        )
        assert state_of("first") == "succeeded"
        assert driver.execute_script("return performance.timeOrigin") == loaded_at  # no reload
        assert driver.execute_script("return window.abreastRefreshes") > 1
        wait_for(lambda: state_of("judge") == "failed", what="judge to fail its gate")
        title = driver.execute_script(
            "return document.querySelector('[data-task=\"judge\"] title').textContent"
        )
        assert html_text in title  # shown as text...
        assert driver.title != "pwned"  # ...never run as HTML
        # Clicked from the page itself: a refresh may replace the node between a lookup
        # and a WebDriver click.
        driver.execute_script(
            "document.querySelector(arguments[0])"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
            node,
        )

        wait_for(
            lambda: driver.find_element("id", "log-task").text == "first",
            what="the log of a clicked task",
        )
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # A drained run says so, live, while what runs finishes.
        assert run_abreast("cancel", run_id, "--drain", cwd=tmp_path).code == 0
        wait_for(
            lambda: summary.get_attribute("data-stopping") == "draining",
            what="the page to say the run drains",
        )
        assert summary.text.startswith("live: running (draining), ")
        # The list of runs reloads itself while a run runs.
        assert "http-equiv=refresh" in get(f"http://127.0.0.1:{port}/")[1]
        listed = get(f"http://127.0.0.1:{port}/api/runs")[1]
        assert [(r["state"], r["stopping"]) for r in json.loads(listed)] == [
            ("running", "draining")
        ]
    finally:
        driver.quit()
        gate.touch()
        late_gate.touch()
        proc.communicate(timeout=60)
        dashboard.terminate()
        dashboard.wait(timeout=10)


def test_dashboard_orders_a_waves_tasks_to_cross_few_edges_and_marks_times(
    tmp_path: Path,
) -> None:
    # Rows were in id order in each wave: x (needs b) above y (needs a) crossed their
    # edges; and the timeline had no time on it.
    path = write(
        tmp_path,
        {
            "name": "order",
            "tasks": {
                "a": {"run": "true"},
                "b": {"run": "true"},
                "x": {"run": "true", "needs": ["b"]},
                "y": {"run": "true", "needs": ["a"]},
            },
        },
    )
    with run_shown(tmp_path, path) as (_, driver):
        rows = (
            'const y = id => document.querySelector(`g[data-task="${id}"]`)'
            ".transform.baseVal[0].matrix.f;"
            "return ['a', 'b', 'x', 'y'].map(y);"
        )
        wait_for(
            lambda: driver.execute_script("return document.querySelectorAll('g.node').length") == 4,
            what="the DAG",
        )
        ya, yb, yx, yy = driver.execute_script(rows)
        assert ya < yb and yy < yx, (ya, yb, yx, yy)  # y beside a, x beside b
        marks = driver.execute_script(
            "return [...document.querySelectorAll('#timeline text.tick')].map(t => t.textContent)"
        )
        assert marks[0] == "0s" and len(marks) >= 2, marks


def test_the_dashboard_shows_the_warnings_the_run_said(tmp_path: Path) -> None:
    # A flaky check, a check that rewrote the work it checked, files tools generate left
    # out: said at the terminal and by `report`, and nowhere on the dashboard.
    (tmp_path / "abreast.yaml").write_text(
        "version: 1\nname: warned\n"
        "checks: [{name: fmt, run: 'echo A > a.txt'}]\n"
        "tasks:\n  a: {run: echo a > a.txt}\n  b: {run: echo b > b.txt, needs: [a]}\n"
    )
    subprocess.run(
        "git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm wf",
        shell=True,
        cwd=tmp_path,
        check=True,
    )
    with run_shown(tmp_path, tmp_path / "abreast.yaml") as (api, driver):
        shown = "return document.getElementById('warnings-box').hidden === false"
        wait_for(lambda: driver.execute_script(shown), what="the warnings")
        said = driver.execute_script(
            "return [...document.querySelectorAll('#warnings li')]"
            ".map(li => [li.dataset.task, li.textContent])"
        )
        # Where the work is, once the run ended: the result branch and how to bring it in.
        shown = "return document.getElementById('result').hidden === false"
        wait_for(lambda: driver.execute_script(shown), what="the result")
        result = driver.execute_script(
            "return [...document.querySelectorAll('#result li')].map(li => li.textContent)"
        )
        (snap,) = [json.loads(get(api)[1])]
    run_id = snap["run"]["id"]
    assert result[0].startswith(f"result: branch abreast/{run_id}/_integration at "), result
    assert result[-1] == (
        f"bring it in: git merge --ff-only abreast/{run_id}/_integration   "
        f"(or `abreast land {run_id}`)"
    ), result
    assert said == [
        [
            "a",
            "the merge checks changed files of the work they checked (a.txt; checking a), and "
            "what a check writes does not land: the work lands as its task left it. A "
            "formatter or fixer run as a check (`ruff format`, `prettier --write`, "
            "`eslint --fix`) should only check (`--check`), or run in the tasks",
        ]
    ], said
    assert snap["warnings"] == [{"task": "a", "text": said[0][1]}]
    report = json.loads(run_abreast("report", "--json", cwd=tmp_path).out)
    assert report["warnings"] == [said[0][1]]  # the same, said once a run


def test_the_dashboard_says_what_did_not_finish_and_fits_long_task_ids(tmp_path: Path) -> None:
    # Why a task failed was only in a tooltip (hover each red box); an id of 30 characters
    # ran out of its box over the next one, and over the timeline's bars.
    long_id = "migrate-the-billing-service-to-v2"
    path = write(
        tmp_path,
        {
            "name": "told",
            "tasks": {
                long_id: {"run": "true"},
                "bad": {"run": "echo 'the schema is locked'; exit 3"},
                "twin1": {"run": "echo 'no API key'; exit 2"},
                "twin2": {"run": "echo 'no API key'; exit 2"},
                "after": {"run": "true", "needs": ["bad"]},
                "later": {"run": "true", "needs": ["after"]},
                "plan": {"run": "true"},  # writes no output
                "told": {"run": "true", "needs": ["plan"], "prompt": "${{ outputs.plan.steps }}"},
                **{f"b{i:02}": {"run": "true", "needs": ["bad"]} for i in range(10)},
            },
        },
    )
    with run_shown(tmp_path, path, code=1) as (api, driver):
        wait_for(
            lambda: (
                driver.execute_script("return document.querySelectorAll('g.node').length") == 18
            ),
            what="the DAG",
        )
        said = driver.execute_script(
            "return [...document.querySelectorAll('#failures li')].map(li => ["
            " li.dataset.tasks, li.dataset.state, li.querySelector('.why').textContent,"
            " li.querySelector('.who').textContent])"
        )
        assert said[0] == ["bad", "failed", "exit 3: the schema is locked", "bad"]
        assert said[1] == ["twin1 twin2", "failed", "exit 2: no API key", "twin1, twin2"]
        assert said[2][:2] == ["told", "failed"] and said[2][2].startswith("prompt: ")
        blocked = ["after", "later", *(f"b{i:02}" for i in range(10))]
        assert said[3:] == [
            [
                " ".join(blocked),
                "blocked",
                "upstream bad failed",
                ", ".join(blocked[:10]) + " and 2 more",  # as the run's summary names them
            ]
        ]
        assert (
            driver.execute_script("return document.getElementById('failures-box').hidden") is False
        )
        overflow = driver.execute_script(  # what sticks out of each box, in pixels
            "return [...document.querySelectorAll('g.node')].map(g => {"
            " const w = g.querySelector('rect').width.baseVal.value;"
            " return Math.max(...[...g.querySelectorAll('text')].map(t =>"
            "   t.x.baseVal[0].value + t.getComputedTextLength() - w)); })"
        )
        assert max(overflow) < 0, overflow
        clear = driver.execute_script(  # from the longest label's end to the axis's 0
            "const labels = [...document.querySelectorAll('#timeline text:not(.tick)')];"
            "const marks = [...document.querySelectorAll('#timeline line.tick')];"
            "return Math.min(...marks.map(m => m.x1.baseVal.value))"
            " - Math.max(...labels.map(t => t.x.baseVal[0].value + t.getComputedTextLength()));"
        )
        assert clear > 0, clear
        # What the monitor did to the cap, said of an ended run and of a running one.
        said = driver.find_element("id", "resources").text
        assert re.fullmatch(r"cap \d+, never lowered", said), said
        told = driver.execute_script(
            "const r = {cpu_pct: 91.4, memory_pct: 20};"
            "const c = {first: 4, now: 2, reason: 'cpu 91% >= 80%', lowest: 1,"
            " lowest_reason: 'cpu 97% >= 80%', lowered: 3};"
            "return [resources({run: {state: 'running'}, resources: r, cap: c}),"
            " resources({run: {state: 'failed'}, resources: r, cap: c}),"
            " resources({run: {state: 'running'}, resources: r, cap: null})]"
        )
        assert told == [
            "cpu 91%, memory 20%; cap 2 now (cpu 91% >= 80%); cap 4, lowered 3 times, to 1 at"
            " the lowest (cpu 97% >= 80%)",
            "cap 4, lowered 3 times, to 1 at the lowest (cpu 97% >= 80%)",
            "cpu 91%, memory 20%",
        ]
        driver.execute_script(
            "document.querySelector('#failures li[data-tasks=\"bad\"] .who')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
        )
        wait_for(
            lambda: "the schema is locked" in driver.find_element("id", "log").text,
            what="the failed task's log, from a click on it",
        )
        listed = driver.execute_script("return document.title")  # the page still stands
        assert listed.startswith("abreast: told-")
        home = api.split("/api/")[0]
        status, page = get(home + "/")
        assert status == 200
        assert "<td class=done>2/18 done, 4 failed</td>" in page, page
        assert "http-equiv=refresh" not in page  # no run runs: nothing to follow
        (row,) = json.loads(get(home + "/api/runs")[1])
        assert (row["tasks"], row["tasks_done"], row["task_states"]["blocked"]) == (
            18,
            "2/18 done, 4 failed",
            12,
        )
        assert 0 < row["took_s"] < 60
        assert get(home + "/static/runs.js")[0] == 404  # named, never shipped: was a 500
        # The report's page: its timeline's labels as wide as the longest id, too.
        report = tmp_path / "report.html"
        assert run_abreast("report", "--html", str(report), cwd=tmp_path).code == 0
        driver.get(report.as_uri())
        clear = driver.execute_script(
            "const svg = document.querySelector('svg');"
            "const labels = [...svg.querySelectorAll('text:not([text-anchor])')];"
            "const marks = [...svg.querySelectorAll('line')];"
            "return Math.min(...marks.map(m => m.x1.baseVal.value))"
            " - Math.max(...labels.map(t => t.x.baseVal[0].value + t.getComputedTextLength()));"
        )
        assert clear > 0, clear
        said = driver.find_element("tag name", "body").text
        assert "its command did not start: no log" in said  # told's, not "its log is empty"


def test_a_run_too_big_to_draw_is_counted_and_lists_what_is_worth_a_look(tmp_path: Path) -> None:
    # Above 400 tasks the page listed every task, the one that failed among 400 others.
    chain = {
        f"t{i:03}": {"run": "true", "needs": [f"t{i - 1:03}"] if i % 10 else []} for i in range(410)
    }
    chain["t055"]["run"] = "exit 4"
    path = write(tmp_path, {"name": "big", "max_parallel": 4, "tasks": chain})
    with run_shown(tmp_path, path, code=1) as (_, driver):
        counts = "const c = document.getElementById('counts'); return c && c.textContent"
        wait_for(lambda: driver.execute_script(counts), what="the tasks counted")
        assert driver.execute_script(counts) == "410 tasks: 405 succeeded, 1 failed, 4 blocked"
        listed = (
            "return [...document.querySelectorAll('#dag > table tr')]"
            ".map(r => [r.dataset.task, r.dataset.state])"
        )
        assert driver.execute_script(listed) == [["t055", "failed"]] + [
            [f"t{i:03}", "blocked"] for i in range(56, 60)
        ]
        folded = (
            "const d = document.querySelector('#dag details');"
            "return [d.open, d.querySelector('summary').textContent,"
            " d.querySelectorAll('tr').length]"
        )
        assert driver.execute_script(folded) == [
            False,
            "405 succeeded, skipped or not started",
            405,
        ]
        # Opened, it stays open when the page redraws.
        driver.execute_script("document.querySelector('#dag details').open = true")
        before = driver.execute_script("return window.abreastRefreshes")
        driver.execute_script("refresh()")
        wait_for(
            lambda: driver.execute_script("return window.abreastRefreshes") > before,
            what="a redraw",
        )
        assert driver.execute_script(folded)[0] is True


def test_the_dashboard_shows_the_prompt_a_task_was_given(tmp_path: Path) -> None:
    # What an agent was told (its `${{ }}` values in) is what one asks first of an agent
    # that did the wrong thing; the page showed only its log.
    told = "Build <b>the</b> ${{ flags.part }} page"
    path = write(
        tmp_path,
        {
            "name": "told",
            "flags": {"part": "login"},
            "tasks": {"agent": {"run": "echo done", "prompt": told}, "step": {"run": "true"}},
        },
    )
    with run_shown(tmp_path, path) as (api, driver):
        assert get(f"{api}/tasks/agent/prompt") == (200, "Build <b>the</b> login page")
        assert get(f"{api}/tasks/step/prompt") == (404, "(no prompt)")

        def click(task: str) -> None:
            driver.execute_script(
                "document.querySelector(arguments[0])"
                ".dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                f'[data-task="{task}"]',
            )

        shown = (
            "const b = document.getElementById('prompt-box');"
            "return [document.getElementById('log-task').textContent, b.hidden,"
            " document.getElementById('prompt').textContent, b.querySelector('b') !== null]"
        )
        wait_for(
            lambda: driver.execute_script("return document.querySelectorAll('g.node').length") == 2,
            what="the DAG",
        )
        click("agent")
        wait_for(lambda: driver.execute_script(shown)[1] is False, what="the prompt")
        assert driver.execute_script(shown) == [
            "agent",
            False,
            "Build <b>the</b> login page",
            False,  # text, not HTML
        ]
        click("step")
        wait_for(lambda: driver.execute_script(shown)[:2] == ["step", True], what="no prompt")


def test_the_dashboard_shows_the_merge_queue_newest_first_in_words(tmp_path: Path) -> None:
    # It read "1. conflict right conflict in shared.txt", "16. sent_back red": numbered
    # from the newest, the event's name as journaled, the conflict said twice.
    for args in (("init", "-q", "-b", "main"), ("config", "user.name", "T")):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    subprocess.run(["git", "config", "user.email", "t@e"], cwd=tmp_path, check=True)
    (tmp_path / "shared.txt").write_text("one\n")
    path = write(
        tmp_path,
        {
            "name": "queue",
            "isolation": "worktree",
            "tasks": {
                "first": {"run": "echo first > shared.txt"},
                "second": {"run": "echo second > shared.txt", "needs": []},
                "after": {"run": "echo done > done.txt", "needs": ["first"]},
            },
        },
    )
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "start"], cwd=tmp_path, check=True)
    ran = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert ran.code == 1 and "merge conflict" in ran.out, ran.out  # one of the two lost
    lost = "second" if "failed    second" in ran.out else "first"
    dashboard, port = serve_dashboard(tmp_path)
    try:
        driver = chromium(tmp_path / "chromium-profile")
        try:
            driver.get(f"http://127.0.0.1:{port}/runs/{ran.out.splitlines()[0][5:]}")
            items = "return [...document.querySelectorAll('#merges li')].map(x => x.textContent)"
            wait_for(lambda: len(driver.execute_script(items)) > 3, what="the merge queue")
            shown = driver.execute_script(items)
        finally:
            driver.quit()
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
    assert f"{lost}: conflict in shared.txt" in shown, shown
    assert f"{lost}: sent back" in shown, shown
    assert shown[-1].endswith(": queued"), shown  # the oldest last
    assert not any("_" in line for line in shown), shown


def test_the_dashboard_answers_at_once_with_its_redis_gone(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    # The page's locks are asked of Redis: with Redis gone, every refresh of a run's page
    # waited ABREAST_REDIS_WAIT (15 s by default) before answering, the whole dashboard
    # with it. Locks are shown, not relied on: the page answers without them.
    path = write(tmp_path, {"name": "gone", "tasks": {"a": {"run": "true"}}})
    ran = run_abreast(
        "run", str(path), "--no-monitor", "--plain", "--state", own_redis.url, cwd=tmp_path
    )
    assert ran.code == 0, ran.out + ran.err
    run_id = ran.out.splitlines()[0][5:]
    own_redis.stop()
    env = {**os.environ, "ABREAST_STATE": own_redis.url, "ABREAST_REDIS_WAIT": "30s"}
    dashboard, port = serve_dashboard(tmp_path, env)
    try:
        for _ in range(3):  # each refresh, not only the first
            status, body = get(f"http://127.0.0.1:{port}/api/runs/{run_id}")  # 10 s timeout
            assert status == 200, body
            assert json.loads(body)["locks"] == []
    finally:
        dashboard.terminate()
        try:
            dashboard.wait(timeout=10)
        except subprocess.TimeoutExpired:  # held in a call to Redis: it cannot hear TERM
            dashboard.kill()
            dashboard.wait()


def test_event_stream_lines_are_json_whatever_the_names() -> None:
    from abreast.observe.dashboard import _sse

    events = [
        (1, "task.started", "t-1_a", 1700000000.123456),
        (2, "run.started", None, 1.0),
        (3, "odd", 'quote " back\\slash\nnewline', 2.5),  # not a valid id: still one JSON line
    ]
    for seq, kind, task, ts in events:
        text = _sse((seq, kind, task, ts))
        head, data, end = text.split("\n", 2)
        assert head == f"id: {seq}" and end == "\n"
        assert json.loads(data.removeprefix("data: ")) == {
            "seq": seq,
            "type": kind,
            "task": task,
            "ts": ts,
        }


def test_dashboard_on_port_0_says_the_port_it_got_and_a_busy_port_is_a_clear_error(
    tmp_path: Path,
) -> None:
    import socket

    state = ["--state", f"sqlite://{tmp_path}/state.db"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "abreast", "dashboard", "--port", "0", *state],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[1]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert port != 0
        assert get(f"{url}api/runs")[0] == 200  # listening before the address was printed
        busy = run_abreast("dashboard", "--port", str(port), *state, cwd=tmp_path)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert busy.code == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in busy.err
    assert "another --port" in busy.err
    assert "Traceback" not in busy.err and "dashboard:" not in busy.out
    with socket.socket() as s:  # and the first one gave its port back when it ended
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        s.bind(("127.0.0.1", port))


def test_actual_critical_path_follows_what_each_task_waited_for(tmp_path: Path) -> None:
    # client starts on api's signal and ends at once; tester waits for both, so what it
    # waited for is api's end: the path is api -> tester, and it took no longer than the run.
    path = write(
        tmp_path,
        {
            "name": "waits",
            "tasks": {
                "api": {"signals": ["ready"], "run": f"{PY} -m abreast signal ready; sleep 1"},
                "client": {"needs": ["api:ready"], "run": "true"},
                "skip": {"needs": ["client"], "when": "never", "run": "true"},
                "tester": {"needs": ["api", "skip"], "run": "true"},
            },
            "flags": {"never": False},
        },
    )
    run = run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    rep = json.loads(run_abreast("report", "--json", cwd=tmp_path).out)
    actual = rep["critical_path"]["actual"]
    assert actual["tasks"] == ["api", "tester"]
    assert actual["seconds"] <= rep["wall_s"]
    assert "critical path: api -> tester took" in run.out


def test_report_lists_the_attempts_sent_back_and_why(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "name": "tries",
            "tasks": {
                "flaky": {
                    "run": 'test "$ABREAST_ATTEMPT" = 2 || exit 3',
                    "retries": 1,
                    "backoff": {"initial": 0.05},
                },
                "judged": {
                    "run": "ok=false; [ $ABREAST_ATTEMPT = 2 ] && ok=true; "
                    'echo "{\\"ok\\": $ok}" > "$ABREAST_OUTPUT"',
                    "gate": "output.ok",
                },
            },
        },
    )
    assert run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path).code == 0
    out = run_abreast("report", cwd=tmp_path).out
    assert "attempts sent back or retried:" in out
    # The timeline draws both of flaky's attempts on its row: the first failed (x), the
    # second succeeded (=).
    row = next(line for line in out.splitlines() if line.startswith("    flaky "))
    bar = row.split("|")[1]
    assert len(bar) == 50 and bar.index("x") < bar.index("=")
    assert row.endswith("(2 attempts)")
    assert "    = succeeded  x failed or sent back" in out
    assert "    flaky attempt 1: exit 3" in out
    assert "    judged attempt 1: gate not met: output.ok is false" in out
    page = tmp_path / "r.html"
    assert run_abreast("report", "--html", str(page), cwd=tmp_path).code == 0
    assert "<li>flaky attempt 1: exit 3</li>" in page.read_text()


def test_a_note_too_long_for_its_column_shortens_the_command_it_quotes_first() -> None:
    # `abreast status` cut a red check's note at 80 characters: a long command in it left
    # out what the check said (the suite's "2 failed, 3 passed").
    from abreast.observe.rundata import fitted

    said = "check `pytest tests/integration -x -p no:randomly --timeout 600` failed (exit 1)"
    line = fitted(f"{said}: 2 failed, 3 passed in 9.1s", 80)
    assert len(line) == 80 and line.endswith("\u2026` failed (exit 1): 2 failed, 3 passed in 9.1s")
    assert line.startswith("check `pytest tests/integration")
    assert fitted("a" * 100, 80) == "a" * 79 + "\u2026"  # nothing quoted: the end is cut
    assert fitted("short `x` note", 80) == "short `x` note"
    # A quoted command kept to 8 characters at least; the end cut after that.
    tight = fitted("check `make integration-tests` failed (exit 2): " + "z" * 60, 60)
    assert tight.startswith("check `make int\u2026` failed") and len(tight) == 60


def test_a_time_axis_is_marked_at_round_steps_from_zero_to_the_span() -> None:
    # The report's and the dashboard's timelines had no time on them at all.
    from abreast.observe.report import ticks

    assert ticks(1.87) == [0, 0.5, 1.0, 1.5]
    assert ticks(45) == [0, 10, 20, 30, 40]
    assert ticks(600) == [0, 120, 240, 360, 480, 600]
    assert ticks(3 * 3600 + 100) == [i * 1800 for i in range(7)]
    for span in (0.003, 0.7, 7, 70, 700, 7000, 70000):
        marks = ticks(span)
        assert marks[0] == 0 and 2 <= len(marks) <= 8 and marks[-1] <= span * (1 + 1e-9)


def test_the_report_page_marks_its_timeline_with_times(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "axis", "tasks": {"a": {"run": "sleep 0.3"}}})
    assert run_abreast("run", str(path), "--no-monitor", "--plain", cwd=tmp_path).code == 0
    page = tmp_path / "r.html"
    assert run_abreast("report", "--html", str(page), cwd=tmp_path).code == 0
    marks = re.findall(r"text-anchor='middle' fill='#666'>([^<]*)</text>", page.read_text())
    assert marks[0] == "0s" and 2 <= len(marks) <= 8, marks  # 0s, 50ms, 100ms, ...
    assert all(re.fullmatch(r"\d+(\.\d+)?(ms|s)", m) for m in marks), marks


def test_the_text_timeline_draws_each_tasks_attempts_over_the_runs_span() -> None:
    # `abreast report` had the timeline in --json and --html only, not in the terminal.
    from abreast.observe.report import timeline_lines

    def attempt(task: str, n: int, state: str, start: float, end: float) -> dict[str, Any]:
        return {"task": task, "attempt": n, "state": state, "start_s": start, "end_s": end}

    rep = {
        "wall_s": 10.0,
        "timeline": [
            attempt("build", 1, "succeeded", 0.0, 5.0),
            attempt("test", 1, "failed", 5.0, 6.0),
            attempt("test", 2, "succeeded", 7.0, 10.0),
            attempt("lint", 1, "interrupted", 0.0, 0.01),  # shorter than a column: one
        ],
    }
    assert timeline_lines(rep, columns=10) == [
        "\n  timeline (10s; a column is 1s):",
        "    build  |=====     |  0s to 5s",
        "    lint   |~         |  0s to 10ms",
        "    test   |     x ===|  5s to 10s (2 attempts)",
        "    = succeeded  x failed or sent back  ~ interrupted",
    ]
    # A time with a fraction has a `.`: no wait for a lock in the legend for it.
    short = {"wall_s": 1.5, "timeline": [attempt("a", 1, "succeeded", 0.0, 1.5)]}
    assert timeline_lines(short, columns=4)[-2:] == ["    a  |====|  0s to 1.5s", "    = succeeded"]
    many = {"wall_s": 1.0, "timeline": [attempt(f"t{i}", 1, "succeeded", 0, 1) for i in range(5)]}
    assert timeline_lines(many, columns=4, rows=3)[-2:] == [
        "    (+2 more tasks: --html FILE draws them all)",
        "    = succeeded",
    ]


def test_a_run_slower_than_its_tasks_one_at_a_time_says_so_not_saved_0s() -> None:
    # Tasks of a few milliseconds with worktrees: the run took 124 ms, its tasks 1.6 ms
    # one at a time, and the summary said "saved 0s (0%)", as if nothing were lost.
    from abreast.observe.rundata import saved_phrase
    from abreast.spec.durations import format_duration

    assert saved_phrase(6.42, 27.3, format_duration) == "saved 6.42s (27%)"
    assert saved_phrase(0.0, 0.0, format_duration, digits=1) == "saved 0s (0.0%)"
    slower = saved_phrase(-0.124, -7750.0, format_duration)
    assert slower.startswith("saved nothing: 124ms longer than one at a time (")
