"""What a Ray node runs for an attempt (`executor/remote.py`), called here directly: no Ray.

A kill reaches the node through the attempt's kill file, not through Ray's cancel (which
cannot interrupt a task on a cluster started with SIGINT ignored, see test_ray_executor).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from abreast.executor.local import Launch
from abreast.executor.process import marked_processes
from abreast.executor.remote import KILL, TERM, request_kill, run_attempt
from tests.helpers import wait_for

# A task that outlives TERM: its shell notes each TERM and goes on; its sleeps die of it.
STUBBORN = "trap 'echo term >> terms' TERM; touch started; while :; do sleep 0.2; done"


def _launch(d: Path, run_id: str, command: str) -> Launch:
    return Launch(run_id, "t", 1, command, str(d), dict(os.environ), f"{d}/t.1.log", f"{d}/exits")


def _in_thread(launch: Launch, grace_s: float) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(run_attempt(launch, grace_s)))
    thread.start()
    return thread, result


def test_a_kill_file_terms_the_tree_then_kills_it_at_once_when_it_says_kill(
    tmp_path: Path,
) -> None:
    launch = _launch(tmp_path, "remote-kill", STUBBORN)
    thread, result = _in_thread(launch, grace_s=600)  # the grace period never ends here
    try:
        wait_for((tmp_path / "started").exists, timeout=30, what="the task to start")
        request_kill(launch, TERM)
        wait_for((tmp_path / "terms").exists, timeout=30, what="the TERM to reach the task")
        request_kill(launch, KILL)
        thread.join(timeout=30)
        assert not thread.is_alive(), "a KILL in the kill file did not end the attempt"
    finally:
        if thread.is_alive():
            request_kill(launch, KILL)
            thread.join()
    status = result[0][0]  # type: ignore[index]
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    assert marked_processes("remote-kill") == []


def test_a_term_becomes_a_kill_when_the_grace_period_ends(tmp_path: Path) -> None:
    launch = _launch(tmp_path, "remote-grace", STUBBORN)
    thread, result = _in_thread(launch, grace_s=1.0)
    try:
        wait_for((tmp_path / "started").exists, timeout=30, what="the task to start")
        request_kill(launch, TERM)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the grace period ended and the tree lived on"
    finally:
        if thread.is_alive():
            request_kill(launch, KILL)
            thread.join()
    assert (tmp_path / "terms").exists()  # TERM came first
    assert os.waitstatus_to_exitcode(result[0][0]) == -signal.SIGKILL  # type: ignore[index]
    assert marked_processes("remote-grace") == []


def test_an_attempt_killed_while_it_waited_in_rays_queue_never_starts(tmp_path: Path) -> None:
    launch = _launch(tmp_path, "remote-queued", "touch started")
    request_kill(launch, TERM)
    status, peak, _wall, host = run_attempt(launch, 5.0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM
    assert (peak, host) == (0, os.uname().nodename)
    assert not (tmp_path / "started").exists()
    assert not Path(launch.log).exists()
