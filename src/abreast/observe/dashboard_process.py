"""`abreast run --dashboard / --metrics-port`: the run's observer, a process of its own.

Serving pages (and following the journal for them) then never takes the orchestrator's
interpreter from the run, nor, on a machine with a core to spare, its CPU; and this
module imports nothing heavy: starting the observer costs the run under a millisecond.
`abreast run` starts it first thing, before its own imports, so that the observer's
start (about 0.2 s of CPU: Python, starlette, uvicorn; niced) overlaps the
orchestrator's reading and planning of the workflow on another core.

    run ── bind 127.0.0.1 ports, pipe ──▶ spawn `python -m abreast.observe.dashboard_process
     │                                     --follow-fd R --metrics-fd M --listen-fd D --port P`
     │                                     (niced): imports, then waits
     ├── run journaled: its id and state ─▶ (one JSON line on the pipe) serving on the
     │                                     inherited sockets: metrics replayed from the
     │                                     journal, pages as `abreast dashboard` serves them
     └── run over (or killed, or never begun): the pipe's write end closes ──▶ pages get
                                           the end, it exits
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from abreast.coord.location import StateLocation
from abreast.errors import UsageError
from abreast.observe.output import redirect_fd

OBSERVER_NICENESS = 10
READY_TIMEOUT_S = 30.0  # its start-up takes about 0.2 s of CPU
_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


@dataclass(frozen=True)
class ObserverUrls:
    dashboard: str | None
    metrics: str | None
    problem: str | None = None  # why the observer does not serve, if it does not


def _listen(option: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"{option} {port}: {e.strerror}", hint="name another port (or, for --dashboard, none)"
        ) from None
    sock.listen(128)
    return sock


class Observer:
    """A run's observer: one process serving the dashboard and/or the metrics of the run.

    The sockets are bound first, before the run is journaled, so a busy port stops the run
    before anything is written; `start` then spawns the process, which inherits them (the
    addresses work at once), and the read end of a pipe whose closing (by `stop`, or by the
    kernel if this process dies) tells it the run is over."""

    def __init__(self, dashboard_port: int | None, metrics_port: int | None) -> None:
        self._metrics: socket.socket | None = None
        self._dashboard: socket.socket | None = None
        self._follow_w = -1
        self._child: subprocess.Popen[bytes] | None = None
        if metrics_port is not None:
            self._metrics = _listen("--metrics-port", metrics_port)
        if dashboard_port is not None:
            try:
                self._dashboard = _listen("--dashboard", dashboard_port)
            except UsageError:
                self._close_sockets()
                raise

    def _close_sockets(self) -> None:
        for sock in (self._metrics, self._dashboard):
            if sock is not None:
                sock.close()
        self._metrics = self._dashboard = None

    def spawn(self) -> None:
        """Start the observer process now; it imports what it serves with while the run
        prepares, then waits for `start` to name the run (connections wait in the backlog).

        Called first thing by `abreast run`, so that the observer's own start-up (about 0.2 s
        of CPU) overlaps the orchestrator's instead of following it."""
        if self._child is not None:
            return
        import sys

        argv = [sys.executable, "-m", __name__]  # not the CLI: no argparse to import
        socks = [sock for sock in (self._metrics, self._dashboard) if sock is not None]
        if self._metrics is not None:
            argv += ["--metrics-fd", str(self._metrics.fileno())]
        if self._dashboard is not None:
            argv += ["--listen-fd", str(self._dashboard.fileno())]
            argv += ["--port", str(self._dashboard.getsockname()[1])]
        follow_r, self._follow_w = os.pipe()
        argv += ["--follow-fd", str(follow_r)]
        # Only what a Python needs: the run's key variables and the like stay out of it.
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
        try:
            self._child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,  # "ready", once it can serve
                stderr=subprocess.PIPE,  # why not, if it cannot; then observer.log
                pass_fds=(*(sock.fileno() for sock in socks), follow_r),
                start_new_session=True,  # Ctrl-C on the run does not cut the page off
            )
        finally:
            os.close(follow_r)
        # Watching yields to the work: where CPU is short, the run's tasks come first.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self._child.pid, OBSERVER_NICENESS)

    def start(self, location: StateLocation, run_id: str) -> ObserverUrls:
        """Tell the observer (spawning it if `spawn` was not called) which run to serve.

        Waits until it says it is ready (it normally is by now: it started before the run
        read its workflow). If it cannot start (a broken install), the run goes on
        unwatched and `ObserverUrls.problem` says why."""
        self.spawn()
        assert self._child is not None
        urls = ObserverUrls(
            # The run's own page: what `--dashboard` was asked for (`/` lists every run).
            dashboard=_url(self._dashboard, f"/runs/{run_id}"),
            metrics=_url(self._metrics, "/metrics"),
        )
        self._close_sockets()  # the child has its own copies
        problem = self._wait_ready()
        if problem is not None:
            self.stop()
            return ObserverUrls(None, None, problem)
        log = location.journal.parent / "observer.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        # Where the state is goes through the pipe, not argv: a Redis URL may hold a password.
        header = {
            "run_id": run_id,
            "root": str(location.root),
            "journal": str(location.journal),
            "runs_dir": str(location.runs_dir),
            "coord_url": location.coord_url,
            "in_git": location.in_git,
            "log": str(log),
        }
        with contextlib.suppress(BrokenPipeError):  # it died just now: the run goes on
            os.write(self._follow_w, (json.dumps(header) + "\n").encode())
        return urls

    def _wait_ready(self) -> str | None:
        """None once the observer said "ready"; else why it will not serve."""
        import selectors

        child = self._child
        assert child is not None
        assert child.stdout is not None
        assert child.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(child.stdout, selectors.EVENT_READ)
            if not sel.select(READY_TIMEOUT_S):
                return f"it did not start within {READY_TIMEOUT_S:g} s"
        if child.stdout.readline().strip() == b"ready":
            return None
        try:
            code = child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it closed its output without starting"
        lines = [ln for ln in child.stderr.read().decode(errors="replace").splitlines() if ln]
        return lines[-1] if lines else f"it exited with status {code}"

    def stop(self) -> None:
        self._close_sockets()
        if self._follow_w >= 0:
            os.close(self._follow_w)
            self._follow_w = -1
        if self._child is not None:
            for stream in (self._child.stdout, self._child.stderr):
                if stream is not None:
                    stream.close()


def _url(sock: socket.socket | None, path: str) -> str | None:
    return f"http://127.0.0.1:{sock.getsockname()[1]}{path}" if sock is not None else None


def main(argv: list[str]) -> int:
    """The observer process: `--follow-fd R [--metrics-fd M] [--listen-fd D --port P]`.

    Prepares, says "ready" on stdout, reads the run's header (written by `Observer.start`)
    from the follow pipe, then serves until the pipe closes; the pipe closing before the
    header means the run never began."""
    import sys

    opts = dict(zip(argv[::2], (int(v) for v in argv[1::2]), strict=True))
    follow_fd = opts["--follow-fd"]
    from abreast.observe.dashboard import prepare_to_serve, serve_run

    metrics = prepare_to_serve(opts.get("--port", 0))
    with open(sys.stdout.fileno(), "wb", closefd=False) as out:
        out.write(b"ready\n")
    redirect_fd(sys.stdout.fileno(), os.devnull)  # the pipe has served its purpose
    header = b""
    while not header.endswith(b"\n"):
        chunk = os.read(follow_fd, 4096)
        if not chunk:
            return 0
        header += chunk
    run = json.loads(header)
    redirect_fd(sys.stderr.fileno(), run["log"])  # from now on, what goes wrong is written down
    location = StateLocation(
        root=Path(run["root"]),
        journal=Path(run["journal"]),
        runs_dir=Path(run["runs_dir"]),
        coord_url=run["coord_url"],
        in_git=run["in_git"],
    )
    serve_run(
        location,
        run["run_id"],
        opts.get("--port", 0),
        listen_fd=opts.get("--listen-fd"),
        metrics_fd=opts.get("--metrics-fd"),
        follow_fd=follow_fd,
        metrics=metrics,
    )
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
