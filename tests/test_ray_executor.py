"""`--executor ray`: attempts run as Ray tasks on a real local Ray cluster.

The module starts one cluster of two nodes on this machine (abreast's own holder, `python -m
abreast.executor.rayhead`, and `ray start`) and every run connects to it through
RAY_ADDRESS; one test lets abreast start and stop a cluster of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from abreast.executor.process import marked_processes
from abreast.executor.ray_exec import start_local
from tests.conftest import run_abreast
from tests.helpers import ignored_signals, pid_alive, query, wait_for

pytest.importorskip("ray")  # not on a Python Ray has no wheel for (see pyproject.toml)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

PY = sys.executable


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored here, so that what is started meanwhile inherits the ignore."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local Ray cluster of two nodes (2 CPUs each) for the module: the environment that
    reaches it. The head is abreast's own holder; the second node is `ray start --block`,
    each in a session of its own. Both start with SIGINT ignored, as a script's background
    job (`ray start ... &`) does: Ray's cancel cannot interrupt a task there, so abreast's
    kills must reach the tasks without it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node: subprocess.Popen[bytes] | None = None
    with sigint_ignored():
        head = start_local(2, env)
    try:
        env["RAY_ADDRESS"] = head.address
        if head.auth_mode:
            env["RAY_AUTH_MODE"] = head.auth_mode
        log = tmp_path_factory.mktemp("ray") / "node.log"
        with log.open("wb") as out, sigint_ignored():
            node = subprocess.Popen(
                [
                    *(str(Path(PY).parent / "ray"), "start", f"--address={head.address}"),
                    *("--num-cpus=2", "--block", "--disable-usage-stats"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(
            lambda: b"block forever" in log.read_bytes() or node.poll() is not None,
            timeout=90,
            what="the second Ray node",
        )
        assert node.poll() is None, log.read_text()
        yield env
    finally:
        if node is not None:
            node.terminate()  # it stops its own processes
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        head.stop()


def git_project(root: Path, tasks: dict[str, object], **top: object) -> Path:
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    path = root / "abreast.json"
    path.write_text(json.dumps({"version": 1, "name": "onray", **top, "tasks": tasks}))
    for args in (["add", "."], ["commit", "-qm", "workflow"]):
        subprocess.run(
            ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
        )
    return path


def landed(root: Path, run_id: str, name: str) -> str:
    """The file `name` as the run's result branch has it."""
    return subprocess.run(
        ["git", "-C", str(root), "show", f"abreast/{run_id}/_integration:{name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def ray_argv(path: Path, *args: str) -> list[str]:
    """`abreast run PATH --executor ray` (plain, no resource monitor) and ARGS."""
    run = [PY, "-m", "abreast", "run", str(path), "--executor", "ray"]
    return [*run, "--plain", "--no-monitor", *args]


def ray_run(path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ray_argv(path, *args),
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def start_ray_run(path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`abreast run PATH --executor ray` in the background, with its run id."""
    proc = subprocess.Popen(
        ray_argv(path),
        cwd=path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().removeprefix("run: ").strip()


def test_tasks_run_in_ray_workers_and_land_through_the_merge_queue(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # Each task says what started it (a Ray worker names itself after its task) and writes
    # a file; a signals once its file is there, and b, started on that signal, sees it;
    # c takes a lock; the check runs on the orchestrator's side, on the merge.
    tasks: dict[str, dict[str, object]] = {
        name: {"run": f'tr "\\0" " " < /proc/$PPID/cmdline; echo "$ABREAST_TASK_ID" > {name}.txt'}
        for name in ("a", "b", "c")
    }
    # ... and a's shell says which signals it ignores (its Ray worker ignores SIGINT).
    tasks["a"]["run"] = f"grep SigIgn /proc/$$/status > a.ign; {tasks['a']['run']}"
    tasks["a"].update(signals=["ready"], run=f"{tasks['a']['run']}; abreast signal ready; sleep 1")
    tasks["b"].update(needs=["a:ready"], run=f"{tasks['b']['run']}; test -f a.txt")
    tasks["c"]["run"] = f"{tasks['c']['run']}; abreast lock tests -- true"
    path = git_project(tmp_path, tasks, checks=[{"name": "files", "run": "ls ./*.txt"}])
    done = ray_run(path, cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 nodes, 4 CPUs" in done.stderr  # every node was probed
    run_id = done.stdout.splitlines()[0].removeprefix("run: ")
    for name in ("a", "b", "c"):
        log = run_abreast("logs", run_id, name, cwd=tmp_path)
        assert log.out.startswith(f"ray::{name}.1"), log.out  # the worker running it
    listed = subprocess.run(
        ["git", "-C", str(tmp_path), "ls-tree", "--name-only", f"abreast/{run_id}/_integration"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"a.txt", "b.txt", "c.txt"} <= set(listed)
    # Each attempt's environment went to its node in a file beside its log (not in the Ray
    # task's arguments), which the node took: it reached the task, and none is left.
    assert landed(tmp_path, run_id, "a.txt") == "a\n"
    assert not list((tmp_path / ".abreast" / "runs" / run_id / "logs").glob("*.env"))
    ign = ignored_signals(landed(tmp_path, run_id, "a.ign"))
    assert ign & {"SIGINT", "SIGQUIT", "SIGPIPE"} == set()
    db = tmp_path / ".abreast" / "state.db"
    # No local pid is journaled for an attempt that ran elsewhere.
    assert query(db, "SELECT pid FROM attempts WHERE run_id = ?", run_id) == [(None,)] * 3
    options = json.loads(query(db, "SELECT options FROM runs WHERE id = ?", run_id)[0][0])
    assert options["executor"] == "ray"
    kinds = {kind for (kind,) in query(db, "SELECT type FROM events WHERE run_id = ?", run_id)}
    assert {"task.signal", "lock.granted"} <= kinds
    # Where each attempt ran is journaled.
    ran_on = query(
        db, "SELECT task_id, data FROM events WHERE run_id = ? AND type = 'task.ran_on'", run_id
    )
    assert sorted(task for task, _ in ran_on) == ["a", "b", "c"]
    assert {json.loads(data)["host"] for _, data in ran_on} == {os.uname().nodename}
    # ... and shown by `abreast report`.
    report = run_abreast("report", run_id, cwd=tmp_path)
    assert f"ran on Ray: 3 attempts, 3 on {os.uname().nodename}" in report.out
    timeline = json.loads(run_abreast("report", run_id, "--json", cwd=tmp_path).out)["timeline"]
    assert {item["host"] for item in timeline} == {os.uname().nodename}
    # ... and by the dashboard (an attempt's tooltip).
    from abreast.coord.location import locate
    from abreast.observe.dashboard import DashboardServer

    server = DashboardServer(locate(path, None))
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}api/runs/{run_id}", timeout=10) as r:
            snapshot = json.loads(r.read())
    finally:
        server.stop()
    assert {a["host"] for a in snapshot["attempts"]} == {os.uname().nodename}


def test_a_timeout_kills_the_tree_on_its_node_and_the_retry_runs(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # Attempt 1 forks a grandchild that holds its output and outlives the shell's TERM;
    # the node kills the whole tree when the grace period ends, and attempt 2 succeeds.
    # The cluster ignores SIGINT, so Ray's own cancel would not reach the task.
    grandchild = tmp_path / "grandchild.pid"
    run = (
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then '
        f"(trap '' TERM; echo $$ > /dev/null; sh -c 'echo $$ > {grandchild}; exec sleep 150') & "
        "wait; fi; echo ok"
    )
    path = git_project(
        tmp_path,
        {"slow": {"run": run, "timeout": 2, "retries": 1, "backoff": {"initial": 0.1}}},
        isolation="none",
    )
    done = ray_run(path, cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "timed out after 2s" in done.stdout
    pid = int(grandchild.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=15, what="the grandchild to be killed")
    run_id = done.stdout.splitlines()[0].removeprefix("run: ")
    db = tmp_path / ".abreast" / "state.db"
    rows = query(
        db,
        "SELECT state, reason, ended_at - started_at FROM attempts WHERE run_id = ? "
        "ORDER BY attempt",
        run_id,
    )
    assert [state for state, _, _ in rows] == ["failed", "succeeded"]
    assert rows[0][1].startswith("timed out after 2s; its process tree was killed")
    # Killed at its timeout (plus at most the grace period), not left to run out its sleep.
    assert rows[0][2] < 60, f"attempt 1 ran {rows[0][2]:.1f}s"
    assert marked_processes(run_id) == []


def test_cancel_stops_the_tasks_on_the_cluster(tmp_path: Path, cluster: dict[str, str]) -> None:
    # Six tasks on the cluster's four CPUs: four run, two wait in Ray's queue; a cancel
    # ends them all (the waiting ones never start) and their dependent.
    starts = tmp_path / "starts"
    starts.mkdir()
    tasks: dict[str, object] = {
        f"long{i}": {"run": f"touch {starts}/$ABREAST_TASK_ID; sleep 300"} for i in range(6)
    }
    tasks["later"] = {"run": "true", "needs": ["long0"]}
    path = git_project(tmp_path, tasks, isolation="none", max_parallel=6)
    proc, run_id = start_ray_run(path, cluster)
    try:
        wait_for(
            lambda: len(list(starts.iterdir())) == 4, timeout=60, what="4 tasks to start on Ray"
        )
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the cancelled run went on: its tasks on the cluster were not killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert len(list(starts.iterdir())) == 4  # the two that waited never started
    status = json.loads(run_abreast("status", run_id, "--json", cwd=tmp_path).out)
    assert status["state"] == "cancelled"
    assert {t["id"]: t["state"] for t in status["tasks"]} == dict.fromkeys(tasks, "cancelled")
    assert marked_processes(run_id) == []


def test_a_run_through_ray_client_runs_and_kills_its_tasks(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # A Ray Client server in front of the module's cluster, in proxy mode (as `ray start
    # --head` runs it): the run reaches the cluster only through it (`--ray-address
    # ray://...`, no RAY_ADDRESS), and a timeout's kill gets through as well. The server
    # runs with gRPC's fork support off: else a quarter of its per-driver servers die as
    # they start (ray-project/ray#63202), and the run cannot connect.
    pytest.importorskip("grpc")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (tmp_path / "client-server.log").open("wb") as out:
        server = subprocess.Popen(
            [
                *(PY, "-m", "ray.util.client.server", f"--address={cluster['RAY_ADDRESS']}"),
                *("--host=127.0.0.1", f"--port={port}", "--mode=proxy"),
            ],
            env={**cluster, "GRPC_ENABLE_FORK_SUPPORT": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            assert server.poll() is None, "the Ray Client server ended"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_for(listening, timeout=60, what="the Ray Client server")
        path = git_project(
            tmp_path,
            {
                "a": {"run": 'echo "$ABREAST_TASK_ID" > a.txt'},
                "slow": {"run": "sleep 150", "timeout": 2},
            },
            isolation="none",
        )
        env = {k: v for k, v in cluster.items() if k != "RAY_ADDRESS"}
        done = ray_run(path, env, "--ray-address", f"ray://127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    server_log = (tmp_path / "client-server.log").read_text(errors="replace")
    assert done.returncode == 1, done.stdout + done.stderr + "\nRay Client server:\n" + server_log
    assert f"ray: ray://127.0.0.1:{port}" in done.stderr
    assert (tmp_path / "a.txt").read_text() == "a\n"
    run_id = done.stdout.splitlines()[0].removeprefix("run: ")
    db = tmp_path / ".abreast" / "state.db"
    rows = query(
        db,
        "SELECT task_id, state, ended_at - started_at FROM attempts WHERE run_id = ? "
        "ORDER BY task_id",
        run_id,
    )
    assert [(task, state) for task, state, _ in rows] == [("a", "succeeded"), ("slow", "failed")]
    assert rows[1][2] < 60, f"the timed-out attempt ran {rows[1][2]:.1f}s"
    assert marked_processes(run_id) == []


def test_sigkill_the_orchestrator_then_resume_on_ray(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    (tmp_path / "counts").mkdir()
    tasks = {
        f"t{i}": {
            "run": f'sleep 0.3; echo "$ABREAST_ATTEMPT" >> {tmp_path}/counts/$ABREAST_TASK_ID',
            **({"needs": ["t0"]} if i == 3 else {}),
        }
        for i in range(4)
    }
    tasks["t2"]["run"] = f'[ "$ABREAST_ATTEMPT" = 1 ] && sleep 60; echo 1 >> {tmp_path}/counts/t2'
    path = git_project(tmp_path, tasks, isolation="none")
    proc, run_id = start_ray_run(path, cluster)
    wait_for(
        lambda: (tmp_path / "counts" / "t0").exists() and bool(marked_processes(run_id, "t2")),
        timeout=60,
        what="t0 to finish and t2 to run",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    # Resumed from a shell without RAY_ADDRESS: on the cluster the run was started on.
    env = {k: v for k, v in cluster.items() if k != "RAY_ADDRESS"}
    resumed = run_abreast("resume", run_id, "--plain", "--no-monitor", cwd=tmp_path, env=env)
    assert resumed.code == 0, resumed.out + resumed.err
    assert f"note: ray: {cluster['RAY_ADDRESS']}, 2 nodes" in resumed.err
    counts = {p.name: p.read_text().split() for p in (tmp_path / "counts").iterdir()}
    assert sorted(counts) == ["t0", "t1", "t2", "t3"]
    assert all(len(lines) == 1 for lines in counts.values()), counts  # each once
    assert marked_processes(run_id) == []
    # The resume asked every attempt the dead orchestrator left unfinished to die, where
    # its node looks before starting it: one Ray had not yet started then never starts.
    logs = tmp_path / ".abreast" / "runs" / run_id / "logs"
    assert (logs / "t2.1.log.kill").read_text() == "KILL\n"


def test_a_task_waiting_in_rays_queue_is_not_taken_for_an_orphan(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # Six busy tasks, six at once, on a cluster of four CPUs: two wait in Ray's queue for
    # longer than `orphan_after` without a process of their own, and are not killed for it.
    busy = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo $i; sleep 0.2; done"
    path = git_project(
        tmp_path,
        {f"t{i}": {"run": busy} for i in range(6)},
        isolation="none",
        max_parallel=6,
        heartbeat={"interval": 0.5, "orphan_after": 1.5},
    )
    done = ray_run(path, cluster)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "at most 4 tasks run at once there (max_parallel is 6)" in done.stderr
    assert "orphan" not in done.stdout


def test_a_lost_worker_fails_the_attempt_its_leftovers_are_ended_and_the_retry_runs(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # Attempt 1 leaves a background process, then its Ray worker is killed (as Ray's
    # memory monitor or a dying node would): the attempt fails as lost, what it left is
    # ended on its node, and attempt 2 runs.
    worker, straggler = tmp_path / "worker.pid", tmp_path / "straggler.pid"
    run = (
        'if [ "$ABREAST_ATTEMPT" = 1 ]; then '
        # (no `exec`: a command with one is given a shell of its own, whose $PPID is the
        # attempt's shell, not the worker)
        f"sh -c 'echo $$ > {straggler}; sleep 60' & echo $PPID > {worker}; sleep 60; "
        "fi; echo done"
    )
    path = git_project(
        tmp_path,
        {"fragile": {"run": run, "retries": 1, "backoff": {"initial": 0.1}}},
        isolation="none",
    )
    proc, run_id = start_ray_run(path, cluster)
    try:
        wait_for(straggler.exists, timeout=60, what="attempt 1 to start")
        wait_for(lambda: worker.read_text().strip() != "", what="the worker's pid")
        os.kill(int(worker.read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    db = tmp_path / ".abreast" / "state.db"
    rows = query(db, "SELECT state, reason FROM attempts WHERE run_id = ? ORDER BY attempt", run_id)
    assert [state for state, _ in rows] == ["failed", "succeeded"]
    assert rows[0][1].startswith("lost on the Ray cluster: "), rows[0][1]
    pid = int(straggler.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=20, what="attempt 1's leftovers to be ended")
    assert marked_processes(run_id) == []


def test_abreast_starts_a_cluster_for_the_run_and_stops_it(tmp_path: Path) -> None:
    worker = tmp_path / "worker.pid"
    path = git_project(tmp_path, {"one": {"run": f"echo $PPID > {worker}"}}, isolation="none")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = ray_run(path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a local cluster started for this run" in done.stderr
    pid = int(worker.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=30, what="the run's Ray cluster to stop")


def test_the_runs_own_cluster_stops_when_the_orchestrator_dies_and_resume_starts_one(
    tmp_path: Path,
) -> None:
    counts, worker = tmp_path / "counts", tmp_path / "worker.pid"
    counts.mkdir()
    run = (
        f'if [ "$ABREAST_ATTEMPT" = 1 ]; then echo $PPID > {worker}; sleep 60; fi; '
        f"echo 1 >> {counts}/long"
    )
    path = git_project(tmp_path, {"long": {"run": run}}, isolation="none")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc, run_id = start_ray_run(path, env)
    wait_for(lambda: worker.exists() and worker.read_text().strip() != "", timeout=90)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    pid = int(worker.read_text())
    wait_for(lambda: not pid_alive(pid), timeout=60, what="the run's cluster to stop")
    resumed = run_abreast("resume", run_id, "--plain", "--no-monitor", cwd=tmp_path, env=env)
    assert resumed.code == 0, resumed.out + resumed.err
    assert "a local cluster started for this run" in resumed.err
    assert (counts / "long").read_text().split() == ["1"]
    assert marked_processes(run_id) == []


def test_a_run_whose_cluster_dies_is_resumed_on_a_new_local_one(tmp_path: Path) -> None:
    # The attempt running there is lost, and its retry waits for a cluster that is gone
    # until Ray ends the driver (after 60 s without the head by default; 3 s here): the
    # orchestrator dies with it, and the journal lets `resume --ray-address local` go on.
    counts = tmp_path / "counts"
    counts.mkdir()
    run = (
        f'if [ "$ABREAST_ATTEMPT" = 1 ]; then touch {tmp_path}/started; sleep 60; fi; '
        f"echo 1 >> {counts}/$ABREAST_TASK_ID"
    )
    path = git_project(
        tmp_path,
        {
            # Retries far enough apart that Ray ends the orchestrator before they are spent.
            "first": {"run": run, "retries": 3, "backoff": {"initial": 2}},
            "then": {"run": f"echo 1 >> {counts}/then", "needs": ["first"]},
        },
        isolation="none",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    head = start_local(2, env)
    try:
        run_env = {
            **env,
            "RAY_ADDRESS": head.address,
            "RAY_gcs_rpc_server_reconnect_timeout_s": "3",
        }
        if head.auth_mode:
            run_env["RAY_AUTH_MODE"] = head.auth_mode
        proc, run_id = start_ray_run(path, run_env)
        wait_for((tmp_path / "started").exists, timeout=60, what="the task to start")
    finally:
        head.stop()
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    resumed = run_abreast(
        "resume", run_id, "--ray-address", "local", "--plain", "--no-monitor", cwd=tmp_path, env=env
    )
    assert resumed.code == 0, resumed.out + resumed.err
    assert "a local cluster started for this run" in resumed.err
    assert {p.name: p.read_text() for p in counts.iterdir()} == {"first": "1\n", "then": "1\n"}
    assert marked_processes(run_id) == []


def test_bad_ray_settings_are_refused_before_the_run(tmp_path: Path) -> None:
    path = git_project(tmp_path, {"one": {"run": "true"}}, isolation="none")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A port where something else listens (here: one that accepts and says nothing,
    # then one that answers in HTTP/1.1) is not taken for a Ray cluster.
    silent = socket.create_server(("127.0.0.1", 0))
    http = subprocess.Popen(
        [PY, "-m", "http.server", "--bind", "127.0.0.1", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert http.stdout is not None
        http_port = http.stdout.readline().split(" port ")[1].split()[0]
        cases = [
            (["--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
            (["--ray-address", "no-port-here"], "is not HOST:PORT"),
            (
                ["--ray-address", f"127.0.0.1:{silent.getsockname()[1]}"],
                "does not answer as a Ray cluster",
            ),
            (["--ray-address", f"127.0.0.1:{http_port}"], "does not answer as a Ray cluster"),
        ]
        outcomes = [(ray_run(path, env, *args), message) for args, message in cases]
    finally:
        silent.close()
        http.terminate()
        http.communicate(timeout=10)
    for done, message in outcomes:
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr and "hint:" in done.stderr
        assert "Traceback" not in done.stderr
    # Without Ray installed (its import made to fail): what to install; likewise without
    # Ray Client's gRPC for a ray:// address.
    for missing, args, message, install in [
        ("ray", (), "--executor ray needs Ray, which is not installed", "abreast[ray]"),
        (
            "grpc",
            ("--ray-address", "ray://127.0.0.1:1"),
            "the Ray address ray://127.0.0.1:1 is for Ray Client, which is not installed",
            "ray[client]",
        ),
    ]:
        script = (
            f"import sys; sys.modules[{missing!r}] = None\n"
            "from abreast.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        absent = subprocess.run(
            [PY, "-c", script, "run", str(path), "--executor", "ray", "--plain", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert absent.returncode == 2, absent.stdout + absent.stderr
        assert message in absent.stderr
        assert f"pip install '{install}'" in absent.stderr
    local = run_abreast("run", str(path), "--ray-address", "127.0.0.1:1", cwd=tmp_path)
    assert local.code == 2 and "--ray-address is for --executor ray" in local.err
    # Nothing of a run was left behind.
    assert run_abreast("status", cwd=tmp_path).out == "no runs yet\n"


def test_a_node_that_does_not_see_the_project_stops_the_run_before_it_starts(
    tmp_path: Path, cluster: dict[str, str]
) -> None:
    # What `connect` answers when a node lacks one of the paths (here a path none has),
    # in a process of its own, as a run would ask.
    missing = str(tmp_path / "not-shared")
    script = (
        "import json, sys\n"
        "from abreast.errors import UsageError\n"
        "from abreast.executor.ray_exec import connect\n"
        "try:\n"
        "    connect(None, sys.argv[1:], 1)\n"
        "except UsageError as e:\n"
        "    print(json.dumps([e.args[0], e.hint]))\n"
    )
    proc = subprocess.run(
        [PY, "-c", script, str(tmp_path), missing],
        env=cluster,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    message, hint = json.loads(proc.stdout)
    problems = message.splitlines()
    assert problems[0] == "the Ray cluster cannot run this workflow's tasks:"
    # Each of the two nodes was asked, and says what it cannot see.
    assert problems[1:] == [f"  node {os.uname().nodename} does not see {missing}"] * 2
    assert "shared filesystem" in hint
