"""`abreast dashboard`: a read-only web page of runs, updated live.

    GET /                          runs
    GET /runs/{run}                one run: DAG, timeline, merge queue, locks, keys, resources
    GET /api/runs                  JSON
    GET /api/runs/{run}            JSON snapshot of one run
    GET /api/runs/{run}/events     server-sent events: the journal's events as they come
    GET /api/runs/{run}/tasks/{t}/log   a task's log tail (text)
    GET /metrics                   Prometheus exposition
    GET /static/...                the page's script and style (no build step, no CDN)

Safety: it binds 127.0.0.1 unless told otherwise, and any other address needs a
token (sent as `?token=`, then kept in a cookie, or as `Authorization: Bearer`);
requests whose Host or Origin is not this server are refused (DNS rebinding,
cross-site reads); every user-supplied string is escaped on the server and set
with textContent in the page; nothing is ever written.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import html
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from abreast.coord.journal import AttemptRow, Journal
from abreast.coord.location import StateLocation
from abreast.errors import UsageError
from abreast.executor.logs import mask_keys, open_regular, visible
from abreast.observe import rundata
from abreast.observe.metrics import CONTENT_TYPE, Metrics
from abreast.spec.durations import format_duration

LOOPBACK = ("127.0.0.1", "localhost", "::1")
METRICS_FRESH_S = 1.0
POLL_S = 0.25  # the dashboard tails the journal (another process writes it)
LOG_TAIL_BYTES = 32_768
DAG_LIMIT = 400  # above this many tasks the page lists tasks instead of drawing them
_LIST_REFRESH_S = 3  # the list of runs reloads itself this often while one runs

_STATIC = {"run.js": "text/javascript", "style.css": "text/css"}


class Dashboard:
    def __init__(
        self,
        location: StateLocation,
        *,
        host: str,
        port: int,
        token: str | None,
        metrics_port: int | None = None,
        run_only: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if host not in LOOPBACK and not token:
            raise UsageError(
                f"the dashboard would listen on {host}, beyond this machine, without a token",
                hint="set ABREAST_DASHBOARD_TOKEN (or pass --token SECRET); every request "
                "must then carry it. Or keep the default --host 127.0.0.1",
            )
        self.location = location
        self.host = host
        self.port = port
        self.token = token
        self.metrics_port = metrics_port  # a socket of its own, serving /metrics only
        self.run_only = run_only  # metrics of this run alone (a run's observer)
        self._replayed = metrics  # else made at the first scrape
        self._exposed: tuple[float, bytes] | None = None  # (when, exposition)
        self._exposing = asyncio.Lock()
        self._coord: Any = None
        self._sample: Callable[[], tuple[float, float]] | None = None
        self.open_streams = 0  # event streams being followed now
        self.last_request_at = 0.0  # monotonic
        # (run, task, attempt) -> why that ended attempt failed, its log's last line in
        # (`exit 1: connection refused`): read once, not at each refresh of the page
        self._said: dict[tuple[str, str, int], str | None] = {}

    # -- plumbing ----------------------------------------------------------------------------

    def journal(self) -> Journal | None:
        return Journal(self.location.journal) if self.location.journal.exists() else None

    def allowed_hosts(self, port: int | None = None) -> set[str]:
        names = set(LOOPBACK) if self.host in LOOPBACK else {self.host}
        out = set()
        for name in names:
            shown = f"[{name}]" if ":" in name else name
            out |= {f"{shown}:{port or self.port}", shown}
        return out

    def check(self, request: Request) -> tuple[Response | None, bool]:
        """(a refusal, or None; whether to set the token cookie) for a request."""
        self.last_request_at = time.monotonic()
        server = request.scope.get("server") or ("", self.port)
        port = self.port
        if self.metrics_port is not None and server[1] == self.metrics_port:
            if request.url.path != "/metrics":
                return PlainTextResponse("this port serves /metrics only", status_code=404), False
            port = self.metrics_port
        allowed = self.allowed_hosts(port)
        host = request.headers.get("host", "")
        if host not in allowed:
            return PlainTextResponse("refused: unexpected Host header", status_code=421), False
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] not in allowed:
            return PlainTextResponse("refused: cross-origin request", status_code=403), False
        if self.token:
            offered = (
                request.query_params.get("token")
                or request.cookies.get("abreast_token")
                or request.headers.get("authorization", "").removeprefix("Bearer ")
            )
            if not offered or not hmac.compare_digest(offered, self.token):
                return PlainTextResponse("token required", status_code=401), False
            return None, "token" in request.query_params
        return None, False

    def app(self) -> Starlette:
        from starlette.middleware import Middleware

        routes = [
            Route("/", self.runs_page),
            Route("/runs/{run_id}", self.run_page),
            Route("/api/runs", self.api_runs),
            Route("/api/runs/{run_id}", self.api_run),
            Route("/api/runs/{run_id}/events", self.api_events),
            Route("/api/runs/{run_id}/tasks/{task_id}/log", self.api_log),
            Route("/api/runs/{run_id}/tasks/{task_id}/prompt", self.api_prompt),
            Route("/metrics", self.metrics),
            Route("/static/{name}", self.static),
        ]
        return Starlette(routes=routes, middleware=[Middleware(_Guard, dashboard=self)])

    # -- pages -----------------------------------------------------------------------------

    async def runs_page(self, request: Request) -> Response:
        journal = self.journal()
        rows = []
        live = False  # a run is running: the page reloads itself to follow it
        if journal is not None:
            try:
                for r in self._listed(journal):
                    shown = f"{r['state']} ({r['stopping']})" if r["stopping"] else r["state"]
                    live = live or r["state"] == "running"
                    link = html.escape(r["id"])
                    rows.append(
                        f'<tr data-run="{link}"><td><a href="/runs/{link}">{link}</a></td>'
                        f'<td class="state {html.escape(r["state"])}">{html.escape(shown)}</td>'
                        f"<td>{html.escape(r['workflow'])}</td>"
                        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started_at']))}"
                        f"</td><td class=took>{format_duration(r['took_s'])}</td>"
                        f"<td class=done>{html.escape(r['tasks_done'])}</td></tr>"
                    )
            finally:
                journal.close()
        body = (
            "<table class=runs><thead><tr><th>run</th><th>state</th><th>workflow</th>"
            "<th>started</th><th>took</th><th>tasks</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
            if rows
            else "<p>No runs yet. Start one with <code>abreast run</code>.</p>"
        )
        head = f'<meta http-equiv=refresh content="{_LIST_REFRESH_S}">' if live else ""
        return HTMLResponse(_page("abreast: runs", body, head=head))

    @staticmethod
    def _listed(journal: Journal) -> list[dict[str, Any]]:
        """The newest 100 runs as the list page and /api/runs show them."""
        from abreast.observe.status import run_took, tasks_done

        out = []
        for r in journal.runs(100):
            state, asked = _run_state(r)
            counts = journal.task_states(r.id)
            out.append(
                {
                    "id": r.id,
                    "workflow": r.workflow,
                    "state": state,
                    "stopping": asked,
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "took_s": run_took(journal, r, state),  # pauses before resumes left out
                    "tasks": sum(counts.values()),
                    "task_states": counts,
                    "tasks_done": tasks_done(counts),
                }
            )
        return out

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        journal = self.journal()
        found = journal.run(run_id) if journal else None
        if journal:
            journal.close()
        if found is None:
            return HTMLResponse(
                _page("abreast: no such run", f"<p>No run {html.escape(run_id)}.</p>"),
                status_code=404,
            )
        body = f"""
<header><h1>run <span id=run-id>{html.escape(run_id)}</span></h1>
<p id=summary></p><ul id=result hidden></ul></header>
<section id=failures-box hidden><h2>what did not finish</h2><ul id=failures></ul></section>
<section id=warnings-box hidden><h2>warnings</h2><ul id=warnings></ul></section>
<section><h2>tasks</h2><div id=dag></div></section>
<section><h2>timeline</h2><div id=timeline></div></section>
<div class=cols>
<section><h2>merge queue</h2><ul id=queue-now></ul><ul id=merges></ul></section>
<section><h2>locks</h2><ul id=locks></ul></section>
<section><h2>keys</h2><ul id=keys></ul></section>
<section><h2>resources</h2><p id=resources></p></section>
</div>
<section id=log-box hidden><h2>log: <span id=log-task></span></h2><pre id=log></pre>
<details id=prompt-box hidden><summary>the prompt it was given</summary><pre id=prompt></pre>
</details></section>
<script src="/static/run.js"></script>"""
        return HTMLResponse(_page(f"abreast: {run_id}", body, data_run=run_id))

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return PlainTextResponse("not found", status_code=404)
        text = resources.files("abreast.observe").joinpath("static", name).read_text()
        return Response(text, media_type=_STATIC[name])

    # -- data ------------------------------------------------------------------------------

    async def api_runs(self, request: Request) -> Response:
        journal = self.journal()
        if journal is None:
            return JSONResponse([])
        try:
            return JSONResponse(self._listed(journal))
        finally:
            journal.close()

    async def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        journal = self.journal()
        if journal is None:
            return JSONResponse({"error": "no journal"}, status_code=404)
        try:
            data = rundata.load(journal, run_id)
            if data is None:
                return JSONResponse({"error": f"no run {run_id}"}, status_code=404)
            return JSONResponse(self.snapshot(journal, data))
        finally:
            journal.close()

    def _last_words(
        self, journal: Journal, data: rundata.RunData
    ) -> dict[tuple[str, int], str | None]:
        """(task, attempt) -> why each attempt that failed with an exit status failed, as
        the run said it (`exit 7: it broke`): its log read once, at its first showing."""
        out: dict[tuple[str, int], str | None] = {}
        masked: set[str] | None = None
        for a in data.attempts:
            if a.state != "failed" or not (a.reason or "").startswith("exit "):
                continue
            key = (a.run_id, a.task_id, a.attempt)
            if key not in self._said:
                if masked is None:
                    masked = rundata.leased_fingerprints(journal, a.run_id)
                self._said[key] = rundata.with_last_words(journal, a, masked)
            out[(a.task_id, a.attempt)] = self._said[key]
        return out

    def snapshot(self, journal: Journal, data: rundata.RunData) -> dict[str, Any]:
        run = data.run
        plan = data.plan or {}
        waves = plan.get("waves", [[t.task_id for t in data.tasks]])
        wave_of = {tid: i for i, w in enumerate(waves) for tid in w}
        critical = set(plan.get("critical_path", []))
        estimates = plan.get("estimates", {})
        changes = rundata.work_changes(journal, run.id)
        tokens = rundata.token_use(journal, run.id)
        hosts = rundata.attempt_hosts(journal, run.id)
        said = self._last_words(journal, data)
        last = {a.task_id: a.attempt for a in data.attempts}
        ready = rundata.ready_waits(journal, run.id) if run.state == "running" else {}
        tasks = [
            {
                "id": t.task_id,
                "state": t.state,
                "attempts": t.attempts,
                "started_at": t.started_at,
                "finished_at": t.finished_at,
                "exit_code": t.exit_code,
                "peak_rss_bytes": t.peak_rss_bytes,
                "reason": said.get((t.task_id, last.get(t.task_id, 0))) or t.reason,
                "wave": wave_of.get(t.task_id, 0),
                "critical": t.task_id in critical,
                "estimate_s": estimates.get(t.task_id),
                "changes": changes.get(t.task_id),
                "tokens": (use := tokens.get(t.task_id)),  # through the key proxy; else null
                "tokens_text": rundata.tokens_line(use) if use else None,
                # why a ready task does not start, as the run last said it (else null)
                "waits_for": ready.get(t.task_id) if t.state == "ready" else None,
            }
            for t in data.tasks
        ]
        attempts = [
            {
                "task": a.task_id,
                "attempt": a.attempt,
                "state": a.state,
                "started_at": a.started_at,
                "ended_at": a.ended_at,
                "exit_code": a.exit_code,
                "reason": said.get((a.task_id, a.attempt)) or rundata.first_line(a.reason),
                "host": hosts.get((a.task_id, a.attempt)),  # a Ray node's, else null
            }
            for a in data.attempts
        ]
        running = {(a.task_id, a.attempt) for a in data.attempts if a.ended_at is None}
        waits = [  # for locks, inside attempts (`abreast lock NAME -- CMD`)
            {
                "task": w.task,
                "attempt": w.attempt,
                "lock": w.lock,
                "since": w.since,
                "until": w.since + w.wait_s,
                "granted": w.granted,
                "attempt_ended": w.cut_short,  # killed as it waited
            }
            for w in data.waits
        ] + [  # ... and those going on now (`until` null), in attempts that run
            {
                "task": w.task,
                "attempt": w.attempt,
                "lock": w.lock,
                "since": w.since,
                "until": None,
                "held_by": w.held_by,
            }
            for w in data.waiting
            if (w.task, w.attempt) in running
        ]
        merges = [
            {
                "seq": e.seq,
                "ts": e.ts,
                "type": e.type,
                "task": e.task_id,
                "detail": _merge_detail(e.data),
            }
            for e in rundata.merge_log(journal, run.id)
        ]
        integrating = [t.task_id for t in data.tasks if t.state == "integrating"]
        queue_now = rundata.merge_queue_now(journal, run.id, integrating) if integrating else []
        state, asked = _run_state(run)
        return {
            "run": {
                "id": run.id,
                "workflow": run.workflow,
                "state": state,
                "stopping": asked,  # "draining", "cancelling" or null, as in `status --json`
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "wall_s": data.wall_s(),
                "busy_s": data.busy_s(),  # its attempts, less their lock waits
                "lock_waited_s": sum(w.wait_s for w in data.waits),
                "checks_s": rundata.checks_s(journal, run.id),  # merge checks ran so long
                "pauses": run.pauses,  # before each resume: the timeline leaves them out
                # An interrupted run's timeline ends here (else at its end, or now).
                "until": data.until,
                # About how long it has left, by the estimates (null: not running, or
                # an unfinished task's estimate is only the default's guess).
                "time_left_s": rundata.time_left(
                    data.plan, data.tasks, data.attempts, rundata.retries_due(journal, run.id)
                )
                if state == "running"
                else None,
                "summary": run.summary,
            },
            "tasks": tasks,
            "edges": data.edges if len(tasks) <= DAG_LIMIT else [],
            "draw": len(tasks) <= DAG_LIMIT,
            "attempts": attempts,
            "waits": waits,
            "merges": merges,
            "queue_now": queue_now,  # the merges on the queue now, and what each is doing
            "warnings": [  # what the run said as warnings, as `report` lists them
                {"task": task, "text": text} for task, text in rundata.warnings(journal, run.id)
            ],
            "locks": self.locks(run.id),
            "keys": self.keys(journal, run.id),
            "resources": dict(zip(("cpu_pct", "memory_pct"), self._resources(), strict=True)),
            "cap": rundata.cap_story(journal, run.id),
            "last_seq": journal.last_seq(run.id),
            "now": time.time(),
        }

    def _resources(self) -> tuple[float, float]:
        """CPU and memory percent as the run's resource monitor reads them: the machine's,
        or a container's own against its limits where fuller."""
        if self._sample is None:
            from abreast.engine.monitor import SystemSample

            self._sample = SystemSample()
        return self._sample()

    def close(self) -> None:
        """Close the coordinator connection the lock view opened, if it did."""
        if self._coord is not None:
            self._coord.close()
            self._coord = None

    def locks(self, run_id: str) -> list[dict[str, Any]]:
        try:
            if self._coord is None:
                from abreast.coord.backend import BEST_EFFORT_WAIT_S, open_coordinator

                # Shown, not relied on: a Redis gone does not hold the page for the wait.
                self._coord = open_coordinator(
                    self.location.coord_url, wait_s=0, calls_wait_s=BEST_EFFORT_WAIT_S
                )
            out = []
            for lease in self._coord.leases():
                out.append(
                    {
                        "name": lease.name,
                        "token": lease.token,
                        "holder": lease.holder.to_dict(),
                        "since": lease.since,
                        "expires_at": lease.expires_at,
                        "ours": lease.holder.run == run_id,
                        "waiters": [w.to_dict() for w in self._coord.waiters(lease.name)],
                    }
                )
            return out
        except Exception:
            return []

    def keys(self, journal: Journal, run_id: str) -> list[dict[str, Any]]:
        from abreast.keys.usage import usage

        return usage(journal, run_id)  # what `abreast keys` shows

    async def api_events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            after = 0

        async def stream() -> AsyncIterator[bytes]:
            journal = self.journal()
            if journal is None:
                return
            last, quiet = after, 0.0
            self.open_streams += 1
            try:
                while True:
                    events = journal.event_heads(run_id, after_seq=last, limit=500)
                    if events:
                        last = events[-1][0]
                        quiet = 0.0
                        # One write for the batch, not one per event.
                        yield "".join(map(_sse, events)).encode()
                        continue
                    if await request.is_disconnected():
                        return
                    if journal.finished_at(run_id):
                        # run.finished is committed with finished_at: all is sent
                        yield b"event: end\ndata: {}\n\n"
                        return
                    await asyncio.sleep(POLL_S)  # tailing a file another process writes
                    quiet += POLL_S
                    if quiet % 15 < POLL_S:
                        yield b": keep-alive\n\n"
            finally:
                self.open_streams -= 1
                journal.close()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def _latest_attempt(
        self, request: Request
    ) -> tuple[Journal, AttemptRow | None, set[str]] | None:
        """The journal (closed again), the latest attempt of the task the request names,
        and the fingerprints of the keys its run leased; None when there is no journal."""
        run_id, task_id = request.path_params["run_id"], request.path_params["task_id"]
        journal = self.journal()
        if journal is None:
            return None
        try:
            attempts = journal.attempts(run_id, task_id)
            leased = rundata.leased_fingerprints(journal, run_id)
        finally:
            journal.close()
        return journal, max(attempts, key=lambda a: a.attempt) if attempts else None, leased

    async def api_log(self, request: Request) -> Response:
        found = self._latest_attempt(request)
        if found is None:
            return PlainTextResponse("no journal", status_code=404)
        journal, latest, leased = found
        if latest is None:
            return PlainTextResponse("(not started)")
        log = rundata.log_of(journal, latest) or ""
        try:
            with os.fdopen(open_regular(log), "rb") as f:  # a task may put a FIFO there
                f.seek(0, 2)
                f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = "(no log)"
        # A key a direct-mode task printed stays in its log until the attempt ends.
        text = mask_keys(text, leased)
        # Shown as text on the page: escape sequences (colours, clearing) would be noise.
        return PlainTextResponse("\n".join(visible(line) for line in text.splitlines()))

    async def api_prompt(self, request: Request) -> Response:
        """The prompt the task's latest attempt was given (`abreast logs TASK --prompt`);
        404 when it had none."""
        found = self._latest_attempt(request)
        if found is None:
            return PlainTextResponse("no journal", status_code=404)
        journal, latest, leased = found
        path = rundata.prompt_of(journal, latest) if latest else None
        try:
            if not path:
                raise FileNotFoundError
            with os.fdopen(open_regular(path), "rb") as f:  # at most 128 KiB, as written
                text = f.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            return PlainTextResponse("(no prompt)", status_code=404)
        return PlainTextResponse(mask_keys(text, leased))

    async def metrics(self, request: Request) -> Response:
        # An exposition costs in proportion to the tasks (two per-task series, as the
        # seeds name them: ~0.1 s at 5000 tasks); scrapes closer together than this share
        # one, so a scraper polling fast cannot take a core from the run.
        now = time.monotonic()
        if self._exposed is not None and now - self._exposed[0] < METRICS_FRESH_S:
            return Response(self._exposed[1], media_type=CONTENT_TYPE)
        async with self._exposing:  # one replay at a time: events are counted once
            if self._exposed is None or time.monotonic() - self._exposed[0] >= METRICS_FRESH_S:
                self._exposed = (time.monotonic(), await asyncio.to_thread(self._exposition))
            body = self._exposed[1]
        return Response(body, media_type=CONTENT_TYPE)

    def _exposition(self) -> bytes:
        if self._replayed is None:
            self._replayed = Metrics()
        replayed = self._replayed
        journal = self.journal()
        if journal is not None:
            try:
                if self.run_only is not None:
                    ids = [self.run_only]  # (the options of a run hold its plan: not read)
                else:
                    ids = [r.id for r in sorted(journal.runs(20), key=lambda r: r.started_at)]
                for run_id in ids:
                    replayed.consume(journal.events(run_id, after_seq=replayed.last_seq))
                if ids:
                    replayed.observe_tasks(journal.task_states(ids[-1]))
            finally:
                journal.close()
        return replayed.exposition()


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'",
    ),
]


class _Guard:
    """ASGI middleware: `Dashboard.check` on every request, and the security headers on
    every response. (Plain ASGI: starlette's BaseHTTPMiddleware passes a streamed
    response through task groups and memory streams, which cost the event stream more
    than producing it.)"""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, set_cookie = self.dashboard.check(Request(scope))
        headers = list(_SECURITY_HEADERS)
        if set_cookie and self.dashboard.token:
            cookie = Response()
            cookie.set_cookie(
                "abreast_token", self.dashboard.token, httponly=True, samesite="strict"
            )
            headers += [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)


class DashboardServer:
    """The dashboard in a background thread of this process (for embedding and tests; a run
    serves its own from a separate process, see `dashboard_process`)."""

    def __init__(
        self,
        location: StateLocation,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        import socket

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.dashboard = Dashboard(location, host=host, port=port, token=token)
        self.url = f"http://{host}:{port}/"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _uvicorn(self.dashboard, self.dashboard.host, self.dashboard.port)
        self._thread = threading.Thread(
            target=self._server.run, name="abreast-dashboard", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise UsageError(f"the dashboard could not listen on {self.url}")
            time.sleep(0.01)  # waiting for our own server thread to bind

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.dashboard.close()


def serve(location: StateLocation, host: str, port: int, token: str | None) -> None:
    """`abreast dashboard`: serve until interrupted."""
    dash = Dashboard(location, host=host, port=port, token=token)  # refuses a bad --host first
    sock = _bind(host, port)
    port = dash.port = int(sock.getsockname()[1])  # the one the kernel chose, for --port 0
    shown = f"[{host}]" if ":" in host else host
    suffix = f"?token={token}" if token else ""
    print(f"dashboard: http://{shown}:{port}/{suffix}  (Ctrl-C to stop)", flush=True)
    try:
        _uvicorn(dash, host, port).run(sockets=[sock])
    finally:
        dash.close()
        sock.close()


def _bind(host: str, port: int) -> Any:
    """A socket listening on host:port, bound before the address is printed: a busy port
    or an address not of this machine is the user's error, said as such."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UsageError(
            f"--host {host}: {e.strerror}", hint="give an address of this machine"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            hint = "another program listens there: name another --port (0: any free one)"
        else:
            hint = "give an address of this machine and a port you may use"
        raise UsageError(f"cannot listen on {host} port {port}: {e.strerror}", hint=hint) from None
    return sock


def _uvicorn(dash: Dashboard, host: str, port: int) -> Any:
    from uvicorn import Server

    return Server(_uvicorn_config(dash.app(), host, port))


def _uvicorn_config(app: Any, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ws="none",  # no websockets here (nor their import)
        proxy_headers=False,  # nothing here is behind a proxy: X-Forwarded-* is not trusted
        server_header=False,
    )


def prepare_to_serve(port: int) -> Metrics:
    """Import and build what a run's observer serves with (uvicorn's protocol classes,
    anyio's asyncio backend, psutil, the metrics registry) before it is told the run: done
    while the run reads its workflow on another core, not at the first request mid-run."""
    import contextlib

    with contextlib.suppress(ImportError):  # anyio's own module for asyncio: private
        import anyio._backends._asyncio  # noqa: F401  (starlette's task groups)
    import psutil  # noqa: F401  (the run page's resources)

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        pass

    _uvicorn_config(nothing, "127.0.0.1", port).load()  # imports the protocol classes
    return Metrics()


def serve_run(
    location: StateLocation,
    run_id: str,
    port: int,
    *,
    listen_fd: int | None,
    metrics_fd: int | None,
    follow_fd: int,
    metrics: Metrics,
) -> None:
    """A run's observer (see `dashboard_process`): serve `run_id` on the inherited sockets
    until `follow_fd` closes."""
    import socket

    socks = [socket.socket(fileno=fd) for fd in (metrics_fd, listen_fd) if fd is not None]
    metrics_port = int(socks[0].getsockname()[1]) if metrics_fd is not None else None
    dash = Dashboard(
        location,
        host="127.0.0.1",
        port=port,
        token=None,
        metrics_port=metrics_port,
        run_only=run_id,
        metrics=metrics,
    )
    try:
        asyncio.run(_serve_for_run(_uvicorn(dash, "127.0.0.1", port), socks, dash, follow_fd))
    finally:
        dash.close()


async def _serve_for_run(server: Any, socks: list[Any], dash: Dashboard, follow_fd: int) -> None:
    """Serve on the run's socket; when the run's end of the pipe closes (the run ended, or its
    orchestrator died), let pages following it get the end, then stop."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(follow_fd, ended.set)

    async def stop_after_the_run() -> None:
        await ended.wait()
        loop.remove_reader(follow_fd)
        # Streams close by themselves once they have sent the run's end; the page then
        # asks once more for the final state.
        deadline = time.monotonic() + RUN_LINGER_S
        while time.monotonic() < deadline and (
            dash.open_streams or time.monotonic() - dash.last_request_at < LAST_ASK_S
        ):
            await asyncio.sleep(0.02)  # counters this loop's own requests update
        server.force_exit = True  # no waiting for idle keep-alive connections
        server.should_exit = True

    watcher = asyncio.create_task(stop_after_the_run())
    try:
        await server.serve(sockets=socks)
    finally:
        watcher.cancel()


RUN_LINGER_S = 2.0  # at most, after the run ended
LAST_ASK_S = 0.4  # quiet after the last request before the dashboard of a run stops


def _sse(event: tuple[int, str, str | None, float]) -> str:
    """One event on the stream: the fields the page reads, as JSON. Written by hand (a
    quarter of json.dumps's time): event types are abreast's own dotted names and task ids
    match the workflow's id pattern; anything else goes through json.dumps."""
    seq, kind, task, ts = event
    if _PLAIN.fullmatch(kind) and (task is None or _PLAIN.fullmatch(task)):
        task_json = "null" if task is None else f'"{task}"'
        data = f'{{"seq": {seq}, "type": "{kind}", "task": {task_json}, "ts": {ts!r}}}'
    else:
        data = json.dumps({"seq": seq, "type": kind, "task": task, "ts": ts})
    return f"id: {seq}\ndata: {data}\n\n"


_PLAIN = re.compile(r"[A-Za-z0-9_.\-]*")


def _run_state(row: Any) -> tuple[str, str | None]:
    """The run's state, and what a running run was asked to do ("draining", "cancelling")."""
    from abreast.observe.status import run_state, stopping

    state = str(run_state(row))
    return state, stopping(row, state)


def _merge_detail(data: dict[str, Any]) -> str:
    if "commit" in data:
        return str(data["commit"])[:12]
    if "files" in data:
        return "in " + ", ".join(map(str, data["files"]))[:200]
    if "check" in data:
        return f"({str(data['check'])[:200]})"
    return ""


def _page(title: str, body: str, data_run: str | None = None, head: str = "") -> str:
    run_attr = f' data-run="{html.escape(data_run)}"' if data_run is not None else ""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{head}"
        f"<title>{html.escape(title)}</title>"
        f'<link rel=stylesheet href="/static/style.css"></head>'
        f'<body{run_attr}><nav><a href="/">abreast</a></nav><main>{body}</main>'
        f"</body></html>"
    )
