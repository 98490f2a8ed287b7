"""`--executor ray`: attempts run on a Ray cluster; the orchestrator keeps everything else.

    RayExecutor.start ──ray task──▶ remote.run_attempt (on a node) ──result──▶ on_exit(Exit)

Only the attempt's process moves: the journal, the scheduling, locks, keys, worktrees and
the merge queue (its checks included) stay with the orchestrator. Each attempt is one Ray
task holding one CPU of the cluster; on its node the same wrapper as the local executor's
starts it, in the same working directory, with the same environment, writing the same log
and exits file. So every node must see the project at the same path (one machine, or a
shared filesystem); `connect` asks every node before the run starts, and refuses a
cluster where one does not.

Without an address (`--ray-address`, else `RAY_ADDRESS`) abreast starts a local cluster
for the run (`rayhead.py`, in a session of its own so that Ctrl-C reaches only the
orchestrator, which then cancels its tasks in order) and stops it at the end; it stops by
itself if the orchestrator dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from abreast.errors import UsageError
from abreast.executor.local import Exit, Launch, Running
from abreast.executor.process import RUN_TAG_ENV
from abreast.executor.remote import (
    KILL,
    TERM,
    env_path,
    kill_path,
    probe,
    read_stats,
    request_kill,
    run_attempt,
    stats_path,
    sweep,
    write_env,
)

_START_TIMEOUT_S = 120.0
AUTH_MODE = "RAY_AUTH_MODE"
_RAY_HINT = "install it with `pip install 'abreast[ray]'`"
_CLUSTER_HINT = (
    "start one (`ray start --head`) and give its address with --ray-address or RAY_ADDRESS, "
    "or `--ray-address local` to have abreast start one for the run"
)

# The Ray Client server in proxy mode (what `ray start --head` runs) starts a server per
# driver, which now and then dies as it is forked (ray-project/ray#63202; a quarter of the
# tries here), unless the server runs with gRPC's fork support off.
_CLIENT_SESSION_HINT = (
    "the cluster's Ray Client server could not start a session for this run (see its "
    "ray_client_server*.log); nothing was started, so try again. If it happens often, "
    "start the head with GRPC_ENABLE_FORK_SUPPORT=0 in its environment (Ray issue 63202)"
)


@dataclass
class RayCluster:
    """A connection to a Ray cluster for one run (and the local cluster, if abreast started
    one)."""

    address: str
    hosts: list[str]  # the nodes' host names, each once
    cpus: float
    started_here: bool
    _head: LocalHead | None = field(default=None, repr=False)
    # What connecting put in this process's environment: not for the tasks'
    added_env: list[str] = field(default_factory=list)
    nodes: int = 0

    def describe(self) -> str:
        where = "a local cluster started for this run" if self.started_here else self.address
        nodes = f"{self.nodes} node{'s' if self.nodes != 1 else ''}"
        return f"ray: {where}, {nodes}, {self.cpus:g} CPUs (each task takes one)"

    def sweep(self, run_id: str, tag: str | None = None) -> list[int]:
        """Kill `run_id`'s processes on every node (a dead orchestrator's attempts)."""
        killed: list[int] = []
        for ids in _on_every_node(sweep, run_id, None, None, tag):
            killed.extend(ids)
        return killed

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if self._head is not None:
            self._head.stop()
            self._head = None


@dataclass
class LocalHead:
    """A local Ray cluster in a holder process (`rayhead.py`) of its own session."""

    proc: subprocess.Popen[bytes]
    address: str
    auth_mode: str  # how drivers authenticate to it ("token", or "" for Ray's default)
    _err: Any = field(default=None, repr=False)

    def stop(self) -> None:
        """Close its stdin (it stops the cluster it started), or kill it after a minute."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._err is not None:
            self._err.close()


def connect(address: str | None, paths: list[str], local_cpus: int) -> RayCluster:
    """Connect to the cluster at `address` (else `RAY_ADDRESS`, else start a local one with
    `local_cpus` CPUs), and check that every node sees `paths` and runs this abreast.
    A problem is a UsageError, before anything of the run exists."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray, which is not installed", hint=_RAY_HINT
        ) from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith("ray://"):
        import importlib.util

        if importlib.util.find_spec("grpc") is None:  # what Ray Client needs besides Ray
            raise UsageError(
                f"the Ray address {address} is for Ray Client, which is not installed",
                hint="install it with `pip install 'ray[client]'`, or give the head's "
                "GCS address (HOST:PORT) from a machine of the cluster",
            )
    head = None
    added: list[str] = []
    if address is None or address == "local":  # a new local cluster, for this run
        head = start_local(local_cpus)
        address = head.address
        if head.auth_mode and AUTH_MODE not in os.environ:  # to connect as the holder does
            os.environ[AUTH_MODE] = head.auth_mode
            added.append(AUTH_MODE)
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")  # Ray reads its settings from the environment once
    cluster = RayCluster(address, [], 0.0, head is not None, head, added)
    try:
        if head is None:
            _reachable(address)  # Ray itself tries a wrong address for many minutes
        try:
            ray.init(
                address=address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                namespace="abreast",
            )
        except Exception as e:  # ConnectionError, or Ray's own on a bad address
            if "Initialization failure from server" in str(e):
                hint = _CLIENT_SESSION_HINT
            else:
                hint = _CLUSTER_HINT + (
                    f"; a cluster that wants a token needs {AUTH_MODE}=token here "
                    "(the token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                )
            raise UsageError(
                f"cannot reach the Ray cluster at {address}: {_first_line(e)}", hint=hint
            ) from None
        cluster.cpus = float(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        answers = _on_every_node(probe, paths)
        from abreast import __version__

        problems = []
        for a in answers:
            if a["missing"]:
                problems.append(f"node {a['host']} does not see {', '.join(a['missing'])}")
            if a["version"] != __version__:
                problems.append(f"node {a['host']} runs abreast {a['version']}, not {__version__}")
        if problems:
            raise UsageError(
                "the Ray cluster cannot run this workflow's tasks:\n  " + "\n  ".join(problems),
                hint="every node needs this abreast installed and the project at the same "
                "path (a shared filesystem)",
            )
        cluster.hosts = sorted({str(a["host"]) for a in answers})
        cluster.nodes = len(answers)
        if cluster.cpus < 1:
            raise UsageError(
                f"the Ray cluster at {address} has no CPU to run a task on",
                hint="add a node with CPUs (`ray start --num-cpus N`)",
            )
    except BaseException:
        cluster.close()
        raise
    return cluster


def _reachable(address: str) -> None:
    """A TCP connection to the cluster's `host:port` (or `ray://host:port`), else a
    UsageError at once."""
    import socket
    from urllib.parse import urlsplit

    hostport = address.split("://", 1)[1] if "://" in address else address
    if hostport == "auto":
        return  # Ray finds the cluster on this machine by itself
    try:
        parts = urlsplit(f"//{hostport}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise UsageError(
            f"the Ray address {address!r} is not HOST:PORT",
            hint="give the head node's address, as `ray start --head` prints it "
            "(e.g. 10.0.0.5:6379, or ray://10.0.0.5:10001)",
        )
    hint = _CLUSTER_HINT
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            # Ray's head speaks gRPC: HTTP/2, whose server answers the client's preface
            # with a SETTINGS frame. Anything else there is not a Ray cluster, and Ray
            # would try it for minutes, deaf to SIGTERM.
            conn.sendall(_H2_PREFACE + _H2_SETTINGS)
            conn.settimeout(5)
            header = b""
            with contextlib.suppress(TimeoutError, ConnectionError):
                while len(header) < 9 and (chunk := conn.recv(9 - len(header))):
                    header += chunk
    except OSError as e:
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e}", hint=hint
        ) from None
    if len(header) < 9 or header[3] != 0x04:
        raise UsageError(
            f"{address} does not answer as a Ray cluster (no gRPC server there)",
            hint=hint + "; a head node's address is the GCS port `ray start --head` prints",
        )


def _submit_to_every_node(fn: Callable[..., Any], *args: Any) -> list[Any]:
    """`fn(*args)` submitted to each live node of the cluster, pinned there: their refs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(fn)
    return [
        remote.options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(*args)
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node.get("Alive")
    ]


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


def _on_every_node(fn: Callable[..., Any], *args: Any) -> list[Any]:
    """`fn(*args)` on each live node of the cluster, pinned there; their answers."""
    import ray

    refs = _submit_to_every_node(fn, *args)
    try:
        return list(ray.get(refs, timeout=_START_TIMEOUT_S))
    except Exception as e:
        raise UsageError(
            f"a Ray node could not run abreast's check: {_first_line(e)}",
            hint="every node needs this abreast installed (in the Python its workers run)",
        ) from None


def start_local(cpus: int, env: dict[str, str] | None = None) -> LocalHead:
    """Start a local Ray cluster of `cpus` CPUs in a holder process of its own session
    (Ctrl-C in the terminal is then the orchestrator's alone to handle), or a UsageError."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the holder's life)
    holder = subprocess.Popen(
        [sys.executable, "-m", "abreast.executor.rayhead", str(cpus)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        env=env,
        start_new_session=True,
    )
    assert holder.stdout is not None
    line = _read_line(holder, _START_TIMEOUT_S)
    if not line:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-5:]
        err.close()
        raise UsageError(
            "could not start a local Ray cluster" + (":\n  " + "\n  ".join(tail) if tail else ""),
            hint="check that Ray runs here (`ray start --head`), or give a cluster's "
            "address with --ray-address",
        )
    address, _, auth_mode = line.partition(" ")
    return LocalHead(holder, address, auth_mode, err)


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first line the process prints, or "" if it ends or `timeout_s` passes first."""
    import selectors

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return ""
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                return ""
            buf += chunk
    return buf.split(b"\n", 1)[0].decode().strip()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class RayExecutor:
    """Starts attempts as Ray tasks and calls `on_exit(running, exit)` on the loop when one
    ends (or is lost with its node)."""

    def __init__(self, on_exit: Callable[[Running, Exit], None], grace_s: float) -> None:
        import ray

        self._on_exit = on_exit
        self._grace_s = grace_s
        self._loop = asyncio.get_running_loop()
        self._remote = ray.remote(run_attempt)
        self.running: dict[int, Running] = {}

    def start(self, launch: Launch) -> Running:
        env_file = write_env(launch)  # the environment goes by the shared filesystem
        try:
            ref = self._remote.options(
                num_cpus=1, max_retries=0, name=f"{launch.task_id}.{launch.attempt}"
            ).remote(dataclasses.replace(launch, env={}), self._grace_s, env_file)
        except Exception as e:  # the cluster is gone: the attempt could not start
            with contextlib.suppress(OSError):
                os.unlink(env_file)
            raise OSError(f"the Ray cluster did not take it: {_first_line(e)}") from e
        running = Running(launch, 0, 0, None, time.monotonic(), time.time(), handle=ref)
        self.running[id(running)] = running  # no local pid to key it by
        future = asyncio.wrap_future(ref.future(), loop=self._loop)
        future.add_done_callback(functools.partial(self._done, running))
        return running

    def _done(self, running: Running, future: asyncio.Future[Any]) -> None:
        import ray.exceptions

        self.running.pop(id(running), None)
        launch = running.launch
        for path in (stats_path(launch), kill_path(launch), env_path(launch)):
            with contextlib.suppress(OSError):
                os.unlink(path)  # done with (the peak is in the result; the environment
                # is still there only if the attempt never started)
        wall = time.monotonic() - running.started_mono
        try:
            status, peak, wall, host = future.result()
        except Exception as e:
            if isinstance(e, ray.exceptions.TaskCancelledError):  # before its node ran it
                exit_ = Exit(None, signal.SIGKILL, wall, 0)
            else:  # the node or its worker was lost, or Ray failed it
                error = f"lost on the Ray cluster: {_first_line(e)}"
                exit_ = Exit(None, None, wall, 0, error=error)
            # Whatever it may have started lives on where its worker stopped (Ray ends only
            # a worker's children): ended on every node, not waited for.
            with contextlib.suppress(Exception):
                _submit_to_every_node(
                    sweep,
                    launch.run_id,
                    launch.task_id,
                    launch.attempt,
                    launch.env.get(RUN_TAG_ENV),
                )
        else:
            code = os.waitstatus_to_exitcode(status)
            exit_ = Exit(
                code if code >= 0 else None, -code if code < 0 else None, wall, peak, host=host
            )
        self._on_exit(running, exit_)

    def kill(self, running: Running, grace_s: float) -> Coroutine[Any, Any, None]:
        """Ask its node to TERM the tree and KILL it after the grace period (at once when
        `grace_s` is 0), through the attempt's kill file; Ray's cancel takes it off Ray's
        queue if it has not started. The file is written now, not in a worker thread: a
        cancel asks for every kill before any node acts on one, so a task that Ray starts
        on a CPU a killed one freed finds its own kill file and never runs."""
        import ray

        with contextlib.suppress(OSError):  # (unwritable: Ray's cancel is all there is)
            request_kill(running.launch, KILL if grace_s <= 0 else TERM)
        return asyncio.to_thread(_cancel, ray, running)

    def stats(self, running: Running) -> tuple[int, float, int] | None:
        return read_stats(running.launch)  # None while it waits in Ray's queue

    def leftovers(self, running: Running, since: float | None = None) -> bool:
        return False  # its node ended them

    def sweep(self) -> None:
        pass  # exits come as the tasks' results

    def close(self) -> None:
        pass  # the cluster is the caller's to close


def _cancel(ray: Any, running: Running) -> None:
    with contextlib.suppress(Exception):
        ray.cancel(running.handle, force=False)
