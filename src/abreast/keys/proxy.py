"""The key proxy: agents talk to it with a worthless token; it talks to the provider with a
real key, picked per request, rotated on 429, backed off when all are spent.

    agent ── ANTHROPIC_BASE_URL=http://127.0.0.1:P, x-api-key: abreast-<token> ──▶ proxy
    proxy ── token known? which pool? ──▶ KeyPool.send ── x-api-key: <real key> ──▶ upstream
    upstream response ── status not 429 ──▶ streamed back chunk by chunk, as it comes
                     └── read on the way for the tokens it says it used (`tokens.py`)

It listens on 127.0.0.1 only, for the length of a run; tokens are issued per
attempt and revoked when the attempt ends, so they are worthless outside it.

It is a small HTTP/1.1 server on asyncio streams with h11 (keep-alive, bodies passed
through as they come, compressed or not), in its own thread and event loop. A general
web framework (starlette on uvicorn, as the dashboard uses) cost about 0.5 ms more per
request on the reference machine, half the proxy's budget of 1 ms added per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import secrets
import threading
from collections.abc import Iterable

import h11

from abreast.executor.logs import redact
from abreast.keys.pool import AllKeysLimited, KeyPool, retry_after
from abreast.keys.tokens import Tokens, UsageReader
from abreast.keys.upstream import READ_CHUNK, Upstream, UpstreamError, UpstreamResponse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "x-goog-api-key",
}
# Where each style's clients read the provider's address: Anthropic's and OpenAI's SDKs
# (Claude Code, Codex), Aider's OPENAI_API_BASE (LiteLLM's name, and the OpenAI SDK's
# before 1.0), and Google's Gen AI SDK (Gemini CLI). Each is set: one left pointing at the
# provider would have a client send its worthless token there.
BASE_URL_ENV = {
    "anthropic": ("ANTHROPIC_BASE_URL",),
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
    "gemini": ("GOOGLE_GEMINI_BASE_URL",),
}
# The header each style's requests carry their key in (OpenAI's as `Bearer KEY`).
AUTH_HEADER = {"anthropic": "x-api-key", "openai": "authorization", "gemini": "x-goog-api-key"}
# A request body is held whole (a 429 is retried with the next key); providers refuse far
# less (Anthropic's Messages API: 32 MB), so a bigger one is refused here, unread (413).
MAX_REQUEST_BYTES = 64 << 20


class Route:
    """What a token may use: one pool, its upstream and header style."""

    def __init__(self, pool: KeyPool, upstream: str, style: str) -> None:
        self.pool = pool
        self.upstream = upstream.rstrip("/")
        self.style = style
        self.client = Upstream(self.upstream)  # used only in the proxy's own loop


def _error(status: int, kind: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps(
        {"type": "error", "error": {"type": kind, "message": f"abreast proxy: {message}"}}
    ).encode()
    return status, [("content-type", "application/json")], body


class KeyProxy:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes  # pool name -> route
        self._tokens: dict[str, str] = {}  # token -> pool name
        # token -> requests of its attempt under way (read, waiting on the provider or on a
        # key, or streaming the answer back): the attempt is waiting, not hung
        self._in_flight: dict[str, int] = {}
        self._used: dict[str, Tokens] = {}  # token -> what its answers said they used
        # token -> requests of its attempt that did not reach the provider, and the last why
        self._unreached: dict[str, tuple[int, str]] = {}
        self._budgets: dict[str, int] = {}  # token -> its attempt's max_tokens
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- tokens ------------------------------------------------------------------------------

    def issue(self, pool: str, max_tokens: int | None = None) -> str:
        """A token for one attempt; with `max_tokens`, refused once its answers said they
        used that many (input + output)."""
        token = "abreast-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = pool
            if max_tokens is not None:
                self._budgets[token] = max_tokens
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)
            self._budgets.pop(token, None)

    def forget(self, token: str) -> None:
        """Drop what `token`'s answers used, once it is revoked and its use journaled."""
        with self._lock:
            self._used.pop(token, None)
            self._unreached.pop(token, None)

    def in_flight(self, token: str) -> bool:
        """Whether a request of the attempt holding `token` is under way."""
        return self._in_flight.get(token, 0) > 0

    def _counting(self, token: str, step: int) -> None:
        with self._lock:
            left = self._in_flight.get(token, 0) + step
            if left > 0:
                self._in_flight[token] = left
            else:
                self._in_flight.pop(token, None)

    def used(self, token: str) -> Tokens:
        """The tokens the provider's answers to `token`'s requests said they used, so far
        (kept after the token is revoked)."""
        with self._lock:
            return dataclasses.replace(self._used.get(token, Tokens()))  # a copy

    def unreached(self, token: str) -> tuple[int, str]:
        """How many of `token`'s requests could not reach the provider (refused, timed
        out, cut off before an answer), and why the last could not; (0, "") for none."""
        with self._lock:
            return self._unreached.get(token, (0, ""))

    def budget_spent(self, token: str) -> tuple[int, int] | None:
        """(tokens spent, max_tokens) once `token`'s answers have said they used its whole
        budget; None while they have not, or when it has none."""
        budget = self._budgets.get(token)
        if budget is None or (spent := self.used(token).spent) < budget:
            return None
        return spent, budget

    def _add_use(self, token: str, used: Tokens) -> None:
        if used:
            with self._lock:
                self._used.setdefault(token, Tokens()).add(used)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- one request -------------------------------------------------------------------------

    @staticmethod
    def _token_of(headers: Iterable[tuple[bytes, bytes]], target: bytes = b"") -> str:
        """The attempt's token, from whichever header its client puts a key in, or from
        the `key` query parameter (the Gemini API's other way)."""
        for name, value in headers:
            if name in (b"x-api-key", b"x-goog-api-key"):
                return value.decode("latin-1")
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:].decode("latin-1")
        return _query_key(target.decode("latin-1"))[1] or ""

    def _route_of(self, token: str) -> Route | None:
        with self._lock:
            pool_name = self._tokens.get(token)
        return None if pool_name is None else self.routes[pool_name]

    async def _forward(
        self, request: h11.Request, body: bytes, token: str
    ) -> tuple[int, list[tuple[str, str]], bytes] | UpstreamResponse:
        route = self._route_of(token)
        if route is None:
            return _error(
                401,
                "authentication_error",
                "unknown or expired token (each task attempt gets its own)",
            )
        if (spent_of := self.budget_spent(token)) is not None:
            spent, budget = spent_of
            return _error(  # 403: not a limit that waiting lifts, so clients do not retry
                403,
                "permission_error",
                f"this attempt's token budget is spent: {spent:,} tokens used, "
                f"max_tokens is {budget:,}",
            )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers
            if k.decode("latin-1") not in HOP_BY_HOP
        ]
        auth = AUTH_HEADER[route.style]
        method = request.method.decode("ascii")
        target = _query_key(request.target.decode("latin-1"))[0]  # its key: in the header

        async def do(value: str, _fp: str) -> UpstreamResponse:
            secret = f"Bearer {value}" if route.style == "openai" else value
            response = await route.client.send(method, target, [*headers, (auth, secret)], body)
            if response.status_code == 429:
                await response.aread()  # kept, in case it is the one the agent gets
            return response

        try:
            upstream: UpstreamResponse = await route.pool.send(
                do, lambda r: r.status_code, retry_after
            )
        except AllKeysLimited as e:  # no request left: a 429 the agent's client waits out
            wait = max(1, math.ceil(e.retry_after_s or route.pool.backoff(0)))
            status, head, body = _error(
                429, "rate_limit_error", f"{e} (abreast's `limit:`): retry after {wait}s"
            )
            return status, [*head, ("retry-after", str(wait))], body
        except UpstreamError as e:  # said by Upstream, of the host and the socket: no key
            why = redact(str(e), route.pool.secrets())
            with self._lock:
                count = self._unreached.get(token, (0, ""))[0]
                self._unreached[token] = (count + 1, why)
            return _error(502, "api_error", f"upstream failed: {why}")
        except Exception as e:  # never the key: only the kind of failure
            return _error(502, "api_error", f"upstream failed: {type(e).__name__}")
        return upstream

    # -- serving -----------------------------------------------------------------------------

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytes | None] | None:
        """The next request and its body; None for the body if it is over
        MAX_REQUEST_BYTES (said by its Content-Length, or once that much has come)."""
        head: h11.Request | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:  # curl, for larger bodies
                    writer.write(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                conn.receive_data(await reader.read(READ_CHUNK))
            elif isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > MAX_REQUEST_BYTES:
                    return head, None
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_REQUEST_BYTES:
                    assert head is not None
                    return head, None
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, b"".join(parts)
            else:  # ConnectionClosed, PAUSED
                return None

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        answer: tuple[int, list[tuple[str, str]], bytes] | UpstreamResponse,
        token: str = "",
    ) -> None:
        if isinstance(answer, tuple):
            status, headers, body = answer
            headers = [*headers, ("content-length", str(len(body)))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return
        up = answer
        headers = [(k, v) for k, v in up.header_list if k.lower() not in HOP_BY_HOP]
        length = up.headers.get("content-length")
        if length is not None:  # framing as the provider chose; otherwise chunked
            headers.append(("content-length", length))
        usage = UsageReader(up.headers)
        try:
            writer.write(
                conn.send(h11.Response(status_code=up.status_code, headers=headers)) or b""
            )
            async for chunk in up.aiter_bytes():
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                usage.feed(chunk)
                await writer.drain()  # each part reaches the agent as it comes
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        finally:
            await up.aclose()
            self._add_use(token, usage.tokens())  # what it said, whether the agent stayed

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, reader, writer)

                if request is None:
                    return
                head, body = request
                if body is None:  # refused unread; the connection closes after it
                    too_big = f"request body over {MAX_REQUEST_BYTES:,} bytes"
                    await self._respond(conn, writer, _error(413, "request_too_large", too_big))
                    return
                token = self._token_of(head.headers, head.target)
                self._counting(token, 1)
                try:
                    answer = await self._forward(head, body, token)
                    await self._respond(conn, writer, answer, token)
                finally:
                    self._counting(token, -1)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # the client asked to close, or framing forbids reuse
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.CancelledError):
            pass  # the agent went away or spoke nonsense: drop this connection only
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        except OSError as e:
            self._failed = e
            self._ready.set()
            return
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            for route in self.routes.values():
                await route.client.aclose()  # its connections belong to this loop

    def start(self) -> None:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="abreast-key-proxy", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._failed is not None:
            raise RuntimeError(f"the key proxy could not start: {self._failed}")

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already ended
        if self._thread is not None:
            self._thread.join(timeout=10)


def _query_key(target: str) -> tuple[str, str | None]:
    """`target` without its `key=` query parameter, and that parameter's value (None when
    it has none): a Gemini client may send its key so (`?key=KEY`); the proxy puts the
    real one in the header instead, so that no key is in a URL a log may keep."""
    path, sep, query = target.partition("?")
    if not sep or "key=" not in query:
        return target, None
    from urllib.parse import unquote

    kept, found = [], None
    for part in query.split("&"):
        if part.startswith("key=") and found is None:
            found = unquote(part[4:])
        else:
            kept.append(part)
    return (f"{path}?{'&'.join(kept)}" if kept else path), found
