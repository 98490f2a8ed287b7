"""A stand-in LLM provider: a real HTTP server on 127.0.0.1, run by the tests.

- POST /v1/messages: counts per key (x-api-key or Authorization: Bearer) in a sliding
  window; over the limit (or when told every key is limited) it answers 429 with
  Retry-After; otherwise 200 with which key (fingerprint) served it, and a `usage`.
- GET /v1/stream: a response in `chunks` parts, `gap_s` apart, between events that say
  the tokens used, as Anthropic's stream does.
- POST /v1/slow: answers after `slow_s` of silence (a model thinking, unstreamed).
- POST /v1beta/models/MODEL:generateContent and :streamGenerateContent?alt=sse: the
  Gemini API's shape (its key in `x-goog-api-key` or `?key=`, limited as above, and a
  `usageMetadata`; streamed, one growing in each chunk).
Every request is recorded: key, time, status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Provider:
    limit: int = 100
    window_s: float = 2.0
    all_limited: bool = False
    retry_after_s: float = 0.05
    chunks: int = 5
    gap_s: float = 0.2
    slow_s: float = 3.0
    log: list[tuple[str, float, int]] = field(default_factory=list)  # key, time, status
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _served: dict[str, deque[float]] = field(default_factory=dict)  # 200s in the window

    def _key(self, request: Request) -> str:
        key = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
        if key:
            return key
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        return bearer or request.query_params.get("key", "")

    def _limited(self, request: Request, key: str) -> Response | None:
        """A 429 when `key` is over its limit (or every key is said to be); None (and the
        request counted) otherwise."""
        self.seen_headers.append(dict(request.headers))
        now = time.monotonic()
        recent = self._served.setdefault(key, deque())
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if self.all_limited or len(recent) >= self.limit:
            self.log.append((key, now, 429))
            return JSONResponse(
                {"type": "error", "error": {"type": "rate_limit_error"}},
                status_code=429,
                headers={"retry-after": str(self.retry_after_s)},
            )
        self.log.append((key, now, 200))
        recent.append(now)
        return None

    async def _admit(self, request: Request) -> tuple[str, bytes] | Response:
        """(the request's key, its body), or the 429 it gets over the key's limit."""
        key = self._key(request)
        limited = self._limited(request, key)
        return limited if limited is not None else (key, await request.body())

    async def gemini(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        key, body = admitted
        seen = {"key": hashlib.sha256(key.encode()).hexdigest()[:8], "query": request.url.query}
        usage = {"promptTokenCount": 10 + len(body), "candidatesTokenCount": 5}
        if not request.url.path.endswith(":streamGenerateContent"):
            return JSONResponse({**seen, "usageMetadata": {**usage, "thoughtsTokenCount": 2}})

        async def parts():  # type: ignore[no-untyped-def]
            for n in range(1, 4):  # each chunk's usage counts the output so far
                chunk = {**seen, "usageMetadata": {**usage, "candidatesTokenCount": 5 * n}}
                yield f"data: {json.dumps(chunk)}\r\n\r\n".encode()

        return StreamingResponse(parts(), media_type="text/event-stream")

    async def messages(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        key, body = admitted
        return JSONResponse(
            {
                "ok": True,
                "key": hashlib.sha256(key.encode()).hexdigest()[:8],
                "bytes": len(body),
                "query": request.url.query,
                # as Anthropic counts: here 10 + the body's bytes in, 5 out
                "usage": {"input_tokens": 10 + len(body), "output_tokens": 5},
            }
        )

    async def stream(self, request: Request) -> Response:
        self.seen_headers.append(dict(request.headers))

        async def parts():  # type: ignore[no-untyped-def]
            # Anthropic's shape: the input counted as the message starts, the output as
            # a count that grows, the last one whole, as it ends.
            usage = {"input_tokens": 7, "cache_read_input_tokens": 100, "output_tokens": 1}
            start = json.dumps({"type": "message_start", "message": {"usage": usage}})
            yield f"event: message_start\ndata: {start}\n\n".encode()
            for i in range(self.chunks):
                yield f"data: chunk {i} {time.time():.4f}\n\n".encode()
                await asyncio.sleep(self.gap_s)
            for n in (self.chunks, 3 * self.chunks):
                delta = {"type": "message_delta", "usage": {"output_tokens": n}}
                yield f"event: message_delta\ndata: {json.dumps(delta)}\n\n".encode()

        return StreamingResponse(parts(), media_type="text/event-stream")

    async def slow(self, request: Request) -> Response:
        await request.body()
        await asyncio.sleep(self.slow_s)
        return JSONResponse({"ok": True, "thought_s": self.slow_s})

    def start(self) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        app = Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/stream", self.stream),
                Route("/v1/slow", self.slow, methods=["POST"]),
                Route("/v1beta/models/{call}", self.gemini, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)  # waiting for our own server thread to bind

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def max_in_any_window(self, key: str) -> int:
        """The most 200s this key got within any window_s (sliding)."""
        times = sorted(t for k, t, s in self.log if k == key and s == 200)
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - self.window_s:
                j += 1
            best = max(best, i - j + 1)
        return best
