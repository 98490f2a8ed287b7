"""The key proxy: agents talk to it with a worthless token; it talks to the provider with a
real key, picked per request, rotated on 429, backed off when all are spent.

    agent ── ANTHROPIC_BASE_URL=http://127.0.0.1:P, x-api-key: abreast-<token> ──▶ proxy
    proxy ── token known? which pool? ──▶ KeyPool.send ── x-api-key: <real key> ──▶ upstream
    upstream response ── status not 429 ──▶ streamed back chunk by chunk, as it comes

It listens on 127.0.0.1 only, for the length of a run; tokens are issued per
attempt and revoked when the attempt ends, so they are worthless outside it.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from abreast.keys.pool import KeyPool, retry_after

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
    "accept-encoding",
}
BASE_URL_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}


class Route_:
    """What a token may use: one pool, its upstream and header style."""

    def __init__(self, pool: KeyPool, upstream: str, style: str) -> None:
        self.pool = pool
        self.upstream = upstream.rstrip("/")
        self.style = style


class KeyProxy:
    def __init__(self, routes: dict[str, Route_]) -> None:
        self.routes = routes  # pool name -> route
        self._tokens: dict[str, str] = {}  # token -> pool name
        self._lock = threading.Lock()
        self._client: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- tokens ------------------------------------------------------------------------------

    def issue(self, pool: str) -> str:
        token = "abreast-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = pool
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- serving -----------------------------------------------------------------------------

    def _token_of(self, request: Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key:
            return key
        auth = request.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    async def forward(self, request: Request) -> Response:
        token = self._token_of(request)
        with self._lock:
            pool_name = self._tokens.get(token or "")
        if pool_name is None:
            return JSONResponse(
                {
                    "type": "error",
                    "error": {
                        "type": "authentication_error",
                        "message": "abreast proxy: unknown or expired token "
                        "(each task attempt gets its own)",
                    },
                },
                status_code=401,
            )
        route = self.routes[pool_name]
        body = await request.body()
        path = request.url.path
        url = route.upstream + path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self._client is None:  # made in the server's own loop, on first use
            import httpx

            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(600, connect=10), limits=httpx.Limits(max_connections=200)
            )
        client = self._client

        async def do(value: str, _fp: str) -> Any:
            sent = dict(headers)
            if route.style == "openai":
                sent["authorization"] = f"Bearer {value}"
            else:
                sent["x-api-key"] = value
            response = await client.send(
                client.build_request(request.method, url, headers=sent, content=body), stream=True
            )
            if response.status_code == 429:
                await response.aread()  # kept, in case it is the one the agent gets
                await response.aclose()
            return response

        try:
            upstream = await route.pool.send(do, lambda r: r.status_code, retry_after)
        except Exception as e:
            return JSONResponse(
                {
                    "type": "error",
                    "error": {
                        "type": "api_error",
                        "message": f"abreast proxy: upstream failed: {type(e).__name__}",
                    },
                },
                status_code=502,
            )
        out_headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"
        }
        if upstream.is_closed:
            return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)
        return StreamingResponse(
            upstream.aiter_bytes(),
            status_code=upstream.status_code,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", self.forward, methods=methods)])

    def start(self) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="abreast-key-proxy", daemon=True
        )

        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the key proxy could not start")
            time.sleep(0.01)  # waiting for our own server thread to bind

    async def _serve(self) -> None:
        assert self._server is not None
        try:
            await self._server.serve()
        finally:
            if self._client is not None:
                await self._client.aclose()  # its connections belong to this loop

    def stop(self) -> None:

        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
