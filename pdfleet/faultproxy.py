"""`pdfleet faultproxy`: fault rules in front of any HTTP node (SGLang, vLLM, pdfleet).

Every request that no rule fires on is passed through unchanged: method, raw path and query,
headers (hop-by-hop ones excepted, as any proxy must), body; the reply's status, headers and
body come back byte for byte, streamed chunk by chunk (SSE included). The rules, the
middleware that applies them and the `/_admin/faults` routes are the node's own
(`node.faults`), so a rule means the same thing on a node and on a proxy.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from node.faults.admin import admin_router
from node.faults.inject import FaultMiddleware, FaultProtocol
from node.faults.rules import FaultSet
from node.http.errors import install_error_handlers

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host",
})


@dataclass(frozen=True)
class ProxySettings:
    host: str
    port: int
    upstream: str
    admin_token: str | None


def _forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.decode("latin-1").lower() not in HOP_BY_HOP]


def create_proxy_app(settings: ProxySettings, faults: FaultSet) -> FastAPI:
    upstream = settings.upstream.rstrip("/")
    sessions: list[aiohttp.ClientSession] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(
            auto_decompress=False,  # bytes pass through as the node sent them
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        ))
        yield
        await sessions[0].close()

    app = FastAPI(title="pdfleet faultproxy", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(admin_router(faults, settings.admin_token))

    @app.api_route("/{path:path}", methods=METHODS)
    async def forward(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = upstream + raw_path.decode("latin-1") + ("?" + query.decode("latin-1")
                                                          if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in _forwarded(request.headers.raw)]
        body = await request.body()
        try:
            reply = await sessions[0].request(
                request.method, target, headers=headers, data=body or None,
                allow_redirects=False)
        except (aiohttp.ClientError, OSError) as error:
            return JSONResponse(status_code=502, content={
                "success": False,
                "message": f"faultproxy: upstream {upstream} failed: "
                           f"{type(error).__name__}: {error}"})
        relayed = StreamingResponse(reply.content.iter_any(), status_code=reply.status,
                                    background=BackgroundTask(reply.release))
        relayed.raw_headers = _forwarded(list(reply.raw_headers))
        return relayed

    return app


class _AnnouncedServer(uvicorn.Server):
    """A uvicorn server that says, once it listens, where and in front of what."""

    def __init__(self, config: uvicorn.Config, settings: ProxySettings) -> None:
        super().__init__(config)
        self._settings = settings

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self._settings.host
            shown = f"[{host}]" if ":" in host else host
            print(f"pdfleet faultproxy listening on http://{shown}:{self._settings.port}, "
                  f"forwarding to {self._settings.upstream}", flush=True)


def serve(settings: ProxySettings, faults: FaultSet) -> None:
    _AnnouncedServer(uvicorn.Config(
        FaultMiddleware(create_proxy_app(settings, faults), faults),
        host=settings.host, port=settings.port, log_level="warning", access_log=False,
        http=FaultProtocol, server_header=False, date_header=False,
        timeout_graceful_shutdown=5,
    ), settings).run()
