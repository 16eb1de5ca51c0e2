"""Generation: SGLang's `/generate` and the OpenAI routes, proxied to the fleet (SPEC 3.2).

The three POST routes are the router's hot path: `answer` serves one request from its raw
body (relayed, not modelled), and two transports send what it gives. `router.serving` serves
these routes straight from uvicorn's HTTP protocol (what `pdfleet router` runs); the ASGI
middleware `GenerationRoutes` here serves them wherever that protocol is not used, inside the
body-size limit and Starlette's error handling, passing every other request on. Both end each
request in `request_done`. `GET /v1/models` is an ordinary FastAPI route.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.routes.generation_docs import MODELS_REPLIES
from router.state import RouterState, router_state
from router.upstream import NodeReply

router = APIRouter()

GENERATION_PATHS = frozenset(("/generate", "/v1/completions", "/v1/chat/completions"))
JSON = b"application/json"


class GenerationRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        state: RouterState = scope["app"].state.router
        started = asyncio.get_running_loop().time()
        status = 499  # the client left before an answer
        try:
            if scope["method"] != "POST":
                status = await send_error(
                    send, GenerationError(405, f"{path} takes POST"), [(b"allow", b"POST")])
                return
            body = await read_body(receive)
            if body is None:
                return  # the client left before sending its request
            # A client that leaves cancels this request, and with it every node call it
            # made, streaming or not.
            watch = ClientWatch(receive)
            try:
                status = await serve(state, path, body, send)
            except asyncio.CancelledError:
                if not watch.client_left:
                    raise
                watch.forgive()
            finally:
                watch.stop()
        finally:
            request_done(state, path, status, started)


async def answer(state: RouterState, path: str, body: bytes
                 ) -> NodeReply | DecodeStream | GenerationError:
    """What one generation request gets: decode's reply, its stream (the caller relays it
    and must close it), or the error the client is told."""
    try:
        payload, stream = parse_request(body)
        return await state.proxy.generate(path, payload, body, stream)
    except GenerationError as exc:
        return exc


def request_done(state: RouterState, route: str, status: int, started: float) -> None:
    """Every generation request ends here, however it was served, with its route, status
    (499: the client left first) and start time (event-loop clock) known: the one place
    for per-request accounting."""
    state.metrics.request_done(route, status, asyncio.get_running_loop().time() - started)


async def serve(state: RouterState, path: str, body: bytes, send: Send) -> int:
    """Answer through ASGI; returns the status sent."""
    result = await answer(state, path, body)
    if isinstance(result, GenerationError):
        return await send_error(send, result)
    if isinstance(result, DecodeStream):
        try:
            await relay(result, send)
        finally:
            result.close()  # ends both node calls, however the relay ended
        return result.status
    await send_body(send, result.status, result.body, result.content_type.encode() or None)
    return result.status


def parse_request(body: bytes) -> tuple[dict[str, Any], bool]:
    """The request's JSON object and whether it asks for a stream."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GenerationError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise GenerationError(400, "request body must be a JSON object")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GenerationError(422, f"stream must be true or false, got {stream!r}")
    return payload, stream is True


async def read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    if not message.get("more_body"):
        return message.get("body", b"")
    chunks = [message.get("body", b"")]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_body(send: Send, status: int, body: bytes, content_type: bytes | None,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_headers(exc: GenerationError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]


async def send_error(send: Send, exc: GenerationError,
                     extra: list[tuple[bytes, bytes]] | None = None) -> int:
    await send_body(send, exc.status, orjson.dumps(exc.body()), JSON,
                    error_headers(exc) + (extra or []))
    return exc.status


class ClientWatch:
    """Cancels the task serving a request once its client disconnects (the only way to
    learn that is to keep receiving)."""

    def __init__(self, receive: Receive) -> None:
        served = asyncio.current_task()
        assert served is not None
        self._served = served
        self.client_left = False
        self._watching = True
        self._watcher = asyncio.ensure_future(_client_gone(receive))
        self._watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Future[None]) -> None:
        if self._watching and not watcher.cancelled():
            self.client_left = True
            self._served.cancel()

    def forgive(self) -> None:
        """The cancellation was ours: the serving task carries on as if uncancelled."""
        self._served.uncancel()

    def stop(self) -> None:
        self._watching = False
        self._watcher.cancel()


async def relay(stream: DecodeStream, send: Send) -> None:
    """Send the decode stream to the client chunk by chunk until it ends."""
    await send({"type": "http.response.start", "status": stream.status,
                "headers": [(b"content-type", stream.content_type.encode())]})
    async for chunk in stream.chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models", responses=MODELS_REPLIES)
async def models(request: Request) -> Response:
    try:
        reply = await router_state(request).proxy.models()
    except GenerationError as exc:
        return Response(orjson.dumps(exc.body()), exc.status, headers=exc.headers,
                        media_type="application/json")
    return Response(reply.body, reply.status, media_type=reply.content_type or None)
