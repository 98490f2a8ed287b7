"""What a Ray node runs for an attempt (`executor/remote.py`), called here directly: no Ray.

A kill reaches the node through the attempt's kill file, not through Ray's cancel (which
cannot interrupt a task on a cluster started with SIGINT ignored, see test_ray_executor).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
import threading
from pathlib import Path

from abreast.executor.local import Launch
from abreast.executor.process import marked_processes
from abreast.executor.remote import KILL, TERM, request_kill, run_attempt, write_env
from tests.helpers import wait_for

# A task that outlives TERM: its shell notes each TERM and goes on; its sleeps die of it.
STUBBORN = "trap 'echo term >> terms' TERM; touch started; while :; do sleep 0.2 || :; done"


def _launch(d: Path, run_id: str, command: str) -> Launch:
    return Launch(run_id, "t", 1, command, str(d), dict(os.environ), f"{d}/t.1.log", f"{d}/exits")


class Attempt:
    """`run_attempt(launch, grace_s, None)` in a thread of its own: a node's worker, here."""

    def __init__(self, launch: Launch, grace_s: float) -> None:
        self.launch = launch
        self.result: list[tuple[int, int, float, str]] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(run_attempt(launch, grace_s, None))
        )

    def __enter__(self) -> Attempt:
        self.thread.start()
        wait_for((Path(self.launch.cwd) / "started").exists, timeout=30, what="the task")
        return self

    def exit_code(self, within_s: float, what: str) -> int:
        """The attempt's exit code (negative: its signal), once it ends within `within_s`."""
        self.thread.join(timeout=within_s)
        assert not self.thread.is_alive(), what
        return os.waitstatus_to_exitcode(self.result[0][0])

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():  # the test failed: end it all the same
            request_kill(self.launch, KILL)
            self.thread.join()


def test_a_kill_file_terms_the_tree_then_kills_it_at_once_when_it_says_kill(
    tmp_path: Path,
) -> None:
    launch = _launch(tmp_path, "remote-kill", STUBBORN)
    with Attempt(launch, grace_s=600) as attempt:  # the grace period never ends here
        request_kill(launch, TERM)
        wait_for((tmp_path / "terms").exists, timeout=30, what="the TERM to reach the task")
        request_kill(launch, KILL)
        code = attempt.exit_code(30, "a KILL in the kill file did not end the attempt")
    assert code == -signal.SIGKILL
    assert marked_processes("remote-kill") == []


def test_a_term_becomes_a_kill_when_the_grace_period_ends(tmp_path: Path) -> None:
    launch = _launch(tmp_path, "remote-grace", STUBBORN)
    with Attempt(launch, grace_s=1.0) as attempt:
        request_kill(launch, TERM)
        code = attempt.exit_code(30, "the grace period ended and the tree lived on")
    assert (tmp_path / "terms").exists()  # TERM came first
    assert code == -signal.SIGKILL
    assert marked_processes("remote-grace") == []


def test_an_attempt_killed_while_it_waited_in_rays_queue_never_starts(tmp_path: Path) -> None:
    launch = _launch(tmp_path, "remote-queued", "touch started")
    request_kill(launch, TERM)
    status, peak, _wall, host = run_attempt(launch, 5.0, None)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM
    assert (peak, host) == (0, os.uname().nodename)
    assert not (tmp_path / "started").exists()
    assert not Path(launch.log).exists()


def test_the_environment_comes_by_a_file_only_its_owner_reads_and_is_read_once(
    tmp_path: Path,
) -> None:
    # The orchestrator ships the launch without its environment (it may hold a leased
    # key, kept by the cluster with the task's arguments) and leaves it beside the log.
    launch = _launch(tmp_path, "remote-env", 'echo "$LEASED_KEY" > seen')
    launch = dataclasses.replace(launch, env={**launch.env, "LEASED_KEY": "sk-canary-1"})
    path = write_env(launch)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status, _peak, _wall, _host = run_attempt(dataclasses.replace(launch, env={}), 5.0, path)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "seen").read_text() == "sk-canary-1\n"
    assert not os.path.exists(path)
