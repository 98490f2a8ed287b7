"""One contract, two backends: every test runs on SQLite and on a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from abreast.coord.backend import WAITER_TTL_S, Coordinator, Holder, open_coordinator


@pytest.fixture
def coord(coord_url: str) -> Iterator[Coordinator]:
    c = open_coordinator(coord_url)
    yield c
    c.close()


def test_a_store_keeps_one_id_for_every_connection(coord: Coordinator, tmp_path: Path) -> None:
    again = open_coordinator(coord.url)
    other = open_coordinator(f"sqlite://{tmp_path}/another/state.db")
    try:
        assert len(coord.store_id) == 16
        assert again.store_id == coord.store_id  # made once, by its first user
        assert other.store_id != coord.store_id
    finally:
        again.close()
        other.close()


def test_grant_release_and_tokens_only_grow(coord: Coordinator) -> None:
    a = coord.acquire("tests", Holder.here(run="r1", task="a"), ttl_s=5)
    assert a is not None
    assert coord.holder("tests") == a
    assert a.holder.run == "r1" and a.holder.task == "a" and a.holder.pid > 0
    assert a.holder.host
    assert a.since <= coord.now() <= a.expires_at
    assert coord.validate("tests", a.token)
    assert coord.release("tests", a.token)
    assert coord.holder("tests") is None
    assert not coord.release("tests", a.token)  # twice is refused
    b = coord.acquire("tests", Holder.here(), ttl_s=5)
    assert b is not None and b.token > a.token
    forced = coord.force_release("tests")
    assert forced is not None and forced.token == b.token
    c = coord.acquire("tests", Holder.here(), ttl_s=5)
    assert c is not None and c.token > b.token


def test_a_held_lease_makes_others_wait_until_timeout(coord: Coordinator) -> None:
    held = coord.acquire("db", Holder.here(), ttl_s=5)
    assert held is not None
    t0 = time.monotonic()
    assert coord.acquire("db", Holder.here(), ttl_s=5, timeout_s=0.3) is None
    assert time.monotonic() - t0 >= 0.3
    assert coord.waiters("db") == []  # a waiter that gave up left the queue


def test_renew_extends_and_stale_tokens_cannot(coord: Coordinator) -> None:
    lease = coord.acquire("l", Holder.here(), ttl_s=0.5)
    assert lease is not None
    renewed = coord.renew("l", lease.token, ttl_s=5)
    assert renewed is not None and renewed.expires_at > lease.expires_at
    assert coord.renew("l", lease.token + 1, ttl_s=5) is None


def test_an_expired_lease_goes_to_the_next_waiter_and_fencing_refuses_the_old(
    coord: Coordinator,
) -> None:
    old = coord.acquire("tests", Holder.here(suffix="old"), ttl_s=0.4)
    assert old is not None
    t0 = time.monotonic()
    new = coord.acquire("tests", Holder.here(suffix="new"), ttl_s=5, timeout_s=5)
    assert new is not None
    assert time.monotonic() - t0 >= 0.3  # it waited for the expiry, not less
    assert new.token > old.token
    assert not coord.validate("tests", old.token)
    assert coord.validate("tests", new.token)
    assert coord.renew("tests", old.token, ttl_s=5) is None  # the old holder finds it gone
    # The grant says which lease ran out under it, and who held it, to be fenced off.
    assert new.lapsed is not None
    assert (new.lapsed.token, new.lapsed.holder) == (old.token, old.holder)
    assert new.lapsed.expires_at <= coord.now()
    # A lease given back is not one that ran out; nor one force-released by an operator.
    assert coord.release("tests", new.token)
    after_release = coord.acquire("tests", Holder.here(), ttl_s=5)
    assert after_release is not None and after_release.lapsed is None
    coord.force_release("tests")
    after_force = coord.acquire("tests", Holder.here(), ttl_s=5)
    assert after_force is not None and after_force.lapsed is None
    # A holder that gives it back late, after it ran out but before the next grant,
    # finished its work: nothing to fence.
    late = coord.acquire("late", Holder.here(), ttl_s=0.2)
    assert late is not None
    wait_past = late.expires_at + 0.05
    while coord.now() < wait_past:
        time.sleep(0.05)  # the backend's clock must pass the expiry; nothing to wait on
    coord.release("late", late.token)
    taken = coord.acquire("late", Holder.here(), ttl_s=5)
    assert taken is not None and taken.lapsed is None


def test_a_lease_that_ran_out_unclaimed_is_still_its_holders_to_renew(
    coord: Coordinator,
) -> None:
    # The laptop slept past the ttl with a task holding `tests`: on waking, its renewal
    # was refused and the task killed ("taken over or force-released"), though nobody had
    # been granted the lock meanwhile. Renewing is safe then: no one else held it.
    holder = Holder.here(run="r", task="qa")
    lease = coord.acquire("tests", holder, ttl_s=0.2)
    assert lease is not None
    while coord.now() < lease.expires_at + 0.05:
        time.sleep(0.05)  # the backend's clock must pass the expiry; nothing to wait on
    assert not coord.validate("tests", lease.token)
    back = coord.renew("tests", lease.token, ttl_s=5)
    assert back is not None and (back.token, back.holder) == (lease.token, holder)
    assert back.since == lease.since and coord.validate("tests", lease.token)
    assert coord.acquire("tests", Holder.here(), ttl_s=5, timeout_s=0.2) is None  # held again
    # Once it went to someone else (and even once they gave it back), it is not.
    short = coord.renew("tests", lease.token, ttl_s=0.2)
    assert short is not None
    while coord.now() < short.expires_at + 0.05:
        time.sleep(0.05)
    other = coord.acquire("tests", Holder.here(suffix="other"), ttl_s=5, timeout_s=5)
    assert other is not None and other.token > lease.token
    assert coord.renew("tests", lease.token, ttl_s=5) is None
    assert coord.release("tests", other.token)
    assert coord.renew("tests", lease.token, ttl_s=5) is None


def test_fifty_waiters_are_served_in_the_order_they_came(
    coord: Coordinator, coord_url: str
) -> None:
    gate = coord.acquire("fifo", Holder.here(suffix="gate"), ttl_s=30)
    assert gate is not None
    order: list[int] = []
    lock = threading.Lock()

    def wait(i: int) -> None:
        mine = open_coordinator(coord_url)
        try:
            lease = mine.acquire("fifo", Holder.here(suffix=f"w{i}"), ttl_s=30, timeout_s=60)
            assert lease is not None
            with lock:
                order.append(i)
            mine.release("fifo", lease.token)
        finally:
            mine.close()

    threads = []
    for i in range(50):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while len(coord.waiters("fifo")) < i + 1:  # enqueued before the next one starts
            assert time.monotonic() < deadline, f"waiter {i} never queued"
            time.sleep(0.005)
    assert [w.id.endswith(f"w{i}") for i, w in enumerate(coord.waiters("fifo"))] == [True] * 50
    coord.release("fifo", gate.token)
    for t in threads:
        t.join(timeout=120)
    assert order == list(range(50))


def test_a_dead_waiter_does_not_block_the_queue(coord: Coordinator) -> None:
    held = coord.acquire("q", Holder.here(), ttl_s=30)
    assert held is not None
    coord.enqueue("q", Holder.here(suffix="ghost"))  # queued, then never seen again
    coord.release("q", held.token)
    t0 = time.monotonic()
    lease = coord.acquire("q", Holder.here(), ttl_s=5, timeout_s=WAITER_TTL_S + 5)
    assert lease is not None
    assert time.monotonic() - t0 >= WAITER_TTL_S - 1


def test_heartbeats_and_staleness(coord: Coordinator) -> None:
    coord.heartbeat("attempt:r1/a/1", {"pid": 1})
    coord.heartbeat("attempt:r1/b/1", {"pid": 2})
    coord.heartbeat("run:r1")
    assert [h.key for h in coord.heartbeats("attempt:r1/")] == ["attempt:r1/a/1", "attempt:r1/b/1"]
    assert coord.heartbeats("attempt:r1/a")[0].info == {"pid": 1}
    assert coord.stale(5.0) == []
    time.sleep(0.3)  # a real interval has to pass for anything to become stale
    coord.heartbeat("attempt:r1/b/1", {"pid": 2})
    assert [h.key for h in coord.stale(0.2, "attempt:")] == ["attempt:r1/a/1"]
    coord.forget("attempt:r1/a/1")
    assert [h.key for h in coord.heartbeats("attempt:")] == ["attempt:r1/b/1"]


def test_rate_window_is_exact_and_says_how_long_to_wait(coord: Coordinator) -> None:
    taken = [coord.rate_take("k1", 3, 0.5) for _ in range(4)]
    assert [ok for ok, _ in taken] == [True, True, True, False]
    wait = taken[-1][1]
    assert 0 < wait <= 0.5
    assert coord.rate_used("k1", 0.5) == 3
    time.sleep(wait + 0.05)  # the window has to really pass
    assert coord.rate_take("k1", 3, 0.5)[0]
    assert coord.rate_used("k2", 0.5) == 0


def test_rate_take_any_takes_the_key_with_the_most_headroom(coord: Coordinator) -> None:
    keys = ["a", "b", "c"]
    assert coord.rate_take("b", 2, 0.5)[0]  # b has one use already
    picks = [coord.rate_take_any(keys, 2, 0.5) for _ in range(6)]
    # a (first on the tie), c, then a and c are level with b: a, b, c; then all are full
    assert [i for i, _ in picks] == [0, 2, 0, 1, 2, None]
    assert picks[-1][1] > 0 and picks[-1][1] <= 0.5
    assert [coord.rate_used(k, 0.5) for k in keys] == [2, 2, 2]
    time.sleep(picks[-1][1] + 0.05)  # the oldest use (b's first) has to really leave
    assert coord.rate_take_any(keys, 2, 0.5)[0] is not None


def test_publish_reaches_a_subscriber_in_order(coord: Coordinator, coord_url: str) -> None:
    received: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        sub = open_coordinator(coord_url)
        stream = sub.subscribe("abreast.test", timeout_s=0.05)
        ready.set()
        for msg in stream:
            if msg is not None:
                received.append(msg)
            if len(received) == 20:
                break
        sub.close()

    t = threading.Thread(target=listen)
    t.start()
    ready.wait(5)
    time.sleep(0.2)  # let the subscription register on the server
    for i in range(20):
        coord.publish("abreast.test", f"m{i}")
    t.join(timeout=10)
    assert received == [f"m{i}" for i in range(20)]


def test_leases_lists_what_is_held(coord: Coordinator) -> None:
    a = coord.acquire("a", Holder.here(run="r"), ttl_s=5)
    b = coord.acquire("b", Holder.here(run="r"), ttl_s=5)
    assert a and b
    assert [lease.name for lease in coord.leases()] == ["a", "b"]


OPEN_SCRIPT = """
import sys, time
from abreast.coord.backend import open_coordinator
from abreast.coord.journal import Journal
path, at = sys.argv[1], float(sys.argv[2])
while time.time() < at:
    pass  # every process opens at the same instant
Journal(path).close()
open_coordinator("sqlite://" + path).close()
"""


def test_many_processes_creating_one_journal_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    at = time.time() + 1.5  # after every interpreter has started
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_SCRIPT, str(path), str(at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    from abreast.coord.journal import Journal

    journal = Journal(path)
    assert journal.last_seq("nothing") == 0
    journal.close()
